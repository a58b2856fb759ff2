"""What a chaos run or soak reads back at its end (bench/chaoskit/run.py: outputs_present),
on a real Valkey and a real output folder: the outputs of the items the queue still holds,
and of those retention has purged since. The soak's first hour counted 1,061 outputs as
different from the fault-free run's: every item retention had purged, whose outputs (still
on disk) the end never read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from redis import Redis

from bench.chaoskit.run import outputs_present
from framefleet.queue import Queue, State, Verdict
from framefleet.settings import QueueSettings, SourceSettings
from framefleet.workers.outputs import OutputStore
from tests.conftest import ManualClock


def test_the_outputs_of_items_retention_purged_are_read_too(
    tmp_path: Path, valkey_client: Redis
) -> None:
    clock = ManualClock()
    queue = Queue(valkey_client, QueueSettings(name="purged", done_ttl_s=60), clock=clock)
    store = OutputStore(str(tmp_path / "out"), SourceSettings())
    schema = pa.schema([("frame_index", pa.int64()), ("label", pa.string())])

    def finish(item_id: str, version: str) -> None:
        (lease,) = queue.claim(1, "decoder-1")
        assert lease.id == item_id
        video = store.video(item_id, version)
        store.write_chunk(video, 0, pa.table({"frame_index": [0], "label": ["cat"]}, schema))
        uri = store.finalize(video, 1, schema, {"epoch": lease.epoch})
        assert queue.ack(lease, uri) is Verdict.OK

    old, kept, waiting = queue.enqueue(["s3://v/old.mp4", "s3://v/kept.mp4", "s3://v/w.mp4"])
    finish(old, "v1")
    clock.advance(61_000)  # past the done retention: the sweep deletes the item
    queue.sweep()
    finish(kept, "v1")

    held, videos = outputs_present(queue, store, [old, kept, waiting])
    assert {item.id: item.state for item in held} == {kept: State.DONE, waiting: State.QUEUED}
    assert sorted(videos) == sorted(
        [(old, store.video(old, "v1")), (kept, store.video(kept, "v1"))]
    )
