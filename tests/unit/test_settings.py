from __future__ import annotations

import os
from dataclasses import replace
from operator import attrgetter
from pathlib import Path

import pytest

from framefleet.queue import Keys
from framefleet.settings import (
    VIDEO_SUFFIXES,
    CoordinatorSettings,
    LogSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    SettingsError,
    SourceSettings,
)


def test_defaults_run_on_one_machine() -> None:
    s = Settings.from_env({})
    assert s.redis.url is None and s.redis.appendfsync == "everysec"
    assert s.queue.name == "videos" and s.queue.lease_s == 60


def test_environment_overrides() -> None:
    s = Settings.from_env(
        {
            "FRAMEFLEET_REDIS_URL": "rediss://user:pw@redis.internal:6380/0",
            "FRAMEFLEET_DATA_DIR": "/var/lib/ff",
            "FRAMEFLEET_APPENDFSYNC": "always",
            "FRAMEFLEET_QUEUE": "cams",
            "FRAMEFLEET_LEASE_S": "12.5",
            "FRAMEFLEET_MAX_ATTEMPTS": "9",
        }
    )
    assert s.redis.url == "rediss://user:pw@redis.internal:6380/0"
    assert s.redis.data_dir == Path("/var/lib/ff") and s.redis.appendfsync == "always"
    assert (s.queue.name, s.queue.lease_s, s.queue.max_attempts) == ("cams", 12.5, 9)


@pytest.mark.parametrize(
    "env",
    [
        {"FRAMEFLEET_APPENDFSYNC": "sometimes"},
        {"FRAMEFLEET_LEASE_S": "soon"},
        {"FRAMEFLEET_LEASE_S": "0"},
        {"FRAMEFLEET_QUEUE": "a:b"},
        {"FRAMEFLEET_QUEUE": "{x}"},
        {"FRAMEFLEET_MAX_DELIVERIES": "0"},
        {"FRAMEFLEET_REDIS_PORT": "70000"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        QueueSettings().lease_s = 1  # type: ignore[misc]
    with pytest.raises(SettingsError):
        RedisSettings(appendfsync="never")  # type: ignore[arg-type]


def test_key_layout_shares_one_hash_tag() -> None:
    k = Keys("ff", "videos")
    assert k.base == "ff:{videos}:"
    names = [
        k.item("a"),
        k.chunks("a"),
        k.state("queued"),
        k.state("dead"),
        k.signal,
        k.inbox,
        k.rejected,
        k.meta,
        k.stats,
    ]
    assert all(n.startswith("ff:{videos}:") for n in names)
    with pytest.raises(ValueError):
        k.state("running")


def test_worker_settings_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "FRAMEFLEET_ALLOWED_ROOTS": "/videos:/mnt/more",
            "FRAMEFLEET_S3_ENDPOINT_URL": "http://minio:9000",
            "FRAMEFLEET_MODEL": "/models/detr",
            "FRAMEFLEET_RANDOM_WEIGHTS": "true",
            "FRAMEFLEET_PRECISION": "bf16",
            "FRAMEFLEET_SAMPLE_FPS": "2.5",
            "FRAMEFLEET_WIDTH": "640",
            "FRAMEFLEET_OUT": "s3://results/run-7",
            "FRAMEFLEET_GPUS_PER_INFERENCE": "0.5",
        }
    )
    assert s.source.allowed_roots == (Path("/videos"), Path("/mnt/more"))
    assert s.source.s3_endpoint_url == "http://minio:9000"
    assert (s.model.model, s.model.random_weights, s.model.precision) == (
        "/models/detr",
        True,
        "bf16",
    )
    assert (s.pipeline.sample_fps, s.pipeline.width, s.pipeline.height) == (2.5, 640, None)
    assert s.pipeline.out == "s3://results/run-7" and s.pipeline.gpus_per_inference == 0.5


@pytest.mark.parametrize(
    "env",
    [
        {"FRAMEFLEET_RANDOM_WEIGHTS": "maybe"},
        {"FRAMEFLEET_PRECISION": "int4"},
        {"FRAMEFLEET_DEVICE": "tpu"},
        {"FRAMEFLEET_DECODER": "opencv"},
        {"FRAMEFLEET_CHUNK_FRAMES": "0"},
        {"FRAMEFLEET_SAMPLE_FPS": "-1"},
        {"FRAMEFLEET_GPUS_PER_INFERENCE": "2"},
        {"FRAMEFLEET_DECODE_NICE": "-5"},
        {"FRAMEFLEET_DECODE_NICE": "20"},
        {"FRAMEFLEET_CHECKPOINT_S": "-1"},
        {"FRAMEFLEET_CHECKPOINT_S": "301"},
        {"FRAMEFLEET_SCORE_THRESHOLD": "1.5"},
    ],
)
def test_bad_worker_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FRAMEFLEET_LOG_LEVEL": "LOUD"}, "FRAMEFLEET_LOG_LEVEL"),
        ({"FRAMEFLEET_LOG_LEVEL": "20"}, "FRAMEFLEET_LOG_LEVEL"),
        ({"FRAMEFLEET_LOG_FORMAT": "xml"}, "FRAMEFLEET_LOG_FORMAT"),
    ],
)
def test_bad_log_settings_are_refused_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_log_settings_take_any_case_and_the_terminal_flag_stays_out_of_the_environment() -> None:
    s = Settings.from_env({"FRAMEFLEET_LOG_LEVEL": "debug", "FRAMEFLEET_LOG_FORMAT": "JSON"})
    assert (s.log.level, s.log.format) == ("DEBUG", "json")
    terminal = replace(s, log=replace(s.log, terminal=True))
    assert terminal.to_env() == s.to_env()  # set by `run` on a terminal, not by a variable
    assert Settings.from_env(terminal.to_env()).log == s.log == LogSettings("DEBUG", "json")


def test_the_config_hash_follows_what_changes_outputs() -> None:
    s = Settings()
    base = s.pipeline.config_hash(s.model)
    assert base == Settings().pipeline.config_hash(Settings().model)
    assert replace(s.pipeline, sample_fps=1.0).config_hash(s.model) != base
    assert s.pipeline.config_hash(replace(s.model, score_threshold=0.5)) != base
    # where the resize and normalisation run (the processor's or torch's) changes the pixels
    # the model sees, so its detections: two of them never share an output version
    assert s.pipeline.config_hash(replace(s.model, preprocess="torch")) != base
    assert replace(s.pipeline, decode_actors=9).config_hash(s.model) == base  # scale, not outputs


def test_settings_travel_through_the_environment() -> None:
    """to_env() is what a child process needs to read the same settings back."""
    settings = Settings(
        redis=RedisSettings(url="redis://h:1/0", appendfsync="always"),
        queue=QueueSettings(name="q", lease_s=12.5),
        source=SourceSettings(allowed_roots=(Path("/a"), Path("/b"))),
        model=ModelSettings(model="/m", random_weights=True, score_threshold=0.0),
        pipeline=PipelineSettings(out="s3://b/p", width=320, gpus_per_inference=0.25),
        coordinator=CoordinatorSettings(ray_address="10.0.0.1:6379", tick_s=0.5, stale_s=4),
    )
    env = settings.to_env()
    assert env["FRAMEFLEET_RANDOM_WEIGHTS"] == "1"
    assert env["FRAMEFLEET_ALLOWED_ROOTS"] == "/a:/b"
    assert "FRAMEFLEET_HEIGHT" not in env  # None: the default
    assert Settings.from_env(env) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()


# Every FRAMEFLEET_* variable as released: the field it sets, its default, and a value that
# differs from the default and is valid alone. A rename, a dropped variable or a changed
# default fails here, whatever declares them.
VARIABLES: dict[str, tuple[str, object, object]] = {
    "FRAMEFLEET_REDIS_URL": ("redis.url", None, "redis://h:1/0"),
    "FRAMEFLEET_DATA_DIR": ("redis.data_dir", Path(".framefleet/redis"), Path("/var/ff")),
    "FRAMEFLEET_APPENDFSYNC": ("redis.appendfsync", "everysec", "always"),
    "FRAMEFLEET_REDIS_PORT": ("redis.port", 0, 6390),
    "FRAMEFLEET_REDIS_MIN_REPLICAS": ("redis.min_replicas", 0, 1),
    "FRAMEFLEET_REDIS_WAITAOF": ("redis.waitaof", False, True),
    "FRAMEFLEET_REDIS_WAIT_TIMEOUT_S": ("redis.wait_timeout_s", 2.0, 0.5),
    "FRAMEFLEET_QUEUE": ("queue.name", "videos", "cams"),
    "FRAMEFLEET_KEY_PREFIX": ("queue.prefix", "ff", "f2"),
    "FRAMEFLEET_CONFIG_VERSION": ("queue.config_version", "1", "7"),
    "FRAMEFLEET_LEASE_S": ("queue.lease_s", 60.0, 12.5),
    "FRAMEFLEET_MAX_ATTEMPTS": ("queue.max_attempts", 5, 9),
    "FRAMEFLEET_MAX_DELIVERIES": ("queue.max_deliveries", 3, 4),
    "FRAMEFLEET_BACKOFF_BASE_S": ("queue.backoff_base_s", 5.0, 1.5),
    "FRAMEFLEET_BACKOFF_MAX_S": ("queue.backoff_max_s", 900.0, 60.0),
    "FRAMEFLEET_POLL_S": ("queue.poll_s", 0.5, 0.25),
    "FRAMEFLEET_BATCH_SIZE": ("queue.batch_size", 1000, 50),
    "FRAMEFLEET_DONE_TTL_S": ("queue.done_ttl_s", 7 * 86400.0, 3600.0),
    "FRAMEFLEET_DEAD_TTL_S": ("queue.dead_ttl_s", 30 * 86400.0, 7200.0),
    "FRAMEFLEET_ALLOWED_ROOTS": ("source.allowed_roots", (), (Path("/a"), Path("/b"))),
    "FRAMEFLEET_MAX_VIDEO_BYTES": ("source.max_video_bytes", 8 * 1024**3, 1024),
    "FRAMEFLEET_FETCH_TIMEOUT_S": ("source.fetch_timeout_s", 60.0, 5.0),
    "FRAMEFLEET_FETCH_DEADLINE_S": ("source.fetch_deadline_s", 1800.0, 90.0),
    "FRAMEFLEET_FETCH_ATTEMPTS": ("source.fetch_attempts", 4, 2),
    "FRAMEFLEET_FETCH_BACKOFF_S": ("source.fetch_backoff_s", 0.5, 0.0),
    "FRAMEFLEET_S3_ENDPOINT_URL": ("source.s3_endpoint_url", None, "http://minio:9000"),
    "FRAMEFLEET_ALLOW_PRIVATE_URLS": ("source.allow_private_urls", "", "10.0.0.0/8"),
    "FRAMEFLEET_TMP_DIR": ("source.tmp_dir", None, Path("/tmp/ff")),
    "FRAMEFLEET_MODEL": ("model.model", "facebook/detr-resnet-50", "/models/detr"),
    "FRAMEFLEET_MODEL_REVISION": ("model.revision", None, "v2.0"),
    "FRAMEFLEET_RANDOM_WEIGHTS": ("model.random_weights", False, True),
    "FRAMEFLEET_MODEL_PLUGIN": ("model.plugin", None, "pkg.mod:make"),
    "FRAMEFLEET_SCORE_THRESHOLD": ("model.score_threshold", 0.7, 0.5),
    "FRAMEFLEET_PRECISION": ("model.precision", "fp32", "bf16"),
    "FRAMEFLEET_DEVICE": ("model.device", "auto", "cpu"),
    "FRAMEFLEET_INFER_BATCH": ("model.batch_size", 8, 16),
    "FRAMEFLEET_PREPROCESS": ("model.preprocess", "auto", "torch"),
    "FRAMEFLEET_TORCH_THREADS": ("model.torch_threads", 1, 3),
    "FRAMEFLEET_OUT": ("pipeline.out", ".framefleet/out", "s3://results/run-7"),
    "FRAMEFLEET_DECODER": ("pipeline.decoder", "pyav", "decord"),
    "FRAMEFLEET_SAMPLE_FPS": ("pipeline.sample_fps", None, 2.5),
    "FRAMEFLEET_STRIDE": ("pipeline.stride", 1, 3),
    "FRAMEFLEET_WIDTH": ("pipeline.width", None, 640),
    "FRAMEFLEET_HEIGHT": ("pipeline.height", None, 360),
    "FRAMEFLEET_CHUNK_FRAMES": ("pipeline.chunk_frames", 32, 16),
    "FRAMEFLEET_MAX_INFLIGHT": ("pipeline.max_inflight_chunks", 4, 6),
    "FRAMEFLEET_CHECKPOINT_S": ("pipeline.checkpoint_s", 0.0, 5.0),
    "FRAMEFLEET_DECODE_THREADS": ("pipeline.decode_threads", 1, 2),
    "FRAMEFLEET_DECODE_ACTORS": ("pipeline.decode_actors", 2, 3),
    "FRAMEFLEET_ITEMS_PER_DECODER": ("pipeline.items_per_decoder", 2, 1),
    "FRAMEFLEET_INFERENCE_ACTORS": ("pipeline.inference_actors", 4, 8),
    "FRAMEFLEET_GPUS_PER_INFERENCE": ("pipeline.gpus_per_inference", 0.25, 0.5),
    "FRAMEFLEET_CPUS_PER_INFERENCE": ("pipeline.cpus_per_inference", 1.0, 2.0),
    "FRAMEFLEET_CPUS_PER_DECODER": ("pipeline.cpus_per_decoder", 1.0, 0.5),
    "FRAMEFLEET_DECODE_NICE": ("pipeline.decode_nice", 5, 0),
    "FRAMEFLEET_STALL_S": ("pipeline.stall_s", 600.0, 30.0),
    "FRAMEFLEET_CHUNK_TIMEOUT_S": ("pipeline.chunk_timeout_s", 600.0, 45.0),
    "FRAMEFLEET_INFERENCE_WAIT_S": ("pipeline.inference_wait_s", 60.0, 20.0),
    "FRAMEFLEET_MAX_SIDE": ("pipeline.max_side", 1333, 0),
    "FRAMEFLEET_MAX_PIXELS": ("pipeline.max_pixels", 8192 * 4320, 1920 * 1080),
    "FRAMEFLEET_MAX_FRAMES": ("pipeline.max_frames", 3_000_000, 1000),
    "FRAMEFLEET_MAX_DURATION_S": ("pipeline.max_duration_s", 86400.0, 600.0),
    "FRAMEFLEET_DECODE_MEMORY_BYTES": ("pipeline.decode_memory_bytes", 4 << 30, 512 << 20),
    "FRAMEFLEET_PREVIEWS": ("pipeline.previews", 0, 6),
    "FRAMEFLEET_HISTORY": ("pipeline.history", None, Path("/var/tmp/chaos-history")),
    "FRAMEFLEET_RAY_ADDRESS": ("coordinator.ray_address", None, "10.0.0.1:6379"),
    "FRAMEFLEET_RAY_TEMP_DIR": ("coordinator.ray_temp_dir", None, "/tmp/ray-ff"),
    "FRAMEFLEET_MIN_DECODE_ACTORS": ("coordinator.min_decode_actors", 1, 0),
    "FRAMEFLEET_MIN_INFERENCE_ACTORS": ("coordinator.min_inference_actors", 1, 2),
    "FRAMEFLEET_TICK_S": ("coordinator.tick_s", 2.0, 1.0),
    "FRAMEFLEET_LEADER_TTL_S": ("coordinator.leader_ttl_s", 10.0, 20.0),
    "FRAMEFLEET_STALE_S": ("coordinator.stale_s", 10.0, 30.0),
    "FRAMEFLEET_GCS_GRACE_S": ("coordinator.gcs_grace_s", 5.0, 8.0),
    "FRAMEFLEET_IDLE_S": ("coordinator.idle_s", 60.0, 120.0),
    "FRAMEFLEET_START_TIMEOUT_S": ("coordinator.start_timeout_s", 600.0, 90.0),
    "FRAMEFLEET_AUTOSCALE": ("coordinator.autoscale", True, False),
    "FRAMEFLEET_MAX_GPUS": ("coordinator.max_gpus", None, 8.0),
    "FRAMEFLEET_MAX_CPUS": ("coordinator.max_cpus", None, 64.0),
    "FRAMEFLEET_API_HOST": ("api.host", "127.0.0.1", "0.0.0.0"),
    "FRAMEFLEET_API_PORT": ("api.port", 8321, 9000),
    "FRAMEFLEET_API_TOKEN": ("api.token", None, "w" * 24),
    "FRAMEFLEET_API_TOKEN_FILE": ("api.token_file", None, Path("/run/secrets/ff")),
    "FRAMEFLEET_API_READ_TOKEN": ("api.read_token", None, "r" * 24),
    "FRAMEFLEET_API_READ_ONLY": ("api.read_only", False, True),
    "FRAMEFLEET_API_ROOT_PATH": ("api.root_path", "", "/ff"),
    "FRAMEFLEET_API_FORWARDED_ALLOW_IPS": ("api.forwarded_allow_ips", "127.0.0.1", "10.0.0.0/8"),
    "FRAMEFLEET_API_MAX_BODY_BYTES": ("api.max_body_bytes", 8 * 1024 * 1024, 4096),
    "FRAMEFLEET_S3_EVENT_SUFFIXES": ("api.s3_event_suffixes", ",".join(VIDEO_SUFFIXES), "*"),
    "FRAMEFLEET_LOG_LEVEL": ("log.level", "INFO", "DEBUG"),
    "FRAMEFLEET_LOG_FORMAT": ("log.format", "text", "json"),
    "FRAMEFLEET_WEBHOOK_URL": ("webhook.url", None, "https://hooks.example/ff"),
    "FRAMEFLEET_WEBHOOK_SECRET": ("webhook.secret", None, "s" * 32),
    "FRAMEFLEET_WEBHOOK_SECRET_FILE": ("webhook.secret_file", None, Path("/run/secrets/hook")),
    "FRAMEFLEET_WEBHOOK_ALLOW_PRIVATE": ("webhook.allow_private", "", "10.0.0.0/8"),
    "FRAMEFLEET_WEBHOOK_TIMEOUT_S": ("webhook.timeout_s", 10.0, 3.0),
    "FRAMEFLEET_WEBHOOK_ATTEMPTS": ("webhook.attempts", 10, 3),
    "FRAMEFLEET_WEBHOOK_RETRY_S": ("webhook.retry_s", 5.0, 0.5),
}


def _as_env(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return os.pathsep.join(str(v) for v in value)
    return str(value)


def test_every_variable_keeps_its_name_and_default() -> None:
    defaults, from_nothing = Settings(), Settings.from_env({})
    for var, (path, default, _) in VARIABLES.items():
        assert attrgetter(path)(defaults) == default, var
        assert attrgetter(path)(from_nothing) == default, var
    nones = {var for var, (_, default, _) in VARIABLES.items() if default is None}
    assert set(Settings().to_env()) == set(VARIABLES) - nones  # and no variable beside these


@pytest.mark.parametrize("var", sorted(VARIABLES))
def test_each_variable_sets_its_own_field(var: str) -> None:
    path, default, value = VARIABLES[var]
    assert value != default
    s = Settings.from_env({var: _as_env(value)})
    assert attrgetter(path)(s) == value
    assert s.to_env()[var] == _as_env(value)
    assert Settings.from_env(s.to_env()) == s


def test_the_fleet_flags_set_their_variables_and_are_checked_as_they_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run/up/coordinator's flags (FLEET_FLAGS) set the variable each names, over the
    environment, with the variable's parsing and checks; --help names both and the default."""
    from framefleet.cli import _settings, build_parser
    from framefleet.settings import FLEET_FLAGS, variable_default

    flags = {
        "--decoder": "decord",
        "--sample-fps": "2.5",
        "--stride": "3",
        "--chunk-frames": "16",
        "--score-threshold": "0.05",
        "--precision": "bf16",
        "--device": "cpu",
        "--decode-actors": "3",
        "--inference-actors": "8",
        "--previews": "5",
    }
    assert set(flags) == set(FLEET_FLAGS)
    for command in ("run", "up", "coordinator"):
        argv = [command, *(x for kv in flags.items() for x in kv)]
        argv += ["--out", "o", "v.mp4"] if command == "run" else []
        s = _settings(build_parser().parse_args(argv))
        expected = Settings.from_env({FLEET_FLAGS[f][0]: v for f, v in flags.items()})
        here = replace(s.pipeline, out=expected.pipeline.out)  # found upward: test below
        assert (here, s.model) == (expected.pipeline, expected.model), command
        assert s.pipeline.sample_fps == 2.5 and s.model.score_threshold == 0.05
    for flag, (var, _) in FLEET_FLAGS.items():
        default = variable_default(var)
        assert attrgetter(VARIABLES[var][0])(Settings()) == default, flag
    with pytest.raises(SettingsError, match="FRAMEFLEET_CHUNK_FRAMES"):
        _settings(build_parser().parse_args(["up", "--chunk-frames", "many"]))
    with pytest.raises(SettingsError, match="score_threshold"):
        _settings(build_parser().parse_args(["up", "--score-threshold", "2"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    assert "--sample-fps" in text and "FRAMEFLEET_SAMPLE_FPS" in text and "default 32" in text


def test_a_smoke_run_keeps_every_detection_unless_a_threshold_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --random-weights every score is low: the threshold goes to 0 so that a smoke
    run's outputs have rows (the summary says they mean nothing), unless one is given."""
    from framefleet.cli import _settings, build_parser
    from framefleet.cli.fleet import _fleet_settings

    monkeypatch.delenv("FRAMEFLEET_SCORE_THRESHOLD", raising=False)

    def threshold(*argv: str) -> float:
        args = build_parser().parse_args(["run", "v.mp4", "--out", "o", *argv])
        return _fleet_settings(args, _settings(args)).model.score_threshold

    assert threshold() == 0.7
    assert threshold("--random-weights") == 0.0
    assert threshold("--random-weights", "--score-threshold", "0.3") == 0.3
    monkeypatch.setenv("FRAMEFLEET_SCORE_THRESHOLD", "0.5")
    assert threshold("--random-weights") == 0.5
