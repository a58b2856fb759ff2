"""The CLI as a person runs it: real processes, the embedded server, the README's commands."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from framefleet.queue.server import running_url
from tests.conftest import ManualClock
from tests.support.deadline import left, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    env.update({"FRAMEFLEET_DATA_DIR": str(data_dir), **extra})
    return env


def ff(
    data_dir: Path,
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`framefleet ARGS` in a subprocess on `data_dir`; `env` adds FRAMEFLEET_* variables."""
    proc = subprocess.run(
        [sys.executable, "-m", "framefleet", *args],
        env=_env(data_dir, **(env or {})),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=left(600),
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def ff_json(data_dir: Path, *args: str) -> Any:
    """`framefleet ARGS --json`'s answer."""
    return json.loads(ff(data_dir, *args, *(() if "--json" in args else ("--json",))).stdout)


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[Path]:
    """`framefleet redis` in the foreground of a child process; other commands find it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "redis"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("FRAMEFLEET_REDIS_URL=redis://default:"), line  # with its password
    yield tmp_path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    proc.stdout.close()


def readme_main_command() -> list[str]:
    """The first line of the README's first shell block, without its comment."""
    block = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    return block.splitlines()[0].split("#", 1)[0].split()


def test_readme_main_command_processes_a_folder_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """The README's first command as written (scripts/framefleet makes sure of .venv), on a
    folder of test videos, with a local model directory since the default model's weights
    cannot be downloaded here. Nothing of the local Ray it started outlives it."""

    from tests.support.models import write_tiny_detr
    from tests.support.videos import write_video

    command = readme_main_command()
    assert command == ["./scripts/framefleet", "run", "~/videos", "--out", "results/"]
    videos, out = tmp_path / "videos", tmp_path / "results"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"clip-{i}.mp4", frames=20)
    model = write_tiny_detr(tmp_path / "detr")
    args = [str(videos) if a == "~/videos" else str(out) if a == "results/" else a for a in command]
    env = _env(tmp_path / "redis", FRAMEFLEET_RAY_TEMP_DIR=f"/tmp/ffmain-{os.getpid()}")
    proc = subprocess.Popen(
        [*args, "--model", str(model)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # everything it starts shares this session id
    )
    stdout, stderr = proc.communicate(timeout=left(600))
    assert proc.returncode == 0, stderr + stdout
    assert "done 2 of 2, dead 0; 40 frames" in stderr
    assert len(list(out.glob("*/*/detections.parquet"))) == 2  # <video id>/<version>/
    time.sleep(1)
    remaining = _session_left(proc.pid)
    assert not remaining, f"still running after framefleet run: {remaining}"


def _session_left(sid: int) -> list[str]:
    """The live processes of session `sid` (what a command started and left behind)."""
    import psutil

    left = []
    for p in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(str(p.info["name"]))
    return left


def test_up_runs_the_fleet_here_until_ctrl_c(tmp_path: Path) -> None:
    """`framefleet up`: the embedded server, a local Ray and the coordinator in the
    foreground; videos enqueued from another shell are processed, and each outcome is
    POSTed, signed, to the webhook receiver; Ctrl-C (SIGINT) ends it with exit 0, the
    embedded server and Ray stopped with it."""
    import httpx

    from framefleet.ops.webhooks import SIGNATURE, verify
    from tests.support.models import write_tiny_detr
    from tests.support.servers import free_port
    from tests.support.videos import write_video
    from tests.support.webhooks import Receiver

    videos, out, data = tmp_path / "videos", tmp_path / "out", tmp_path / "redis"
    videos.mkdir()
    paths = [write_video(videos / f"clip-{i}.mp4", frames=16) for i in range(2)]
    model = write_tiny_detr(tmp_path / "detr")
    token_file, port = tmp_path / "api-token", free_port()
    token_file.write_text("s3cret-token-of-up\n")
    hook_key = tmp_path / "webhook-key"
    hook_key.write_text("webhook-signing-key-of-up\n")
    receiver = Receiver().start()
    env = _env(
        data,
        FRAMEFLEET_RAY_TEMP_DIR=f"/tmp/ffup-{os.getpid()}",
        FRAMEFLEET_TICK_S="0.5",
        FRAMEFLEET_DECODE_ACTORS="1",
        FRAMEFLEET_INFERENCE_ACTORS="1",
        FRAMEFLEET_ALLOWED_ROOTS=str(videos),  # local files are read from here only
        FRAMEFLEET_API_PORT=str(port),
        FRAMEFLEET_API_TOKEN_FILE=str(token_file),
        FRAMEFLEET_WEBHOOK_URL=receiver.url(),
        FRAMEFLEET_WEBHOOK_SECRET_FILE=str(hook_key),
        FRAMEFLEET_WEBHOOK_ALLOW_PRIVATE="127.0.0.1/32",  # the receiver is on loopback
    )
    api, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer s3cret-token-of-up"}
    with (tmp_path / "up.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet", "up", "--out", str(out), "--model", str(model)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while running_url(data) is None:  # its embedded server, for the other shell
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "up.log"
            ).read_text()
            time.sleep(0.2)
        banner = _wait_for_line(proc, tmp_path / "up.log", f"framefleet API on {api}")
        assert str(token_file) in banner and "s3cret" not in (tmp_path / "up.log").read_text()
        assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}  # it answers already
        assert httpx.get(f"{api}/v1/queue").status_code == 401  # the token is wanted
        roots = {"FRAMEFLEET_ALLOWED_ROOTS": str(videos)}  # the shell's settings, as up's
        enqueued = ff(data, "enqueue", str(paths[0]), "--json", env=roots).stdout  # a shell
        assert json.loads(enqueued)["enqueued"] == 1
        posted = httpx.post(f"{api}/v1/items", json={"uri": str(paths[1])}, headers=auth)
        assert posted.status_code == 200, posted.text  # and over HTTP
        [by_http] = posted.json()["new"]
        deadline = time.monotonic() + 180
        while (counts := ff_json(data, "stats")["counts"])["done"] < 2:
            assert counts["dead"] == 0, ff(data, "dead", "list").stdout
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "up.log"
            ).read_text()[-3000:]
            time.sleep(1)
        queue = httpx.get(f"{api}/v1/queue", headers=auth)
        assert queue.status_code == 200, queue.text
        assert queue.json()["counts"]["done"] == 2 and queue.json()["name"] == "videos"
        assert queue.json()["throughput"]["5m"]["done"] == 2
        item = httpx.get(f"{api}/v1/items/{by_http}", headers=auth).json()
        assert item["state"] == "done" and item["result"].endswith("_manifest.json"), item
        frames = json.loads(Path(item["result"].removeprefix("file://")).read_text())["frames"]
        # the API up started reads the outputs up's --out names (the item page's manifest)
        manifest = httpx.get(f"{api}/v1/items/{by_http}/manifest", headers=auth)
        assert manifest.status_code == 200 and manifest.json()["frames"] == frames, manifest.text
        scrape = httpx.get(f"{api}/metrics", headers=auth).text
        figures = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in scrape.splitlines()
            if line.startswith("framefleet_")
        }
        assert figures["framefleet_items_succeeded_total"] == 2
        assert figures["framefleet_frames_processed_total"] == 2 * frames
        assert figures['framefleet_inference_busy_seconds_total{device="cpu"}'] > 0
        assert figures["framefleet_item_processing_seconds_count"] == 2
        assert figures["framefleet_coordinator_leader"] == 1
        wait_for(lambda: len(receiver.calls) >= 2, 60, "both outcomes POSTed")
        told = {c.json()["id"]: c for c in receiver.calls}
        assert by_http in told and len(told) == 2 and len(receiver.calls) == 2
        for call in receiver.calls:
            assert call.json()["state"] == "done"
            signed = call.headers[SIGNATURE]
            assert verify(b"webhook-signing-key-of-up", signed, call.body, time.time())
        assert figures["framefleet_queue_consumers"] >= 1
        workers = httpx.get(f"{api}/v1/workers", headers=auth).json()
        decoders = [w for w in workers if w["kind"] == "decoder"]
        assert decoders and all(w["pid"] > 0 and w["node"] for w in decoders), workers
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, (tmp_path / "up.log").read_text()[-3000:]
        with pytest.raises(httpx.ConnectError):  # the API stopped with it
            httpx.get(f"{api}/healthz")
    finally:
        if proc.poll() is None:  # the test failed: Ctrl-C, then kill what is left
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            with contextlib.suppress(OSError, ValueError, KeyError):  # its server's own session
                os.kill(int(json.loads((data / "server.json").read_text())["pid"]), signal.SIGKILL)
        receiver.stop()
    assert len(list(out.glob("*/*/_manifest.json"))) == 2
    assert running_url(data) is None  # the server it started is stopped
    time.sleep(1)
    assert not _session_left(proc.pid), f"still running after Ctrl-C: {_session_left(proc.pid)}"


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str) -> str:
    """The first line of `log` that holds `text`, once the process has written it."""
    deadline = time.monotonic() + 120
    while True:
        found = [ln for ln in log.read_text().splitlines() if text in ln]
        if found:
            return found[0]
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def test_up_makes_its_api_a_token_on_first_start_and_keeps_it(tmp_path: Path) -> None:
    """With no token configured, `up` makes one at its first start, kept in the data dir
    (the owner's only) and the same at the next start; it prints where it is, never the
    token, and the API wants it (a page can neither drive the API nor read it). No Ray is
    started here: the cluster address leads nowhere, and the API comes up first anyway."""
    import httpx

    from tests.support.servers import free_port

    data, port = tmp_path / "redis", free_port()
    env = _env(data, FRAMEFLEET_API_PORT=str(port), FRAMEFLEET_TICK_S="0.5")
    token_file = data / "api-token"
    tokens = []
    for start in range(2):
        log = tmp_path / f"up-{start}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "framefleet", "up", "--ray-address", "127.0.0.1:9"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            banner = _wait_for_line(proc, log, "framefleet API on")
            assert str(token_file) in banner, banner
            token = token_file.read_text().strip()
            assert len(token) >= 32 and token not in log.read_text()
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            api = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{api}/v1/queue").status_code == 401
            auth = {"Authorization": f"Bearer {token}"}
            assert httpx.get(f"{api}/v1/queue", headers=auth).status_code == 200
            tokens.append(token)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    assert tokens[0] == tokens[1]  # kept: clients configured once keep working
    assert running_url(data) is None


def test_api_finishes_a_request_in_flight_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM while a batch's body is still arriving: the API stops accepting, finishes that
    request (all its items written, 200), refuses new connections, and exits 0 within 10 s."""
    import httpx

    from tests.support.servers import free_port

    data, port = tmp_path / "redis", free_port()
    env = _env(data, FRAMEFLEET_API_TOKEN="t0ken-in-flight", FRAMEFLEET_QUEUE="inflight")
    proc = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t0ken-in-flight"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline, "no API"
                time.sleep(0.1)
        items = [{"uri": f"s3://v/inflight-{i}.mp4"} for i in range(2000)]
        body = json.dumps({"items": items}).encode()
        half, signalled = len(body) // 2, threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield body[:half]
            assert signalled.wait(10)
            time.sleep(0.5)  # the server has the signal by now
            yield body[half:]

        answer: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answer.append(
                httpx.post(
                    f"{url}/v1/items",
                    content=slow_body(),
                    headers={**headers, "Content-Type": "application/json"},
                    timeout=30,
                )
            )
        )
        sender.start()
        time.sleep(0.5)  # the first half is in
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        signalled.set()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # it no longer accepts
            httpx.get(f"{url}/healthz")
        sender.join(30)
        assert answer and answer[0].status_code == 200, answer
        assert len(answer[0].json()["new"]) == 2000
        assert proc.wait(15) == 0 and time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert ff_json(data, "--queue", "inflight", "stats")["counts"]["queued"] == 2000


def test_api_serves_until_sigterm_and_wants_a_token_beyond_loopback(tmp_path: Path) -> None:
    """`framefleet api` prints where it listens, answers with the token, and on SIGTERM
    exits 0 within 10 s; without a token it refuses to bind anything but loopback."""
    import httpx

    from tests.support.servers import free_port

    data = tmp_path / "redis"
    refused = ff(data, "api", "--host", "0.0.0.0", check=False)
    assert refused.returncode != 0 and "without a token" in refused.stderr, refused.stderr
    port = free_port()
    env = _env(data, FRAMEFLEET_API_TOKEN="t0ken-for-the-test", FRAMEFLEET_QUEUE="api-cli")
    proc = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}" in line and "token required" in line, line
        headers = {"Authorization": "Bearer t0ken-for-the-test"}
        deadline = time.monotonic() + 30
        while True:
            try:
                got = httpx.post(
                    f"http://127.0.0.1:{port}/v1/items",
                    json={"uri": "s3://videos/a.mp4"},
                    headers=headers,
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the API did not answer"
                time.sleep(0.1)
        assert got.status_code == 200 and len(got.json()["new"]) == 1
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert ff_json(data, "--queue", "api-cli", "stats")["counts"]["queued"] == 1


def test_check_is_a_health_check_that_starts_nothing(running_server: Path) -> None:
    """`framefleet check` exits 1 while no leader has reported, 0 with a fresh ok report,
    1 with a stale or failing one, and 1 without a running server (it starts none)."""
    from framefleet.queue import Queue, Supervision, connect
    from framefleet.settings import QueueSettings

    url = running_url(running_server)
    assert url is not None
    supervision = Supervision(Queue(connect(url), QueueSettings()))
    none = ff(running_server, "check", check=False)
    assert none.returncode == 1 and "no fresh health report" in none.stderr
    supervision.write_health({"ok": True, "at": time.time(), "leader": "c-1"}, ttl_s=60)
    ok = ff(running_server, "check")
    assert "healthy: leader c-1" in ok.stdout
    # a leader whose host's clock is an hour behind (its `at`) writes a fresh report: the
    # age is the server's to tell, so a standby's check does not fail for the skew
    supervision.write_health({"ok": True, "at": time.time() - 3600, "leader": "c-2"}, ttl_s=60)
    skewed = ff(running_server, "check", check=False)
    assert skewed.returncode == 0 and "healthy: leader c-2" in skewed.stdout, skewed.stderr
    # a report written 120 s ago by the server's clock (a queue whose clock is that far back)
    back = Supervision(
        Queue(connect(url), QueueSettings(), clock=lambda: int((time.time() - 120) * 1000))
    )
    back.write_health({"ok": True, "at": time.time(), "leader": "c-1"}, ttl_s=60)
    stale = ff(running_server, "check", check=False)
    assert stale.returncode == 1 and "old" in stale.stderr
    supervision.write_health({"ok": False, "at": time.time(), "error": "GCS lost"}, ttl_s=60)
    failing = ff(running_server, "check", check=False)
    assert failing.returncode == 1 and "GCS lost" in failing.stderr
    elsewhere = ff(running_server / "nothing-here", "check", check=False)
    assert elsewhere.returncode == 1 and "no embedded server runs" in elsewhere.stderr
    assert running_url(running_server / "nothing-here") is None


def test_demo_runs_the_queue_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "framefleet"), "demo"],
        env=_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=left(600),
    )
    assert proc.returncode == 0, proc.stderr
    assert "enqueued 8 items; counts queued=8 leased=0 done=0 dead=0" in proc.stdout
    assert "done 8 of 8" in proc.stdout
    # again, from the append-only file of the first run: the demo forces its items to rerun
    again = ff(tmp_path, "demo", "--items", "3")
    assert "done 3 of 3" in again.stdout


def test_enqueue_stats_and_show(running_server: Path, tmp_path: Path) -> None:
    d = running_server
    video = tmp_path / "clip.mp4"
    out = ff_json(d, "enqueue", "s3://bucket/a.mp4", "--priority", "high")
    assert out["enqueued"] == 1
    roots = {"FRAMEFLEET_ALLOWED_ROOTS": str(tmp_path)}
    rel = ff(d, "enqueue", "clip.mp4", "--id", "clip", "--json", cwd=tmp_path, env=roots)
    assert json.loads(rel.stdout)["new_ids"] == ["clip"]
    again = ff_json(d, "enqueue", "s3://bucket/a.mp4")
    assert again == {"enqueued": 0, "already_known": 1, "new_ids": []}
    shown = ff_json(d, "show", "clip")
    assert shown["uri"] == str(video) and shown["state"] == "queued"
    stats = ff_json(d, "stats")
    assert stats["counts"]["queued"] == 2 and stats["counters"]["enqueued_total"] == 2
    assert ff(d, "show", "nope", check=False).returncode == 1


def test_enqueue_refuses_what_the_workers_would_refuse_before_writing(
    running_server: Path, tmp_path: Path
) -> None:
    """As the API does: a local path outside FRAMEFLEET_ALLOWED_ROOTS (none set: every local
    path) and a URL to a private address are refused, saying why, and nothing of the batch
    is written; inside the roots it is enqueued."""
    d = running_server
    inside, outside = tmp_path / "videos", tmp_path / "elsewhere"
    inside.mkdir()
    roots = {"FRAMEFLEET_ALLOWED_ROOTS": str(inside)}
    for args, env in (
        ([str(outside / "a.mp4")], {}),
        (["s3://b/ok.mp4", str(outside / "a.mp4")], roots),
        (["http://169.254.169.254/latest/meta-data"], roots),
    ):
        got = ff(d, "enqueue", *args, env=env, check=False)
        assert got.returncode == 2 and got.stdout == "", got.stderr
        assert got.stderr.startswith("refused, nothing enqueued: "), got.stderr
    assert (
        "outside the allowed roots (none configured"
        in ff(d, "enqueue", str(outside / "a.mp4"), check=False).stderr
    )
    assert (
        "link-local"
        in ff(d, "enqueue", "http://169.254.169.254/x.mp4", env=roots, check=False).stderr
    )
    assert ff_json(d, "stats")["counts"]["queued"] == 0
    ok = ff(d, "enqueue", str(inside / "a.mp4"), "--id", "a", "--json", env=roots)
    assert json.loads(ok.stdout)["new_ids"] == ["a"]


def test_the_data_dir_is_found_from_a_subdirectory_and_each_start_says_where(
    tmp_path: Path,
) -> None:
    """Without FRAMEFLEET_DATA_DIR, a command uses the nearest .framefleet/redis in its
    directory or above (as git finds its repository): `stats` in a subdirectory sees what was
    enqueued at the project's top, and `results` its outputs. A command that starts the
    embedded server says so, and where its data is; elsewhere, the queue is that directory's
    own."""
    project, other = tmp_path / "project", tmp_path / "other"
    deep = project / "src" / "deep"
    deep.mkdir(parents=True)
    other.mkdir()
    env = {k: v for k, v in _env(tmp_path).items() if k != "FRAMEFLEET_DATA_DIR"}

    def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "framefleet", *args],
            env=env, cwd=cwd, capture_output=True, text=True, timeout=left(120),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc

    first = run(project, "enqueue", "s3://b/a.mp4")
    assert f"data in {project / '.framefleet' / 'redis'}" in first.stderr
    below = run(deep, "stats", "--json")
    assert json.loads(below.stdout)["counts"]["queued"] == 1
    assert f"data in {project / '.framefleet' / 'redis'}" in below.stderr
    assert not (deep / ".framefleet").exists()
    apart = run(other, "stats", "--json")
    assert json.loads(apart.stdout)["counts"]["queued"] == 0
    assert f"data in {other / '.framefleet' / 'redis'}" in apart.stderr
    for data in (project, other):
        assert running_url(data / ".framefleet" / "redis") is None  # each stopped after
    # the outputs too: .framefleet/out beside the data dir found
    from framefleet.settings import SourceSettings
    from framefleet.workers.outputs import OutputStore
    from framefleet.workers.results import Results
    from tests.support.results import finish

    store = OutputStore(str(project / ".framefleet" / "out"), SourceSettings())
    Results(store).publish(finish(store, "seen-from-below"))
    listed = json.loads(run(deep, "results", "--json").stdout)
    assert listed["out"] == str(project / ".framefleet" / "out")
    assert [v["id"] for v in listed["videos"]] == ["seen-from-below"]


def test_enqueue_from_stdin(running_server: Path) -> None:
    out = ff(
        running_server, "enqueue", "--file", "-", "--json", stdin="s3://b/1.mp4\n\ns3://b/2.mp4\n"
    ).stdout
    assert json.loads(out)["enqueued"] == 2


def test_enqueue_from_a_file(running_server: Path, tmp_path: Path) -> None:
    """One URI a line (blank lines and surrounding spaces ignored, a relative path made
    absolute), with the URIs on the command line; a bad line refuses the whole file, and a
    missing file is named, both before anything is written."""
    listing = tmp_path / "uris.txt"
    listing.write_text("  s3://b/f1.mp4\n\nclips/f2.mp4  \n\n")
    roots = {"FRAMEFLEET_ALLOWED_ROOTS": str(ROOT)}  # where the relative path lands
    listed = ("s3://b/f0.mp4", "--file", str(listing), "--json")
    got = ff(running_server, "enqueue", *listed, env=roots)
    out = json.loads(got.stdout)
    assert out["enqueued"] == 3
    shown = [ff_json(running_server, "show", i)["uri"] for i in out["new_ids"]]
    assert shown == ["s3://b/f0.mp4", "s3://b/f1.mp4", str(ROOT / "clips" / "f2.mp4")]
    before = ff_json(running_server, "stats")["counters"]["enqueued_total"]
    listing.write_text("s3://b/g1.mp4\nftp://b/g2.mp4\n")
    bad = ff(running_server, "enqueue", "--file", str(listing), check=False)
    assert bad.returncode == 2 and "refused, nothing enqueued" in bad.stderr, bad.stderr
    missing = ff(running_server, "enqueue", "--file", str(tmp_path / "nope.txt"), check=False)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    assert ff_json(running_server, "stats")["counters"]["enqueued_total"] == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["s3://b/ok.mp4", "ftp://x/y.mp4"], "invalid uri"),
        (["s3://b/ok.mp4", "s3://b/a.mp4", "--priority", "urgent"], "unknown priority"),
        (["s3://b/a.mp4", "--id", "has space"], "space"),
        (["s3://b/ok.mp4", "s3://b/a.mp4", "--id", "x"], "--id goes with exactly one URI"),
        ([], "nothing to enqueue"),
    ],
)
def test_bad_enqueue_is_refused_before_anything_is_written(
    running_server: Path, args: list[str], message: str
) -> None:
    proc = ff(running_server, "enqueue", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert ff_json(running_server, "stats")["counts"]["queued"] == 0


def test_pause_cancel_dead_letters_and_inbox(running_server: Path) -> None:
    d = running_server
    assert "paused" in ff(d, "pause").stdout
    assert ff_json(d, "stats")["paused"] is True
    assert "running" in ff(d, "resume").stdout
    ff(d, "enqueue", "s3://b/x.mp4", "--id", "x")
    assert "cancelled" in ff(d, "cancel", "x", "--why", "customer asked").stdout
    assert ff(d, "cancel", "x", check=False).returncode == 1
    [dead] = ff_json(d, "dead", "list")
    assert dead["id"] == "x" and dead["dead_reason"] == "cancelled: customer asked"
    assert ff_json(d, "dead", "retry", "--all") == {"retried": ["x"]}
    ff(d, "cancel", "x")
    assert ff_json(d, "dead", "purge", "x") == {"purged": ["x"]}
    assert ff(d, "dead", "retry", check=False).returncode == 2
    assert ff_json(d, "reap") == {"requeued": 0, "poisoned": 0, "promoted": 0}


def test_inbox_through_the_cli(running_server: Path) -> None:
    from redis import Redis

    from framefleet.queue.server import running_url

    d = running_server
    r = Redis.from_url(str(running_url(d)))  # a plain client with the server's URL
    r.lpush("ff:{videos}:inbox", '{"uri": "s3://b/in.mp4", "id": "in"}', "{oops")
    r.close()
    assert ff_json(d, "inbox", "ingest") == {
        "ingested": 1,
        "rejected": 1,
        "duplicates": 0,
        "remaining": 0,
    }
    [rejected] = ff_json(d, "inbox", "rejected")
    assert rejected["raw"] == "{oops" and rejected["reason"] == "entry is not valid JSON"


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    proc = ff(tmp_path, "stats", check=False, env={"FRAMEFLEET_LEASE_S": "soon"})
    assert proc.returncode == 2 and "FRAMEFLEET_LEASE_S" in proc.stderr


def test_bench_queue_quick_prints_one_json_line(tmp_path: Path) -> None:
    """The benchmark runs end to end (small sizes); its figures are not judged here."""
    out = tmp_path / "bench.jsonl"
    proc = ff(tmp_path, "bench", "queue", "--quick", "--out", str(out))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in (
        "enqueue_per_s",
        "claim_ack_per_s",
        "pickup_p50_ms",
        "pickup_p99_ms",
        "bytes_per_queued_item",
        "rq_enqueue_per_s",
        "rq_process_per_s",
        "enqueue_ratio_vs_rq",
        "process_ratio_vs_rq",
        "workload_ratio_vs_rq",
        "claim_ack_one_worker_per_s",
        "machine",
        "met",
    ):
        assert key in result
    assert result["enqueue_per_s"] > 0 and result["rq_process_per_s"] > 0
    # what durability costs, on a primary and a replica of the bench's own
    durability = result["durability"]
    assert set(durability["modes"]) == {"off", "wait", "waitaof"}
    for mode in durability["modes"].values():
        assert mode["enqueue_per_s"] > 0 and mode["claim_ack_per_s"] > 0 and mode["ack_ms"] > 0
        assert mode["enqueue_vs_off"] > 0 and mode["claim_ack_vs_off"] > 0
    assert durability["modes"]["off"]["enqueue_vs_off"] == 1.0
    assert durability["waitaof_replica_everysec_ack_ms"] > 0
    assert json.loads(out.read_text()) == result


def test_an_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    proc = ff(tmp_path, "stats", check=False, env={"FRAMEFLEET_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1 and "cannot reach the queue's Redis" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_password_given_on_the_command_line_is_warned_about_and_never_shown(
    tmp_path: Path,
) -> None:
    """A command line is readable by every user of the machine (/proc, ps): a --redis-url
    with a password gets a warning naming FRAMEFLEET_REDIS_URL, and no message repeats it."""
    url = "redis://:S3cr3t-pw@127.0.0.1:1/0"
    proc = ff(tmp_path, "--redis-url", url, "stats", check=False)
    assert "FRAMEFLEET_REDIS_URL" in proc.stderr and "S3cr3t-pw" not in proc.stderr
    quiet = ff(tmp_path, "stats", check=False, env={"FRAMEFLEET_REDIS_URL": url})
    assert "warning" not in quiet.stderr and "S3cr3t-pw" not in quiet.stderr


@pytest.mark.long  # 85 s: a Ray fleet and Ray Data, cold and warm, on a 2-core machine
def test_bench_pipeline_quick_prints_one_json_line(tmp_path: Path) -> None:
    """The pipeline benchmark runs end to end on two short clips; figures not judged."""
    proc = ff(tmp_path, "bench", "pipeline", "--quick")
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(line)
    for key in (
        "decode_ceiling_fps",
        "model_ceiling_fps",
        "framefleet_warm_fps",
        "framefleet_cold_fps",
        "naive_loop_fps",
        "ray_data_fps",
        "framefleet_vs_ceiling",
        "met",
    ):
        assert key in result
    assert result["workload"]["frames"] == result["ray_data_frames"] == 60


@pytest.mark.long  # about 2 min: a fake autoscaling Ray cluster and three fleets, 2 cores
def test_bench_scale_quick_prints_one_json_line(tmp_path: Path) -> None:
    """The scaling benchmark runs end to end at N = 1, 2, 4; its figures are not judged,
    but each N processed chunks and its ticks were read."""
    out = tmp_path / "bench.jsonl"
    proc = ff(tmp_path, "bench", "scale", "--quick", "--out", str(out))
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(line)
    assert [r["n"] for r in result["runs"]] == [1, 2, 4]
    assert all(r["chunks_per_s"] > 0 and r["ticks"]["count"] > 0 for r in result["runs"])
    assert {"efficiency", "bends_at", "costs", "machine"} <= set(result)
    assert json.loads(out.read_text().splitlines()[-1]) == result


def test_bench_api_quick_prints_one_json_line(tmp_path: Path) -> None:
    """The API benchmark runs end to end (small sizes, `framefleet api` in a child process);
    its figures are not judged here."""
    out = tmp_path / "bench.jsonl"
    proc = ff(tmp_path, "bench", "api", "--quick", "--out", str(out))
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(line)
    for key in (
        "one_post_s",
        "one_post_meta_s",
        "sequential_s",
        "concurrent_s",
        "queue_poll_p99_ms",
        "metrics_p99_ms",
        "metrics_bytes",
        "machine",
        "versions",
        "met",
    ):
        assert key in result
    assert result["sizes"]["queued"] == 5_000 and result["queue_poll"]["n"] > 0
    assert json.loads(out.read_text()) == result


def test_bench_dashboard_quick_prints_one_json_line(tmp_path: Path) -> None:
    """The dashboard benchmark runs end to end (a tenth of the sizes, logged in through the
    login form): every page answered 200 and was timed; its figures are not judged here."""
    out = tmp_path / "bench.jsonl"
    proc = ff(tmp_path, "bench", "dashboard", "--quick", "--requests", "2", "--out", str(out))
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(line)
    assert result["sizes"] == {"queued": 10_000, "dead": 1_000, "done": 100, "leased": 50}
    assert {"overview", "items_queued_page_2", "search", "dead_class", "workers"} <= set(
        result["pages_ms"]
    )
    assert all(page["n"] == 2 and page["bytes"] > 0 for page in result["pages_ms"].values())
    assert json.loads(out.read_text()) == result


def test_run_processes_a_folder_and_reports_the_dead_and_is_idempotent(tmp_path: Path) -> None:
    from tests.support.models import write_tiny_detr
    from tests.support.videos import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"ok-{i}.mp4", frames=20)
    (videos / "bad.mp4").write_bytes(b"not a video at all")
    model = write_tiny_detr(tmp_path / "detr")
    out = tmp_path / "out"
    env = {
        "FRAMEFLEET_RAY_TEMP_DIR": f"/tmp/ffrun-{os.getpid()}",
        "FRAMEFLEET_TICK_S": "0.5",
        "FRAMEFLEET_LEADER_TTL_S": "3",
        "FRAMEFLEET_DECODE_ACTORS": "1",
        "FRAMEFLEET_INFERENCE_ACTORS": "1",
    }
    args = ("run", str(videos), "--out", str(out), "--model", str(model))
    first = ff(tmp_path / "redis", *args, check=False, env=env)
    assert first.returncode == 1, first.stderr
    assert "done 2 of 3, dead 1; 40 frames" in first.stderr
    assert f"dead: {videos / 'bad.mp4'}: failed (not retryable): not a readable video" in (
        first.stderr
    )
    videos_out = [p for p in out.iterdir() if not p.name.startswith((".", "_"))]
    assert len(list(out.glob("*/*/_manifest.json"))) == len(videos_out) == 2
    assert {p.name for p in out.glob("_*")} == {"_index", "_dataset"}  # the results'
    assert len(list((out / "_dataset").glob("*.parquet"))) == 2
    counters = ff_json(tmp_path / "redis", "--queue", "run", "stats")["counters"]
    assert (counters["claimed_total"], counters["acked_total"]) == (3, 2)
    written = _files(out)
    # the good videos again: already done, nothing processed twice, exit 0: nothing is
    # claimed, checkpointed or acked again, and no output file is written again
    again = ff(
        tmp_path / "redis",
        "run",
        *map(str, sorted(videos.glob("ok-*"))),
        "--out",
        str(out),
        "--model",
        str(model),
        env=env,
    )
    assert "done 2 of 2, dead 0" in again.stderr
    assert "no fleet started" in again.stderr and "starting the fleet" not in again.stderr
    after = ff_json(tmp_path / "redis", "--queue", "run", "stats")["counters"]
    work = ("enqueued_total", "claimed_total", "chunks_total", "acked_total", "released_total")
    assert {k: after.get(k, 0) for k in work} == {k: counters.get(k, 0) for k in work}
    assert _files(out) == written
    # another output root, then another model: done again there and with it, not reported
    # from the first run's outputs (issue 12, finding 7)
    elsewhere = tmp_path / "out2"
    good = list(map(str, sorted(videos.glob("ok-*"))))
    moved = ff(
        tmp_path / "redis", "run", *good, "--out", str(elsewhere), "--model", str(model), env=env
    )
    assert "done 2 of 2, dead 0; 40 frames" in moved.stderr, moved.stderr
    assert len(list(elsewhere.glob("*/*/_manifest.json"))) == 2
    other = write_tiny_detr(tmp_path / "detr2", seed=1)
    remodel = ff(
        tmp_path / "redis", "run", *good, "--out", str(out), "--model", str(other), env=env
    )
    assert "done 2 of 2, dead 0; 40 frames" in remodel.stderr, remodel.stderr
    manifests = [json.loads(m.read_text()) for m in out.glob("*/*/_manifest.json")]
    assert sorted(m["model"] for m in manifests).count(str(other)) == 2


def _files(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under root (framefleet's own markers left out): inode, size, mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and ".framefleet" not in p.parts
    }


def test_run_survives_a_kill_9_of_its_embedded_server(tmp_path: Path) -> None:
    """`framefleet run` owns the embedded server it started: killed -9 mid-run, it is
    started again from its append-only file on the same port, and the run finishes
    (issue 12, finding 5: it ended with "cannot reach the queue's Redis" and exit 1)."""
    import psutil
    from redis import Redis

    from framefleet.queue.server import running_url
    from tests.support.videos import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"clip-{i}.mp4", frames=64)
    data = tmp_path / "redis"
    env = {
        "FRAMEFLEET_RAY_TEMP_DIR": f"/tmp/ffkill-{os.getpid()}",
        "FRAMEFLEET_TICK_S": "0.5",
        "FRAMEFLEET_LEADER_TTL_S": "3",
        "FRAMEFLEET_DECODE_ACTORS": "1",
        "FRAMEFLEET_INFERENCE_ACTORS": "1",
        "FRAMEFLEET_MODEL_PLUGIN": "tests.support.plugin_model:load_slow",  # 0.5 s a chunk
        "FRAMEFLEET_CHUNK_FRAMES": "8",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "run", str(videos), "--out", str(tmp_path / "out")],
        env=_env(data, **env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # a chunk checkpointed: mid-run
            url = running_url(data)
            client = Redis.from_url(url, decode_responses=True) if url else None
            if client is not None and any(
                client.hget(k, "chunks_done") not in (None, "0")
                for k in client.scan_iter("ff:{run}:item:*")  # the queue of `run`
            ):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no chunk checkpointed within 180 s")
        pid = json.loads((data / "server.json").read_text())["pid"]
        psutil.Process(pid).kill()
        stdout, stderr = proc.communicate(timeout=left(300))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr + stdout
    assert "done 2 of 2, dead 0; 128 frames" in stderr
    assert running_url(data) is None  # run stopped the server it started


def test_the_embedded_server_wants_its_password(running_server: Path) -> None:
    """Other users of the machine reach 127.0.0.1 too: the embedded server requires the
    password it made at its first start (issue 12, finding 10), kept in its data dir and
    state file, readable by their owner only; `framefleet redis` printed the URL with it."""
    from redis import Redis
    from redis.exceptions import AuthenticationError, ResponseError

    from framefleet.queue.server import running_url

    url = running_url(running_server)
    assert url is not None
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
        Redis(host="127.0.0.1", port=port).ping()
    assert Redis.from_url(url).ping()
    for name in ("password", "server.json"):
        assert (running_server / name).stat().st_mode & 0o077 == 0, name
    assert ff_json(running_server, "stats")["counts"]["queued"] == 0  # the CLI finds it


def test_run_does_not_widen_the_roots_of_a_fleet_it_would_share(tmp_path: Path) -> None:
    """`framefleet run` lets its own fleet read the folders it is given. On a queue that
    another coordinator serves, that would hand those roots to a fleet others enqueue into:
    run refuses and says what to do (issue 12, finding 10). It uses a queue of its own,
    `run`, unless told otherwise."""
    from framefleet.queue import Queue, Supervision, open_client
    from framefleet.settings import QueueSettings, RedisSettings, Settings

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"x")
    settings = Settings(redis=RedisSettings(data_dir=tmp_path / "redis"))
    with open_client(settings) as client:
        held = Supervision(Queue(client, QueueSettings(name="shared")))
        assert held.hold_leadership("prod-coordinator", ttl_s=120)
        proc = ff(
            tmp_path / "redis",
            "--queue",
            "shared",
            "run",
            str(videos),
            "--out",
            str(tmp_path / "out"),
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert "prod-coordinator" in proc.stderr and "framefleet enqueue" in proc.stderr
        assert Queue(client, QueueSettings(name="shared")).stats().counts["queued"] == 0


def test_run_without_the_default_models_weights_says_what_to_do(tmp_path: Path) -> None:
    """No network and no cached weights for the default model: the run stops at the first
    failed load (not after retrying it) with the loader's reason and the options to use."""
    from tests.support.videos import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", frames=10)
    env = {
        "FRAMEFLEET_RAY_TEMP_DIR": f"/tmp/ffnomodel-{os.getpid()}",
        "FRAMEFLEET_TICK_S": "0.5",
        "FRAMEFLEET_LEADER_TTL_S": "3",
        "HF_HUB_OFFLINE": "1",  # what no network gives, without its minutes of retries
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache
    }
    proc = ff(
        tmp_path / "redis", "run", str(videos), "--out", str(tmp_path / "out"), check=False, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot load model 'facebook/detr-resnet-50'" in proc.stderr
    assert "hint: for a smoke run without the weights, `--random-weights`" in proc.stderr
    assert "`--model DIR`" in proc.stderr


def test_up_and_coordinator_say_at_once_when_the_model_cannot_be_loaded(tmp_path: Path) -> None:
    """Before any server or Ray starts: no network and no cached weights for the default
    model, or a model directory that is not there, are refused at once (exit 2) with the
    reason and what to do, not after minutes of the actors' download timeouts."""
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    for command, env in (
        (["up", "--no-api"], offline),
        (["coordinator"], offline),
        (["up", "--no-api", "--model", str(tmp_path / "nowhere")], {}),
    ):
        started = time.monotonic()
        proc = ff(tmp_path / "redis", *command, check=False, env=env)
        assert proc.returncode == 2, proc.stderr
        assert time.monotonic() - started < 60, proc.stderr
        assert "error: cannot load model" in proc.stderr, proc.stderr
        assert "hint: for a smoke run without the weights, `--random-weights`" in proc.stderr
        assert "Started a local Ray" not in proc.stderr
        assert running_url(tmp_path / "redis") is None  # no server started
    assert "(no such directory)" in proc.stderr


# -- the ops commands: items, --json, watch, enqueue's progress bar ----------------------------


class OnATerminal:
    """The CLI in a subprocess with its stderr on a pseudo-terminal (120x40), and its stdout
    there too or piped: what rich draws there, read as it comes."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        stdout_too: bool,
        stdin: str = "",
        sigint_ignored: bool = False,
    ) -> None:
        import pty

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet", *args],
            env=_env(data_dir, TERM="xterm-256color", PYTHONFAULTHANDLER="1"),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=slave if stdout_too else subprocess.PIPE,
            stderr=slave,
            # started as a shell's background job is: Python then leaves SIGINT ignored
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if sigint_ignored
            else None,
        )
        os.close(slave)
        self.master, self.chunks = master, list[bytes]()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.proc.stdin is not None
        with self.proc.stdin as given:
            given.write(stdin.encode())

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + left(timeout)
        while text not in self.text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()[-2000:]
            time.sleep(0.1)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Its exit code and its piped stdout (if stdout was piped). If it does not exit in
        time, it is made to print its threads' stacks (faulthandler, on SIGABRT) and killed,
        and the test fails with them: no process outlives its test."""
        out = ""
        if self.proc.stdout is not None:
            with self.proc.stdout as piped:
                out = piped.read().decode()
        try:
            code = self.proc.wait(left(timeout))
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc.kill()
            self.proc.wait(10)
            self.reader.join(10)
            os.close(self.master)
            stacks = self.text()[-6000:]
            raise AssertionError(f"it did not exit in {timeout} s:\n{stacks}") from None
        self.reader.join(10)
        os.close(self.master)
        return code, out


def _queue_at(data_dir: Path) -> Any:
    from framefleet.queue import Queue, connect

    url = running_url(data_dir)
    assert url is not None
    return Queue(connect(url))


def test_items_pages_newest_first_and_a_cursor_walk_returns_each_item_once(
    running_server: Path, tmp_path: Path
) -> None:
    """`items --json` pages one state newest first; following each page's cursor returns
    every item exactly once. The table says the same and prints the next cursor."""
    d = running_server
    listing = tmp_path / "uris.txt"
    listing.write_text("".join(f"s3://b/page-{i:03d}.mp4\n" for i in range(130)))
    enqueued = ff_json(d, "enqueue", "--file", str(listing), "--json")["new_ids"]
    assert len(enqueued) == 130
    walked, pages, cursor = [], 0, None
    while True:
        page = ff_json(
            d, "items", "--limit", "25", "--json", *(["--cursor", cursor] if cursor else [])
        )
        assert page["state"] == "queued" and len(page["items"]) <= 25
        walked += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["cursor"]
        if cursor is None:
            break
    assert pages == 6 and walked == enqueued[::-1]  # each once, newest first
    first = ff_json(d, "items", "--limit", "25", "--json")
    assert first["items"][0]["uri"] == "s3://b/page-129.mp4"
    assert first["items"][0]["state"] == "queued" and first["items"][0]["priority"] == 5
    table = ff(d, "items", "--limit", "3").stdout
    rows = [
        ln.split()[0] for ln in table.splitlines() if ln.split()[:1] and ln.split()[0] in enqueued
    ]
    assert rows == enqueued[-1:-4:-1]  # the three newest, newest first
    page_two = ff_json(d, "items", "--limit", "3", "--json")["cursor"]
    assert f"next page: --cursor {page_two}" in table
    assert "s3://b/page-129.mp4" in ff(d, "items", "--limit", "3", env={"COLUMNS": "160"}).stdout
    narrow = ff(d, "items", "--limit", "3", env={"COLUMNS": "80"}).stdout.splitlines()
    assert all(len(line) <= 80 for line in narrow), narrow
    shown_rows = [ln for ln in narrow if ln.split()[:1] and ln.split()[0] in enqueued]
    assert len(shown_rows) == 3 and all("s3://" in ln for ln in shown_rows), narrow  # a line each
    assert any(ln.split()[:6] == ["id", "pri", "tries", "chunks", "age", "uri"] for ln in narrow)
    none = ff(d, "items", "--state", "dead").stdout
    assert none.strip() == "no dead items (queued 130)"
    assert ff_json(d, "items", "--state", "dead", "--json") == {
        "state": "dead",
        "items": [],
        "cursor": None,
    }
    bad = ff(d, "items", "--cursor", "not-a-cursor", check=False)
    assert bad.returncode == 2 and "bad --cursor" in bad.stderr
    assert ff(d, "items", "--state", "lost", check=False).returncode == 2


def test_each_command_answers_json_with_stable_keys(running_server: Path) -> None:
    """show, stats, pause, resume, reap, inbox, dead list|retry|purge and enqueue take
    --json: one JSON document on stdout with the values of the queue; exit codes as without
    it. Without it each answers in words, as items and results do (they printed JSON by
    default, items a table: one had to guess which)."""
    d = running_server
    assert ff_json(d, "enqueue", "s3://b/j.mp4", "--id", "j", "--json") == {
        "enqueued": 1,
        "already_known": 0,
        "new_ids": ["j"],
    }
    shown = ff_json(d, "show", "j", "--json")
    assert (shown["id"], shown["uri"], shown["state"], shown["chunks"]) == (
        "j",
        "s3://b/j.mp4",
        "queued",
        [],
    )
    human = ff(d, "show", "j").stdout
    assert "s3://b/j.mp4" in human and "history: nothing yet" in human and "{" not in human
    assert ff(d, "stats").stdout.startswith("queue 'videos': queued 1, ")
    again = ff(d, "enqueue", "s3://b/j.mp4", "--id", "j").stdout.strip()
    assert again == "enqueued 0, already known 1"
    assert ff(d, "reap").stdout.strip() == "requeued 0, poisoned 0, retries due 0"
    assert set(ff_json(d, "reap")) == {"requeued", "poisoned", "promoted"}
    missing = ff(d, "show", "nope", "--json", check=False)
    assert missing.returncode == 1 and missing.stdout == "" and "no item" in missing.stderr
    stats = ff_json(d, "stats", "--json")
    assert stats["counts"]["queued"] == 1 and stats["paused"] is False
    assert set(stats) == {"counts", "paused", "oldest_queued_age_s", "counters"}
    assert ff_json(d, "pause", "--json") == {"queue": "videos", "paused": True}
    assert ff_json(d, "stats", "--json")["paused"] is True
    assert ff(d, "resume").stdout.strip() == "queue 'videos' running"  # human by default
    assert ff_json(d, "resume", "--json") == {"queue": "videos", "paused": False}
    ff(d, "cancel", "j", "--why", "test")
    [dead] = ff_json(d, "dead", "list", "--json")
    assert (dead["id"], dead["state"], dead["dead_reason"]) == ("j", "dead", "cancelled: test")
    table = ff(d, "dead", "list", env={"COLUMNS": "120"}).stdout
    assert "cancelled: test" in table and "{" not in table
    assert ff_json(d, "items", "--state", "dead", "--json")["items"][0]["id"] == "j"
    assert ff(d, "dead", "retry", "j").stdout.strip() == "retried 1: j"
    assert ff_json(d, "show", "j", "--json")["state"] == "queued"
    ff(d, "cancel", "j")
    assert ff_json(d, "dead", "purge", "--all", "--json") == {"purged": ["j"]}
    assert ff(d, "dead", "purge", "--json", check=False).returncode == 2  # neither ids nor --all
    assert ff_json(d, "dead", "list", "--json") == []


def test_outcomes_prints_each_end_and_follows_new_ones_until_ctrl_c(running_server: Path) -> None:
    """`framefleet outcomes`: the ends kept so far, one JSON object a line; with --follow
    --after '$', only those to come, printed as they come, until Ctrl-C (exit 0), even
    started with SIGINT ignored (it waited in XREAD for ever then: two CI runs failed so)."""
    d = running_server
    ff(d, "enqueue", "s3://b/a.mp4", "--id", "a")
    ff(d, "enqueue", "s3://b/b.mp4", "--id", "b")
    ff(d, "cancel", "a", "--why", "not wanted")
    [line] = ff(d, "outcomes").stdout.splitlines()
    told = json.loads(line)
    assert (told["id"], told["state"], told["class"]) == ("a", "dead", "cancelled")
    assert told["reason"] == "cancelled: not wanted" and told["uri"] == "s3://b/a.mp4"
    follower = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "outcomes", "--follow", "--after", "$"],
        env=_env(d),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as a shell's background job starts it (CI's runner did): SIGINT ignored, which
        # Python then leaves ignored unless the command sets its own handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines: list[str] = []
        out = follower.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: lines.append(out.readline()))
        reader.start()
        url = running_url(d)
        assert url is not None
        with Redis.from_url(url, decode_responses=True) as admin:

            def waiting() -> bool:  # the follower's XREAD BLOCK: it has read where to start
                clients = admin.client_list()
                return any(c["cmd"] == "xread" and "b" in c["flags"] for c in clients)

            wait_for(waiting, 60, "the follower blocked in XREAD", 0.05)
        ff(d, "cancel", "b")
        reader.join(left(60))
        assert lines and json.loads(lines[0])["id"] == "b", (lines, follower.poll())
    finally:
        follower.send_signal(signal.SIGINT)
        try:  # both pipes read meanwhile: a follower blocked writing to one would never end
            errors = follower.communicate(timeout=left(60))[1]
        except subprocess.TimeoutExpired:  # its threads' stacks (faulthandler), then the end
            follower.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                follower.wait(2)
            follower.kill()
            errors = "did not end on SIGINT:\n" + follower.communicate()[1]
    assert follower.returncode == 0, errors


def test_a_webhook_url_without_a_signing_key_is_refused_at_start(tmp_path: Path) -> None:
    """Webhooks are signed: a coordinator given FRAMEFLEET_WEBHOOK_URL and no secret stops at
    once saying so (exit 2), and leaves no server running."""
    got = ff(
        tmp_path,
        "coordinator",
        "--random-weights",  # no model to load: only the webhook's setting is wrong
        env={"FRAMEFLEET_WEBHOOK_URL": "https://hooks.example/ff"},
        check=False,
    )
    assert got.returncode == 2, got.stderr + got.stdout
    assert "FRAMEFLEET_WEBHOOK_URL needs FRAMEFLEET_WEBHOOK_SECRET" in got.stderr
    assert running_url(tmp_path) is None


def test_watch_once_shows_the_counts_throughput_workers_leader_and_a_bar_per_leased_item(
    running_server: Path, tmp_path: Path
) -> None:
    """One frame of `watch`: counts, throughput and the drain time, the workers, the leader
    and its health, and one bar per leased item (partly filled for 3 of 8 chunks, an
    unknown total shown as such) with its owner. Without a server it starts none."""
    from framefleet.queue import NewItem, Queue, Supervision

    d = running_server
    q = _queue_at(d)
    q.enqueue([NewItem(f"s3://b/clip-{n}.mp4", id=f"clip-{n}") for n in "abcd"])
    [a] = q.claim(1, "decoder-t1-0")
    for chunk in range(3):
        assert q.progress(a, chunk, total=8)
    q.claim(1, "decoder-t1-0")  # clip-b, no total known yet
    [c] = q.claim(1, "decoder-t1-1")
    assert q.ack(c, "file:///out/c")
    supervision = Supervision(q)
    supervision.heartbeat("decoder-t1-0")
    supervision.heartbeat("inference-t1-0")
    behind = ManualClock(int((time.time() - 20) * 1000))  # killed 20 s ago: silent since
    Supervision(Queue(q.client, q.settings, clock=behind)).heartbeat("inference-t1-1")
    assert supervision.hold_leadership("coord-1", ttl_s=60)
    supervision.write_health({"ok": True, "at": time.time(), "leader": "coord-1"}, ttl_s=60)
    frame = ff(d, "watch", "--once", env={"COLUMNS": "120"}).stdout
    assert "queue          videos  running" in frame, frame
    assert "queued 1  delayed 0  leased 2  done 1  dead 0" in frame, frame
    assert "1m 1.0  5m 0.2  15m 0.1" in frame, frame  # one done in each window
    assert "ETA 15m 00s (3 left" in frame, frame  # 3 left at 1 per 5 minutes
    assert "2 (decoder 1, inference 1)" in frame, frame  # the silent one only counted apart
    assert "1 silent for over 10 s (dead or stopped)" in frame, frame
    assert "coord-1; health report" in frame and "old, ok" in frame, frame
    assert "leased: 2" in frame, frame
    [row_a] = [ln for ln in frame.splitlines() if ln.split()[:1] == ["clip-a"]]
    assert "3/8" in row_a and "decoder-t1-0" in row_a and "clip-a.mp4" in row_a, row_a
    assert 4 <= row_a.count("━") <= 7, row_a  # 3/8 of a 16-wide bar drawn, the rest blank
    [row_b] = [ln for ln in frame.splitlines() if ln.split()[:1] == ["clip-b"]]
    assert "0/?" in row_b and "decoder-t1-0" in row_b, row_b
    assert "clip-d" not in frame  # queued: no bar
    ff(d, "pause")
    assert "PAUSED" in ff(d, "watch", "--once").stdout
    nowhere = ff(tmp_path / "nothing", "watch", "--once", check=False)
    assert nowhere.returncode == 1 and "no embedded server runs" in nowhere.stderr
    assert running_url(tmp_path / "nothing") is None


def test_watch_is_live_on_a_terminal_until_ctrl_c(running_server: Path) -> None:
    """On a terminal `watch` redraws every interval (a lease taken meanwhile shows up) and
    Ctrl-C ends it with exit 0, the cursor shown again; even when it was started with SIGINT
    ignored (it redrew until killed then, in CI)."""
    d = running_server
    q = _queue_at(d)
    q.enqueue(["s3://b/live.mp4"])
    term = OnATerminal(d, "watch", "--interval", "0.2", stdout_too=True, sigint_ignored=True)
    try:
        term.wait_for("leased 0")
        [lease] = q.claim(1, "decoder-live-0")
        assert q.progress(lease, 0, total=4)
        term.wait_for("1/4")
        term.wait_for("decoder-live-0")
        term.proc.send_signal(signal.SIGINT)
        code, _ = term.finish()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert code == 0, term.text()[-2000:]
    assert "leased 1" in term.text() and "Traceback" not in term.text()
    assert term.text().endswith("\x1b[?25h")  # the cursor is given back


def test_enqueue_of_5000_items_with_and_without_a_terminal(
    running_server: Path, tmp_path: Path
) -> None:
    """5,000 URIs from a file: all enqueued, stderr quiet (no terminal, no bar). 5,000 more
    on stdin with stderr on a terminal: a progress bar there to 5000/5000, and stdout is
    still exactly the JSON answer."""
    d = running_server
    listing = tmp_path / "many.txt"
    listing.write_text("".join(f"s3://b/many-{i:04d}.mp4\n" for i in range(5000)))
    plain = ff(d, "enqueue", "--file", str(listing), "--json")
    assert json.loads(plain.stdout)["enqueued"] == 5000 and plain.stderr == ""
    assert ff_json(d, "stats")["counts"]["queued"] == 5000
    more = "".join(f"s3://b/more-{i:04d}.mp4\n" for i in range(5000))
    term = OnATerminal(d, "enqueue", "--file", "-", "--json", stdout_too=False, stdin=more)
    code, out = term.finish()
    assert code == 0, term.text()[-2000:]
    answer = json.loads(out)
    assert answer["enqueued"] == 5000 and len(set(answer["new_ids"])) == 5000
    assert "enqueued" in term.text() and "5000/5000" in term.text(), term.text()[-2000:]
    assert ff_json(d, "stats")["counts"]["queued"] == 10_000


def test_ids_uris_and_reasons_from_outside_are_shown_as_plain_text(running_server: Path) -> None:
    """`items` and `watch` show what came from outside as it is. A valid id `cam1[/]` is not
    rich markup (it made both exit with a MarkupError, and one such dead letter broke the
    whole dead list), `[link=...]` makes no hyperlink, and a reason phrase with escape
    sequences (a remote server's) reaches the terminal escaped, not as escapes."""
    from framefleet.queue import NewItem

    d = running_server
    q = _queue_at(d)
    ids = ["cam1[/]", "[link=https://evil.example]clip[/link]", "[bold]x"]
    q.enqueue([NewItem(f"s3://b/{n}.mp4", id=i) for n, i in enumerate(ids)])
    [dead] = q.claim(1, "decoder-t1-0")
    reason = "HTTP 500 \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ \x1b[2J\u202egnp.exe"
    q.fail(dead, reason, retryable=False, cls="fetch_failed")
    q.claim(1, "decoder-t1-0")  # the next one leased: watch shows it
    for args in (["items", "--state", "dead"], ["items", "--state", "queued"], ["watch", "--once"]):
        out = ff(d, *args, env={"COLUMNS": "250"}).stdout
        assert "\x1b" not in out and "\u202e" not in out, (args, out)
    assert ids[0] in ff(d, "items", "--state", "dead", env={"COLUMNS": "250"}).stdout
    dead_list = ff(d, "items", "--state", "dead", env={"COLUMNS": "250"}).stdout
    assert "\\x1b]8;;https://evil.example" in dead_list and "\\u202e" in dead_list, dead_list
    assert ids[1] in ff(d, "watch", "--once", env={"COLUMNS": "250"}).stdout
    assert ids[2] in ff(d, "items", "--state", "queued", env={"COLUMNS": "250"}).stdout


def test_results_from_a_run_to_detections_per_label_per_video(tmp_path: Path) -> None:
    """A newcomer's path: `run`, then its summary names the index and the dataset; `results`
    lists the videos; a second run with another configuration supersedes the first (a new
    revision each); the README's DuckDB line over the dataset counts what the index says,
    and `export` writes the union of the current versions' chunks, never a superseded
    row."""
    import duckdb
    import pyarrow.parquet as pq

    from tests.support.models import write_tiny_detr
    from tests.support.videos import write_video

    videos, out, data = tmp_path / "videos", tmp_path / "results", tmp_path / "redis"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"clip-{i}.mp4", frames=12)
    model = write_tiny_detr(tmp_path / "detr")
    ray = {"FRAMEFLEET_RAY_TEMP_DIR": f"/tmp/ffres-{os.getpid()}"}
    first = ff(data, "run", str(videos), "--out", str(out), "--model", str(model), env=ray)
    assert f"framefleet results --out {out}" in first.stderr
    assert f"{out}/_dataset" in first.stderr
    listed = ff_json(data, "results", "--out", str(out), "--json")
    assert listed["total"] == 2 and listed["dataset"] == str(out / "_dataset")
    assert {v["rev"] for v in listed["videos"]} == {0}

    # another configuration: both videos run again, a new revision each
    ff(data, "run", str(videos), "--out", str(out), "--model", str(model),
       "--score-threshold", "0.0", env=ray)  # fmt: skip
    every = ff_json(data, "results", "--out", str(out), "list", "--state", "all", "--json")
    states = sorted((v["uri"], v["rev"], v["current"]) for v in every["videos"])
    uris = sorted(str(p) for p in videos.iterdir())
    assert states == [(u, r, r == 1) for u in uris for r in (0, 1)]
    current = [v for v in every["videos"] if v["current"]]
    assert all(v["detections"] == 12 * 10 for v in current)  # threshold 0: every query

    sql = (ROOT / "README.md").read_text().split("```sql\n", 1)[1].split("```", 1)[0]
    got = duckdb.execute(sql.strip().replace("'results/", f"'{out}/")).fetchall()
    want = sorted(
        ((v["uri"], label, n) for v in current for label, n in v["labels"].items()),
        key=lambda r: (r[0], -r[2]),
    )
    assert sorted(got) == sorted(want) and sum(n for *_, n in got) == 2 * 120

    exported = tmp_path / "all.parquet"
    ff(data, "results", "export", "--out", str(out), "--format", "parquet", "--to", str(exported))
    table = pq.read_table(exported)
    chunks = [
        row
        for v in current
        for k in range(v["chunks"])
        for row in pq.read_table(out / v["video"] / f"chunk-{k}.parquet").to_pylist()
    ]
    key = ("video_id", "frame_index", "label_id", "score", "x0", "y0", "x1", "y1")
    assert sorted(tuple(r[k] for k in key) for r in table.to_pylist()) == sorted(
        tuple(r[k] for k in key) for r in chunks
    )
    shown = ff(data, "results", "--out", str(out), "show", uris[0], "--limit", "3").stdout
    assert f"{uris[0]} (" in shown and "120 detections" in shown and "first 3 of 120" in shown
