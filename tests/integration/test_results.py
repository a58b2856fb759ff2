"""The results of an output root (workers/results.py): the index of finished videos, the
dataset of current detections, export and rebuild; on a local directory and on moto's S3
server, with many writers and readers at once and a writer killed mid-way."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from framefleet.settings import SourceSettings
from framefleet.workers import results as results_module
from framefleet.workers.outputs import DETECTIONS, OutputStore, item_dir
from framefleet.workers.results import DATASET, INDEX, Entry, Results, export, select, tables
from tests.support.deadline import wait_for
from tests.support.results import finish


def _dataset_rows(store: OutputStore) -> dict[str, pa.Table]:
    """The dataset's file of each item (by item_dir), read back."""
    return {
        key[len(DATASET) + 1 : -len(".parquet")]: pq.read_table(io.BytesIO(store.get(key)))
        for key in store.keys_under(f"{DATASET}/")
    }


def _scores(table: pa.Table) -> list[float]:
    return sorted(round(x, 3) for x in table["score"].to_pylist())


def test_each_video_has_one_current_version_the_newest_revision(store: OutputStore) -> None:
    """Three versions of one video (a first run, and two enqueues with force) and one of
    another: the index holds all four, the newest revision of each video current; the
    dataset holds the current rows only, with the URI as a column, even when an older
    version's writer publishes last (a zombie that finished late)."""
    results = Results(store)
    r2 = finish(store, "a", rev=2, rows=4)
    results.publish(r2)
    results.publish(finish(store, "a", rev=0, rows=7))  # late, stale: changes no dataset file
    results.publish(finish(store, "a", rev=1, rows=6))
    results.publish(finish(store, "b", rows=2, uri="s3://in/b c.mp4"))
    entries = results.entries()
    assert [(e.id, e.rev, e.current) for e in entries] == [
        ("a", 2, True),
        ("a", 1, False),
        ("a", 0, False),
        ("b", 0, True),
    ]
    assert entries[0].detections == 4 and entries[0].labels == {"car": 2, "person": 1, "dog": 1}
    assert entries[0].video == r2 and entries[0].uri == "/videos/a.mp4"
    data = _dataset_rows(store)
    assert sorted(data) == ["a", "b"]
    assert _scores(data["a"]) == [2.0, 2.001, 2.002, 2.003]  # revision 2's, no other's
    assert data["a"].column_names[0] == "uri" and set(data["a"]["uri"].to_pylist()) == {
        "/videos/a.mp4"
    }
    assert set(data["b"]["uri"].to_pylist()) == {"s3://in/b c.mp4"}
    assert [e.rev for e in results.versions("a")] == [2, 1, 0]
    assert select(entries, "superseded") == entries[1:3]
    assert select(entries, "current", prefix="s3://") == [entries[3]]
    assert select(entries, "all", label="dog") == entries[:3]  # b's 2 rows: a car, a person


def test_the_dataset_reads_in_one_call_with_duckdb_pandas_and_pyarrow(tmp_path: Path) -> None:
    """The documented path: `<out>/_dataset`. Every reader counts each current detection
    once: never a chunk file, never a superseded version (reading the root itself counted
    both)."""
    store = OutputStore(str(tmp_path / "results"), SourceSettings())
    results = Results(store)
    for item, rows in (("x", 6), ("y", 9), ("z", 0)):
        results.publish(finish(store, item, rows=rows))
    results.publish(finish(store, "x", rev=1, rows=3))
    folder = results.dataset
    assert folder == str(tmp_path / "results" / "_dataset")
    assert ds.dataset(folder).to_table().num_rows == 3 + 9
    assert len(pd.read_parquet(folder)) == 3 + 9
    per_label = duckdb.execute(
        f"SELECT uri, label, count(*) AS n FROM '{folder}/*.parquet'"
        " GROUP BY uri, label ORDER BY uri, label"
    ).fetchall()
    assert per_label == [
        ("/videos/x.mp4", "car", 1),
        ("/videos/x.mp4", "dog", 1),
        ("/videos/x.mp4", "person", 1),
        ("/videos/y.mp4", "car", 3),
        ("/videos/y.mp4", "dog", 3),
        ("/videos/y.mp4", "person", 3),
    ]


def test_many_writers_leave_each_dataset_file_at_its_current_version(store: OutputStore) -> None:
    """Eight threads publish three revisions of each of twelve videos in a shuffled order
    (retries and forced runs finishing out of order, at once): every dataset file ends at
    its video's newest revision, and the index holds all 36 versions, each video's newest
    current."""
    results = Results(store)
    videos = [finish(store, f"v{i}", rev=r, rows=2 + i) for i in range(12) for r in range(3)]
    order = random.Random(7).sample(videos, len(videos))
    errors: list[BaseException] = []

    def publish(part: list[str]) -> None:
        try:
            for video in part:
                results.publish(video)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(order[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    entries = results.entries()
    assert len(entries) == 36 and all(e.current == (e.rev == 2) for e in entries)
    data = _dataset_rows(store)
    assert sorted(data) == sorted(f"v{i}" for i in range(12))
    for i in range(12):
        assert _scores(data[f"v{i}"]) == [round(2 + k / 1000, 3) for k in range(2 + i)]


def test_a_stale_writer_that_writes_last_leaves_the_newer_version(
    store: OutputStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zombie publishes revision 0 of a video: it finds itself current, and before it
    writes the dataset file, revision 1 is published whole by another worker. The zombie's
    write comes last, yet the file ends at revision 1: the writer looks at the index again
    after writing, and writes the newer version in its own stead (the break: no second
    look left revision 0's rows there)."""
    old, new = finish(store, "s", rev=0, rows=3), finish(store, "s", rev=1, rows=2)
    other = Results(OutputStore(store.base, store.source))
    real_copy = store.copy

    def late(src: str, dst: str) -> None:
        if src.startswith(old):
            other.publish(new)
        real_copy(src, dst)

    monkeypatch.setattr(store, "copy", late)
    Results(store).publish(old)
    assert _scores(_dataset_rows(store)["s"]) == [1.0, 1.001]
    assert [(e.rev, e.current) for e in Results(store).entries()] == [(1, True), (0, False)]


def test_readers_compacting_as_writers_publish_never_miss_an_entry(store: OutputStore) -> None:
    """Readers merge the index's files as they read while writers add to it: every entry
    published before a read began is in that read, and once merged files are older than
    KEEP_MERGED_S the files they hold are removed: a few files hold every entry. (Removing
    what was merged at once lost entries here: a listing is not a snapshot, and one that
    missed the merged file just written and the files just removed missed their entries.)"""
    results = Results(store)
    videos = [finish(store, f"c{i}", rows=1, chunks=1) for i in range(90)]
    published: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []
    writing = threading.Event()
    writing.set()

    def write() -> None:
        for video in videos:
            results.publish(video)
            with lock:
                published.append(video.split("/")[0])
        writing.clear()

    def read() -> None:
        while writing.is_set():
            with lock:
                before = set(published)
            seen = {e.id for e in results.entries()}
            if not before <= seen:
                errors.append(f"missing {sorted(before - seen)[:5]}")

    def few_files() -> bool:
        assert {e.id for e in results.entries()} == {f"c{i}" for i in range(90)}
        return len(store.keys_under(f"{INDEX}/")) <= 2 * 4  # a shard: one merged, 3 not yet

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(results_module, "COMPACT_AT", 4)
        mp.setattr(results_module, "SHARDS", 2)  # 45 entries each
        mp.setattr(results_module, "KEEP_MERGED_S", 1.0)  # far longer than a listing here
        threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in "ab")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        wait_for(few_files, 60, "the merged files' entries removed")


def test_a_listing_torn_by_a_compaction_still_sees_every_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing is not a snapshot (S3 lists a page at a time, a directory is read a block
    at a time): here the first part of a reader's listing is read before another reader
    compacts, the rest after. The merged file sorts into the part already read, the files it
    merged into the rest: had they been removed at once, the reader would see no entry at
    all (the break: KEEP_MERGED_S = 0)."""
    monkeypatch.setattr(results_module, "SHARDS", 1)
    monkeypatch.setattr(results_module, "COMPACT_AT", 4)
    store = OutputStore(str(tmp_path / "out"), SourceSettings())
    for i in range(10):  # ids after "compacted-..." in the listing's order
        Results(store).publish(finish(store, f"x{i}", rows=1, chunks=1))
    other = Results(OutputStore(str(tmp_path / "out"), SourceSettings()))
    real = store.keys_under

    def torn(prefix: str = "") -> list[str]:
        before = real(prefix)
        other.entries()  # the other reader compacts while this listing is half read...
        other.entries()  # ...and reads again: the files it merged may go now (or not yet)
        after = real(prefix)
        cut = f"{INDEX}/00/p"
        return [k for k in before if k < cut] + [k for k in after if k >= cut]

    monkeypatch.setattr(store, "keys_under", torn)
    assert {e.id for e in Results(store).entries()} == {f"x{i}" for i in range(10)}
    assert [k for k in real(f"{INDEX}/") if k.endswith(".jsonl")], "never compacted"


def test_a_publisher_killed_mid_way_leaves_only_whole_files_and_a_redelivery_completes_it(
    tmp_path: Path,
) -> None:
    """kill -9 a process publishing videos, once it has published some: every index and
    dataset file there is whole, and what it was doing is done by the next delivery of each
    video (publishing again, as the pipeline does for a video whose outputs it finds
    complete): the index and the dataset end exact."""
    root = tmp_path / "out"
    with subprocess.Popen(
        [sys.executable, "-m", "tests.support.results", str(root), "400"],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            for _ in range(30):  # 30 published: the kill lands somewhere in the next ones
                assert proc.stdout.readline(), f"the publisher ended (exit {proc.poll()})"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (root / "finished").exists()
    store = OutputStore(str(root), SourceSettings())
    for key in store.keys_under(f"{INDEX}/"):
        Entry.model_validate_json(store.get(key))  # whole, or it would not parse
    for key in store.keys_under(f"{DATASET}/"):
        pq.read_table(io.BytesIO(store.get(key)))
    results = Results(store)
    finished = [
        k.removesuffix("/_manifest.json")
        for k in store.keys_under()
        if k.endswith("_manifest.json")
    ]
    for video in finished:  # each video's next delivery
        results.publish(video)
    assert {e.video for e in results.entries()} == set(finished)
    for e in results.current():
        table = pq.read_table(io.BytesIO(store.get(f"{DATASET}/{item_dir(e.id)}.parquet")))
        assert table.num_rows == e.detections and set(table["uri"].to_pylist()) <= {e.uri}


def test_export_is_the_union_of_the_current_versions_chunks(store: OutputStore) -> None:
    """parquet, csv and jsonl: each current version's chunk rows once, with its URI; never a
    row of a superseded version; --label keeps that label's rows."""
    results = Results(store)
    for item, rows in (("p", 5), ("q", 8)):
        results.publish(finish(store, item, rows=rows))
        results.publish(finish(store, item, rev=1, rows=rows - 2))
    current = results.current()
    chunks = pa.concat_tables(
        store.read_chunk(e.video, k) for e in current for k in range(e.chunks)
    )
    want = _rows(chunks)
    assert len(want) == 3 + 6

    sink = io.BytesIO()
    assert export(tables(results, current), "parquet", sink) == 9
    got = pq.read_table(pa.BufferReader(sink.getvalue()))
    assert _rows(got) == want
    assert got.column_names[0] == "uri" and set(got["uri"].to_pylist()) == {
        "/videos/p.mp4",
        "/videos/q.mp4",
    }

    sink = io.BytesIO()
    export(tables(results, current), "csv", sink)
    got = pacsv.read_csv(pa.BufferReader(sink.getvalue()))
    assert _rows(got) == want

    sink = io.BytesIO()
    export(tables(results, current, label="dog"), "jsonl", sink)
    lines = [json.loads(x) for x in sink.getvalue().decode().splitlines()]
    assert {x["label"] for x in lines} == {"dog"} and len(lines) == 1 + 2
    assert all(x["score"] >= 1 for x in lines)  # revision 1's


def _rows(table: pa.Table) -> list[tuple[str, int, float]]:
    ids, frames = table["video_id"].to_pylist(), table["frame_index"].to_pylist()
    scores = [round(x, 3) for x in table["score"].to_pylist()]
    return sorted(zip(ids, frames, scores, strict=True))


def test_rebuild_makes_the_index_and_dataset_again_from_the_manifests(store: OutputStore) -> None:
    """The index and the dataset deleted (or a root made before they existed): `rebuild`
    makes both again from the manifests, the same; a dataset file of a video whose outputs
    were removed goes."""
    results = Results(store)
    for item in ("m", "n"):
        results.publish(finish(store, item, rows=4))
    results.publish(finish(store, "m", rev=1, rows=2))
    before = [e.model_dump() for e in results.entries()]
    for key in store.keys_under(f"{INDEX}/") + store.keys_under(f"{DATASET}/"):
        store.delete(key)
    store.put(f"{DATASET}/gone.parquet", store.get(f"{before[0]['video']}/{DETECTIONS}"))
    assert results.entries() == []
    store.put("broken/v9/_manifest.json", b"{not json")  # skipped, and counted
    rebuilt = results.rebuild()
    assert (rebuilt.videos, rebuilt.removed, rebuilt.skipped) == (3, 1, 1)
    assert [e.model_dump() for e in results.entries()] == before
    assert sorted(_dataset_rows(store)) == ["m", "n"]
    assert _scores(_dataset_rows(store)["m"]) == [1.0, 1.001]


def test_outputs_made_before_the_index_get_their_uri_and_labels(tmp_path: Path) -> None:
    """A root written before detections.parquet had a URI column and manifests had labels
    (the store's files rewritten to that shape): published, its dataset file has the URI
    column and its entry the detections per label."""
    store = OutputStore(str(tmp_path / "old"), SourceSettings())
    video = finish(store, "old", rows=4)
    path = Path(store.uri(f"{video}/{DETECTIONS}"))
    pq.write_table(pq.read_table(path).drop_columns(["uri"]), path)
    manifest_path = Path(store.manifest_uri(video))
    manifest = json.loads(manifest_path.read_text())
    for key in ("labels", "columns", "finished_at", "rev"):
        manifest.pop(key)
    manifest_path.write_text(json.dumps(manifest))
    entry = Results(store).publish(video)
    assert entry.labels == {"car": 2, "person": 1, "dog": 1} and "uri" not in entry.columns
    table = _dataset_rows(store)["old"]
    assert table.column_names[0] == "uri" and table.num_rows == 4
    assert set(table["uri"].to_pylist()) == {"/videos/old.mp4"}
