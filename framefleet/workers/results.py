"""The results of an output root: an index of every finished video, and one dataset of the
current detections of each, readable in one call.

Beside the outputs of each video (workers/outputs.py), an output root holds:

    _index/<shard>/<item_dir>/<version>.json   one per finished version of a video, written
                                               once by whoever finished it, never changed
    _index/<shard>/compacted-<hex>.jsonl       many of those, merged by a reader
    _dataset/<item_dir>.parquet                the current version's detections, URI first

`<shard>` is two hex digits of a hash of the item id, so that one video's versions are found
by listing one folder. A video's current version is the one of its highest revision (an
enqueue with force makes a new one), then the last finished; every other is superseded.

Safe with many writers and readers, and with a kill -9 anywhere: every file is written
whole or not at all (outputs.py), an index entry is written before the dataset file it
makes current and only ever added, and a reader that finds the files moved under it (a
compaction) lists again. Compacting writes the merged file before removing what it merged,
so that every entry is always in one file or another. The dataset file of a video is
replaced only by its current version: a writer checks the index before and after it
writes, and writes the newer version in its own stead when one finished meanwhile, so the
last write of all is always the current version. A writer killed before it wrote the
dataset file did not acknowledge its video: the next delivery publishes it again, and
`framefleet results rebuild` rebuilds both from the manifests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from .errors import InfraError
from .outputs import (
    DETECTIONS,
    MANIFEST,
    OutputStore,
    item_dir,
    label_counts,
    parquet_bytes,
    with_uri,
)

log = logging.getLogger(__name__)

INDEX = "_index"
DATASET = "_dataset"
SHARDS = 256  # folders of the index (at most 256: two hex digits)
COMPACT_AT = 32  # a reader merges a shard's entries once this many files are not merged
KEEP_MERGED_S = 600.0  # what a merged file holds is removed elsewhere this long after it
_TRIES = 50  # lists of a shard whose files were removed as it was read
FORMATS = ("parquet", "csv", "jsonl")


class Entry(BaseModel):
    """One finished version of a video's outputs (its manifest, in short)."""

    id: str
    uri: str
    rev: int = 0
    version: str
    config_hash: str = ""
    etag: str | None = None
    frames: int = 0
    chunks: int = 0
    detections: int = 0  # rows of its detections.parquet
    labels: dict[str, int] = {}  # detections per label (a model with a `label` column)
    model: str = ""
    video: str  # the key prefix of its outputs in the root
    finished_at: float = 0.0  # Unix time; 0: before the manifests said
    columns: list[str] = []  # of its detections.parquet (without `uri`: made before it had one)
    current: bool = False  # set when read: the video's current version

    def rank(self) -> tuple[int, float, str]:
        return (self.rev, self.finished_at, self.version)

    def stored(self) -> bytes:
        return self.model_dump_json(exclude={"current"}).encode()


def version_rev(version: str) -> int:
    """The revision an output version names (`...-r<rev>`; none: 0)."""
    last = version.rsplit("-", 1)[-1]
    return int(last[1:]) if len(version.split("-")) > 1 and last[:1] == "r" else 0


def shard(item_id: str) -> str:
    """The index folder of an item's entries: one of SHARDS, by a hash of its id."""
    return f"{int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) % SHARDS:02x}"


def current_of(versions: Iterable[Entry]) -> Entry | None:
    return max(versions, key=Entry.rank, default=None)


def marked(entries: Iterable[Entry]) -> list[Entry]:
    """Each entry once (by id and version), with `current` set, ordered by URI then newest
    version first."""
    unique = {(e.id, e.version): e for e in entries}
    by_id: dict[str, list[Entry]] = {}
    for e in unique.values():
        by_id.setdefault(e.id, []).append(e)
    out = []
    for versions in by_id.values():
        top = current_of(versions)
        out += [e.model_copy(update={"current": e is top}) for e in versions]
    return sorted(out, key=lambda e: (e.uri, e.id, -e.rev, -e.finished_at))


@dataclass(frozen=True)
class Rebuilt:
    videos: int  # manifests found, each now in the index
    removed: int  # dataset files of videos whose outputs are gone
    skipped: int = 0  # manifests (or their detections) that could not be read


class Results:
    """The index and the dataset of one output store."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store

    @property
    def dataset(self) -> str:
        """Where the dataset is: the folder to give DuckDB, pandas or pyarrow."""
        return self.store.uri(DATASET)

    @property
    def index(self) -> str:
        return self.store.uri(INDEX)

    # -- writing ---------------------------------------------------------------------------

    def publish(self, video: str) -> Entry:
        """A finished video (its manifest written) into the index, and its detections into
        the dataset if its version is the current one. Idempotent; a store's trouble is an
        InfraError."""
        manifest = self.store.read_manifest(video)
        entry = self._entry(video, manifest)
        self.store.put(self._entry_key(entry), entry.stored())  # once: the first write wins
        self._settle(entry)
        return entry

    def _entry(self, video: str, m: dict[str, Any]) -> Entry:
        version = str(m.get("version") or video.rsplit("/", 1)[-1])
        labels = m.get("labels")
        columns = m.get("columns")
        if labels is None or columns is None:  # a manifest from before they were recorded
            table = self.store.read_detections(video)
            labels, columns = label_counts(table), table.column_names
        return Entry(
            id=str(m["video_id"]),
            uri=str(m.get("uri") or ""),
            rev=int(m.get("rev", version_rev(version))),
            version=version,
            config_hash=str(m.get("config_hash") or ""),
            etag=m.get("etag"),
            frames=int(m.get("frames") or 0),
            chunks=int(m.get("chunks") or 0),
            detections=int(m.get("rows") or 0),
            labels=labels,
            model=str(m.get("model") or ""),
            video=video,
            finished_at=float(m.get("finished_at") or 0.0),
            columns=columns,
        )

    def _settle(self, mine: Entry) -> None:
        """The dataset file of `mine`'s video holds its current version (see the module's
        docstring for why this ends right with many writers)."""
        for _ in range(10):
            top = current_of(self.versions(mine.id))
            if top is None or top.version != mine.version:
                return  # a newer version's own publish writes it
            self._put_dataset(mine)
            after = current_of(self.versions(mine.id))
            if after is None or after.version == mine.version:
                return
            mine = after  # finished meanwhile, and may have written before this did
        raise InfraError(f"the dataset file of {mine.id!r} kept changing under its writer")

    def _put_dataset(self, entry: Entry) -> None:
        target = f"{DATASET}/{item_dir(entry.id)}.parquet"
        source = f"{entry.video}/{DETECTIONS}"
        if "uri" in entry.columns:
            self.store.copy(source, target)
            return
        legacy = with_uri(self.store.read_detections(entry.video), entry.uri)  # had no URI
        self.store.put(target, parquet_bytes(legacy), if_absent=False)

    def rebuild(self) -> Rebuilt:
        """The index and the dataset anew from the manifests in the store: the index emptied
        first (readers meanwhile see part of it: best run with the fleet stopped), then
        every finished video published (a manifest that cannot be read is skipped, and
        counted), then the dataset files of videos with no outputs left removed (those
        listed before the index was read again: a video published meanwhile keeps its)."""
        for key in self.store.keys_under(f"{INDEX}/"):
            self.store.delete(key)
        manifests = [
            key.removesuffix(f"/{MANIFEST}")
            for key in self.store.keys_under()
            if key.count("/") == 2 and key.endswith(f"/{MANIFEST}") and key[0] not in "._"
        ]
        skipped = 0
        for video in manifests:
            try:
                self.publish(video)
            except (InfraError, ValueError, KeyError, OSError, pa.ArrowException) as exc:
                log.warning("%s: left out of the index: %s", self.store.uri(video), exc)
                skipped += 1
        listed = self.store.keys_under(f"{DATASET}/")
        kept = {f"{DATASET}/{item_dir(e.id)}.parquet" for e in self.entries()}
        removed = [k for k in listed if k not in kept]
        for key in removed:
            self.store.delete(key)
        return Rebuilt(videos=len(manifests) - skipped, removed=len(removed), skipped=skipped)

    # -- reading ---------------------------------------------------------------------------

    def versions(self, item_id: str) -> list[Entry]:
        """Every finished version of one video, `current` set."""
        folder = f"{INDEX}/{shard(item_id)}/"
        mine = f"{folder}{item_dir(item_id)}/"
        files = self._shard(folder, lambda k: k.startswith(mine) or _compacted(k))
        return marked(e for entries in files.values() for e in entries if e.id == item_id)

    def entries(self, compact: bool = True) -> list[Entry]:
        """Every finished version of every video, `current` set. With `compact`, a shard of
        many files is merged into one as it is read (left as it is where the store refuses
        this reader's writes)."""
        shards: dict[str, list[str]] = {}
        for key in self.store.keys_under(f"{INDEX}/"):
            shards.setdefault(key.split("/")[1], []).append(key)
        found = []
        for name, keys in shards.items():
            files = self._shard(f"{INDEX}/{name}/", lambda k: True, keys)
            found += [e for entries in files.values() for e in entries]
            if compact:
                self._compact(files)
        return marked(found)

    def current(self) -> list[Entry]:
        return [e for e in self.entries() if e.current]

    def detections(self, entry: Entry) -> pa.Table:
        """One version's detections, with the URI as their first column."""
        return with_uri(self.store.read_detections(entry.video), entry.uri)

    def _shard(
        self, folder: str, wanted: Callable[[str], bool], keys: list[str] | None = None
    ) -> dict[str, list[Entry]]:
        """The entries of each file of one shard's listing (`keys`, else listed now) that is
        `wanted`. A file gone before it was read (merged, then removed, by another reader)
        means listing again: the files read are kept (none ever changes), so each new try
        reads only what is new, and the last listing's files hold every entry (see
        _compact)."""
        read: dict[str, list[Entry]] = {}
        for _ in range(_TRIES):
            if keys is None:
                keys = [k for k in self.store.keys_under(folder) if wanted(k)]
            try:
                for key in keys:
                    if key not in read:
                        read[key] = self._parse(key, self.store.get(key))
                return {k: read[k] for k in keys}
            except FileNotFoundError:
                keys = None
        raise InfraError(f"{self.store.uri(folder)} kept changing while it was read")

    def _parse(self, key: str, body: bytes) -> list[Entry]:
        entries = []
        for line in body.splitlines() if _compacted(key) else [body]:
            if not line.strip():
                continue
            try:
                entries.append(Entry.model_validate_json(line))
            except ValidationError as exc:  # not written by framefleet: said, not fatal
                log.warning("%s: not an index entry, left out (%s)", self.store.uri(key), exc)
        return entries

    def _compact(self, files: dict[str, list[Entry]]) -> None:
        """One shard's files merged into one once COMPACT_AT of them are not in the newest
        merged file; and removed, each file whose entries are all in a newer merged file
        written KEEP_MERGED_S ago or more. That delay is what keeps a reader whose listing
        missed a file just written and a file just removed (a listing is not a snapshot) from
        missing their entries: a file is removed only once a file holding its entries has
        been there longer than any listing takes. Left as it is where the store refuses this
        reader's writes: it reads, it does not tidy."""
        keys = sorted(files, key=_written_at)
        folder = f"{INDEX}/{keys[0].split('/')[1]}"
        held = {k: {(e.id, e.version) for e in files[k]} for k in keys}
        merged = [k for k in keys if _compacted(k)]
        newest = held[merged[-1]] if merged else set()
        now_ms = time.time() * 1000
        try:
            if sum(1 for k in keys if not held[k] <= newest) >= COMPACT_AT:
                every = marked(e for entries in files.values() for e in entries)
                body = b"\n".join(e.stored() for e in every)
                name = f"compacted-{int(now_ms):013d}-{uuid.uuid4().hex[:12]}.jsonl"
                self.store.put(f"{folder}/{name}", body + b"\n", if_absent=False)
            for i, key in enumerate(keys):
                later = [
                    m
                    for m in keys[i + 1 :]
                    if _compacted(m) and now_ms - _written_at(m)[0] >= KEEP_MERGED_S * 1000
                ]
                if any(held[key] <= held[m] for m in later):
                    self.store.delete(key)
        except InfraError as exc:
            log.debug("%s not compacted: %s", self.store.uri(folder), exc)

    def _entry_key(self, entry: Entry) -> str:
        return f"{INDEX}/{shard(entry.id)}/{item_dir(entry.id)}/{entry.version}.json"


def _compacted(key: str) -> bool:
    return key.count("/") == 2 and key.endswith(".jsonl")


def _written_at(key: str) -> tuple[float, str]:
    """When a merged file was written (its name says, in ms), then its name; a video's own
    entry file comes before every merged file."""
    if not _compacted(key):
        return (-1.0, key)
    return (float(key.rsplit("/", 1)[-1].split("-")[1]), key)


def select(
    entries: Iterable[Entry],
    state: str = "current",
    prefix: str | None = None,
    label: str | None = None,
) -> list[Entry]:
    """The entries of one state (current, superseded or all), of URIs under `prefix`, with
    at least one detection of `label`."""
    return [
        e
        for e in entries
        if (state == "all" or (state == "current") == e.current)
        and (prefix is None or e.uri.startswith(prefix))
        and (label is None or e.labels.get(label, 0) > 0)
    ]


def tables(
    results: Results, entries: Iterable[Entry], label: str | None = None
) -> Iterator[pa.Table]:
    """The detections of each entry (only those of `label`, if given)."""
    for entry in entries:
        table = results.detections(entry)
        if label is not None:
            table = table.filter(pc.equal(table["label"], label))
        yield table


def export(tables_: Iterable[pa.Table], fmt: str, out: IO[bytes]) -> int:
    """The tables into one file of `fmt` (parquet, csv or jsonl), streamed; the rows written.
    ValueError: videos of different schemas (models), or a column CSV cannot hold."""
    import pyarrow.csv as pacsv

    rows = 0
    writer: Any = None
    schema: pa.Schema | None = None
    try:
        for table in tables_:
            if schema is None:
                schema = table.schema
                if fmt == "parquet":
                    writer = pq.ParquetWriter(out, schema, compression="zstd")
                elif fmt == "csv":
                    writer = pacsv.CSVWriter(out, schema)
            elif table.schema != schema:
                raise ValueError(
                    "the videos were made by models of different outputs"
                    f" ({schema.names} and {table.schema.names}): export them apart"
                    " (--prefix, or one output root each)"
                )
            if fmt == "jsonl":
                for row in table.to_pylist():
                    out.write(json.dumps(row, default=str).encode() + b"\n")
            elif table.num_rows:
                writer.write_table(table)
            rows += table.num_rows
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"cannot write these detections as {fmt}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
    return rows
