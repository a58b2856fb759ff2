"""RayInference's dispatch: each chunk to an inference actor this decode actor has the
fewest chunks out at, the faster lately of two drawn at random (tested on a scripted
adapter: which actor a chunk goes to is all that is checked here;
tests/integration/test_ray_pipeline.py runs it on Ray)."""

from __future__ import annotations

import collections
import gc
from typing import Any

import numpy as np

from framefleet.settings import PipelineSettings
from framefleet.workers.actors import FADE, RayInference, RayPending
from framefleet.workers.decode import Chunk
from framefleet.workers.pipeline import ChunkDone


class Ref:
    def __init__(self, actor: str) -> None:
        self.actor = actor


class Adapter:
    """Calls that return at once, recording where each chunk went."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.finishing = False  # whether the chunks out are done at the next look

    def actor_id(self, actor: str) -> str:
        return actor

    def put(self, value: Any) -> Any:
        return value

    def call(self, actor: str, method: str, *args: Any) -> Ref:
        self.sent.append(actor)
        return Ref(actor)

    def get(self, ref: Ref, timeout: float | None = None) -> ChunkDone:
        return ChunkDone(1)

    def done(self, refs: list[Ref]) -> list[Ref]:
        return [r for r in refs if self.finishing]  # none, until the test says so


ACTORS = ["a", "b", "c", "d"]


def chunk(index: int) -> Chunk:
    return Chunk(index, np.zeros((1, 2, 2, 3), np.uint8), np.array([index]), np.array([0.0]))


def pool(adapter: Adapter) -> RayInference:
    return RayInference(adapter, list(ACTORS), "m", None, PipelineSettings())  # type: ignore[arg-type]


def test_chunks_out_at_once_go_to_different_actors() -> None:
    adapter = Adapter()
    inference = pool(adapter)
    out = [inference.submit("v", "v", chunk(i)) for i in range(4)]
    assert sorted(adapter.sent) == ACTORS  # one each, not two at one actor while one idles
    more = [inference.submit("v", "v", chunk(i)) for i in range(4, 8)]
    assert collections.Counter(adapter.sent) == dict.fromkeys(ACTORS, 2)
    assert len(out + more) == 8


def test_a_settled_chunk_no_longer_counts() -> None:
    adapter = Adapter()
    inference = pool(adapter)
    out = [inference.submit("v", "v", chunk(i)) for i in range(4)]
    settled = out[2]
    settled.result()
    inference.submit("v", "v", chunk(4))
    assert adapter.sent[-1] == adapter.sent[2]  # the only actor with nothing out


def test_a_chunk_given_up_on_no_longer_counts() -> None:
    """An item that fails or stops drops its chunks out unsettled: they must not weigh on
    their actors for the rest of the decode actor's life."""
    adapter = Adapter()
    inference = pool(adapter)
    out = [inference.submit("v", "v", chunk(i)) for i in range(4)]
    dropped = adapter.sent[1]
    del out[1]
    gc.collect()
    inference.submit("v", "v", chunk(4))
    assert adapter.sent[-1] == dropped
    assert len(out) == 3


def test_ties_are_broken_at_random() -> None:
    """Decode actors that start together must not all send their first chunks to the same
    actor (the round robin from the first actor did: bench/scale.py's bend at 16)."""
    firsts: collections.Counter[str] = collections.Counter()
    for _ in range(200):
        adapter = Adapter()
        pool(adapter).submit("v", "v", chunk(0))
        firsts[adapter.sent[0]] += 1
    assert set(firsts) == set(ACTORS)
    assert max(firsts.values()) < 100  # each about 50 of 200


def test_avoided_actors_are_left_out_while_another_is_live() -> None:
    adapter = Adapter()
    inference = pool(adapter)
    for _ in range(20):
        assert inference.pick(avoid={"a", "b", "c"}) == "d"
    assert inference.pick(avoid=set(ACTORS)) in ACTORS  # none other: any


def test_an_actor_whose_chunks_take_longer_is_left_for_the_others() -> None:
    """Other decode actors keep one actor busy (this one cannot see their chunks): its
    chunks take longer, and this decode actor sends it none while two others are faster."""
    adapter = Adapter()
    inference = pool(adapter)
    out = [RayPending(inference, "v", "v", chunk(i)) for i in range(4)]
    for pending in out:  # a's chunk took 10 s, the others' 1 s
        pending.sent_at -= 10.0 if pending.actor_id == "a" else 1.0
    adapter.finishing = True
    inference.pick()  # looks: all four done
    del out
    gc.collect()
    picked = collections.Counter(inference.pick() for _ in range(200))
    assert picked["a"] == 0 and set(picked) == {"b", "c", "d"}, picked
    assert RayPending(inference, "v", "v", chunk(9)).actor != "a"
    # not tried for many of its own lengths, its slow spell fades: it is tried again
    took, at = inference._latency["a"]
    inference._latency["a"] = (took, at - 20 * FADE * took)
    assert "a" in {inference.pick() for _ in range(200)}
