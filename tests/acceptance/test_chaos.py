"""`framefleet chaos run`: the proof suite's short mixed run (issue 25). A real fleet on this
machine (a `ray start` cluster, the embedded Valkey with appendfsync always, a relay that
can cut the network, two coordinators) works through good videos, poison ones and one its
model raises on, while faults of every kind strike on a fixed seed's schedule. The run's
history is then checked by `framefleet chaos check`: nothing lost, unexpected, acknowledged
twice, stale and visible, different from the fault-free outputs, or stuck; every good video
done; no API batch in part; never two leaders; and the faults' figures are there. The
output root is a small tmpfs (the disk_full fault), which needs root, as CI has. The long
runs, with their figures, are in BENCHMARKS.md (`framefleet chaos run --each`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deadline import left

ROOT = Path(__file__).resolve().parents[2]
SEED = 25  # the schedule; the same seed replays it
KINDS = ",".join(
    (
        "kill_decoder", "kill_inference", "zombie", "kill_redis", "partition", "kill_leader",
        "kill_raylet", "kill_api", "restart_coordinators", "disk_full",
    )
)  # fmt: skip
ANOMALIES = ("lost", "unexpected", "acked_twice", "stale_visible", "differs", "stuck")


@pytest.mark.timeout(900)
def test_a_short_mixed_chaos_run_keeps_every_promise(tmp_path: Path) -> None:
    out = tmp_path / "chaos.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    args = ["--seed", str(SEED), "--faults", "6", "--videos", "6", "--kinds", KINDS]
    args += ["--settle-s", "300", "--keep", str(tmp_path / "runs"), "--out", str(out)]
    # its own session: should the test's time run out, the run gets SIGTERM and stops its
    # fleet (bench/chaos.py), and what is left of the session is killed after it
    proc = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "chaos", "run", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=left(820))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        why = f"the chaos run did not end in time:\n{stdout}\n{stderr[-3000:]}"
        raise AssertionError(why) from None
    assert proc.returncode == 0, stderr[-5000:] + stdout
    assert f"seed {SEED}" in stdout  # printed: it replays the run
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["valid"] and result["counts"] == dict.fromkeys(ANOMALIES, 0)
    (run,) = result["rounds"]
    assert run["settled"] and run["good_dead"] == []
    assert run["partial_batches"] == 0 and run["two_drivers_max_s"] <= 5.0
    # 6 good videos done; 3 poison (5%, one of each kind at least: corrupt, truncated, an
    # index bomb), 1 the model raises on, and the batches the API took before it was
    # killed (videos that do not exist): all dead
    assert run["finished"] == 6 and run["enqueued"] - run["dead"] == 6
    assert run["dead"] >= 4 and (run["dead"] - 4) % 300 == 0
    assert len(run["faults"]) == 6 and len(run["recoveries"]) == 6
    assert set(run["faults"]) <= set(KINDS.split(","))
    assert run["rework"]["decodes"] >= 6 * 20  # every chunk of every good video, once at least
    # the kept history checks the same through the CLI
    (history,) = (tmp_path / "runs").glob(f"mixed-{SEED}/history")
    check = subprocess.run(
        [sys.executable, "-m", "framefleet", "chaos", "check", str(history)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=left(60),
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "valid: yes" in check.stdout
