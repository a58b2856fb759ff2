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
A file that neither can read, or that breaks mid-way, raises PermanentError with the reason.
The pipeline runs them in a child process of bounded memory (decode_process.py), so that what
a crafted file makes FFmpeg allocate ends the child, not the actor.

What a crafted file cannot do here: be read as another stream than its real video (an
attached cover picture is never the video), change its frame size after the header (FFmpeg's
max_pixels bounds every frame, and a frame of another size than the first is refused), or
pass the duration limit by where its clock starts: times are seconds from the first frame,
along the container's clock, a jump backwards (a clock wrap, files joined end to end)
bridged by one frame interval. Frames are turned as the display matrix says (a phone's
portrait video reaches the model upright), and boxes are in displayed pixels. decord is
given only files whose first bytes are those of a real container the restricted probe
named: no raw or headerless streams, which its own older FFmpeg could take for a playlist.

Kept frames are numbered in order and cut into chunks of `chunk_frames`; chunk k always
holds the same frames for the same file and sampling, so a redelivered video can skip the
chunks it already checkpointed (their frames are skipped, not converted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import CORRUPT, NOT_A_VIDEO, OVER_LIMIT, TRUNCATED, PermanentError

MAX_GAP_S = 3600.0  # a jump forward of the clock longer than this is a discontinuity too


class Clock:
    """Seconds from the first frame along a container's clock: a jump backwards (a wrap of
    MPEG-TS's 33-bit clock, two files joined end to end), or forwards by more than
    MAX_GAP_S, counts as one frame interval; a frame without a timestamp, too."""

    def __init__(self, fps: float) -> None:
        self.step = 1.0 / fps if fps and fps > 0 else 1.0 / 25
        self.last: float | None = None
        self.now = 0.0

    def time(self, raw: float | None) -> float:
        if self.last is None:
            self.last = 0.0 if raw is None else raw
            return 0.0
        if raw is None:
            raw = self.last + self.step
        delta = raw - self.last
        self.now += delta if 0 < delta <= MAX_GAP_S else self.step
        self.last = raw
        return self.now


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
    previews: tuple[int, ...] = ()  # positions of the frames to draw previews of (previews.py)

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
        """Kept frames in order; the k-th kept frame is converted only if want(k). A frame's
        image may be the decoder's own buffer, read-only and overwritten once the next frame
        is asked for: copy what you keep (ChunkReader does)."""
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
            (width, height), self._turns = _probe(path, self._limits)
        except MemoryError:
            raise
        except FFmpegError as exc:  # what the restricted probe cannot open, decord is not given
            raise PermanentError(
                f"decord cannot read the video: {_first_line(exc)}", NOT_A_VIDEO
            ) from exc
        if self._turns:  # decord 0.6 turns frames itself, and garbles them when it resizes too
            raise PermanentError(
                "decord does not turn frames reliably: a video with a display matrix is"
                " left to PyAV",
                NOT_A_VIDEO,
            )
        self._limits.check_info(VideoInfo(width, height, 0, 0.0, self.name), None)
        out_w, out_h = sampling.output_size(width, height)
        resize = {"width": out_w, "height": out_h} if (out_w, out_h) != (width, height) else {}
        try:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **resize)
            shape = tuple(vr[0].shape) if resize else (out_h, out_w, 3)
            count = len(vr)
            fps = float(vr.get_avg_fps())
            raw = vr.get_frame_timestamp(range(count))[:, 0].astype(np.float64)
        except _decord_errors() as exc:
            raise PermanentError(
                f"decord cannot read the video: {_first_line(exc)}", NOT_A_VIDEO
            ) from exc
        if shape != (out_h, out_w, 3):  # decord 0.6 garbles some sizes
            raise PermanentError(f"decord gives {shape} frames for {out_w}x{out_h}", NOT_A_VIDEO)
        clock = Clock(fps)
        self._pts = np.array([clock.time(float(t)) for t in raw], np.float64)
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
    scaler each time, which costs as much as decoding the frame). The first frame is
    decoded at open: its size and display matrix are the video's."""

    name = "pyav"

    def __init__(
        self, path: Path, sampling: Sampling, threads: int = 1, limits: Limits | None = None
    ) -> None:
        from av.error import FFmpegError
        from av.video.reformatter import VideoReformatter

        self._limits = limits or Limits()
        try:
            self._container = open_container(path)
        except MemoryError:
            raise
        except FFmpegError as exc:  # FFmpeg's own: not a video (framefleet's own is a bug)
            raise PermanentError(
                f"PyAV cannot open the video: {_first_line(exc)}", NOT_A_VIDEO
            ) from exc
        try:
            self._open(sampling, threads)
        except BaseException:
            self._container.close()
            raise
        self._scaler, self._threads = VideoReformatter(), threads
        self._to_rgb = VideoReformatter()  # the second step of a resize in YUV (_image)

    def _open(self, sampling: Sampling, threads: int) -> None:
        stream = video_stream(self._container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        # no frame larger than the limit is even allocated, whatever the header said
        stream.codec_context.options = {"max_pixels": str(self._limits.max_pixels)}
        self._stream = stream
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise PermanentError("not a video: the video stream has no frame size", NOT_A_VIDEO)
        rate = stream.average_rate or stream.guessed_rate
        self._limits.check_info(
            VideoInfo(width, height, int(stream.frames or 0), float(rate or 0), self.name),
            _duration_s(self._container, stream),
        )
        self._decoded = self._container.decode(stream)
        self._first = self._next(0)
        if self._first is None:
            raise PermanentError("the video stream holds no decodable frame", CORRUPT)
        self._coded = (self._first.width, self._first.height)
        self._turns = _turns(self._first)
        width, height = self._coded if self._turns % 2 == 0 else self._coded[::-1]
        self._size = sampling.output_size(width, height)
        # (the limits were checked on the header; the first frame, whatever its size, was
        # decoded within max_pixels: no second check of the same limits)
        self.info = VideoInfo(width, height, int(stream.frames or 0), float(rate or 0), self.name)

    def _next(self, index: int) -> Any:
        from av.error import FFmpegError

        try:  # FFmpeg's errors are the video's; framefleet's own (below) are bugs
            return next(self._decoded, None)
        except MemoryError:
            raise
        except FFmpegError as exc:
            raise PermanentError(
                f"corrupt video at frame {index}: {_first_line(exc)} (or a frame over"
                f" max_pixels, {self._limits.max_pixels})",
                CORRUPT,
            ) from exc

    def kept_count(self, sampling: Sampling) -> int | None:
        return None  # known only once every frame has been decoded

    def frames(self, sampling: Sampling, want: Callable[[int], bool]) -> Iterator[Frame]:
        keep = sampling.selector()
        clock = Clock(self.info.fps)
        index = k = 0
        frame, self._first = self._first, None
        while frame is not None:
            if (frame.width, frame.height) != self._coded:
                raise PermanentError(
                    f"frame {index} is {frame.width}x{frame.height}, the video's frames"
                    f" {self._coded[0]}x{self._coded[1]}: a stream whose frames change size"
                    " is refused",
                    CORRUPT,
                )
            raw = (
                float(frame.pts * frame.time_base)
                if frame.pts is not None and frame.time_base is not None
                else None
            )
            pts = clock.time(raw)
            self._limits.check_frame(index, pts)
            if keep(index, pts):
                yield Frame(index, pts, self._image(frame, index) if want(k) else None)
                k += 1
            index += 1
            frame = self._next(index)

    def _image(self, frame: Any, index: int) -> np.ndarray:
        from av.error import FFmpegError

        out_w, out_h = self._size if self._turns % 2 == 0 else self._size[::-1]
        try:
            if _resize_in_yuv(frame, out_w, out_h):
                small = self._scaler.reformat(frame, out_w, out_h, threads=self._threads)
                rgb = self._to_rgb.reformat(
                    small, format="rgb24", src_colorspace=frame.colorspace, threads=self._threads
                )
            else:
                rgb = self._scaler.reformat(frame, out_w, out_h, "rgb24", threads=self._threads)
            image: np.ndarray = rgb.to_ndarray()
        except MemoryError:
            raise
        except FFmpegError as exc:
            raise PermanentError(
                f"corrupt video at frame {index}: {_first_line(exc)}", CORRUPT
            ) from exc
        return np.ascontiguousarray(np.rot90(image, self._turns)) if self._turns else image

    def close(self) -> None:
        self._container.close()


def _resize_in_yuv(frame: Any, width: int, height: int) -> bool:
    """Resize an 8-bit 4:2:0 frame (limited range: most video) in its own format, then
    convert it to RGB at the new size, instead of both in one pass: FFmpeg's scaler has a
    SIMD path for the conversion alone but not for both at once, so this costs 0.4 ms less
    a 1280x720 frame made 640x360 (1.0 against 1.4 ms with decoding: bench/pipeline.py's
    clips). The price: colour edges a little softer (the chroma is resized at its own
    half size). On saturated colour bars the mean error against the source's own pixels
    is 4.1 levels where the one pass gives 3.6, with no colour cast (a test holds it)."""
    return (
        frame.format.name == "yuv420p"
        and (width, height) != (frame.width, frame.height)
        and width % 2 == 0
        and height % 2 == 0
    )


def video_stream(container: Any) -> Any:
    """The video: the stream with the most frames (the first of equals) among those that
    are not an attached picture (an MP4's cover art can come first)."""
    from av.stream import Disposition

    streams = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not streams:
        what = "only a picture" if container.streams.video else "no video stream"
        raise PermanentError(f"not a video: the file has {what}", NOT_A_VIDEO)
    return max(streams, key=lambda s: (int(s.frames or 0), -s.index))


def _turns(frame: Any) -> int:
    """Quarter turns counter-clockwise (np.rot90's k) the frame's display matrix asks for."""
    rotation = round(float(getattr(frame, "rotation", 0) or 0) / 90.0)
    return rotation % 4


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


# What decord may be given: a container PyAV's restricted probe named, whose first bytes are
# that container's own. decord reopens the path with its bundled FFmpeg 4.1, which probes
# anew: a file that starts as an HLS playlist and goes on as raw H.264 (which the probe here
# takes as h264) would be a playlist to it, opening files outside the allowed roots.
_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "mov,mp4,m4a,3gp,3g2,mj2": lambda b: b[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"),
    "matroska,webm": lambda b: b[:4] == b"\x1a\x45\xdf\xa3",
    "avi": lambda b: b[:4] == b"RIFF" and b[8:12] == b"AVI ",
    "flv": lambda b: b[:3] == b"FLV",
    "ogg": lambda b: b[:4] == b"OggS",
    "mpegts": lambda b: len(b) > 376 and b[0] == b[188] == b[376] == 0x47,
    "mpeg": lambda b: b[:4] == b"\x00\x00\x01\xba",
    "asf": lambda b: b[:16] == bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"),
    "mxf": lambda b: b[:4] == b"\x06\x0e\x2b\x34",
    "ivf": lambda b: b[:4] == b"DKIF",
}


def _probe(path: Path, limits: Limits) -> tuple[tuple[int, int], int]:
    """For decord: the coded frame size and the quarter turns of the display matrix, by the
    restricted PyAV (its first frame decoded, within max_pixels), for a file that is a real
    container (_MAGIC)."""
    with open_container(path) as container:
        name = container.format.name
        with path.open("rb") as f:
            head = f.read(512)
        if name not in _MAGIC or not _MAGIC[name](head):
            raise PermanentError(
                f"decord is given containers only, not {name} data (use the pyav decoder)",
                NOT_A_VIDEO,
            )
        stream = video_stream(container)
        stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
        frame = next(container.decode(stream), None)
        if frame is None:
            raise PermanentError("the video stream holds no decodable frame", CORRUPT)
        return (int(frame.width), int(frame.height)), _turns(frame)


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


class Wanted:
    """Which kept frames to convert: those of chunks not in `done` (ChunkReader's rule), in
    a form a decoder in another process can be told (decode_process.py)."""

    def __init__(self, chunk_frames: int, done: Set[int]) -> None:
        self.chunk_frames, self.done = chunk_frames, frozenset(done)

    def __call__(self, k: int) -> bool:
        return k // self.chunk_frames not in self.done


class _Pending:
    """A chunk being filled: its frames' images copied into one (chunk_frames, h, w, 3)
    buffer as they come, so that a frame is copied once (np.stack of kept frames copied
    each twice) and, with `reuse`, into memory already mapped (no page faults: a fresh
    22 MB chunk costs some 5,400 of them)."""

    def __init__(self, index: int, size: int, buffer: np.ndarray | None) -> None:
        self.index, self.size, self.buffer = index, size, buffer
        self.indices: list[int] = []
        self.pts: list[float] = []
        self.images = 0  # frames whose image is in the buffer

    def add(self, frame: Frame) -> None:
        self.indices.append(frame.index)
        self.pts.append(frame.pts_s)
        image = frame.image
        if image is None:
            return
        if self.buffer is None or self.buffer.shape[1:] != image.shape:
            if self.images:  # decoders refuse such streams (PyAVDecoder.frames): a bug here
                raise RuntimeError(f"frame {frame.index} is {image.shape}, unlike the chunk's")
            self.buffer = np.empty((self.size, *image.shape), np.uint8)
        self.buffer[self.images] = image
        self.images += 1

    def chunk(self, source: tuple[int, int]) -> Chunk:
        buffer = self.buffer if self.buffer is not None else np.empty((0, 0, 0, 3), np.uint8)
        return Chunk(
            index=self.index,
            images=buffer[: self.images],
            frame_indices=np.array(self.indices, np.int64),
            pts_s=np.array(self.pts, np.float64),
            source_size=source,
        )


class ChunkReader:
    """The video's chunks in order, leaving out those in `done` (already checkpointed; their
    frames are not converted). Once iterated, `chunk_count` is the video's number of chunks,
    skipped ones included. With `reuse`, every chunk's images are one buffer, overwritten
    by the next chunk: for a caller that copies each chunk away before asking for the next
    (the pipeline, whose inference puts it in Ray's object store or runs on it at once)."""

    def __init__(
        self,
        decoder: Decoder,
        sampling: Sampling,
        chunk_frames: int,
        done: Set[int] = frozenset(),
        reuse: bool = False,
    ) -> None:
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        self.decoder, self.sampling, self.chunk_frames, self.done, self.reuse = (
            decoder,
            sampling,
            chunk_frames,
            done,
            reuse,
        )
        self.kept = 0  # frames kept by the sampling so far

    @property
    def chunk_count(self) -> int:
        return math.ceil(self.kept / self.chunk_frames)

    @property
    def expected_kept(self) -> int | None:
        """The frames the sampling will keep, as the container's frame count and rate
        promise (None when it does not say): an estimate, never used for correctness."""
        info, s = self.decoder.info, self.sampling
        if info.frames <= 0:
            return None
        kept = info.frames / s.stride
        if s.fps is not None and info.fps > 0:
            kept = info.frames * min(1.0, s.fps / info.fps)
        return max(1, math.ceil(kept))

    @property
    def expected_chunks(self) -> int | None:
        """The number of chunks expected_kept makes: for progress bars."""
        kept = self.expected_kept
        return None if kept is None else max(1, math.ceil(kept / self.chunk_frames))

    def __iter__(self) -> Iterator[Chunk]:
        size, done = self.chunk_frames, self.done
        source = (self.decoder.info.width, self.decoder.info.height)
        pending: _Pending | None = None
        for frame in self.decoder.frames(self.sampling, Wanted(size, done)):
            index = self.kept // size
            self.kept += 1
            if index in done:
                continue
            if pending is None or pending.index != index:
                buffer = None
                if pending is not None:
                    yield pending.chunk(source)
                    buffer = pending.buffer if self.reuse else None
                pending = _Pending(index, size, buffer)
            pending.add(frame)
        if pending is not None:
            yield pending.chunk(source)


def chunks(
    decoder: Decoder, sampling: Sampling, chunk_frames: int, done: Set[int] = frozenset()
) -> Iterator[Chunk]:
    """The video's chunks in order, leaving out those in `done`."""
    return iter(ChunkReader(decoder, sampling, chunk_frames, done))


def count_chunks(decoder: Decoder, sampling: Sampling, chunk_frames: int) -> int | None:
    """How many chunks the video has, when the decoder knows its timestamps up front."""
    kept = decoder.kept_count(sampling)
    return None if kept is None else math.ceil(kept / chunk_frames)


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(exc: BaseException) -> str:
    """The useful part of an error text (decord prefixes its C++ source locations)."""
    text = _DECORD_PREFIX.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
