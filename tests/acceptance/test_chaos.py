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
from typing import Any

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
    args = ["--seed", str(SEED), "--faults", "6", "--videos", "6", "--kinds", KINDS]
    result, stdout, env = _chaos_run(tmp_path, args, left(820))
    assert f"seed {SEED}" in stdout  # printed: it replays the run
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


@pytest.mark.needs("lazyfs")
@pytest.mark.timeout(600)
def test_power_cuts_of_valkey_under_everysec_lose_only_what_the_checker_accounts_for(
    tmp_path: Path,
) -> None:
    """Valkey on `everysec`, its data on LazyFS, killed and its un-fsynced writes dropped
    three times (`--power-cut`): what it lost, an ack or a claim or an enqueue of its last
    second, is only done again or counted as unsynced, never lost, doubled or stale; the
    run still settles (an enqueue Valkey lost leaves nothing to wait for)."""
    args = ["--seed", "7", "--faults", "3", "--videos", "4", "--kinds", "kill_redis"]
    args += ["--appendfsync", "everysec", "--power-cut"]
    result, stdout, _ = _chaos_run(tmp_path, args, left(540))
    assert result["valid"] and result["counts"] == dict.fromkeys(ANOMALIES, 0), stdout
    assert result["shape"]["power_cut"] and result["shape"]["appendfsync"] == "everysec"
    (run,) = result["rounds"]
    assert run["settled"] and run["good_dead"] == [] and run["faults"] == ["kill_redis"] * 3
    assert run["finished"] + run["dead"] + run["unsynced"] == run["enqueued"]
    assert run["finished"] >= 4 - run["unsynced"]


def _chaos_run(
    tmp_path: Path, args: list[str], budget: float
) -> tuple[dict[str, Any], str, dict[str, str]]:
    """`framefleet chaos run ARGS`, its rounds kept under tmp_path/runs: its JSON line, its
    stdout, and the environment it ran in."""
    out = tmp_path / "chaos.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    args = [*args, "--settle-s", "300", "--keep", str(tmp_path / "runs"), "--out", str(out)]
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
        stdout, stderr = proc.communicate(timeout=budget)
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
    return json.loads(out.read_text().splitlines()[-1]), stdout, env
