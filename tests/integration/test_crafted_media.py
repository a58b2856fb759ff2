"""Crafted media files (tests/support/crafted.py) through the real pipeline: each ends as
the README says (a dead letter with its class, or the video it really is), and the memory a
crafted file makes FFmpeg allocate is spent in the decoder's child process, whose address
space is bounded, not in the decode actor."""

from __future__ import annotations

import resource
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

from framefleet.queue import Queue
from framefleet.workers.decode import ChunkReader, Limits, Sampling, open_decoder
from framefleet.workers.decode_process import ProcessDecoder
from framefleet.workers.errors import PermanentError
from framefleet.workers.model import FrameModel
from framefleet.workers.pipeline import VideoJob
from tests.support import crafted
from tests.support.jobs import job_env
from tests.support.videos import write_video


@pytest.fixture
def env(tmp_path: Path, valkey_client: Redis, model: FrameModel) -> dict[str, Any]:
    return job_env(tmp_path, valkey_client, model)


def run(env: dict[str, Any], path: Path, **pipeline: Any) -> tuple[Any, Any, dict[str, Any]]:
    """One video through VideoJob: (outcome, item, manifest or {})."""
    settings = env["settings"]
    settings = replace(settings, pipeline=replace(settings.pipeline, **pipeline))
    q: Queue = env["queue"]
    [item_id] = q.enqueue([str(path)])
    [lease] = q.claim(1, "decoder-1")
    out = VideoJob(q, env["store"], env["inference"], settings).run(lease)
    manifest = {}
    if out.status == "acked":
        manifest = env["store"].read_result(out.result)
    return out, q.get(item_id), manifest


def _peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def test_frames_larger_than_the_header_says_are_refused_before_they_are_allocated(
    env: dict[str, Any],
) -> None:
    """5 frames of 64x64, then 9000x9000 ones (81 Mpx, 648 MB each decoded): FFmpeg's
    max_pixels refuses them. Before, the header's size was checked once: the video was
    acked, its boxes in 64x64 coordinates, and the actor took the gigabytes."""
    bomb = crafted.size_bomb(env["videos"] / "bomb.mov", 9000, 9000)
    out, item, _ = run(env, bomb)
    assert out.status == "dead" and item.dead_class == "corrupt", out
    assert "max_pixels" in item.dead_reason, item.dead_reason


def test_a_frame_of_another_size_than_the_first_is_refused(env: dict[str, Any]) -> None:
    """Under max_pixels (2000x2000) but not the size of the frames before: before, acked as
    a 64x64 video (its boxes in the wrong coordinates)."""
    bomb = crafted.size_bomb(env["videos"] / "change.mov", 2000, 2000)
    out, item, _ = run(env, bomb)
    assert out.status == "dead" and item.dead_class == "corrupt", out
    assert "2000x2000" in item.dead_reason and "64x64" in item.dead_reason, item.dead_reason


def test_an_index_claiming_millions_of_samples_costs_the_decoder_process_not_the_actor(
    env: dict[str, Any],
) -> None:
    """A 10-frame MP4 whose sample-size table claims 89 M samples: FFmpeg sizes the index
    from it (about 2 GB) inside av.open. In a child limited to 768 MiB that is a dead letter
    is a dead letter (FFmpeg gives up the index it could not allocate: no decodable frame);
    before, the actor's own memory went past 1 GB and the video was acked."""
    bomb = crafted.index_bomb(env["videos"] / "index.mp4", 89_000_000)
    before = _peak_rss_mib()
    out, item, _ = run(env, bomb, decode_memory_bytes=768 << 20)
    assert out.status == "dead" and item.dead_class in ("over_limit", "not_a_video"), out
    assert _peak_rss_mib() - before < 500  # the gigabytes were the child's


def test_a_decoder_process_killed_mid_video_is_retried_and_the_actor_lives(
    tmp_path: Path,
) -> None:
    """SIGKILL of the child mid-video: what the kernel's OOM killer does, but also what the
    child gets when its worker is killed with its process group (Ray ending the actors of a
    driver that died). A retryable error that says so (dead as over_limit after
    max_attempts), not a crash of the caller. It was a PermanentError: the proof suite saw a
    good video dead-lettered when its coordinator was killed."""
    import os
    import signal

    from framefleet.workers.errors import TransientError

    video = write_video(tmp_path / "v.mp4", frames=30)
    decoder = ProcessDecoder(video, Sampling(), memory_bytes=1 << 30)
    frames = decoder.frames(Sampling(), lambda k: True)
    next(frames)
    os.kill(decoder._child.proc.pid, signal.SIGKILL)
    with pytest.raises(TransientError, match="killed") as caught:
        list(frames)
    assert caught.value.cls == "over_limit" and caught.value.retryable
    decoder.close()


def test_the_child_hands_over_the_same_frames(tmp_path: Path) -> None:
    """Frames come out of the child through the shared buffer (two slots, acked) exactly as
    in this process: the same indices, times and pixels, chunks already done skipped, and a
    resized and an unresized sampling (the buffer's slots sized by the child). The child's
    frames are views of its slots, copied by the reader; with `reuse` (the pipeline's), every
    chunk is the reader's one buffer, and still right when taken before the next."""
    video = write_video(tmp_path / "v.mp4", frames=70)
    for sampling in (Sampling(width=48, height=32), Sampling(stride=3)):
        here = open_decoder(video, sampling)
        there = ProcessDecoder(video, sampling, memory_bytes=1 << 30)
        again = ProcessDecoder(video, sampling, memory_bytes=1 << 30)
        try:
            a = list(ChunkReader(here, sampling, 8, done={1}))
            b = list(ChunkReader(there, sampling, 8, done={1}))
            buffers: list[np.ndarray] = []
            c = []
            for chunk in ChunkReader(again, sampling, 8, done={1}, reuse=True):
                buffers.append(chunk.images)
                c.append(replace(chunk, images=chunk.images.copy()))
        finally:
            here.close()
            there.close()
            again.close()
        assert [x.index for x in b] == [x.index for x in c] == [x.index for x in a]
        assert len(a) >= 2
        assert all(np.shares_memory(buffers[0], x) for x in buffers[1:])
        assert not any(np.shares_memory(b[0].images, x.images) for x in b[1:])
        for x, y, z in zip(a, b, c, strict=True):
            for got in (y, z):
                assert np.array_equal(x.frame_indices, got.frame_indices)
                assert np.array_equal(x.pts_s, got.pts_s)
                assert x.images.shape == got.images.shape
                assert np.array_equal(x.images, got.images)


def test_a_decoder_process_serves_video_after_video_and_only_when_it_ended_cleanly(
    tmp_path: Path,
) -> None:
    """The child that read a video to its end (or was asked for no frames) decodes the next
    one, with the same frames as a fresh child; one left mid-video, or that failed on its
    video, is killed; an idle child that died is replaced without the video noticing."""
    import os
    import signal

    small = write_video(tmp_path / "small.mp4", frames=20, width=48, height=32)
    big = write_video(tmp_path / "big.mp4", frames=30)  # larger frames: the buffer grows
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    sampling = Sampling()

    def read(path: Path) -> tuple[int, list[np.ndarray]]:
        decoder = ProcessDecoder(path, sampling, memory_bytes=1 << 30)
        try:
            pid = decoder._child.proc.pid
            return pid, [c.images.copy() for c in ChunkReader(decoder, sampling, 8, reuse=True)]
        finally:
            decoder.close()

    here = open_decoder(big, sampling)
    try:
        expected = [c.images for c in ChunkReader(here, sampling, 8)]
    finally:
        here.close()
    first, _ = read(small)
    second, got = read(big)
    assert second == first  # the same child, its buffer grown for the larger frames
    assert len(got) == len(expected) and all(map(np.array_equal, got, expected))
    third, _ = read(small)
    assert third == first

    peek = ProcessDecoder(big, sampling, memory_bytes=1 << 30)  # info only: no frames
    assert peek._child.proc.pid == first
    peek.close()
    left = ProcessDecoder(big, sampling, memory_bytes=1 << 30)
    assert left._child.proc.pid == first
    frames = left.frames(sampling, lambda k: True)
    next(frames)
    left.close()  # left in the middle of the video: killed
    assert left._child.proc.returncode == -signal.SIGKILL
    fresh, _ = read(small)
    assert fresh != first

    with pytest.raises(PermanentError):
        ProcessDecoder(corrupt, sampling, memory_bytes=1 << 30)
    after, _ = read(small)
    assert after != fresh  # the one that failed on its video is not kept

    os.kill(after, signal.SIGKILL)  # an idle child dies: the next video gets a fresh one
    last, got = read(big)
    assert last != after and all(map(np.array_equal, got, expected))


@pytest.mark.parametrize("prefer", ["pyav", "decord"])
def test_the_video_is_never_its_cover_picture(env: dict[str, Any], prefer: str) -> None:
    """An MP4 whose first video stream is its attached cover (320x240): before, PyAV acked
    the one picture, and decord decoded the video but reported the cover's size."""
    video = crafted.cover_first(env["videos"] / "cover.mp4", frames=40)
    out, _, manifest = run(env, video, decoder=prefer)
    assert out.status == "acked" and out.frames == 40, out
    assert manifest["source_size"] == [96, 64], manifest


def test_decord_is_never_given_a_playlist(env: dict[str, Any], tmp_path: Path) -> None:
    """A file in an allowed root that starts as an HLS playlist naming a video outside it and
    goes on as raw H.264: the restricted probe takes it for H.264, decord's older FFmpeg for
    a playlist. Before, decord decoded the outside video (20 frames) instead of the file's
    own 30."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_video(outside / "secret.ts", frames=20)
    video = crafted.playlist_then_h264(env["videos"] / "list.mp4", secret, frames=30)
    decoder = open_decoder(video, Sampling(), "decord")  # refused: PyAV's, for what it is
    try:
        frames = list(decoder.frames(Sampling(), lambda k: False))
        assert decoder.info.decoder == "pyav" and len(frames) == 30, decoder.info
    finally:
        decoder.close()
    out, _, _ = run(env, video, decoder="decord")
    assert out.status == "acked" and out.frames == 30, out


def test_times_are_seconds_from_the_first_frame(env: dict[str, Any]) -> None:
    """An MPEG-TS clip whose clock starts at 25 h (broadcast clocks start anywhere): before,
    a dead letter over max_duration_s (24 h) for 2 s of video, and pts_s absolute."""
    start_ms = 25 * 3600 * 1000
    video = write_video(
        env["videos"] / "late.ts", frames=30, pts=[start_ms + i * 66 for i in range(30)]
    )
    out, _, manifest = run(env, video)
    assert out.status == "acked" and out.frames == 30, out
    store = env["store"]
    table = store.read_detections(store.video_of(out.result))
    assert manifest["frames"] == 30
    pts = table.column("pts_s").to_pylist()
    assert not pts or (min(pts) >= 0 and max(pts) < 3), pts


def test_a_clock_that_jumps_back_keeps_every_frame_it_should(tmp_path: Path) -> None:
    """Two MPEG-TS files joined end to end (the second's clock starts again at 0), sampled
    at 5 fps out of 15: before, every frame after the jump was dropped silently (their times
    were before the last kept one)."""
    first = write_video(tmp_path / "a.ts", frames=30)
    second = write_video(tmp_path / "b.ts", frames=30)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    sampling = Sampling(fps=5)
    for prefer in ("pyav", "decord"):
        decoder = open_decoder(joined, sampling, prefer)
        try:
            frames = list(decoder.frames(sampling, lambda k: False))
        finally:
            decoder.close()
        times = [f.pts_s for f in frames]
        assert times == sorted(times) and times[0] == 0.0, (prefer, times)
        assert 19 <= len(frames) <= 21, (prefer, len(frames), times)  # 60 frames at 15 fps


@pytest.mark.parametrize("prefer", ["pyav", "decord"])
def test_a_turned_video_reaches_the_model_upright(tmp_path: Path, prefer: str) -> None:
    """A 64x32 video whose display matrix turns it 90 degrees counter-clockwise (a phone's
    portrait video): frames of 32x64, the coded frames' left band at the bottom, and the
    size boxes are reported in is the displayed one. Before, unturned frames and sizes.
    (decord, which turns frames itself but garbles them when it also resizes, leaves such
    a video to PyAV.)"""
    video = crafted.turned(tmp_path / "turned.mp4", 90)
    sampling = Sampling()
    decoder = open_decoder(video, sampling, prefer)
    try:
        assert (decoder.info.width, decoder.info.height) == (32, 64)
        [chunk] = list(ChunkReader(decoder, sampling, 8))
    finally:
        decoder.close()
    image = chunk.images[0].astype(np.int32)
    assert image.shape == (64, 32, 3) and chunk.source_size == (32, 64)
    assert image[-12:].mean() > 200 and image[:40].mean() < 60, image.mean(axis=(1, 2))


def test_a_bug_in_the_decoder_process_is_a_bug_not_a_bad_video(tmp_path: Path) -> None:
    """framefleet's own error inside the child (here a limit of the wrong type) comes back
    as an exception of the bug path (RuntimeError, with the child's traceback), never as a
    dead letter of the video's."""
    video = write_video(tmp_path / "v.mp4", frames=5)
    broken = Limits(max_pixels="many")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="TypeError"):
        ProcessDecoder(video, Sampling(), limits=broken, memory_bytes=1 << 30)
