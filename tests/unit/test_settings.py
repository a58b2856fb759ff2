from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from framefleet.queue import Keys
from framefleet.settings import (
    CoordinatorSettings,
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
        {"FRAMEFLEET_SCORE_THRESHOLD": "1.5"},
    ],
)
def test_bad_worker_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_the_config_hash_follows_what_changes_outputs() -> None:
    s = Settings()
    base = s.pipeline.config_hash(s.model)
    assert base == Settings().pipeline.config_hash(Settings().model)
    assert replace(s.pipeline, sample_fps=1.0).config_hash(s.model) != base
    assert s.pipeline.config_hash(replace(s.model, score_threshold=0.5)) != base
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
