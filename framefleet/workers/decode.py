"""Decoding: frames out of a video file, sampled, resized, with timestamps, in chunks.

Two decoders sit behind one small interface, each falling back on the other for what it
cannot open:
- PyAV (the default): decodes a frame when it is asked for, in the calling thread, and
  converts it (resize + RGB) with one scaler kept for the whole video. Memory holds only
  the frames the caller keeps, whatever the pace downstream.
- decord (by choice), read sequentially with `next()` and `skip_frames()` (never
  `get_batch`, which grows memory by hundreds of MB per video, decord #197/#208). decord 0.6
  decodes ahead in a thread of its own: its first `next()` queues every packet of the file
  (it pushes packets until a frame comes out), and its thread then decodes the whole video
  into memory at full speed, however slowly frames are taken (a 60 s 640x360 clip: 1.3 GB,
  one core busy; a test shows it). Fine for short clips read at once; not for long videos
  behind a slower model, where PyAV keeps memory bounded and uses less CPU per frame.
A file that neither can read, or that breaks mid-way, raises PermanentError with the reason;
decoding never kills the process that asked for it.

Kept frames are numbered in order and cut into chunks of `chunk_frames`; chunk k always
holds the same frames for the same file and sampling, so a redelivered video can skip the
chunks it already checkpointed (their frames are skipped, not converted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import CORRUPT, NOT_A_VIDEO, OVER_LIMIT, TRUNCATED, PermanentError


@dataclass(frozen=True, slots=True)
class Sampling:
    """Which frames to keep and at what size.

    `fps`: keep the first frame at or after each 1/fps step of presentation time (variable
    frame rates included); None keeps every `stride`-th frame. `width`/`height`: resize on
    decode (one of them alone keeps the aspect ratio); None keeps the source size.
    """

    fps: float | None = None
    stride: int = 1
    width: int | None = None
    height: int | None = None
    max_side: int = 0  # with no width/height: the longest side at most this (0: any)

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError("fps must be > 0")
        if self.stride < 1:
            raise ValueError("stride must be >= 1")
        for v in (self.width, self.height):
            if v is not None and v < 2:
                raise ValueError("width and height must be >= 2")

    def selector(self) -> Callable[[int, float], bool]:
        """keep(index, pts_s) for frames seen in order."""
        if self.fps is None:
            stride = self.stride
            return lambda index, pts: index % stride == 0
        step = 1.0 / self.fps
        next_t = [-math.inf]

        def keep(index: int, pts: float) -> bool:
            if pts + 1e-6 < next_t[0]:
                return False
            next_t[0] = (math.floor(pts / step + 1e-6) + 1) * step
            return True

        return keep

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        if self.width and self.height:
            return self.width, self.height
        if self.width:
            return self.width, max(2, round(height * self.width / width))
        if self.height:
            return max(2, round(width * self.height / height)), self.height
        longest = max(width, height)
        if self.max_side and longest > self.max_side:
            scale = self.max_side / longest
            return max(2, round(width * scale)), max(2, round(height * scale))
        return width, height


@dataclass(frozen=True, slots=True)
class Limits:
    """What a video may not exceed: pixels per source frame, frames, seconds."""

    max_pixels: int = 8192 * 4320
    max_frames: int = 3_000_000
    max_duration_s: float = 86400.0

    def check_info(self, info: VideoInfo, duration_s: float | None) -> None:
        """At open, from what the container says."""
        if info.width * info.height > self.max_pixels:
            raise PermanentError(
                f"frames of {info.width}x{info.height} are over max_pixels ({self.max_pixels})",
                OVER_LIMIT,
            )
        if info.frames > self.max_frames:
            raise PermanentError(
                f"{info.frames} frames are over max_frames ({self.max_frames})", OVER_LIMIT
            )
        if duration_s is not None and duration_s > self.max_duration_s:
            raise PermanentError(
                f"{duration_s:.0f} s is over max_duration_s ({self.max_duration_s:g})", OVER_LIMIT
            )

    def check_frame(self, index: int, pts_s: float) -> None:
        """While decoding (a container may not say, or may lie)."""
        if index >= self.max_frames:
            raise PermanentError(f"more than max_frames ({self.max_frames}) frames", OVER_LIMIT)
        if pts_s > self.max_duration_s:
            raise PermanentError(
                f"longer than max_duration_s ({self.max_duration_s:g} s)", OVER_LIMIT
            )


@dataclass(frozen=True, slots=True)
class VideoInfo:
    width: int  # source frame size, the frame boxes are reported in
    height: int
    frames: int  # as the container reports it (0 when unknown)
    fps: float
    decoder: str


@dataclass(slots=True)
class Chunk:
    index: int
    images: np.ndarray  # (n, h, w, 3) uint8 RGB, at the sampled size
    frame_indices: np.ndarray  # (n,) int64: index of each frame in the source video
    pts_s: np.ndarray  # (n,) float64: presentation time in seconds
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the source frames

    def __len__(self) -> int:
        return int(self.frame_indices.shape[0])


@dataclass(slots=True)
class Frame:
    index: int
    pts_s: float
    image: np.ndarray | None  # None when the caller did not want it converted


class Decoder(Protocol):
    info: VideoInfo

    def kept_count(self, sampling: Sampling) -> int | None:
        """How many frames `sampling` keeps, when known before decoding."""
        ...

    def frames(self, sampling: Sampling, want: Callable[[int], bool]) -> Iterator[Frame]:
        """Kept frames in order; the k-th kept frame is converted only if want(k)."""
        ...

    def close(self) -> None: ...


class DecordDecoder:
    """decord, read sequentially. Timestamps come from the index, so frames that are not
    kept (or whose chunk is already done) are skipped without being converted. It decodes the
    rest of the video ahead into memory (see the module's docstring)."""

    name = "decord"

    def __init__(
        self, path: Path, sampling: Sampling, threads: int = 1, limits: Limits | None = None
    ) -> None:
        import decord
        from av.error import FFmpegError

        self._limits = limits or Limits()
        try:
            width, height = _probe_size(path)
        except FFmpegError as exc:  # what the restricted probe cannot open, decord is not given
            raise PermanentError(
                f"decord cannot read the video: {_first_line(exc)}", NOT_A_VIDEO
            ) from exc
        out_w, out_h = sampling.output_size(width, height)
        resize = {"width": out_w, "height": out_h} if (out_w, out_h) != (width, height) else {}
        try:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **resize)
            shape = tuple(vr[0].shape) if resize else (out_h, out_w, 3)
            count = len(vr)
            fps = float(vr.get_avg_fps())
            self._pts = vr.get_frame_timestamp(range(count))[:, 0].astype(np.float64)
        except _decord_errors() as exc:
            raise PermanentError(
                f"decord cannot read the video: {_first_line(exc)}", NOT_A_VIDEO
            ) from exc
        if shape != (out_h, out_w, 3):  # decord 0.6 garbles some sizes
            raise PermanentError(f"decord gives {shape} frames for {out_w}x{out_h}", NOT_A_VIDEO)
        self._vr = vr
        self.info = VideoInfo(width, height, count, fps, self.name)
        self._limits.check_info(self.info, float(self._pts[-1]) if count else None)

    def kept_count(self, sampling: Sampling) -> int | None:
        keep = sampling.selector()
        return sum(1 for i in range(len(self._pts)) if keep(i, float(self._pts[i])))

    def frames(self, sampling: Sampling, want: Callable[[int], bool]) -> Iterator[Frame]:
        keep = sampling.selector()
        kept = [i for i in range(len(self._pts)) if keep(i, float(self._pts[i]))]
        position = 0  # the index next() decodes next
        self._read(partial(self._vr.seek, 0), position)
        for k, index in enumerate(kept):
            pts = float(self._pts[index])
            self._limits.check_frame(index, pts)
            if not want(k):
                yield Frame(index, pts, None)
                continue
            if index > position:
                self._read(partial(self._vr.skip_frames, index - position), position)
            image = self._read(lambda: self._vr.next().asnumpy(), position)
            position = index + 1
            yield Frame(index, pts, image)

    def _read(self, call: Callable[[], Any], position: int) -> Any:
        """One call into decord: its errors are the video's (framefleet's own are bugs)."""
        try:
            return call()
        except StopIteration:
            raise PermanentError(
                f"the video ends early (truncated?): frame {position} of {self.info.frames}",
                TRUNCATED,
            ) from None
        except _decord_errors() as exc:
            raise PermanentError(
                f"corrupt video at frame {position}: {_first_line(exc)}", CORRUPT
            ) from exc

    def close(self) -> None:
        del self._vr


class PyAVDecoder:
    """PyAV (FFmpeg): every frame is decoded, on demand; only wanted kept frames are
    converted, by one scaler for the whole video (a frame's own to_ndarray() sets up a new
    scaler each time, which costs as much as decoding the frame)."""

    name = "pyav"

    def __init__(
        self, path: Path, sampling: Sampling, threads: int = 1, limits: Limits | None = None
    ) -> None:
        from av.error import FFmpegError
        from av.video.reformatter import VideoReformatter

        self._limits = limits or Limits()
        try:
            self._container = open_container(path)
        except FFmpegError as exc:  # FFmpeg's own: not a video (framefleet's own is a bug)
            raise PermanentError(
                f"PyAV cannot open the video: {_first_line(exc)}", NOT_A_VIDEO
            ) from exc
        if not self._container.streams.video:
            self._container.close()
            raise PermanentError("not a video: the file has no video stream", NOT_A_VIDEO)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        self._stream = stream
        # One scaler for the video, with the decoder's threads (its default, one per core,
        # costs more CPU per frame and takes the cores the decode actor's priority leaves).
        self._scaler, self._threads = VideoReformatter(), threads
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            self._container.close()
            raise PermanentError("not a video: the video stream has no frame size", NOT_A_VIDEO)
        rate = stream.average_rate or stream.guessed_rate
        self._size = sampling.output_size(width, height)
        self.info = VideoInfo(width, height, int(stream.frames or 0), float(rate or 0), self.name)
        try:
            self._limits.check_info(self.info, _duration_s(self._container, stream))
        except PermanentError:
            self._container.close()
            raise

    def kept_count(self, sampling: Sampling) -> int | None:
        return None  # known only once every frame has been decoded

    def frames(self, sampling: Sampling, want: Callable[[int], bool]) -> Iterator[Frame]:
        from av.error import FFmpegError

        keep = sampling.selector()
        index = k = 0
        decoded = self._container.decode(self._stream)
        while True:
            try:  # FFmpeg's errors are the video's; framefleet's own (below) are bugs
                frame = next(decoded, None)
            except FFmpegError as exc:
                raise PermanentError(
                    f"corrupt video at frame {index}: {_first_line(exc)}", CORRUPT
                ) from exc
            if frame is None:
                break
            pts = (
                float(frame.pts * frame.time_base)
                if frame.pts is not None and frame.time_base is not None
                else index / (self.info.fps or 1)
            )
            self._limits.check_frame(index, pts)
            if keep(index, pts):
                yield Frame(index, pts, self._image(frame, index) if want(k) else None)
                k += 1
            index += 1
        if index == 0:
            raise PermanentError("the video stream holds no decodable frame", CORRUPT)

    def _image(self, frame: Any, index: int) -> np.ndarray:
        from av.error import FFmpegError

        out_w, out_h = self._size
        try:
            rgb = self._scaler.reformat(frame, out_w, out_h, "rgb24", threads=self._threads)
            image: np.ndarray = rgb.to_ndarray()
        except FFmpegError as exc:
            raise PermanentError(
                f"corrupt video at frame {index}: {_first_line(exc)}", CORRUPT
            ) from exc
        return image

    def close(self) -> None:
        self._container.close()


# The demuxers a video may be read with: containers of one file. Not playlists (hls, dash),
# concat lists, image sequences (image2) or anything else that opens other files or URLs: a
# playlist inside an allowed root would make FFmpeg read videos outside it (or fetch from the
# network) that a direct read refuses. decord, which takes no such options, only opens what
# the restricted PyAV probe opened first.
FORMATS = "mov,matroska,webm,avi,mpegts,mpeg,mpegvideo,m4v,flv,asf,ogg,h264,hevc,ivf,mxf,nut,gif"


def open_container(path: Path) -> Any:
    """PyAV's av.open, limited to the file itself: the FORMATS demuxers, the file protocol."""
    import av

    options = {"format_whitelist": FORMATS, "protocol_whitelist": "file"}
    return av.open(str(path), options=options)


def _decord_errors() -> tuple[type[Exception], ...]:
    """What decord raises for a video it cannot read: its DECORDError (with the C++ text),
    and RuntimeError from its Python layer ("Error reading ..." when it cannot open one)."""
    from decord import DECORDError

    return DECORDError, RuntimeError


def _probe_size(path: Path) -> tuple[int, int]:
    """The frame size from the container's header (no frame decoded), by the restricted
    PyAV: what it cannot open, decord is not given."""
    with open_container(path) as container:
        if not container.streams.video:
            raise PermanentError("not a video: the file has no video stream", NOT_A_VIDEO)
        ctx = container.streams.video[0].codec_context
        if not ctx.width or not ctx.height:
            raise PermanentError("not a video: the video stream has no frame size", NOT_A_VIDEO)
        return int(ctx.width), int(ctx.height)


DECODERS: dict[str, type[DecordDecoder] | type[PyAVDecoder]] = {
    "decord": DecordDecoder,
    "pyav": PyAVDecoder,
}


def _duration_s(container: Any, stream: Any) -> float | None:
    """The video's duration as its container says it, if it does."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000  # AV_TIME_BASE
    return None


def open_decoder(
    path: Path,
    sampling: Sampling,
    prefer: str = "pyav",
    threads: int = 1,
    limits: Limits | None = None,
) -> Decoder:
    """The preferred decoder, or the other one when it cannot open the file (a video over a
    limit is refused by the first)."""
    if prefer not in DECODERS:
        raise ValueError(f"unknown decoder {prefer!r}; one of {', '.join(DECODERS)}")
    if path.stat().st_size == 0:
        raise PermanentError("not a video: the file is empty (0 bytes)", NOT_A_VIDEO)
    order = [prefer, *(name for name in DECODERS if name != prefer)]
    reasons = []
    for name in order:
        try:
            return DECODERS[name](path, sampling, threads, limits)
        except PermanentError as exc:
            if exc.cls == OVER_LIMIT:
                raise
            reasons.append(exc.reason)
    raise PermanentError("not a readable video: " + "; ".join(reasons), NOT_A_VIDEO)


@dataclass(slots=True)
class _Pending:
    index: int
    frames: list[Frame] = field(default_factory=list)


class ChunkReader:
    """The video's chunks in order, leaving out those in `done` (already checkpointed; their
    frames are not converted). Once iterated, `chunk_count` is the video's number of chunks,
    skipped ones included."""

    def __init__(
        self, decoder: Decoder, sampling: Sampling, chunk_frames: int, done: Set[int] = frozenset()
    ) -> None:
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        self.decoder, self.sampling, self.chunk_frames, self.done = (
            decoder,
            sampling,
            chunk_frames,
            done,
        )
        self.kept = 0  # frames kept by the sampling so far

    @property
    def chunk_count(self) -> int:
        return math.ceil(self.kept / self.chunk_frames)

    @property
    def expected_chunks(self) -> int | None:
        """The number of chunks the container's frame count and rate promise (None when it
        does not say): an estimate for progress bars, never used for correctness."""
        info, s = self.decoder.info, self.sampling
        if info.frames <= 0:
            return None
        kept = info.frames / s.stride
        if s.fps is not None and info.fps > 0:
            kept = info.frames * min(1.0, s.fps / info.fps)
        return max(1, math.ceil(kept / self.chunk_frames))

    def __iter__(self) -> Iterator[Chunk]:
        size, done = self.chunk_frames, self.done
        source = (self.decoder.info.width, self.decoder.info.height)
        pending: _Pending | None = None
        for frame in self.decoder.frames(self.sampling, lambda k: k // size not in done):
            index = self.kept // size
            self.kept += 1
            if index in done:
                continue
            if pending is None or pending.index != index:
                if pending is not None:
                    yield _chunk(pending, source)
                pending = _Pending(index)
            pending.frames.append(frame)
        if pending is not None:
            yield _chunk(pending, source)


def chunks(
    decoder: Decoder, sampling: Sampling, chunk_frames: int, done: Set[int] = frozenset()
) -> Iterator[Chunk]:
    """The video's chunks in order, leaving out those in `done`."""
    return iter(ChunkReader(decoder, sampling, chunk_frames, done))


def count_chunks(decoder: Decoder, sampling: Sampling, chunk_frames: int) -> int | None:
    """How many chunks the video has, when the decoder knows its timestamps up front."""
    kept = decoder.kept_count(sampling)
    return None if kept is None else math.ceil(kept / chunk_frames)


def _chunk(p: _Pending, source: tuple[int, int]) -> Chunk:
    images = np.stack([f.image for f in p.frames if f.image is not None])
    return Chunk(
        index=p.index,
        images=images,
        frame_indices=np.array([f.index for f in p.frames], np.int64),
        pts_s=np.array([f.pts_s for f in p.frames], np.float64),
        source_size=source,
    )


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(exc: BaseException) -> str:
    """The useful part of an error text (decord prefixes its C++ source locations)."""
    text = _DECORD_PREFIX.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
