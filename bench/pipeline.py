"""Pipeline benchmark: framefleet against its ceilings, a naive loop and Ray Data, in one run.

On generated 720p H.264 clips, prints one JSON line with frames/s for:
- decode_ceiling: the decode actors' work (decode_actors processes, no model);
- model_ceiling: the inference actors' work (inference_actors processes, frames ready);
  both measured side by side (as they run in the pipeline) and each alone;
- framefleet: the whole pipeline (queue, decode actors, inference actors, outputs, acks),
  cold (actor start-up included), then warm (actors already up, the service case) in
  --rounds rounds, each compared with the mean of the side-by-side ceilings measured just
  before and just after it: medians reported;
- naive_loop: one process, one video at a time: decode all its frames, then run the model
  (what a single-GPU batch job does), with every core for torch;
- decode_actor_peak_private_mb: the most private memory (RssAnon, sampled every 0.1 s) a
  decode actor held during the framefleet runs: its decoded frames are bounded (the chunks
  being filled; those out are in the object store);
- ray_data: the same job as a Ray Data pipeline (read_videos -> map_batches with the model
  in actors), start-up included as it is a batch job; its workers' largest private memory;
- daft: the same job in Daft (read_video_frames -> a class UDF with the model, in
  .venv-peers: scripts/peers-venv; bench/peers/daft_detect.py), start-up included; the
  private memory of its process and its UDF processes.
Targets: framefleet warm >= 90% of min(decode ceiling, model ceiling); framefleet cold
ahead of the best peer and warm ahead of the naive loop; a decode actor under 600 MB.
Run: `framefleet bench pipeline` or `python bench/pipeline.py [--quick]`.
With --gpu (on a GPU machine): DETR-R50 with random weights in bf16, GPU utilisation too.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

import argparse
import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from bench import emit
from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.settings import (
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)

ROOT = Path(__file__).resolve().parents[1]


def make_clips(folder: Path, n: int, seconds: float, fps: int = 30) -> list[Path]:
    """720p H.264 clips with moving shapes and some noise (so the encoder has work)."""
    import av

    rng = np.random.default_rng(0)
    paths = []
    for c in range(n):
        path = folder / f"clip-{c}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(
                "libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"}
            )
            stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
            base = rng.integers(0, 60, (720, 1280, 3), np.uint8)
            for i in range(int(seconds * fps)):
                img = base.copy()
                x = (i * 17 + c * 100) % 1000
                img[200:400, x : x + 250] = (200, 80 + c * 20, 40)
                img[450:600, 1000 - x // 2 : 1150 - x // 2] = (30, 180, 220)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def _decode_all(paths: list[str], settings: Settings) -> int:
    from framefleet.workers.decode import ChunkReader, Sampling, open_decoder

    p = settings.pipeline
    sampling = Sampling(fps=p.sample_fps, stride=p.stride, width=p.width, height=p.height)
    frames = 0
    for path in paths:
        decoder = open_decoder(Path(path), sampling, prefer=p.decoder, threads=p.decode_threads)
        for chunk in ChunkReader(decoder, sampling, p.chunk_frames):
            frames += len(chunk)
        decoder.close()
    return frames


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def _decode_for(paths: list[str], settings: Settings, start_at: float, seconds: float) -> int:
    """Decode the videos round and round from start_at for `seconds`; frames decoded."""
    from framefleet.workers import heap
    from framefleet.workers.decode import ChunkReader, Sampling, open_decoder

    heap.keep_freed_memory()  # as the pipeline's decoding processes do

    p = settings.pipeline
    sampling = Sampling(fps=p.sample_fps, stride=p.stride, width=p.width, height=p.height)
    time.sleep(max(0.0, start_at - time.time()))
    frames = 0
    while paths and time.time() < start_at + seconds:
        for path in paths:
            decoder = open_decoder(Path(path), sampling, prefer=p.decoder, threads=p.decode_threads)
            for chunk in ChunkReader(decoder, sampling, p.chunk_frames):
                frames += len(chunk)
                if time.time() >= start_at + seconds:
                    break
            decoder.close()
    return frames


class ModelOnly:
    """The inference actors' work without the rest: predict on ready frames."""

    def __init__(self, settings: Settings, shape: tuple[int, int]) -> None:
        from framefleet.workers import heap
        from framefleet.workers.model import load_model

        heap.keep_freed_memory()  # as the inference actors do

        self.model = load_model(settings.model)
        n = settings.pipeline.chunk_frames
        self.images = np.random.default_rng(0).integers(0, 255, (n, *shape, 3), np.uint8)
        self.model.predict(self.images, (1280, 720))  # warm, as the inference actors are

    def run_for(self, start_at: float, seconds: float) -> int:
        time.sleep(max(0.0, start_at - time.time()))
        done = 0
        while time.time() < start_at + seconds:
            self.model.predict(self.images, (1280, 720))
            done += len(self.images)
        return done


class Ceilings:
    """Each stage's throughput with the same processes as the pipeline: decode_actors
    decoding processes and inference_actors model processes. `alone` runs one stage with
    the machine to itself; `side_by_side` runs both at once, as in the pipeline, so that on a
    small CPU machine they share the cores the way the pipeline's actors do. They ask Ray for
    no CPUs: the pipeline's actors stay up (idle) between the rounds."""

    def __init__(
        self, ray: Any, paths: list[Path], settings: Settings, shape: tuple[int, int]
    ) -> None:
        p = settings.pipeline
        self.ray, self.settings = ray, settings
        self.decode = ray.remote(num_cpus=0)(_decode_for)
        model_cls = ray.remote(num_cpus=0, num_gpus=0)(ModelOnly)
        self.models = [model_cls.remote(settings, shape) for _ in range(p.inference_actors)]
        ray.get([m.__ray_ready__.remote() for m in self.models])
        self.parts = _split([str(x) for x in paths], p.decode_actors)
        ray.get([self.decode.remote([], settings, 0.0, 0.0) for _ in self.parts])  # warm up

    def _decoding(self, start: float, seconds: float) -> list[Any]:
        return [self.decode.remote(part, self.settings, start, seconds) for part in self.parts]

    def alone(self, seconds: float) -> tuple[float, float]:
        get = self.ray.get
        start = time.time() + 1.0
        d = sum(get(self._decoding(start, seconds)))
        start = time.time() + 1.0
        m = sum(get([x.run_for.remote(start, seconds) for x in self.models]))
        return d / seconds, m / seconds

    def side_by_side(self, seconds: float) -> tuple[float, float]:
        start = time.time() + 1.0
        d_refs = self._decoding(start, seconds)
        m_refs = [x.run_for.remote(start, seconds) for x in self.models]
        d, m = sum(self.ray.get(d_refs)), sum(self.ray.get(m_refs))
        return d / seconds, m / seconds

    def close(self) -> None:
        for x in self.models:
            self.ray.kill(x)


class FramefleetRuns:
    """The whole pipeline: a cold run (actor start-up and model loading included), then warm
    runs on the same fleet (the service case), each on a fresh queue and output folder."""

    def __init__(
        self, paths: list[Path], settings: Settings, server: EmbeddedServer, frames: int
    ) -> None:
        self.paths, self.settings, self.server, self.frames = paths, settings, server, frames
        self.client = connect(server.url)
        self.fleet: Any = None
        self.decoder_pids: list[int] = []
        self.decoder_peak_mb = 0  # the decode actors' largest private memory seen
        # run()'s frames/s counts until the driver sees the queue drained (run_until_empty:
        # its 0.1 s polls, the actors' last 0.2 s claims), as the peers' figures count until
        # their call returns; this one, until the last video's ack (the server's clock)
        self.to_last_ack_fps = 0.0

    def run(self) -> float:
        from framefleet.workers.actors import Fleet

        self.client.flushall()
        shutil.rmtree(self.settings.pipeline.out, ignore_errors=True)
        q = Queue(self.client, self.settings.queue)
        t, start_ms = time.perf_counter(), q.now_ms()
        if self.fleet is None:
            self.fleet = Fleet(self.settings, self.server.url).start()
            self.decoder_pids = [
                self.fleet.adapter.get(self.fleet.adapter.call(d, "ready"))[0]
                for d in self.fleet.decoders
            ]
        ids = q.enqueue([str(p) for p in self.paths])
        done = threading.Event()
        sampler = threading.Thread(target=self._sample_memory, args=(done,), daemon=True)
        sampler.start()
        try:
            outcomes = self.fleet.run_until_empty(timeout=3600)
        finally:
            done.set()
            sampler.join()
        seconds = time.perf_counter() - t
        acked = [o for o in outcomes if o["status"] == "acked"]
        if len(acked) != len(self.paths) or sum(o["frames"] for o in acked) != self.frames:
            raise RuntimeError(f"framefleet did not process every frame: {outcomes}")
        last_ack_ms = max(item.done_ms or 0 for item in q.items(ids))
        self.to_last_ack_fps = self.frames / ((last_ack_ms - start_ms) / 1000)
        return self.frames / seconds

    def _sample_memory(self, done: threading.Event) -> None:
        """Every 0.1 s: the decode actors' private memory (RssAnon: decoded frames, the
        heap; not the object store's shared pages, which RSS counts once a process has
        written them)."""
        while not done.wait(0.1):
            for pid in self.decoder_pids:
                self.decoder_peak_mb = max(self.decoder_peak_mb, _rss_anon_mb(pid))

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        self.client.close()


def bench_naive(paths: list[Path], settings: Settings) -> float:
    """One process, every core for torch: decode a whole video, then infer it, then the next."""
    from framefleet.workers.decode import ChunkReader, Sampling, open_decoder
    from framefleet.workers.model import load_model

    p = settings.pipeline
    model = load_model(replace(settings.model, torch_threads=os.cpu_count() or 1))
    sampling = Sampling(fps=p.sample_fps, stride=p.stride, width=p.width, height=p.height)
    frames = 0
    t = time.perf_counter()
    for path in paths:
        decoder = open_decoder(path, sampling, prefer=p.decoder, threads=p.decode_threads)
        images = np.concatenate([c.images for c in ChunkReader(decoder, sampling, p.chunk_frames)])
        decoder.close()
        for start in range(0, len(images), p.chunk_frames):
            model.predict(
                images[start : start + p.chunk_frames], (decoder.info.width, decoder.info.height)
            )
        frames += len(images)
    return frames / (time.perf_counter() - t)


# Ray Data's own workers, by process title: its read tasks and its map actors (not Ray's
# agents, idle workers, or framefleet's actors ending from the run before)
RAY_DATA_WORKERS = re.compile(r"ray::(Read|MapWorker)")


class PeakMemory:
    """Every 0.1 s while it runs: the private memory (RssAnon) of each process under this
    one whose name starts with `prefix` (Ray's workers: ray::...), the largest by name."""

    def __init__(self, prefix: str = "ray::") -> None:
        self.prefix = prefix
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(0.1):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    name = child.name().split(".", 1)[0]  # without the method running
                    mb = _rss_anon_mb(child.pid)
                    if name.startswith(self.prefix) and mb:
                        self.peaks[name] = max(self.peaks.get(name, 0), mb)


def _rss_anon_mb(pid: int) -> int:
    with contextlib.suppress(OSError, StopIteration):
        with open(f"/proc/{pid}/status") as f:
            line = next(x for x in f if x.startswith("RssAnon:"))
        return int(line.split()[1]) // 1024
    return 0


def bench_daft(
    paths: list[Path], settings: Settings, shape: tuple[int, int], model_dir: Path | None
) -> dict[str, Any]:
    """The same job in Daft (bench/peers/daft_detect.py, in .venv-peers: scripts/peers-venv),
    its video reader into the same model in as many UDF processes as framefleet has
    inference actors. CPU only: the GPU run uses framefleet's own random-weights model."""
    python = ROOT / ".venv-peers" / "bin" / "python"
    if not python.exists():
        raise SystemExit("the Daft peer needs its environment: run scripts/peers-venv first")
    p = settings.pipeline
    spec = {
        "paths": [str(x) for x in paths],
        "model": str(model_dir),
        "height": shape[0],
        "width": shape[1],
        "threads": settings.model.torch_threads,
        "source_width": 1280,
        "source_height": 720,
    }
    import json
    import subprocess

    done = subprocess.run(
        [str(python), str(ROOT / "bench" / "peers" / "daft_detect.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FRAMEFLEET_DAFT_BATCH": str(p.chunk_frames),
            "FRAMEFLEET_DAFT_ACTORS": str(p.inference_actors),
        },
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Daft peer failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_ray_data(
    ray: Any, paths: list[Path], settings: Settings, shape: tuple[int, int]
) -> tuple[float, int]:
    """The same job as a Ray Data streaming pipeline, the way Ray's video example writes it."""
    from ray import data as ray_data

    p = settings.pipeline

    class Detect:
        def __init__(self) -> None:
            from framefleet.workers.model import load_model

            self.model = load_model(settings.model)

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            records = self.model.predict(np.stack(list(batch["frame"])), (1280, 720))
            return {
                "frame_index": batch["frame_index"],
                "detections": np.bincount(
                    [r["frame"] for r in records], minlength=len(batch["frame_index"])
                ),
            }

    t = time.perf_counter()
    ds = ray_data.read_videos([str(x) for x in paths], resize=shape)
    ds = ds.map_batches(
        Detect,
        batch_size=p.chunk_frames,
        concurrency=p.inference_actors,
        num_cpus=p.cpus_per_inference,
        num_gpus=p.gpus_per_inference,
    )
    frames = sum(len(b["frame_index"]) for b in ds.iter_batches(batch_size=None))
    return frames / (time.perf_counter() - t), frames


def _gpu_monitor(stop: threading.Event, samples: list[float]) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not stop.wait(0.2):
            samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
    except Exception:  # no NVML: no GPU utilisation figure
        return


def settings_for(
    args: argparse.Namespace, videos: Path, out: Path, model_dir: Path | None
) -> Settings:
    gpu = args.gpu
    model = (
        ModelSettings(random_weights=True, precision="bf16", device="cuda", batch_size=8)
        if gpu
        else ModelSettings(
            model=str(model_dir), score_threshold=0.5, batch_size=16, torch_threads=1
        )
    )
    cores = os.cpu_count() or 2
    # Chunk size and in-flight bound are the defaults (PipelineSettings): 16-frame chunks pay
    # the per-chunk costs (an object-store put, a task, a checkpoint, a file) twice as often.
    pipeline = PipelineSettings(
        out=str(out),
        width=640,
        height=360,
        decode_actors=max(1, cores - 4) if gpu else max(1, cores // 2),
        inference_actors=4 if gpu else max(1, cores // 2),
        gpus_per_inference=0.25 if gpu else 0.0,
        cpus_per_inference=1.0,
        cpus_per_decoder=1.0,
    )
    if args.decode_nice is not None:
        pipeline = replace(pipeline, decode_nice=args.decode_nice)
    if args.chunk_frames is not None:
        pipeline = replace(pipeline, chunk_frames=args.chunk_frames)
    return Settings(
        queue=QueueSettings(name="bench", lease_s=120),
        source=SourceSettings(allowed_roots=(videos,)),
        model=model,
        pipeline=pipeline,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    with tempfile.TemporaryDirectory(prefix="ff-pipe-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        videos = tmp / "videos"
        videos.mkdir()
        n, seconds = (2, 1.0) if args.quick else (args.clips, args.seconds)
        paths = make_clips(videos, n, seconds)
        model_dir = None
        if not args.gpu:
            from tests.support.models import write_tiny_detr

            model_dir = write_tiny_detr(tmp / "detr")
        settings = settings_for(args, videos, tmp / "out", model_dir)
        p = settings.pipeline
        cores = os.cpu_count() or 2
        ray.init(
            num_cpus=cores,
            num_gpus=1 if args.gpu else 0,
            include_dashboard=False,
            _temp_dir=str(tmp / "ray"),
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        server = EmbeddedServer(tmp / "redis").start()
        gpu_samples: list[float] = []
        rounds: list[dict[str, float]] = []
        try:
            frames = ray.get(ray.remote(_decode_all).remote([str(x) for x in paths], settings))
            shape = (p.height or 720, p.width or 1280)
            window = 3.0 if args.quick else 10.0
            ceilings = Ceilings(ray, paths, settings, shape)
            decode_alone, model_alone = ceilings.alone(window)
            runs = FramefleetRuns(paths, settings, server, frames)
            stop = threading.Event()
            monitor = threading.Thread(target=_gpu_monitor, args=(stop, gpu_samples), daemon=True)
            monitor.start()
            try:
                ff_cold = runs.run()
                # Interleaved: each warm run is compared with the mean of the ceilings
                # measured just before and just after it, as a shared machine's speed drifts.
                before = ceilings.side_by_side(window)
                for _ in range(1 if args.quick else args.rounds):
                    warm = runs.run()
                    acked = runs.to_last_ack_fps
                    after = ceilings.side_by_side(window)
                    decode, model = ((b + a) / 2 for b, a in zip(before, after, strict=True))
                    rounds.append({"decode": decode, "model": model, "warm": warm, "acked": acked})
                    before = after
                decoder_peak_mb = runs.decoder_peak_mb
            finally:
                stop.set()
                runs.close()
                ceilings.close()
            with PeakMemory() as ray_data_memory:
                ray_data_rate, ray_data_frames = bench_ray_data(ray, paths, settings, shape)
        finally:
            server.stop()
            ray.shutdown()
        naive_rate = bench_naive(paths, settings)
        daft = None if args.gpu or args.no_daft else bench_daft(paths, settings, shape, model_dir)

    def median(key: str) -> float:
        return float(np.median([r[key] for r in rounds]))

    ratios = [r["warm"] / min(r["decode"], r["model"]) for r in rounds]
    acked_ratios = [r["acked"] / min(r["decode"], r["model"]) for r in rounds]
    ff_warm = median("warm")
    result: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": {"cores": cores, "gpu": bool(args.gpu)},
        "model": settings.model.model
        + (":random-weights" if settings.model.random_weights else " (tiny DETR)"),
        "workload": {
            "clips": n,
            "seconds_each": seconds,
            "source": "1280x720 H.264 30 fps",
            "decoded_size": f"{p.width}x{p.height}",
            "frames": frames,
            "decode_actors": p.decode_actors,
            "inference_actors": p.inference_actors,
            "chunk_frames": p.chunk_frames,
            "max_inflight_chunks": p.max_inflight_chunks,
            "infer_batch": settings.model.batch_size,
            "decode_nice": p.decode_nice,
        },
        "rounds": len(rounds),
        "decode_ceiling_fps": round(median("decode"), 1),
        "model_ceiling_fps": round(median("model"), 1),
        "decode_alone_fps": round(decode_alone, 1),
        "model_alone_fps": round(model_alone, 1),
        "framefleet_warm_fps": round(ff_warm, 1),
        "framefleet_cold_fps": round(ff_cold, 1),
        "naive_loop_fps": round(naive_rate, 1),
        "ray_data_fps": round(ray_data_rate, 1),
        "ray_data_frames": ray_data_frames,
        "framefleet_vs_ceiling": round(float(np.median(ratios)), 3),
        "framefleet_vs_ceiling_each_round": [round(x, 3) for x in ratios],
        # the same, frames/s counted until the last ack, not until the driver sees it
        "framefleet_warm_to_last_ack_fps": round(median("acked"), 1),
        "framefleet_to_last_ack_vs_ceiling": round(float(np.median(acked_ratios)), 3),
        "framefleet_to_last_ack_vs_ceiling_each_round": [round(x, 3) for x in acked_ratios],
        "framefleet_cold_vs_ray_data": round(ff_cold / ray_data_rate, 2),
        "framefleet_vs_naive": round(ff_warm / naive_rate, 2),
        "decode_actor_peak_private_mb": decoder_peak_mb,
        # the peers' largest worker (a process of Ray's, by its title; Daft's own process,
        # which reads the videos, and its UDF processes)
        "ray_data_worker_peak_private_mb": max(
            (mb for name, mb in ray_data_memory.peaks.items() if RAY_DATA_WORKERS.search(name)),
            default=None,
        ),
        "ray_data_peak_private_mb_by_worker": ray_data_memory.peaks,
        "gpu_utilisation_pct": round(float(np.mean(gpu_samples)), 1) if gpu_samples else None,
    }
    peers = {"ray_data": ray_data_rate}
    if daft is not None:
        peers["daft"] = daft["fps"]
        result.update(
            daft_fps=daft["fps"],
            daft_frames=daft["frames"],
            daft_version=daft["daft"],
            daft_peak_private_mb=daft["peak_private_mb"],
            framefleet_cold_vs_daft=round(ff_cold / daft["fps"], 2),
        )
    best = max(peers, key=lambda k: peers[k])
    result.update(best_peer=best, framefleet_cold_vs_best_peer=round(ff_cold / peers[best], 2))
    result["met"] = {
        "vs_ceiling_0.9": result["framefleet_vs_ceiling"] >= 0.9,
        "vs_ceiling_0.9_to_last_ack": result["framefleet_to_last_ack_vs_ceiling"] >= 0.9,
        "ahead_of_ray_data": ff_cold > ray_data_rate,
        "ahead_of_best_peer": ff_cold > peers[best],
        "ahead_of_naive_loop": ff_warm > naive_rate,
        "decode_actor_under_600_mb": decoder_peak_mb < 600,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/pipeline.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two 1-second clips (a smoke test)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each clip")
    parser.add_argument("--rounds", type=int, default=5, help="ceiling/warm-run pairs")
    parser.add_argument("--gpu", action="store_true", help="DETR-R50 random weights, bf16, CUDA")
    parser.add_argument(
        "--decode-nice", type=int, help="the decode actors' nice increment (default: settings')"
    )
    parser.add_argument("--chunk-frames", type=int, help="frames a chunk (default: settings')")
    parser.add_argument(
        "--no-daft", action="store_true", help="leave out the Daft peer (it needs .venv-peers)"
    )
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
