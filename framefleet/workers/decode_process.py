"""Decoding in a child process whose memory is bounded: what a crafted file makes FFmpeg
allocate (an MP4 index claiming millions of samples, frames far larger than the header says,
an edit list replaying a track many times) ends the child, not the decode actor.

`ProcessDecoder` is a `Decoder` (decode.py) run in `python -m framefleet.workers.decode_process`
with an address-space limit (RLIMIT_AS, `FRAMEFLEET_DECODE_MEMORY_BYTES`) set by the child
before it imports anything. Both decoders, their fallback and the container's probe run
there. Protocol, over the child's stdin and stdout:

    parent -> child   one JSON line: path, decoder, threads, sampling, limits, memory
    child -> parent   b"I" + a JSON line: the video's info (or b"E" + JSON: refused)
    parent -> child   one JSON line: the chunks already done and the chunk size, or {}
    child -> parent   per kept frame: b"F" + (index, pts, h, w, offset), its h*w*3 bytes of
                      RGB at `offset` in the shared frame buffer (none when the frame is
                      skipped: h = w = 0); then b"D" (done), b"E" + JSON (the video's
                      error: reason, class) or b"X" + a traceback (a bug)
    parent -> child   b"A" once its caller has copied a frame out of the shared buffer
    parent -> child   "null" in place of the second line when no frames are wanted

and then the next video's first line: a child decodes one video after another (its start,
0.16 s of CPU, is not paid per video), and is killed once it failed on one or was left
in the middle of one.

The frames go through memory both processes map (a memfd of two frame slots that the child
sizes), not through the pipe: a 640x360 frame is 691 KB, which a pipe moves in eleven
64 KB pieces, each a system call and a switch between the processes. Measured on a 20 s
clip: 3.2 ms of CPU a frame through the pipe (0.8 of it in the kernel), 2.5 through the
shared buffer (0.13), against 1.9 decoding in the caller's process. The frame is handed to
the caller as a view of its slot, which ChunkReader copies into its chunk: one copy, as
in-process. The acks are the back-pressure: the child writes a slot only once the frame
in it was copied out, so it is at most two frames ahead and memory holds what the caller
keeps, as in-process.

A child that crashes (inside FFmpeg) is the video's error, with what it died of. One killed
(SIGKILL) may be the node's out-of-memory killer at this video's doing, or its worker being
killed with its process group (Ray ending the actors of a driver that died, a node going
away: found by the proof suite, where such a kill dead-lettered a good video): another try
says which, so it is retryable, and dead as over_limit after max_attempts.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import heap
from .decode import Frame, Limits, Sampling, VideoInfo, Wanted
from .errors import CORRUPT, OVER_LIMIT, PermanentError, TransientError

_FRAME = struct.Struct(">qdIIQ")  # index, pts s, height, width (0 x 0: not converted), offset
_MIB = 1 << 20
_SLOTS = 2  # frames the child may have in the shared buffer, not yet copied out


class _Child:
    """A decoder process, its shared frame buffer and its log (FFmpeg's messages). It
    decodes one video after another: starting one (Python, NumPy, PyAV) costs some 0.16 s of
    CPU, a cost per video that decoding in the actor does not have."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes, self.uses = memory_bytes, 0
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.frames_fd = os.memfd_create("framefleet-frames", os.MFD_CLOEXEC)
        self.map: mmap.mmap | None = None
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", **heap.ENV, "PYTHONUNBUFFERED": "1"}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "framefleet.workers.decode_process"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log,
                env=env,
                bufsize=0,
                pass_fds=(self.frames_fd,),
            )
        except BaseException:
            os.close(self.frames_fd)
            self.log.close()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.log.close()
        self.map = None  # unmapped once the last frame handed out is let go
        if self.frames_fd >= 0:
            os.close(self.frames_fd)
            self.frames_fd = -1


_USES = 100  # videos a child decodes before another takes its place
_idle: list[_Child] = []
_idle_lock = threading.Lock()
_busy = 0  # children decoding a video now
_most = 0  # the most that ever did at once: as many idle ones are kept


def _take(memory_bytes: int) -> tuple[_Child, bool]:
    """An idle child of this memory limit (and True), or a new one (and False)."""
    global _busy, _most
    with _idle_lock:
        _busy += 1
        _most = max(_most, _busy)
        while _idle:
            child = _idle.pop()
            if child.alive() and child.memory_bytes == memory_bytes:
                return child, True
            child.close()
    try:
        return _Child(memory_bytes), False
    except BaseException:
        _done()
        raise


def _done() -> None:
    global _busy
    with _idle_lock:
        _busy -= 1


def _give_back(child: _Child) -> None:
    """A child that finished its video cleanly: kept for the next one, or ended."""
    child.uses += 1
    with _idle_lock:
        if child.uses < _USES and child.alive() and len(_idle) < _most:
            _idle.append(child)
            return
    child.close()


@atexit.register
def _end_idle() -> None:
    with _idle_lock:
        while _idle:
            _idle.pop().close()


os.register_at_fork(after_in_child=_idle.clear)  # a forked process's children are not its own


class ProcessDecoder:
    """The preferred decoder (or its fallback) in a child process of bounded memory. The
    child is kept for the next video when this one ended cleanly (all its frames read, or
    none asked for); one that failed, crashed or was left mid-video is killed."""

    def __init__(
        self,
        path: Path,
        sampling: Sampling,
        prefer: str = "pyav",
        threads: int = 1,
        limits: Limits | None = None,
        memory_bytes: int = 4 << 30,
    ) -> None:
        self.memory_bytes = memory_bytes
        request = {
            "path": str(path),
            "prefer": prefer,
            "threads": threads,
            "sampling": asdict(sampling),
            "limits": asdict(limits or Limits()),
            "memory_bytes": memory_bytes,
        }
        while True:
            self._child, reused = _take(memory_bytes)
            self._state = "opening"  # then "open", "reading", "done"; "broken" or "died"
            try:
                self._send({**request, "frames_fd": self._child.frames_fd})
                kind = self._read(1)
                if kind != b"I":
                    self._fail(kind)
                info = json.loads(self._line())
                break
            except (PermanentError, TransientError):
                died = self._state == "died"
                self.close()
                if reused and died:
                    continue  # died before it answered, maybe while idle: a fresh one tries
                raise
            except BaseException:
                self.close()
                raise
        self._state = "open"
        self._kept: int | None = info.pop("kept")
        self.info = VideoInfo(**info)

    def kept_count(self, sampling: Sampling) -> int | None:
        return self._kept

    def frames(self, sampling: Sampling, want: Callable[[int], bool]) -> Iterator[Frame]:
        """The kept frames, from the child. `want` is a Wanted (told to the child) or any
        callable (then every kept frame is converted, and those not wanted dropped here).
        A frame's image is a read-only view of its slot in the shared buffer, acked (given
        back to the child) when the next frame is asked for: the child decodes the next
        frame into the other slot meanwhile."""
        self._state = "reading"
        if isinstance(want, Wanted):
            self._send({"chunk_frames": want.chunk_frames, "done": sorted(want.done)})
        else:
            self._send({})
        k = 0
        while True:
            kind = self._read(1)
            if kind == b"D":
                self._state = "done"
                return
            if kind != b"F":
                self._fail(kind)
            index, pts, height, width, offset = _FRAME.unpack(self._read(_FRAME.size))
            if not height:
                yield Frame(index, pts, None)
                k += 1
                continue
            n = height * width * 3
            shared = self._shared(offset + n)
            image = np.frombuffer(shared, np.uint8, n, offset).reshape(height, width, 3)
            yield Frame(index, pts, image if want(k) else None)
            del image  # the caller has copied it (Decoder.frames): its slot is the child's again
            self._ack()
            k += 1

    def close(self) -> None:
        """The child back to the idle ones when this video ended cleanly, else ended."""
        child, state = self._child, self._state
        self._state = "closed"
        if state == "open":  # no frames were asked for: the child is told so and waits
            with contextlib.suppress(BrokenPipeError):
                self._send(None)
            state = "done"
        if state == "closed":
            return
        _done()
        if state == "done":
            _give_back(child)
        else:
            child.close()

    # -- the shared frame buffer ---------------------------------------------------------

    def _shared(self, end: int) -> mmap.mmap:
        """The shared buffer, mapped again when the child has grown it past `end`."""
        child = self._child
        if child.map is None or len(child.map) < end:
            size = os.fstat(child.frames_fd).st_size
            if size < end:  # the child says a frame is where it has not sized the buffer
                raise RuntimeError(f"the decoder process sent a frame outside its buffer ({end})")
            # The old map is left to go with the last frame of it a caller still holds.
            child.map = mmap.mmap(child.frames_fd, size, access=mmap.ACCESS_READ)
        return child.map

    def _ack(self) -> None:
        stdin = self._child.proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):  # the child is gone: the next read says how
            stdin.write(b"A")

    # -- the pipe ------------------------------------------------------------------------

    def _send(self, message: dict[str, Any] | None) -> None:
        stdin = self._child.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
        except BrokenPipeError:
            self._fail(b"")

    def _read(self, n: int) -> bytes:
        buffer = bytearray(n)
        self._read_into(memoryview(buffer))
        return bytes(buffer)

    def _read_into(self, view: memoryview) -> None:
        out: IO[bytes] | None = self._child.proc.stdout
        assert out is not None
        got = 0
        while got < len(view):
            n = out.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                self._fail(b"")
            got += n

    def _line(self) -> bytes:
        out = self._child.proc.stdout
        assert out is not None
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = out.read(1)
            if not byte:
                self._fail(b"")
            line += byte
        return bytes(line)

    def _fail(self, kind: bytes) -> Any:
        """The child said why it stops (b"E", b"X"), or died (anything else)."""
        self._state = "broken"
        if kind == b"E":
            error = json.loads(self._line())
            raise PermanentError(error["reason"], error["cls"])
        if kind == b"X":
            raise RuntimeError(f"the decoder process failed: {self._line().decode().strip()}")
        self._state = "died"
        code = self._child.proc.wait()
        if code == -signal.SIGKILL:
            raise TransientError(self._death(code), OVER_LIMIT)
        raise PermanentError(self._death(code), CORRUPT)

    def _death(self, code: int) -> str:
        limit = f"{self.memory_bytes / _MIB:.0f} MiB (FRAMEFLEET_DECODE_MEMORY_BYTES)"
        if code == -signal.SIGKILL:
            return (
                "the decoder was killed (by the out-of-memory killer, or with its worker:"
                f" its own limit is {limit})"
            )
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log = self._child.log
        log.seek(max(0, log.seek(0, 2) - 2000))
        tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"the decoder crashed on this file ({how}; memory limit {limit}) {tail[0][:300]}"


# -- the child ------------------------------------------------------------------------------


def _child() -> None:
    """Videos one after another, each asked for by a request line, until stdin ends. A video
    that fails ends the child (its parent kills it anyway): memory that FFmpeg failed in is
    not trusted for the next."""
    import resource

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    slots: _Slots | None = None
    memory = 0

    def say(kind: bytes, body: dict[str, Any] | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        stdout.write(kind + text.replace("\n", " ").encode() + b"\n")
        stdout.flush()

    while line := stdin.readline():
        request = json.loads(line)
        if not memory:
            memory = int(request["memory_bytes"])
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            slots = _Slots(int(request["frames_fd"]), stdin)
        assert slots is not None
        try:
            _serve(request, stdin, stdout, say, slots)
            slots.settle()  # the acks of the last frames, sent after b"D"
        except PermanentError as exc:
            say(b"E", {"reason": exc.reason, "cls": exc.cls})
            return
        except MemoryError:
            reason = (
                f"decoding it needs more than {memory / _MIB:.0f} MiB"
                " (FRAMEFLEET_DECODE_MEMORY_BYTES)"
            )
            say(b"E", {"reason": reason, "cls": OVER_LIMIT})
            return
        except BrokenPipeError:  # the parent stopped reading (it closed the decoder)
            return
        except Exception:
            import traceback

            say(b"X", traceback.format_exc()[-2000:])
            return


def _serve(request: dict[str, Any], stdin: Any, stdout: Any, say: Any, shared: _Slots) -> None:
    from .decode import open_decoder

    sampling = Sampling(**request["sampling"])
    limits = Limits(**request["limits"])
    decoder = open_decoder(
        Path(request["path"]), sampling, request["prefer"], int(request["threads"]), limits
    )
    try:
        info = asdict(decoder.info)
        info["kept"] = decoder.kept_count(sampling)
        say(b"I", info)
        ask = json.loads(stdin.readline() or "null")
        if ask is None:
            return
        size, done = int(ask.get("chunk_frames", 1)), frozenset(ask.get("done", ()))
        for frame in decoder.frames(sampling, lambda k: k // size not in done):
            image = frame.image
            if image is None:
                stdout.write(b"F" + _FRAME.pack(frame.index, frame.pts_s, 0, 0, 0))
                continue
            h, w = image.shape[:2]
            offset = shared.put(np.ascontiguousarray(image))
            stdout.write(b"F" + _FRAME.pack(frame.index, frame.pts_s, h, w, offset))
            stdout.flush()
        stdout.write(b"D")
        stdout.flush()
    finally:
        decoder.close()


class _Slots:
    """The child's side of the shared frame buffer: _SLOTS slots of the largest frame so far
    (of this video or an earlier one). A slot is written only once the parent has acked the
    frame that was in it."""

    def __init__(self, fd: int, acks: Any) -> None:
        self.fd, self.acks = fd, acks
        self.map: mmap.mmap | None = None
        self.slot = 0  # bytes a slot
        self.sent = 0  # frames put
        self.out = 0  # frames put and not yet acked

    def put(self, image: np.ndarray) -> int:
        n = image.nbytes
        if n > self.slot:  # a larger frame: every slot free first, then the buffer grown
            self._wait(self.out)
            if self.map is not None:
                self.map.close()
            self.map = None
            try:
                os.ftruncate(self.fd, _SLOTS * n)
                self.map = mmap.mmap(self.fd, _SLOTS * n)
            except OSError as exc:  # past the address-space limit: the video's, as over_limit
                raise MemoryError(f"{_SLOTS} frames of {n} bytes: {exc}") from exc
            self.slot = n
        if self.out >= _SLOTS:
            self._wait(self.out - _SLOTS + 1)
        assert self.map is not None
        offset = (self.sent % _SLOTS) * self.slot
        self.map[offset : offset + n] = image.data.cast("B")
        self.sent += 1
        self.out += 1
        return offset

    def settle(self) -> None:
        """Every frame put acked: the parent has read them all, and the next request line
        comes after the acks."""
        self._wait(self.out)

    def _wait(self, acks: int) -> None:
        for _ in range(acks):
            if self.acks.read(1) != b"A":
                raise BrokenPipeError("the parent stopped reading")
            self.out -= 1


if __name__ == "__main__":
    _child()
