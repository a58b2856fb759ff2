"""Outputs: per-chunk parquet files at deterministic keys, then one file per video.

Under a local directory or `s3://bucket/prefix`, for each version of an item's outputs
(`output_version`: the configuration's hash, the source's etag, the item's revision):

    <item_id>/<version>/chunk-<k>.parquet   one per chunk, written by the inference actors
    <item_id>/<version>/detections.parquet  the whole video, when every chunk is there,
                                            with the video's URI as its first column
    <item_id>/<version>/_manifest.json      written last: the video is complete

and, beside them, the root's index of finished videos and its dataset of current detections
(`_index/`, `_dataset/`: workers/results.py).

so that outputs of another configuration, another version of the source, or of a run
superseded by an enqueue with force, never mix.

Every write is atomic (a temp file, fsync, rename locally; a single PUT on S3, or a
multipart upload for the merged file) and rewriting a key that exists is a no-op, so a
redelivered video never produces a half-written or doubled output. The merge streams: one
batch of chunks at a time into a temporary file, whatever the video's length. Item ids that
are not plain file names are percent-encoded.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from framefleet.settings import SourceSettings

from .errors import OUTPUT_FAILED, InfraError, TransientError
from .sources import s3_client, s3_error, split_s3

log = logging.getLogger(__name__)

BASE_FIELDS = [("video_id", pa.string()), ("frame_index", pa.int64()), ("pts_s", pa.float64())]
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")
DETECTIONS = "detections.parquet"
MANIFEST = "_manifest.json"


_MAX_NAME = 200  # bytes of a path component, well within every file system's 255
# The merge holds at most about this many bytes of chunk tables at once (one row group)...
MERGE_BATCH_BYTES = 64 << 20
# ...and uploads a merged file over this size to S3 in parts of this size (a single PUT
# stops at 5 GB; a multipart upload goes to 5 TB)
MULTIPART_BYTES = 64 << 20


def item_dir(item_id: str) -> str:
    """The path component of an item: its id when that is a plain file name, else its id
    percent-encoded; one that would be longer than _MAX_NAME bytes keeps a readable start
    and ends with a hash of the whole id (an id of 200 bytes encodes to up to 600). Never
    starting with `.` or `_`: those are the root's own (`_index`, `_dataset`, `.framefleet`)
    and what dataset readers (pyarrow, pandas) leave out."""
    if _SAFE_ID.fullmatch(item_id) and item_id[0] not in "._":
        return item_id
    name = quote(item_id, safe="").replace(".", "%2E")
    if name.startswith("_"):
        name = "%5F" + name[1:]
    if len(name) <= _MAX_NAME:
        return name
    head = name[: _MAX_NAME - 40]
    head = head[: head.rfind("%")] if "%" in head[-2:] else head  # no cut escape
    return f"{head}~{hashlib.sha1(item_id.encode()).hexdigest()}"


def chunk_name(index: int) -> str:
    return f"chunk-{index}.parquet"


def records_table(
    item_id: str,
    model: str,
    schema: pa.Schema,
    records: Sequence[Mapping[str, Any]],
    frame_indices: np.ndarray,
    pts_s: np.ndarray,
) -> pa.Table:
    """The rows of one chunk: video_id, frame_index, pts_s, the model's fields, model."""
    frames = [int(r["frame"]) for r in records]
    columns: dict[str, Any] = {
        "video_id": pa.array([item_id] * len(records), pa.string()),
        "frame_index": pa.array(frame_indices[frames] if frames else [], pa.int64()),
        "pts_s": pa.array(pts_s[frames] if frames else [], pa.float64()),
    }
    for field in schema:
        columns[field.name] = pa.array([r[field.name] for r in records], field.type)
    columns["model"] = pa.array([model] * len(records), pa.string())
    return pa.table(columns)


def table_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of a chunk's rows."""
    return pa.schema([*BASE_FIELDS, *schema, ("model", pa.string())])


def merged_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of a video's detections.parquet: a chunk's, after the video's URI."""
    return pa.schema([("uri", pa.string()), *table_schema(schema)])


def with_uri(table: pa.Table, uri: str | None) -> pa.Table:
    """A chunk's rows with the video's URI as their first column."""
    if "uri" in table.column_names:
        return table
    return table.add_column(0, "uri", pa.array([uri] * table.num_rows, pa.string()))


def label_counts(table: pa.Table) -> dict[str, int]:
    """Detections per label of a table with a `label` column (none: {})."""
    if "label" not in table.column_names or not table.num_rows:
        return {}
    counts = pc.value_counts(table["label"]).to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in counts}


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as a zstd-compressed parquet file's bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def warm_up(schema: pa.Schema) -> None:
    """Build, write and read back a one-row table in memory, so that the lazy imports these
    steps make the first time (pandas through pyarrow, the parquet reader's dataset module:
    over a second on a busy core) happen before a worker reports ready, not on its first
    chunk."""
    row: dict[str, Any] = {"frame": 0}
    for field in schema:
        row[field.name] = pa.array([None], field.type)[0].as_py()
    table = records_table("warm-up", "warm-up", schema, [row], np.zeros(1, np.int64), np.zeros(1))
    pq.read_table(io.BytesIO(parquet_bytes(table)))


class OutputStore:
    """A local directory or an s3://bucket/prefix holding the outputs of every item."""

    def __init__(self, base: str, source: SourceSettings) -> None:
        self.base = base.rstrip("/")
        self.source = source
        self.is_s3 = self.base.startswith("s3://")
        self._conditional_puts = True  # If-None-Match: *, until the store says 501
        if self.is_s3:
            self.bucket, self.prefix = split_s3(self.base + "/")[0], self.base[5:].partition("/")[2]
        else:
            self.root = Path(self.base.removeprefix("file://")).absolute()

    def uri(self, key: str) -> str:
        return f"{self.base}/{key}" if self.is_s3 else str(self.root / key)

    # -- bytes -------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether the key is there. Errors of the store are the infrastructure's
        (InfraError): the item goes back to the queue, uncharged."""
        if not self.is_s3:
            try:
                return (self.root / key).is_file()
            except OSError as exc:
                raise InfraError(f"{self.uri(key)}: {exc.strerror or exc}") from None
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3_client(self.source).head_object(Bucket=self.bucket, Key=self._s3_key(key))
            return True
        except ClientError as exc:
            # 403: what S3 answers for a missing key to a role without s3:ListBucket
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (403, 404):
                return False
            raise _store_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise InfraError(f"{self.uri(key)}: {exc}") from None

    def put(self, key: str, data: bytes, *, if_absent: bool = True, checked: bool = False) -> bool:
        """Write `key` atomically; with `if_absent` (the default) only if it does not exist,
        the first write winning even between writers that both found it missing (S3's
        `If-None-Match: *`, a hard link locally). `checked`: the caller has just looked, so
        no look first. True when this call wrote it."""
        if if_absent and not checked and self.exists(key):  # without writing anything
            return False
        if self.is_s3:
            return self._put_s3(key, data, if_absent)
        try:
            return _atomic_write(self.root / key, data, if_absent)
        except OSError as exc:  # a full or read-only disk: the store's trouble
            raise InfraError(f"{self.uri(key)}: {exc.strerror or exc}") from None

    def get(self, key: str) -> bytes:
        if not self.is_s3:
            try:
                return (self.root / key).read_bytes()
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise InfraError(f"{self.uri(key)}: {exc.strerror or exc}") from None
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = s3_client(self.source).get_object(Bucket=self.bucket, Key=self._s3_key(key))
            return bytes(obj["Body"].read())
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise FileNotFoundError(self.uri(key)) from None
            raise _store_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise InfraError(f"{self.uri(key)}: {exc}") from None

    def keys_under(self, prefix: str = "") -> list[str]:
        """The keys under `prefix` (a folder: ending in / or empty), sorted; temporary files
        of writes in progress left out."""
        if not self.is_s3:
            top = self.root / prefix

            def unreadable(exc: OSError) -> None:  # a folder gone meanwhile is just gone
                if exc.errno != errno.ENOENT:
                    raise exc

            try:
                found = [
                    str(Path(d, name).relative_to(self.root))
                    for d, _, names in os.walk(top, onerror=unreadable)
                    for name in names
                    if not name.startswith(".")
                ]
            except OSError as exc:
                raise InfraError(f"{self.uri(prefix)}: {exc.strerror or exc}") from None
            return sorted(found)
        from botocore.exceptions import BotoCoreError, ClientError

        cut = len(self._s3_key(""))
        try:
            pages = s3_client(self.source).get_paginator("list_objects_v2")
            return sorted(
                obj["Key"][cut:]
                for page in pages.paginate(Bucket=self.bucket, Prefix=self._s3_key(prefix))
                for obj in page.get("Contents", [])
            )
        except ClientError as exc:
            raise _store_error(self.uri(prefix), exc) from None
        except BotoCoreError as exc:
            raise InfraError(f"{self.uri(prefix)}: {exc}") from None

    def delete(self, key: str) -> None:
        """Remove `key` (gone already: nothing to do); locally, its folder too once empty."""
        if not self.is_s3:
            path = self.root / key
            try:
                path.unlink(missing_ok=True)
                path.parent.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise InfraError(f"{self.uri(key)}: {exc.strerror or exc}") from None
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3_client(self.source).delete_object(Bucket=self.bucket, Key=self._s3_key(key))
        except ClientError as exc:
            raise _store_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise InfraError(f"{self.uri(key)}: {exc}") from None

    def copy(self, src: str, dst: str) -> None:
        """`dst` replaced, atomically, by the bytes of `src`: a hard link renamed into place
        locally (no copy made), a copy inside S3 (no download)."""
        if not self.is_s3:
            target = self.root / dst
            try:
                _make_dirs(target.parent)
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
                try:
                    os.link(self.root / src, tmp)
                except OSError as exc:
                    if exc.errno not in _NO_LINKS:
                        raise
                    _atomic_fill(target, lambda f: f.write((self.root / src).read_bytes()))
                    return
                try:
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                _fsync_dir(target.parent)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise InfraError(f"{self.uri(dst)}: {exc.strerror or exc}") from None
            return
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # a managed copy: over 5 GB in parts
            s3_client(self.source).copy(
                {"Bucket": self.bucket, "Key": self._s3_key(src)}, self.bucket, self._s3_key(dst)
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise FileNotFoundError(self.uri(src)) from None
            raise _store_error(self.uri(dst), exc) from None
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise InfraError(f"{self.uri(dst)}: {exc}") from None

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put_s3(self, key: str, data: bytes, if_absent: bool) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        conditional = if_absent and self._conditional_puts
        only_new = {"IfNoneMatch": "*"} if conditional else {}
        try:
            s3_client(self.source).put_object(
                Bucket=self.bucket, Key=self._s3_key(key), Body=data, **only_new
            )
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if conditional and status in (409, 412):  # another writer's object came first
                return False
            if conditional and status == 501:  # a store without conditional writes
                log.warning(
                    "%s: no conditional writes (HTTP 501): checked, then written", self.base
                )
                self._conditional_puts = False
                return self.put(key, data, if_absent=True)
            raise _store_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise InfraError(f"{self.uri(key)}: {exc}") from None
        return True

    # -- chunks and videos -------------------------------------------------------------------

    def video(self, item_id: str, version: str) -> str:
        """The key prefix of one version of an item's outputs: `<item_dir>/<version>`."""
        return f"{item_dir(item_id)}/{version}"

    def video_of(self, manifest_uri: str) -> str | None:
        """The video prefix a manifest URI (an item's result) names, if it is in this store."""
        base = self.base if self.is_s3 else str(self.root)
        if not manifest_uri.startswith(base + "/") or not manifest_uri.endswith("/" + MANIFEST):
            return None
        return manifest_uri[len(base) + 1 : -len(MANIFEST) - 1]

    def has_chunk(self, video: str, index: int) -> bool:
        return self.exists(f"{video}/{chunk_name(index)}")

    def chunks_present(self, video: str, indices: Iterable[int]) -> set[int]:
        """The chunks among `indices` whose files are there."""
        return {k for k in indices if self.has_chunk(video, k)}

    def write_chunk(
        self,
        video: str,
        index: int,
        table: pa.Table,
        *,
        if_absent: bool = True,
        checked: bool = False,
    ) -> bool:
        key = f"{video}/{chunk_name(index)}"
        return self.put(key, parquet_bytes(table), if_absent=if_absent, checked=checked)

    def read_chunk(self, video: str, index: int) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get(f"{video}/{chunk_name(index)}")))

    def read_detections(self, video: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get(f"{video}/{DETECTIONS}")))

    def is_complete(self, video: str) -> bool:
        return self.exists(f"{video}/{MANIFEST}")

    def manifest_uri(self, video: str) -> str:
        return self.uri(f"{video}/{MANIFEST}")

    def finalize(self, video: str, chunks: int, schema: pa.Schema, manifest: dict[str, Any]) -> str:
        """Merge the chunks into detections.parquet (with the manifest's `uri` as a column),
        then write the manifest (last, as the commit marker), with the rows, the detections
        per label and the time it finished. Idempotent. Returns the manifest's URI."""
        manifest_key = f"{video}/{MANIFEST}"
        if not self.exists(manifest_key):
            missing = [k for k in range(chunks) if not self.has_chunk(video, k)]
            if missing:  # lost since they were written: the next try writes them again
                raise TransientError(
                    f"cannot finalize {video}: chunks {missing[:10]} are missing",
                    OUTPUT_FAILED,
                )
            rows, labels = self._put_merged(video, chunks, schema, manifest.get("uri"))
            body = {
                **manifest,
                "rows": rows,
                "labels": labels,
                "chunks": chunks,
                "columns": merged_schema(schema).names,
                "detections": self.uri(f"{video}/{DETECTIONS}"),
                "finished_at": round(time.time(), 3),
            }
            self.put(manifest_key, json.dumps(body, indent=2, sort_keys=True).encode())
        return self.uri(manifest_key)

    def _put_merged(
        self, video: str, chunks: int, schema: pa.Schema, uri: str | None
    ) -> tuple[int, dict[str, int]]:
        """detections.parquet from the chunks, streamed through a temporary file (beside
        it locally, then renamed into place; in the temporary directory for S3, then
        uploaded in parts). The rows it holds, and of them the detections per label. The
        chunks are final (first write wins), so a second writer writes the same rows: it is
        replaced, not refused."""
        key = f"{video}/{DETECTIONS}"
        rows, labels = 0, Counter[str]()

        def fill(out: IO[bytes]) -> None:
            nonlocal rows
            rows = self._merge(video, chunks, schema, uri, labels, out)

        try:
            if not self.is_s3:
                _atomic_fill(self.root / key, fill)
                return rows, dict(labels)
            with tempfile.TemporaryFile(dir=self.source.tmp_dir, prefix="framefleet-merge-") as f:
                fill(f)
                f.seek(0)
                self._upload(key, f)
            return rows, dict(labels)
        except OSError as exc:  # a full or read-only disk: the store's or the node's trouble
            raise InfraError(f"{self.uri(key)}: {exc.strerror or exc}") from None

    def _merge(
        self,
        video: str,
        chunks: int,
        schema: pa.Schema,
        uri: str | None,
        labels: Counter[str],
        out: IO[bytes],
    ) -> int:
        """The chunks' rows, each with the video's URI, into one parquet file, about
        MERGE_BATCH_BYTES of tables at a time (each batch a row group); `labels` counts
        their detections per label."""
        batch: list[pa.Table] = []
        held = rows = 0
        writer: pq.ParquetWriter | None = None
        try:
            for k in range(chunks):
                table = with_uri(self.read_chunk(video, k), uri)
                labels.update(label_counts(table))
                if writer is None:  # the chunks' own schema (the actors wrote them)
                    writer = pq.ParquetWriter(out, table.schema, compression="zstd")
                batch.append(table)
                held += table.nbytes
                rows += table.num_rows
                if held >= MERGE_BATCH_BYTES:
                    writer.write_table(pa.concat_tables(batch))
                    batch, held = [], 0
            if writer is None:  # no chunks: an empty file of the model's schema
                writer = pq.ParquetWriter(out, merged_schema(schema), compression="zstd")
            if batch:
                writer.write_table(pa.concat_tables(batch))
        finally:
            if writer is not None:
                writer.close()
        return rows

    def _upload(self, key: str, f: IO[bytes]) -> None:
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        config = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES
        )
        try:
            s3_client(self.source).upload_fileobj(f, self.bucket, self._s3_key(key), Config=config)
        except ClientError as exc:
            raise _store_error(self.uri(key), exc) from None
        except (BotoCoreError, S3UploadFailedError) as exc:  # the latter wraps a part's error
            raise InfraError(f"{self.uri(key)}: {exc}") from None

    def read_manifest(self, video: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.get(f"{video}/{MANIFEST}"))
        return manifest

    def read_result(self, manifest_uri: str) -> dict[str, Any]:
        """The manifest an item's result names (FileNotFoundError: not in this store)."""
        video = self.video_of(manifest_uri)
        if video is None:
            raise FileNotFoundError(f"{manifest_uri} is not a manifest under {self.base}")
        return self.read_manifest(video)


def output_version(config_hash: str, etag: str | None, rev: int) -> str:
    """What tells one version of an item's outputs from another: the configuration that
    made them, the source's etag (a changed object is another video) and the item's
    revision (an enqueue with force makes a new one, superseding the old outputs)."""
    version = config_hash
    if etag:
        version += "-" + hashlib.sha1(etag.encode()).hexdigest()[:8]
    if rev:
        version += f"-r{rev}"
    return version


def made_with(version: str, config_hash: str, rev: int) -> bool:
    """Whether an output version was made with this configuration, at this revision (of
    whatever source object it was pinned to)."""
    parts = version.split("-")
    made_rev = int(parts[-1][1:]) if len(parts) > 1 and parts[-1].startswith("r") else 0
    return parts[0] == config_hash and made_rev == rev


def _store_error(uri: str, exc: Any) -> InfraError:
    """An S3 error answered by the output store: never the item's fault (a 403 on a write
    is a permission the fleet lacks)."""
    return InfraError(str(s3_error(uri, exc)))


class OutputRootError(RuntimeError):
    """The output root cannot serve this fleet: relative, or not shared by its nodes."""


def mark_root(out: str, generation: str) -> str | None:
    """A driver's check of a local output root before its actors start: refuse a relative
    one (each node would resolve it in its own directory), and leave a marker file that
    every actor must see (check_root: `.framefleet/fleet-<generation>` in the root), so that
    a root on a node-local disk is refused at start instead of videos dying later. Returns
    the marker's name (None for S3)."""
    if out.startswith("s3://"):
        return None
    root = Path(out.removeprefix("file://"))
    if not root.is_absolute():
        raise OutputRootError(
            f"the output root {out!r} is relative: each node of a cluster would resolve it in"
            " its own directory. Give an absolute path on a file system every node shares,"
            " or s3://bucket/prefix"
        )
    marker = f".framefleet/fleet-{generation}"
    _atomic_write(root / marker, generation.encode())
    return marker


def unmark_root(out: str, marker: str | None) -> None:
    """The driver stops: its marker goes (one left by a killed driver is harmless)."""
    if marker is not None:
        (Path(out.removeprefix("file://")) / marker).unlink(missing_ok=True)


def check_root(out: str, marker: str | None) -> None:
    """An actor's half of mark_root: the marker its driver left must be visible here."""
    if marker is None:
        return
    path = Path(out.removeprefix("file://")) / marker
    if not path.is_file():
        import socket

        raise OutputRootError(
            f"the output root {out} is not shared: {socket.gethostname()} does not see the"
            f" file {path} that the driver wrote there (a node-local disk?). Give a path on a"
            " file system every node mounts, or s3://bucket/prefix"
        )


def _make_dirs(path: Path) -> None:
    """mkdir -p, and each new directory's entry made durable (fsync of its parent), so that
    a crash cannot lose a directory whose files were fsynced."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(directory.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _atomic_write(path: Path, data: bytes, if_absent: bool = False) -> bool:
    """`data` at `path`, whole or not at all (see _atomic_fill)."""
    return _atomic_fill(path, lambda f: f.write(data), if_absent)


def _atomic_fill(path: Path, fill: Callable[[IO[bytes]], object], if_absent: bool = False) -> bool:
    """What `fill` writes, at `path`, whole or not at all: a temporary file, fsynced, then
    renamed into place, or (if_absent) linked into place, which fails when the path exists:
    the first writer wins. True when this call wrote it."""
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        if if_absent:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                # a file system without hard links (some FUSE and CIFS mounts): checked by
                # the caller, then renamed into place: the last of two racing writers wins
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True
