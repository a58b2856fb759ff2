"""Decoding real encoded videos (written here with PyAV) with PyAV and decord."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from framefleet.settings import PipelineSettings
from framefleet.workers.decode import Chunk, Sampling, chunks, count_chunks, open_decoder
from framefleet.workers.errors import PermanentError
from tests.support.videos import write_audio_only, write_corrupt, write_truncated, write_video

DECODERS = ["decord", "pyav"]
VFR_PTS = [0, 10, 50, 60, 200, 210, 400, 405, 900, 1000] + [1000 + 33 * i for i in range(1, 21)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    h264 = write_video(d / "h264.mp4", frames=45, fps=15)
    return {
        "h264": h264,
        "vp9": write_video(d / "vp9.webm", codec="libvpx-vp9", frames=30, fps=15),
        "odd": write_video(d / "odd.mp4", width=97, height=61, pix_fmt="yuv444p", frames=20),
        "vfr": write_video(d / "vfr.mp4", frames=30, pts=VFR_PTS),
        "one": write_video(d / "one.mp4", frames=1),
        "corrupt": write_corrupt(
            d / "corrupt.mp4", write_video(d / "big.mp4", frames=60, width=160, height=120)
        ),
        "truncated": write_truncated(d / "truncated.mp4", h264),
        "audio": write_audio_only(d / "audio.m4a"),
    }


def _all(
    path: Path,
    sampling: Sampling,
    decoder: str,
    chunk_frames: int = 8,
    done: frozenset[int] = frozenset(),
) -> list[Chunk]:
    dec = open_decoder(path, sampling, prefer=decoder)
    try:
        assert dec.info.decoder == decoder, "the other decoder opened it"  # no silent fallback
        return list(chunks(dec, sampling, chunk_frames, done))
    finally:
        dec.close()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("name", "frames", "size"),
    [
        ("h264", 45, (96, 64)),
        ("vp9", 30, (96, 64)),
        ("odd", 20, (97, 61)),
        ("vfr", 30, (96, 64)),
        ("one", 1, (96, 64)),
    ],
)
def test_every_frame_with_its_timestamp(
    videos: dict[str, Path], decoder: str, name: str, frames: int, size: tuple[int, int]
) -> None:
    got = _all(videos[name], Sampling(), decoder)
    indices = np.concatenate([c.frame_indices for c in got])
    assert indices.tolist() == list(range(frames))
    assert [c.index for c in got] == list(range(len(got)))
    assert all(len(c) == 8 for c in got[:-1])
    first = got[0]
    assert first.images.shape[1:] == (size[1], size[0], 3) and first.images.dtype == np.uint8
    assert first.source_size == size
    pts = np.concatenate([c.pts_s for c in got])
    assert np.all(np.diff(pts) > 0) and pts[0] == 0
    if name == "vfr":
        np.testing.assert_allclose(pts, np.array(VFR_PTS) / 1000, atol=1e-3)


@pytest.mark.parametrize("decoder", DECODERS)
def test_sampling_by_fps_follows_timestamps(videos: dict[str, Path], decoder: str) -> None:
    got = _all(videos["vfr"], Sampling(fps=5), decoder, chunk_frames=100)
    # the first frame at or after each 0.2 s step
    np.testing.assert_allclose(
        got[0].pts_s, [0.0, 0.2, 0.4, 0.9, 1.0, 1.231, 1.429, 1.627], atol=1e-3
    )
    steady = _all(videos["h264"], Sampling(fps=5), decoder, chunk_frames=100)[0]
    assert steady.frame_indices.tolist() == list(range(0, 45, 3))


@pytest.mark.parametrize("decoder", DECODERS)
def test_sampling_by_stride_and_resize(videos: dict[str, Path], decoder: str) -> None:
    # (width 48 would not test decord: it garbles that size, and PyAV takes over)
    got = _all(videos["h264"], Sampling(stride=4, width=64), decoder, chunk_frames=100)[0]
    assert got.frame_indices.tolist() == list(range(0, 45, 4))
    assert got.images.shape == (12, 43, 64, 3) and got.source_size == (96, 64)
    other = _all(videos["h264"], Sampling(width=40, height=40), decoder, chunk_frames=100)[0]
    assert other.images.shape[1:] == (40, 40, 3)


def test_both_decoders_give_the_same_frames(videos: dict[str, Path]) -> None:
    for name in ("h264", "vp9", "odd"):
        a, b = (
            np.concatenate([c.images for c in _all(videos[name], Sampling(), d)]) for d in DECODERS
        )
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0, name


def _bars(i: int, width: int, height: int) -> np.ndarray:
    """Saturated colour bars (a wrong YUV->RGB matrix or range moves them by tens of
    levels), shifted a pixel a frame, with a gradient below."""
    colours = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]],
        np.uint8,
    )
    x = (np.arange(width) + i) * len(colours) // width % len(colours)
    image = np.repeat(colours[x][None], height, axis=0)
    image[height // 2 :] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    return image


def test_a_resize_in_yuv_is_as_true_to_the_source_as_one_in_rgb(tmp_path: Path) -> None:
    """PyAV's yuv420p frames are resized in YUV and then made RGB (decode.py,
    _resize_in_yuv: 0.4 ms a frame cheaper): on saturated colour bars, as close to the
    source's own pixels (each 2x2 block's mean) as FFmpeg's one-pass resize and conversion
    within a fifth, no colour cast against it, most pixels within a level of it. Other
    formats (full range here) go the one-pass way."""
    import av
    from av.video.reformatter import VideoReformatter

    source = np.stack([_bars(i, 320, 180) for i in range(12)]).astype(float)
    truth = source.reshape(12, 90, 2, 160, 2, 3).mean(axis=(2, 4))
    for pix_fmt in ("yuv420p", "yuvj420p"):
        video = write_video(
            tmp_path / f"{pix_fmt}.mp4", width=320, height=180, frames=12, pix_fmt=pix_fmt,
            image=_bars,
        )  # fmt: skip
        chunks = _all(video, Sampling(width=160, height=90), "pyav")
        got = np.concatenate([c.images for c in chunks]).astype(int)
        scaler, one_pass = VideoReformatter(), []
        with av.open(str(video)) as container:
            for frame in container.decode(video=0):
                assert frame.format.name == pix_fmt
                one_pass.append(scaler.reformat(frame, 160, 90, "rgb24").to_ndarray())
        want = np.stack(one_pass).astype(int)
        assert got.shape == want.shape == (12, 90, 160, 3)
        if pix_fmt != "yuv420p":
            assert np.array_equal(got, want)
            continue
        assert np.abs(got - truth).mean() <= 1.2 * np.abs(want - truth).mean()
        diff = got - want
        assert np.abs(diff.reshape(-1, 3).mean(axis=0)).max() < 1.0  # no colour cast
        assert np.median(np.abs(diff)) <= 1
        assert not np.array_equal(got, want)  # it was resized the cheaper way


@pytest.mark.parametrize("decoder", DECODERS)
def test_resume_skips_done_chunks_and_gives_the_same_rest(
    videos: dict[str, Path], decoder: str
) -> None:
    full = _all(videos["h264"], Sampling(stride=2), decoder, chunk_frames=4)
    rest = _all(
        videos["h264"], Sampling(stride=2), decoder, chunk_frames=4, done=frozenset({0, 1, 3})
    )
    assert [c.index for c in rest] == [k for k in range(len(full)) if k not in {0, 1, 3}]
    for c in rest:
        np.testing.assert_array_equal(c.images, full[c.index].images)
        np.testing.assert_array_equal(c.frame_indices, full[c.index].frame_indices)


def test_chunk_count_is_known_up_front_with_decord(videos: dict[str, Path]) -> None:
    dec = open_decoder(videos["h264"], Sampling(stride=2), prefer="decord")
    assert (
        count_chunks(dec, Sampling(stride=2), 4)
        == 6
        == len(list(chunks(dec, Sampling(stride=2), 4)))
    )
    assert (
        count_chunks(open_decoder(videos["h264"], Sampling(), prefer="pyav"), Sampling(), 4) is None
    )


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt", "corrupt video at frame"),
        ("truncated", "not a readable video"),
        ("audio", "no video stream"),
    ],
)
def test_bad_files_are_permanent_errors(
    videos: dict[str, Path], decoder: str, name: str, reason: str
) -> None:
    with pytest.raises(PermanentError, match=reason):
        _all(videos[name], Sampling(), decoder)


def test_a_file_the_preferred_decoder_cannot_open_goes_to_the_other(tmp_path: Path) -> None:
    """decord opens no GIF; preferred, it gives way to PyAV, which gives the same frames as
    PyAV preferred. A file neither opens names both reasons."""
    gif = write_video(tmp_path / "clip.gif", codec="gif", pix_fmt="rgb8", frames=10)
    with pytest.raises(Exception):  # noqa: B017 - decord's own error, whatever its type
        import decord

        decord.VideoReader(str(gif))
    dec = open_decoder(gif, Sampling(), prefer="decord")
    try:
        assert dec.info.decoder == "pyav"
        got = list(chunks(dec, Sampling(), 100))
    finally:
        dec.close()
    want = _all(gif, Sampling(), "pyav", chunk_frames=100)
    assert [c.frame_indices.tolist() for c in got] == [c.frame_indices.tolist() for c in want]
    assert all(np.array_equal(a.images, b.images) for a, b in zip(got, want, strict=True))
    # a size decord decodes wrongly (four bytes a pixel at 48x32): PyAV's frames instead
    h264 = write_video(tmp_path / "h264.mp4", frames=5)
    dec = open_decoder(h264, Sampling(width=48), prefer="decord")
    try:
        assert dec.info.decoder == "pyav"
        assert next(chunks(dec, Sampling(width=48), 5)).images.shape == (5, 32, 48, 3)
    finally:
        dec.close()
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 50)
    with pytest.raises(PermanentError, match="not a readable video") as refused:
        open_decoder(notes, Sampling(), prefer="decord")
    assert refused.value.reason.count(";") >= 1  # the reasons of both


def test_empty_and_non_video_files(tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("these are not frames\n" * 50)
    with pytest.raises(PermanentError, match="empty"):
        _all(tmp_path / "zero.mp4", Sampling(), "decord")
    with pytest.raises(PermanentError, match="not a readable video"):
        _all(tmp_path / "notes.mp4", Sampling(), "decord")


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_memory_stays_flat(tmp_path: Path, decoder: str) -> None:
    """RSS after 200 videos is within 50 MB of RSS after 10 (sequential reads)."""
    files = [
        write_video(tmp_path / f"v{i}.mp4", frames=40, width=320, height=240) for i in range(5)
    ]
    rss = {}
    for n in range(1, 201):
        for chunk in _all(files[n % 5], Sampling(), decoder, chunk_frames=16):
            assert chunk.images.shape[1:] == (240, 320, 3)
        if n in (10, 200):
            rss[n] = _rss_mb()
    assert rss[200] - rss[10] < 50, rss


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 frames of 320x240: 138 MB once decoded to RGB."""
    return write_video(
        tmp_path_factory.mktemp("long") / "long.mp4", frames=600, fps=30, width=320, height=240
    )


def _growth_while_paused(path: Path, decoder: str, wait_s: float = 1.5) -> float:
    """The most MB that RSS grew by while the reader, one chunk in, waited wait_s (as a
    decode actor does when inference is the slower stage), sampled every 0.1 s.

    Measured in a fresh interpreter, as a decode actor's process is: in this one, memory that
    earlier tests decoded into and freed would be reused without RSS growing."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        growth = pool.submit(_growth_here, path, decoder, wait_s)
        return growth.result(timeout=120)


def _growth_here(path: Path, decoder: str, wait_s: float) -> float:
    dec = open_decoder(path, Sampling(), prefer=decoder)
    assert dec.info.decoder == decoder
    try:
        reader = iter(chunks(dec, Sampling(), 16))
        first = next(reader)
        assert len(first) == 16
        before, growth = _rss_mb(), 0.0
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            time.sleep(0.1)
            growth = max(growth, _rss_mb() - before)
        return growth
    finally:
        dec.close()


def test_the_default_decoder_holds_only_the_frames_taken(long_video: Path) -> None:
    assert PipelineSettings().decoder == "pyav"
    growth = _growth_while_paused(long_video, "pyav")
    assert growth < 10, f"RSS grew {growth:.0f} MB while no frame was taken"
