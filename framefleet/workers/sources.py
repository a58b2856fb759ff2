"""Sources: from an item's URI to a local file the decoder can open.

- a local path or `file://` URI is read in place, and only under `allowed_roots` (after
  resolving symlinks), so no API caller can make a worker read an arbitrary file;
- `s3://bucket/key` goes through boto3 (standard AWS credentials and config, and
  `s3_endpoint_url` for MinIO-style stores);
- `http(s)://` through the standard library, to public addresses only unless allowed
  (netpolicy.py; every redirect checked too).

Remote videos are streamed to a temporary file with a size limit; the file is removed when
the `fetched()` block ends, whatever happens. Each fetch says what it got (`Fetched.pin`): S3's
ETag, an HTTP server's ETag (or, when it sends none, a digest of the body), a local file's
size, mtime and inode; the pipeline keeps it with the item's first checkpoint, so that a later
attempt that finds another object there never resumes from the first one's chunks. A missing
object, a 403 or a file over the limit is a PermanentError; timeouts, throttling and 5xx are
tried again (tenacity) and then raised as a TransientError.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import unquote, urljoin, urlparse, urlsplit

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from framefleet.netpolicy import PinnedHTTP, PinnedHTTPS, URLRefused, check_url
from framefleet.queue.model import MAX_ETAG_BYTES
from framefleet.settings import SourceSettings

from .errors import (
    BAD_URI,
    CHANGED,
    FORBIDDEN,
    NOT_FOUND,
    TOO_BIG,
    InfraError,
    PermanentError,
    TransientError,
)

_CHUNK = 1 << 20
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}
_PERMANENT_S3 = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "403", "404", "InvalidObjectState",
                 "AllAccessDisabled", "InvalidBucketName"}  # fmt: skip


Touch = Callable[[], None]


class Fetched(NamedTuple):
    """A fetched video: the local file, and what tells this object from another one at the
    same URI (its pin: S3's ETag, an HTTP ETag or `sha256:` digest, a local `file:` stat)."""

    path: Path
    pin: str


@contextlib.contextmanager
def fetched(
    uri: str, settings: SourceSettings, *, etag: str | None = None, touch: Touch | None = None
) -> Iterator[Fetched]:
    """A local file holding the video at `uri`, for the duration of the block, with its pin.
    With `etag`, a remote object that changed since (another etag) is refused (`changed`).
    `touch` is called as bytes come in. The whole download has a deadline
    (fetch_deadline_s), besides the per-read timeout."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = local_path(uri, settings)
        yield Fetched(path, local_pin(path))
        return
    if parsed.scheme not in ("s3", "http", "https"):
        raise PermanentError(f"unsupported uri scheme {parsed.scheme!r}: {uri}", BAD_URI)
    tmp_dir = settings.tmp_dir
    try:
        if tmp_dir is not None:
            tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="framefleet-", suffix=_suffix(parsed.path), dir=tmp_dir)
    except OSError as exc:
        raise InfraError(f"no temporary file for {uri}: {exc.strerror or exc}") from None
    path = Path(name)
    got = _Download(uri, settings, etag, touch or (lambda: None), path)
    try:
        with os.fdopen(fd, "wb") as out:
            _with_retries(settings, lambda: got.into(out))
        got.release()  # the file itself counts in the free space from now on
        yield Fetched(path, got.pin)
    finally:
        got.release()
        path.unlink(missing_ok=True)


def _suffix(path: str) -> str:
    suffix = Path(path).suffix
    return suffix if suffix.isascii() and len(suffix) <= 8 else ""


def local_pin(path: Path) -> str:
    """A local file's identity: another file renamed over it, or the same one written
    again, has another pin."""
    try:
        st = path.stat()
    except OSError as exc:
        raise PermanentError(f"cannot read {path}: {exc.strerror or exc}", NOT_FOUND) from None
    return f"file:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _etag_pin(value: str | None) -> str | None:
    """An ETag as a pin, when it is one that fits (printable, not too long)."""
    # a pin is kept in the item's hash as an etag is: within the same bound
    if value and len(value) <= MAX_ETAG_BYTES and value.isascii() and value.isprintable():
        return value
    return None


def local_path(uri: str, settings: SourceSettings) -> Path:
    """The checked local path of a `/path` or `file:///path` URI."""
    raw = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
    path = Path(raw)
    if not path.is_absolute():
        raise PermanentError(f"local paths must be absolute: {uri}", BAD_URI)
    try:
        resolved = path.resolve()
        roots = [root.resolve() for root in settings.allowed_roots]
        if not any(resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(map(str, roots)) or "none configured (FRAMEFLEET_ALLOWED_ROOTS)"
            raise PermanentError(f"{path} is outside the allowed roots ({allowed})", FORBIDDEN)
        if not resolved.exists():
            raise PermanentError(f"no such file: {path}", NOT_FOUND)
        if not resolved.is_file():
            raise PermanentError(f"not a regular file: {path}", NOT_FOUND)
        size = resolved.stat().st_size
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop (RuntimeError
        # before Python 3.13), a component that is not a directory
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PermanentError(f"cannot read {str(path)[:300]}: {text}", NOT_FOUND) from None
    if size > settings.max_video_bytes:
        raise PermanentError(
            f"{path} is {size} bytes, over the limit of {settings.max_video_bytes}", TOO_BIG
        )
    return resolved


def _with_retries(settings: SourceSettings, fn: Callable[[], None]) -> None:
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(settings.fetch_attempts),
        wait=wait_exponential(multiplier=settings.fetch_backoff_s, max=30),
        reraise=True,
    )
    retrying(fn)


_reserved = 0  # bytes of temporary space that downloads in this process have announced
_reserving = threading.Lock()


class _Download:
    """One remote object into a temporary file: the attempts share one deadline, and the
    space its announced length needs is reserved before its first byte is written."""

    def __init__(
        self, uri: str, settings: SourceSettings, etag: str | None, touch: Touch, path: Path
    ) -> None:
        self.uri, self.settings, self.etag, self.touch, self.path = uri, settings, etag, touch, path
        self.deadline = time.monotonic() + settings.fetch_deadline_s
        self.reserved = 0
        self.expired = False
        self.pin = ""  # set by each attempt: the ETag, or else the body's digest (`digest`)
        self.digest: Any = None
        self._sockets: list[socket.socket] = []
        self._watching = threading.Lock()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        """A connection of this download: shut down when the deadline passes, whatever it
        waits for then (the connection, the TLS handshake, a status line, headers or a
        chunk's size line dribbled one byte a read timeout)."""
        with self._watching:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._watching:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def _too_long(self) -> TransientError:
        return TransientError(
            f"{self.uri}: the download took longer than {self.settings.fetch_deadline_s:g} s"
            " (fetch_deadline_s)"
        )

    def reserve(self, length: int) -> None:
        """The object is `length` bytes: refused (InfraError: this node's trouble) when the
        temporary file system has less free space, besides what other downloads of this
        process have reserved."""
        global _reserved
        with _reserving:
            _reserved -= self.reserved
            self.reserved = 0
            disk = shutil.disk_usage(self.path.parent)
            free = disk.free - _reserved
            if length > free:
                # more than the space free even with every framefleet download on this node
                # gone: it fails the same on every node like this one, so it is counted (and
                # dies too_big after a bound); short of room only because of the others, it
                # is merely released
                ours = _temporary_bytes(self.path.parent)
                raise InfraError(
                    f"{self.uri}: {length} bytes, but only {max(free, 0)} bytes of temporary"
                    f" space free in {self.path.parent} (FRAMEFLEET_TMP_DIR)",
                    TOO_BIG if length > disk.free + ours else "",
                )
            _reserved += length
            self.reserved = length

    def release(self) -> None:
        global _reserved
        with _reserving:
            _reserved -= self.reserved
            self.reserved = 0

    def into(self, out: IO[bytes]) -> None:
        out.seek(0)
        out.truncate()
        self.pin, self.digest = "", None
        if self.uri.startswith("s3://"):
            _download_s3(self, out)
            return
        if self.left() <= 0:
            raise self._too_long()
        watchdog = threading.Timer(self.left(), self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            _download_http(self, out)
            if self.expired:  # cut off at the deadline: what came is not the whole video
                raise self._too_long()
        except (TransientError, OSError, http.client.HTTPException):
            if self.expired:
                raise self._too_long() from None
            raise
        finally:
            watchdog.cancel()
            with self._watching:
                self._sockets.clear()

    def copy(self, body: Any, out: IO[bytes]) -> int:
        """From a response body, within the size limit and the deadline: the bytes copied.
        Each read returns what came (read1), so the deadline is checked between reads
        however slowly the bytes come."""
        limit, total = self.settings.max_video_bytes, 0
        read = getattr(body, "read1", body.read)  # read1: what came, so each recv is checked
        while chunk := read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise PermanentError(
                    f"{self.uri} is larger than the limit of {limit} bytes", TOO_BIG
                )
            if time.monotonic() > self.deadline:
                raise TransientError(
                    f"{self.uri}: the download took longer than"
                    f" {self.settings.fetch_deadline_s:g} s (fetch_deadline_s), {total} bytes in"
                )
            _write(out, chunk, self.uri)
            if self.digest is not None:
                self.digest.update(chunk)
            self.touch()
        if getattr(body, "length", None):  # http.client's bytes still due: the server hung up
            raise TransientError(f"{self.uri}: the connection closed {body.length} bytes early")
        _write(out, b"", self.uri)
        if self.digest is not None:
            self.pin = "sha256:" + self.digest.hexdigest()
        return total


def _temporary_bytes(directory: Path) -> int:
    """What framefleet's downloads hold in `directory` now, every process's on this node."""
    total = 0
    for path in directory.glob("framefleet-*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _shut(sock: socket.socket) -> None:
    """Ends a blocked recv in another thread at once (close() alone does not, on Linux):
    the file descriptor's shutdown, also under a TLS socket, whose own shutdown() would
    tear down its SSL object while the other thread uses it."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _write(out: IO[bytes], data: bytes, uri: str) -> None:
    """Into the temporary file: a full or failing disk is the node's trouble."""
    try:
        if data:
            out.write(data)
        else:
            out.flush()
    except OSError as exc:
        raise InfraError(f"fetching {uri}: {exc.strerror or exc} (temporary files)") from None


# -- http(s) -----------------------------------------------------------------------------------


_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def _download_http(got: _Download, out: IO[bytes]) -> None:
    """GET with the network policy checked for every hop (netpolicy.check_url), each
    connection made to the address that was checked, redirects followed by hand."""
    url = got.uri
    for hop in range(MAX_REDIRECTS + 1):
        try:
            targets = check_url(url, got.settings.allow_private_urls)
        except URLRefused as exc:
            reason = exc.reason if hop == 0 else f"{got.uri}: a redirect to {exc.reason}"
            if exc.temporary:
                raise TransientError(reason) from None
            raise PermanentError(reason, exc.cls) from None
        conn, response = _get(url, targets, got)
        try:
            if response.status in _REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location", ""))
                continue
            _check_status(got.uri, response)
            length = response.getheader("Content-Length")
            if length and length.isdigit():
                if int(length) > got.settings.max_video_bytes:
                    raise PermanentError(f"{got.uri} is {length} bytes, over the limit", TOO_BIG)
                got.reserve(int(length))
            got.pin = _etag_pin(response.getheader("ETag")) or ""
            if not got.pin:  # nothing else tells this body from the next one at the URL
                got.digest = hashlib.sha256()
            try:
                got.copy(response, out)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                if isinstance(exc, InfraError):
                    raise
                raise TransientError(f"{got.uri}: {exc}") from None
            return
        finally:
            response.close()
            conn.close()
    raise PermanentError(f"{got.uri}: more than {MAX_REDIRECTS} redirects", BAD_URI)


def _get(url: str, targets: list[tuple[Any, int]], got: _Download) -> tuple[Any, Any]:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"User-Agent": "framefleet", "Host": parts.netloc.rpartition("@")[2]}
    if got.etag:
        headers["If-Match"] = got.etag
    timeout = got.settings.fetch_timeout_s
    error: Exception | None = None
    for address, port in targets:
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(str(parts.hostname), port, address=str(address), timeout=timeout, got=got)
        try:
            conn.request("GET", path, headers=headers)
            return conn, conn.getresponse()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            conn.close()
            error = exc
    raise TransientError(f"{url}: {error}")


def _check_status(uri: str, response: Any) -> None:
    code, reason = int(response.status), str(response.reason)
    if code < 400:
        return
    if code == 412:
        raise PermanentError(f"{uri} changed since it was enqueued (etag)", CHANGED)
    if code in _PERMANENT_HTTP:
        cls = NOT_FOUND if code in (404, 410) else FORBIDDEN
        raise PermanentError(f"{uri}: HTTP {code} {reason}", cls)
    raise TransientError(f"{uri}: HTTP {code} {reason}")


def _connect(
    address: str, port: int, timeout: float, got: _Download, watch: bool = True
) -> socket.socket:
    """A connection to the checked address, watched by the download's deadline (`watch`:
    TLS watches the socket it wraps this one in, since wrapping detaches this one)."""
    wait = max(0.001, min(timeout, got.left()))
    sock = socket.create_connection((address, port), wait)
    sock.settimeout(timeout)
    if watch:
        got.watch(sock)
    return sock


class _PinnedHTTP(PinnedHTTP):
    """netpolicy's pinned connection, its socket under the download's deadline."""

    def __init__(
        self, host: str, port: int, *, address: str, timeout: float, got: _Download
    ) -> None:
        super().__init__(host, port, address=address, timeout=timeout)
        self.got = got

    def open_socket(self) -> socket.socket:
        return _connect(self.address, self.port, float(self.timeout), self.got)  # type: ignore[arg-type]


class _PinnedHTTPS(PinnedHTTPS):
    """The same over TLS, the deadline watching the handshake too (a server may dribble it)."""

    def __init__(
        self, host: str, port: int, *, address: str, timeout: float, got: _Download
    ) -> None:
        super().__init__(host, port, address=address, timeout=timeout)
        self.got = got

    def open_socket(self) -> socket.socket:
        return _connect(self.address, self.port, float(self.timeout), self.got, watch=False)  # type: ignore[arg-type]

    def before_handshake(self, tls: ssl.SSLSocket) -> None:
        self.got.watch(tls)


# -- s3 ------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None, timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},  # tenacity retries, not botocore
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def s3_client(settings: SourceSettings) -> Any:
    return _s3_client(settings.s3_endpoint_url, settings.fetch_timeout_s)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise PermanentError(f"not an s3://bucket/key uri: {uri}", BAD_URI)
    return parsed.netloc, key


def _download_s3(got: _Download, out: IO[bytes]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    uri, settings = got.uri, got.settings
    bucket, key = split_s3(uri)
    match = {"IfMatch": got.etag} if got.etag else {}
    try:
        obj = s3_client(settings).get_object(Bucket=bucket, Key=key, **match)
        with contextlib.closing(obj["Body"]) as body:
            length = int(obj.get("ContentLength", 0))
            if length > settings.max_video_bytes:
                raise PermanentError(f"{uri} is {length} bytes, over the limit", TOO_BIG)
            got.reserve(length)
            got.pin = _etag_pin(obj.get("ETag")) or ""
            if not got.pin:
                got.digest = hashlib.sha256()
            # botocore's body reads until it has all it was asked for: its urllib3 response
            # answers with what came (read1), and the length is checked here instead
            copied = got.copy(getattr(body, "_raw_stream", body), out)
            if copied != length:
                raise TransientError(f"{uri}: {copied} of {length} bytes came")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            raise PermanentError(
                f"{uri} changed since it was enqueued (etag {got.etag} no longer matches)",
                CHANGED,
            ) from None
        raise s3_error(uri, exc) from None
    except BotoCoreError as exc:  # connection errors, timeouts, incomplete reads
        raise TransientError(f"{uri}: {exc}") from None


def s3_error(uri: str, exc: Any) -> PermanentError | TransientError:
    """Classify a botocore ClientError: missing or forbidden is permanent, the rest not."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    message = f"{uri}: S3 {code or status} {error.get('Message', '')}".rstrip()
    if code in _PERMANENT_S3 or status in _PERMANENT_HTTP:
        missing = code in ("NoSuchKey", "NoSuchBucket", "404") or status == 404
        return PermanentError(message, NOT_FOUND if missing else FORBIDDEN)
    return TransientError(message)
