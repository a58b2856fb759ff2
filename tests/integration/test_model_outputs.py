"""The model (a tiny DETR saved and loaded the real way, offline), a plugged-in model, and
the outputs (local directory and moto's S3 server)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framefleet.settings import ModelSettings, SourceSettings
from framefleet.workers.model import DETECTION_SCHEMA, ModelLoadError, load_model
from framefleet.workers.outputs import OutputStore, item_dir, merged_schema, records_table
from framefleet.workers.sources import s3_client
from tests.support.deadline import left
from tests.support.models import write_pinned_detr, write_tiny_detr
from tests.support.outputs_writer import ROWS
from tests.support.videos import frame_image


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_detr(tmp_path_factory.mktemp("tiny-detr"))


def _frames(n: int = 6, width: int = 96, height: int = 64) -> np.ndarray:
    return np.stack([frame_image(i, width, height) for i in range(n)])


def test_detection_model_loads_from_a_directory_and_predicts(tiny_detr: Path) -> None:
    model = load_model(ModelSettings(model=str(tiny_detr), score_threshold=0.0, batch_size=4))
    assert model.name == str(tiny_detr) and model.schema == DETECTION_SCHEMA
    records = model.predict(_frames(6, 48, 32), source_size=(96, 64))
    assert {r["frame"] for r in records} == set(range(6))
    assert len(records) == 6 * 10  # threshold 0: every query of the tiny model
    boxes = np.array([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in records])
    assert (
        boxes.min() >= -1e-3
        and boxes[:, [0, 2]].max() <= 96 + 1e-3
        and boxes[:, [1, 3]].max() <= 64 + 1e-3
    )
    assert all(r["label"] == f"class_{r['label_id']}" for r in records)


def test_boxes_are_in_source_pixels_whatever_size_the_frames_were_decoded_at(
    tmp_path: Path,
) -> None:
    """A DETR pinned to an object at a known place (a quarter of the width, half the
    height, centred at (0.375, 0.5)): frames decoded at 48x32 from a 96x64 source give its
    box in the source's pixels, not the frames' (nor the processor's resized input's)."""
    pinned = write_pinned_detr(tmp_path / "pinned", box=(0.375, 0.5, 0.25, 0.5), label=2)
    model = load_model(ModelSettings(model=str(pinned), score_threshold=0.5))
    for source in [(96, 64), (1920, 1080)]:
        records = model.predict(_frames(3, 48, 32), source_size=source)
        assert len(records) == 3 * 10 and {r["label_id"] for r in records} == {2}
        w, h = source
        want = [0.25 * w, 0.25 * h, 0.5 * w, 0.75 * h]
        for r in records:
            np.testing.assert_allclose([r[k] for k in ("x0", "y0", "x1", "y1")], want, atol=1e-3)


def test_the_score_threshold_keeps_exactly_the_detections_over_it(tiny_detr: Path) -> None:
    """The threshold is applied, and no other: at threshold t the model reports exactly the
    detections of threshold 0 that score over t (the pipeline-vs-direct comparisons use one
    threshold on both sides, so they would not notice it ignored)."""
    frames = _frames(4)
    every = load_model(ModelSettings(model=str(tiny_detr), score_threshold=0.0)).predict(
        frames, (96, 64)
    )
    scores = sorted(r["score"] for r in every)
    t = (scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2  # between two scores
    kept = load_model(ModelSettings(model=str(tiny_detr), score_threshold=t)).predict(
        frames, (96, 64)
    )
    want = [r for r in every if r["score"] > t]
    assert 0 < len(want) < len(every)
    assert [(r["frame"], r["label_id"]) for r in kept] == [
        (r["frame"], r["label_id"]) for r in want
    ]
    np.testing.assert_allclose([r["score"] for r in kept], [r["score"] for r in want], atol=1e-6)


def test_batch_size_does_not_change_predictions(tiny_detr: Path) -> None:
    frames = _frames(5)
    a = load_model(ModelSettings(model=str(tiny_detr), score_threshold=0.0, batch_size=5)).predict(
        frames, (96, 64)
    )
    b = load_model(ModelSettings(model=str(tiny_detr), score_threshold=0.0, batch_size=2)).predict(
        frames, (96, 64)
    )
    assert [r["frame"] for r in a] == [r["frame"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_the_forward_pass_in_reduced_precision_and_matches_fp32(
    tiny_detr: Path, precision: str
) -> None:
    """bf16 and fp16 autocast against fp32, on the default device (CUDA where there is one:
    the same code path, torch.autocast on the model's device). The heads' activations are
    in the reduced dtype (a forward hook sees them) and the scores move from fp32's by
    rounding, not by nothing: an autocast made a no-op compared fp32 with fp32 and passed."""
    import torch

    frames = _frames(4)
    fp32_model = load_model(ModelSettings(model=str(tiny_detr), score_threshold=0.0))
    low_model = load_model(
        ModelSettings(model=str(tiny_detr), score_threshold=0.0, precision=precision)
    )
    seen: dict[str, set[torch.dtype]] = {"fp32": set(), "low": set()}

    def watch(model: Any, key: str) -> None:
        detr = model.model
        for head in (detr.class_labels_classifier, detr.bbox_predictor.layers[-1]):
            head.register_forward_hook(lambda _m, _i, out: seen[key].add(out.dtype))

    watch(fp32_model, "fp32")
    watch(low_model, "low")
    fp32 = fp32_model.predict(frames, (96, 64))
    low = low_model.predict(frames, (96, 64))
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen == {"fp32": {torch.float32}, "low": {want}}, seen
    assert [(r["frame"], r["label_id"]) for r in fp32] == [(r["frame"], r["label_id"]) for r in low]
    scores_low = np.array([r["score"] for r in low])
    scores_fp32 = np.array([r["score"] for r in fp32])
    assert not np.array_equal(scores_low, scores_fp32), "reduced precision changed nothing"
    np.testing.assert_allclose(scores_low, scores_fp32, atol=0.03)

    def box(rs: list[dict[str, Any]]) -> np.ndarray:
        return np.array([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rs])

    np.testing.assert_allclose(box(low), box(fp32), atol=2.0)  # pixels, on a 96x64 frame


@pytest.mark.parametrize("size", [(64, 96), (61, 97), (360, 640)])
def test_torch_preprocessing_matches_the_image_processor(
    tiny_detr: Path, size: tuple[int, int]
) -> None:
    """The torch path (resize and normalize on the model's device) against the processor's
    own PIL path: the same tensor shape, values within 1/50 of a normalised unit (uint8
    rounding after PIL's resize), and the same detections."""
    height, width = size
    frames = _frames(3, width, height)
    fast = load_model(ModelSettings(model=str(tiny_detr), score_threshold=0.0, preprocess="torch"))
    slow = load_model(
        ModelSettings(model=str(tiny_detr), score_threshold=0.0, preprocess="processor")
    )
    a, mask_a = fast.inputs(frames)  # type: ignore[attr-defined]
    b, mask_b = slow.inputs(frames)  # type: ignore[attr-defined]
    assert a.shape == b.shape and mask_a.shape == mask_b.shape and bool((mask_a == mask_b).all())
    assert float((a - b).abs().max()) < 0.02 and float((a - b).abs().mean()) < 1e-3
    ra, rb = fast.predict(frames, (width, height)), slow.predict(frames, (width, height))
    assert [(r["frame"], r["label_id"]) for r in ra] == [(r["frame"], r["label_id"]) for r in rb]
    np.testing.assert_allclose([r["score"] for r in ra], [r["score"] for r in rb], atol=2e-3)


def test_a_hub_model_without_network_names_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="FRAMEFLEET_RANDOM_WEIGHTS=1"):
        load_model(ModelSettings(model="facebook/detr-resnet-50"))


def test_random_weights_give_detr_r50_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(ModelSettings(random_weights=True, score_threshold=0.0))
    assert model.name == "facebook/detr-resnet-50:random-weights"
    params = sum(p.numel() for p in model.model.parameters())  # type: ignore[attr-defined]
    assert 40e6 < params < 43e6  # DETR-R50 has 41.5M parameters
    assert len(model.predict(_frames(1, 64, 48), (64, 48))) == 100  # 100 queries


def test_a_plugged_in_model(tmp_path: Path) -> None:
    model = load_model(ModelSettings(plugin="tests.support.plugin_model:load"))
    records = model.predict(_frames(3), (96, 64))
    table = records_table(
        "vid", model.name, model.schema, records, np.array([0, 5, 10]), np.array([0.0, 0.5, 1.0])
    )
    store = OutputStore(str(tmp_path), SourceSettings())
    store.write_chunk("vid", 0, table)
    back = store.read_chunk("vid", 0)
    assert back.column_names == ["video_id", "frame_index", "pts_s", "embedding", "model"]
    assert back["frame_index"].to_pylist() == [0, 5, 10] and len(back["embedding"][0]) == 3
    with pytest.raises(ModelLoadError):
        load_model(ModelSettings(plugin="tests.support.no_such_module:load"))


# -- outputs -------------------------------------------------------------------------------


def _table(item: str, n: int, offset: int = 0) -> pa.Table:
    records = [
        {
            "frame": i,
            "label_id": 1,
            "label": "cat",
            "score": 0.9,
            "x0": 1.0,
            "y0": 2.0,
            "x1": 3.0,
            "y1": 4.0,
        }
        for i in range(n)
    ]
    return records_table(
        item, "m", DETECTION_SCHEMA, records, np.arange(offset, offset + n), np.arange(n) * 0.5
    )


def test_chunks_are_written_once_and_merged(store: OutputStore) -> None:
    assert store.write_chunk("v1", 0, _table("v1", 3)) is True
    assert store.write_chunk("v1", 0, _table("v1", 99)) is False  # a rewrite is a no-op
    assert store.read_chunk("v1", 0).num_rows == 3
    store.write_chunk("v1", 1, _table("v1", 2, offset=3))
    store.write_chunk("v1", 2, _table("v1", 0))
    uri = store.finalize("v1", 3, DETECTION_SCHEMA, {"frames": 5, "model": "m"})
    assert uri.endswith("v1/_manifest.json") and store.is_complete("v1")
    manifest = store.read_manifest("v1")
    assert manifest["rows"] == 5 and manifest["chunks"] == 3 and manifest["frames"] == 5
    merged = pq.read_table(pa.BufferReader(store.get("v1/detections.parquet")))
    assert merged["frame_index"].to_pylist() == [0, 1, 2, 3, 4]
    assert merged.schema == merged_schema(DETECTION_SCHEMA)
    assert store.finalize("v1", 3, DETECTION_SCHEMA, {"frames": 999}) == uri  # idempotent
    assert store.read_manifest("v1")["frames"] == 5


def test_the_first_write_of_a_chunk_wins_even_between_writers_that_both_checked(
    store: OutputStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers of one chunk (a chunk resent after its timeout, and the slow first call
    still running) both find it missing, then both write: the first write must win, so a
    zombie can never replace a chunk a merge has already read. (Check-then-write let the
    last one win, on S3 and locally.)"""
    monkeypatch.setattr(store, "exists", lambda key: False)  # both looked before either wrote
    assert store.write_chunk("v9", 0, _table("v9", 3)) is True
    assert store.write_chunk("v9", 0, _table("v9", 99)) is False
    assert store.read_chunk("v9", 0).num_rows == 3
    assert store.write_chunk("v9", 1, _table("v9", 2), checked=True) is True
    assert store.write_chunk("v9", 1, _table("v9", 7), checked=True) is False
    assert store.read_chunk("v9", 1).num_rows == 2


def test_finalize_refuses_missing_chunks(store: OutputStore) -> None:
    store.write_chunk("v2", 0, _table("v2", 1))
    with pytest.raises(Exception, match=r"chunks \[1\] are missing"):
        store.finalize("v2", 2, DETECTION_SCHEMA, {})
    assert not store.is_complete("v2")


def test_a_video_with_no_detections_still_gets_a_file(store: OutputStore) -> None:
    store.finalize("empty", 0, DETECTION_SCHEMA, {})
    table = pq.read_table(pa.BufferReader(store.get("empty/detections.parquet")))
    assert table.num_rows == 0 and table.schema == merged_schema(DETECTION_SCHEMA)


def test_item_ids_become_safe_path_components() -> None:
    assert item_dir("abc123_x.y-z") == "abc123_x.y-z"
    assert item_dir("../../etc") == "%2E%2E%2F%2E%2E%2Fetc"
    assert item_dir("..") == "%2E%2E" and item_dir("a/b") == "a%2Fb"
    # never the root's own names, nor one dataset readers leave out (pyarrow skips _x, .x)
    assert item_dir("_index") == "%5Findex" and item_dir("_x/y") == "%5Fx%2Fy"
    assert item_dir(".hidden") == "%2Ehidden" and item_dir("a_b.c") == "a_b.c"


def _size(path: Path) -> int | None:
    """A file's size, None once it is gone (a temporary file renamed or removed)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def test_a_writer_killed_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """kill -9 a process inside a chunk's write: every chunk file that exists is whole, and
    the cut bytes are only in a hidden temporary file. The writer (outputs_writer in
    tests/support) writes a small chunk, then a big one under a file size limit of half the
    big one's bytes: its write stops there and the process blocks inside it (SIGXFSZ
    handled by pause()) until this test kills it. So the kill always lands mid-write: with a
    plain write it left chunk-1 cut at the limit (the old test killed after a sleep, when the
    write was over, and a plain write passed it 10 times out of 10)."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.support.outputs_writer", str(tmp_path)],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            limit, final = map(int, proc.stdout.readline().split())
            assert 0 < limit < final

            def cut() -> list[Path]:  # the file the big chunk went to, stopped at the limit
                return [p for p in tmp_path.glob("v/*") if _size(p) == limit]

            deadline = time.monotonic() + left(120)
            while not cut() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cut(), f"the writer never reached the limit (exit {proc.poll()})"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL  # frozen until this kill, not dead before it
    written = sorted(p.name for p in tmp_path.glob("v/chunk-*.parquet"))
    assert written == ["chunk-0.parquet"], written  # the first chunk, and not the cut one
    assert pq.read_table(tmp_path / "v" / "chunk-0.parquet").num_rows == ROWS[0]  # whole
    (partial,) = cut()  # the cut bytes: in the hidden temporary file only
    assert partial.name.startswith(".chunk-1.parquet.") and partial.name.endswith(".tmp")
    store = OutputStore(str(tmp_path), SourceSettings())
    assert not store.has_chunk("v", 1) and not store.is_complete("v")
    leftovers = [p.name for p in tmp_path.glob("v/*") if not p.name.startswith(".")]
    assert leftovers == ["chunk-0.parquet"], leftovers


_BLOB = pa.schema([("blob", pa.binary())])


def _blobs(item: str, rows: int, offset: int, size: int) -> pa.Table:
    """Rows of incompressible bytes: a chunk of `rows` x `size` bytes."""
    rng = np.random.default_rng(offset)
    records = [{"frame": i, "blob": rng.bytes(size)} for i in range(rows)]
    return records_table(
        item, "m", _BLOB, records, np.arange(offset, offset + rows), np.zeros(rows)
    )


def test_the_merge_streams_and_a_big_merged_file_goes_to_s3_in_parts(
    store: OutputStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merged file over S3's single-PUT limit (5 GB) failed its PUT and was released for
    ever, and the merge held every chunk and the whole file in memory. Scaled down: parts
    of 5 MiB (S3's smallest) and batches of 1 MiB, for a 26 MiB file (the merge's peak stays
    about 7 MiB whatever the file's size; the old one's was the whole file)."""
    from framefleet.workers import outputs

    monkeypatch.setattr(outputs, "MULTIPART_BYTES", 5 << 20)
    monkeypatch.setattr(outputs, "MERGE_BATCH_BYTES", 1 << 20)
    chunks = [_blobs("big", 25, k * 25, 64 << 10) for k in range(16)]
    for k, table in enumerate(chunks):
        store.write_chunk("big", k, table)
    total = sum(t.nbytes for t in chunks)
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        store.finalize("big", len(chunks), _BLOB, {"frames": 400})
    finally:
        pa.set_memory_pool(previous)
    assert pool.max_memory() < total / 2, (pool.max_memory(), total)  # not all at once
    merged = pq.read_table(pa.BufferReader(store.get("big/detections.parquet")))
    assert merged.drop_columns(["uri"]).equals(pa.concat_tables(chunks))
    assert store.read_manifest("big")["rows"] == 400
    if store.is_s3:
        head = s3_client(store.source).head_object(
            Bucket=store.bucket, Key=store._s3_key("big/detections.parquet")
        )
        parts = head["ETag"].strip('"').rpartition("-")[2]  # a multipart upload's ETag
        assert head["ContentLength"] > 20 << 20 and parts.isdigit() and int(parts) >= 4


def test_a_store_without_conditional_writes_is_checked_then_written(
    s3_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that answers If-None-Match with 501 Not Implemented: each write falls back to
    a check, then a plain PUT (the fallback read past its own `return` before)."""
    from tests.support.servers import FaultyProxy

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with FaultyProxy(s3_url, failures=0, conditional_status=501) as proxy:
        settings = SourceSettings(s3_endpoint_url=proxy.url)
        s3_client(settings).create_bucket(Bucket="no-conditional")
        store = OutputStore("s3://no-conditional/runs", settings)
        assert store.write_chunk("v", 0, _table("v", 3)) is True
        assert store.write_chunk("v", 0, _table("v", 99)) is False
        assert store.read_chunk("v", 0).num_rows == 3
    assert "no conditional writes (HTTP 501)" in caplog.text


def test_a_file_system_without_hard_links_is_checked_then_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where link() is refused (EPERM: some FUSE and CIFS mounts), a write falls back to a
    check, then a rename: still whole, still never over an existing file it saw."""
    import errno
    import os

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = OutputStore(str(tmp_path / "out"), SourceSettings())
    assert store.write_chunk("v", 0, _table("v", 3)) is True
    assert store.write_chunk("v", 0, _table("v", 99)) is False
    assert store.read_chunk("v", 0).num_rows == 3
    assert not [p for p in (tmp_path / "out" / "v").iterdir() if p.name.startswith(".")]
