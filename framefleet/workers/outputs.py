"""Outputs: per-chunk parquet files at deterministic keys, then one file per video.

Under a local directory or `s3://bucket/prefix`:

    <item_id>/chunk-<k>.parquet   one per chunk, written by the inference actors
    <item_id>/detections.parquet  the whole video, when every chunk is there
    <item_id>/_manifest.json      written last: its presence means the video is complete

Every write is atomic (a temp file, fsync, rename locally; a single PUT on S3) and rewriting
a key that exists is a no-op, so a redelivered video never produces a half-written or
doubled output. Item ids that are not plain file names are percent-encoded.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framefleet.settings import SourceSettings

from .errors import PermanentError, TransientError
from .sources import s3_client, s3_error, split_s3

BASE_FIELDS = [("video_id", pa.string()), ("frame_index", pa.int64()), ("pts_s", pa.float64())]
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")
DETECTIONS = "detections.parquet"
MANIFEST = "_manifest.json"


def item_dir(item_id: str) -> str:
    """The path component of an item: its id when that is a plain file name."""
    if _SAFE_ID.fullmatch(item_id) and item_id not in (".", ".."):
        return item_id
    return quote(item_id, safe="").replace(".", "%2E")


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
    return pa.schema([*BASE_FIELDS, *schema, ("model", pa.string())])


def _parquet_bytes(table: pa.Table) -> bytes:
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
    pq.read_table(io.BytesIO(_parquet_bytes(table)))


class OutputStore:
    """A local directory or an s3://bucket/prefix holding the outputs of every item."""

    def __init__(self, base: str, source: SourceSettings) -> None:
        self.base = base.rstrip("/")
        self.source = source
        self.is_s3 = self.base.startswith("s3://")
        if self.is_s3:
            self.bucket, self.prefix = split_s3(self.base + "/")[0], self.base[5:].partition("/")[2]
        else:
            self.root = Path(self.base.removeprefix("file://")).absolute()

    def key(self, item_id: str, name: str) -> str:
        return f"{item_dir(item_id)}/{name}"

    def uri(self, key: str) -> str:
        return f"{self.base}/{key}" if self.is_s3 else str(self.root / key)

    # -- bytes -------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        if not self.is_s3:
            return (self.root / key).is_file()
        from botocore.exceptions import ClientError

        try:
            s3_client(self.source).head_object(Bucket=self.bucket, Key=self._s3_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise s3_error(self.uri(key), exc) from None

    def put(self, key: str, data: bytes, *, if_absent: bool = True) -> bool:
        """Write `key` atomically unless it exists (`if_absent=False`: the caller has just
        checked). True when this call wrote it."""
        if if_absent and self.exists(key):
            return False
        if self.is_s3:
            self._put_s3(key, data)
        else:
            _atomic_write(self.root / key, data)
        return True

    def get(self, key: str) -> bytes:
        if not self.is_s3:
            return (self.root / key).read_bytes()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = s3_client(self.source).get_object(Bucket=self.bucket, Key=self._s3_key(key))
            return bytes(obj["Body"].read())
        except ClientError as exc:
            raise s3_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise TransientError(f"{self.uri(key)}: {exc}") from None

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put_s3(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3_client(self.source).put_object(Bucket=self.bucket, Key=self._s3_key(key), Body=data)
        except ClientError as exc:
            raise s3_error(self.uri(key), exc) from None
        except BotoCoreError as exc:
            raise TransientError(f"{self.uri(key)}: {exc}") from None

    # -- chunks and videos -------------------------------------------------------------------

    def has_chunk(self, item_id: str, index: int) -> bool:
        return self.exists(self.key(item_id, chunk_name(index)))

    def write_chunk(
        self, item_id: str, index: int, table: pa.Table, *, if_absent: bool = True
    ) -> bool:
        return self.put(
            self.key(item_id, chunk_name(index)), _parquet_bytes(table), if_absent=if_absent
        )

    def read_chunk(self, item_id: str, index: int) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get(self.key(item_id, chunk_name(index)))))

    def is_complete(self, item_id: str) -> bool:
        return self.exists(self.key(item_id, MANIFEST))

    def finalize(
        self, item_id: str, chunks: int, schema: pa.Schema, manifest: dict[str, Any]
    ) -> str:
        """Merge the chunks into detections.parquet, then write the manifest (last, as the
        commit marker). Idempotent. Returns the manifest's URI."""
        manifest_key = self.key(item_id, MANIFEST)
        if not self.exists(manifest_key):
            missing = [k for k in range(chunks) if not self.has_chunk(item_id, k)]
            if missing:
                raise PermanentError(
                    f"cannot finalize {item_id}: chunks {missing[:10]} are missing"
                )
            tables = [self.read_chunk(item_id, k) for k in range(chunks)]
            merged = pa.concat_tables(tables) if tables else table_schema(schema).empty_table()
            self.put(self.key(item_id, DETECTIONS), _parquet_bytes(merged))
            body = {
                **manifest,
                "rows": merged.num_rows,
                "chunks": chunks,
                "detections": self.uri(self.key(item_id, DETECTIONS)),
            }
            self.put(manifest_key, json.dumps(body, indent=2, sort_keys=True).encode())
        return self.uri(manifest_key)

    def read_manifest(self, item_id: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.get(self.key(item_id, MANIFEST)))
        return manifest


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
