"""Sources: from an item's URI to a local file the decoder can open.

- a local path or `file://` URI is read in place, and only under `allowed_roots` (after
  resolving symlinks), so no API caller can make a worker read an arbitrary file;
- `s3://bucket/key` goes through boto3 (standard AWS credentials and config, and
  `s3_endpoint_url` for MinIO-style stores);
- `http(s)://` through the standard library.

Remote videos are streamed to a temporary file with a size limit; the file is removed when
the `fetched()` block ends, whatever happens. A missing object, a 403 or a file over the
limit is a PermanentError; timeouts, throttling and 5xx are tried again (tenacity) and then
raised as a TransientError.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from framefleet.settings import SourceSettings

from .errors import PermanentError, TransientError

_CHUNK = 1 << 20
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}
_PERMANENT_S3 = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "403", "404", "InvalidObjectState",
                 "AllAccessDisabled", "InvalidBucketName"}  # fmt: skip


@contextlib.contextmanager
def fetched(uri: str, settings: SourceSettings) -> Iterator[Path]:
    """A local file holding the video at `uri`, for the duration of the block."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        yield local_path(uri, settings)
        return
    if parsed.scheme not in ("s3", "http", "https"):
        raise PermanentError(f"unsupported uri scheme {parsed.scheme!r}: {uri}")
    tmp_dir = settings.tmp_dir
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="framefleet-", suffix=_suffix(parsed.path), dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            _with_retries(settings, lambda: _download(uri, out, settings))
        yield path
    finally:
        path.unlink(missing_ok=True)


def _suffix(path: str) -> str:
    suffix = Path(path).suffix
    return suffix if suffix.isascii() and len(suffix) <= 8 else ""


def local_path(uri: str, settings: SourceSettings) -> Path:
    """The checked local path of a `/path` or `file:///path` URI."""
    raw = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
    path = Path(raw)
    if not path.is_absolute():
        raise PermanentError(f"local paths must be absolute: {uri}")
    resolved = path.resolve()
    roots = [root.resolve() for root in settings.allowed_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(map(str, roots)) or "none configured (FRAMEFLEET_ALLOWED_ROOTS)"
        raise PermanentError(f"{path} is outside the allowed roots ({allowed})")
    if not resolved.exists():
        raise PermanentError(f"no such file: {path}")
    if not resolved.is_file():
        raise PermanentError(f"not a regular file: {path}")
    size = resolved.stat().st_size
    if size > settings.max_video_bytes:
        raise PermanentError(
            f"{path} is {size} bytes, over the limit of {settings.max_video_bytes}"
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


def _download(uri: str, out: IO[bytes], settings: SourceSettings) -> None:
    out.seek(0)
    out.truncate()
    if uri.startswith("s3://"):
        _download_s3(uri, out, settings)
    else:
        _download_http(uri, out, settings)


def _copy_limited(body: Any, out: IO[bytes], limit: int, uri: str) -> None:
    total = 0
    while chunk := body.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise PermanentError(f"{uri} is larger than the limit of {limit} bytes")
        out.write(chunk)
    out.flush()


# -- http(s) -----------------------------------------------------------------------------------


def _download_http(uri: str, out: IO[bytes], settings: SourceSettings) -> None:
    request = urllib.request.Request(uri, headers={"User-Agent": "framefleet"})
    try:
        with urllib.request.urlopen(request, timeout=settings.fetch_timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > settings.max_video_bytes:
                raise PermanentError(f"{uri} is {length} bytes, over the limit")
            _copy_limited(response, out, settings.max_video_bytes, uri)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response open
        if exc.code in _PERMANENT_HTTP:
            raise PermanentError(f"{uri}: HTTP {exc.code} {exc.reason}") from None
        raise TransientError(f"{uri}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"{uri}: {reason}") from None


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
        raise PermanentError(f"not an s3://bucket/key uri: {uri}")
    return parsed.netloc, key


def _download_s3(uri: str, out: IO[bytes], settings: SourceSettings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        obj = s3_client(settings).get_object(Bucket=bucket, Key=key)
        if obj.get("ContentLength", 0) > settings.max_video_bytes:
            raise PermanentError(f"{uri} is {obj['ContentLength']} bytes, over the limit")
        with contextlib.closing(obj["Body"]) as body:
            _copy_limited(body, out, settings.max_video_bytes, uri)
    except ClientError as exc:
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
        return PermanentError(message)
    return TransientError(message)
