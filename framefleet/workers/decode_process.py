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
    child -> parent   per kept frame: b"F" + (index, pts, h, w) + h*w*3 bytes of RGB (none
                      when the frame is skipped); then b"D" (done), b"E" + JSON (the video's
                      error: reason, class) or b"X" + a traceback (a bug)

The pipe is the back-pressure: the child decodes a frame only when the last one was read,
so memory holds what the caller keeps, as in-process. A child that crashes (inside FFmpeg)
is the video's error, with what it died of. One killed (SIGKILL) may be the node's
out-of-memory killer at this video's doing, or its worker being killed with its process
group (Ray ending the actors of a driver that died, a node going away: found by the proof
suite, where such a kill dead-lettered a good video): another try says which, so it is
retryable, and dead as over_limit after max_attempts.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np

from .decode import Frame, Limits, Sampling, VideoInfo, Wanted
from .errors import CORRUPT, OVER_LIMIT, PermanentError, TransientError

_FRAME = struct.Struct(">qdII")  # index, pts seconds, height, width (0 x 0: not converted)
_MIB = 1 << 20


class ProcessDecoder:
    """The preferred decoder (or its fallback) in a child process of bounded memory."""

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
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (FFmpeg's messages, closed in close())
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet.workers.decode_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            bufsize=0,
        )
        request = {
            "path": str(path),
            "prefer": prefer,
            "threads": threads,
            "sampling": asdict(sampling),
            "limits": asdict(limits or Limits()),
            "memory_bytes": memory_bytes,
        }
        try:
            self._send(request)
            kind = self._read(1)
            if kind != b"I":
                self._fail(kind)
            info = json.loads(self._line())
        except BaseException:
            self.close()
            raise
        self._kept: int | None = info.pop("kept")
        self.info = VideoInfo(**info)

    def kept_count(self, sampling: Sampling) -> int | None:
        return self._kept

    def frames(self, sampling: Sampling, want: Callable[[int], bool]) -> Iterator[Frame]:
        """The kept frames, from the child. `want` is a Wanted (told to the child) or any
        callable (then every kept frame is converted, and those not wanted dropped here)."""
        if isinstance(want, Wanted):
            self._send({"chunk_frames": want.chunk_frames, "done": sorted(want.done)})
        else:
            self._send({})
        k = 0
        while True:
            kind = self._read(1)
            if kind == b"D":
                return
            if kind != b"F":
                self._fail(kind)
            index, pts, height, width = _FRAME.unpack(self._read(_FRAME.size))
            image = None
            if height:
                image = np.empty((height, width, 3), np.uint8)
                self._read_into(memoryview(image.data).cast("B"))
            yield Frame(index, pts, image if want(k) else None)
            k += 1

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()

    # -- the pipe ------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
        except BrokenPipeError:
            self._fail(b"")

    def _read(self, n: int) -> bytes:
        buffer = bytearray(n)
        self._read_into(memoryview(buffer))
        return bytes(buffer)

    def _read_into(self, view: memoryview) -> None:
        out: IO[bytes] | None = self._proc.stdout
        assert out is not None
        got = 0
        while got < len(view):
            n = out.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                self._fail(b"")
            got += n

    def _line(self) -> bytes:
        out = self._proc.stdout
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
        if kind == b"E":
            error = json.loads(self._line())
            raise PermanentError(error["reason"], error["cls"])
        if kind == b"X":
            raise RuntimeError(f"the decoder process failed: {self._line().decode().strip()}")
        code = self._proc.wait()
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
        self._log.seek(max(0, self._log.seek(0, 2) - 2000))
        tail = self._log.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"the decoder crashed on this file ({how}; memory limit {limit}) {tail[0][:300]}"


# -- the child ------------------------------------------------------------------------------


def _child() -> None:
    import resource

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    request = json.loads(stdin.readline())
    memory = int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    def say(kind: bytes, body: dict[str, Any] | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        stdout.write(kind + text.replace("\n", " ").encode() + b"\n")
        stdout.flush()

    try:
        _serve(request, stdin, stdout, say)
    except PermanentError as exc:
        say(b"E", {"reason": exc.reason, "cls": exc.cls})
    except MemoryError:
        reason = (
            f"decoding it needs more than {memory / _MIB:.0f} MiB (FRAMEFLEET_DECODE_MEMORY_BYTES)"
        )
        say(b"E", {"reason": reason, "cls": OVER_LIMIT})
    except BrokenPipeError:  # the parent stopped reading (it closed the decoder)
        pass
    except Exception:
        import traceback

        say(b"X", traceback.format_exc()[-2000:])


def _serve(request: dict[str, Any], stdin: Any, stdout: Any, say: Any) -> None:
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
            h, w = (0, 0) if image is None else image.shape[:2]
            stdout.write(b"F" + _FRAME.pack(frame.index, frame.pts_s, h, w))
            if image is not None:
                stdout.write(np.ascontiguousarray(image).data)
        stdout.write(b"D")
        stdout.flush()
    finally:
        decoder.close()


if __name__ == "__main__":
    _child()
