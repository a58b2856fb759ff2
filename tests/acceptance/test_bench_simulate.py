"""`framefleet bench simulate --quick`: the simulated fleet runs end to end on its own server
(its own data dir, a free port) and its JSON line holds every figure, with sane values.
The figures themselves are not judged against the targets here (the 2-core CI machine runs
other things meanwhile); what the bench checks of its own run is: every timed sweep reaped
exactly the leases it expired, and the simulated workers kept their leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deadline import left

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 200
EXPIRED = (0, 10, 100)


@pytest.mark.timeout(120)
def test_bench_simulate_quick_prints_a_table_and_one_sane_json_line(tmp_path: Path) -> None:
    out = tmp_path / "simulate.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    env["FRAMEFLEET_DATA_DIR"] = str(tmp_path / "framefleet")
    args = ["--quick", "--workers", str(WORKERS), "--processes", "2"]
    args += ["--expired", ",".join(map(str, EXPIRED)), "--repeats", "3"]
    args += ["--data-dir", str(tmp_path / "redis"), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "framefleet", "bench", "simulate", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=left(100),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Redis CPU" in proc.stdout and "met:" in proc.stdout  # the table
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(line)
    assert json.loads(out.read_text()) == result
    assert result["benchmark"] == "simulate" and "valkey" in result["server"]
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert result["run_s"] < 60

    [size] = result["sizes"]
    assert size["workers"] == size["leases"] == WORKERS
    assert 0 < size["redis_cpu_core"] < 2 and size["redis_cpu_core_at_target"] > 0
    # a small fleet: the generator keeps up, and every kind of call was made
    assert 0.8 < size["rate_achieved"] < 1.25
    assert all(c["made_per_s"] > 0 for c in size["calls"].values())
    assert size["server_commands_per_s"] > size["calls_per_s_made"]  # each script calls more
    assert "evalsha" in size["top_commands"]
    assert size["used_memory_mb"] > 0 and size["memory_per_worker_bytes"] > 0
    assert size["health_report_bytes"] > WORKERS * 40  # every worker's age and pid
    assert size["refused"] == size["starved"] == 0
    assert not {"orphaned_leases", "requeued", "poisoned"} & set(size["swept_in_window"])
    assert all(v["redis_us"] > 0 for v in size["calibration_us"].values())

    # the timed sweeps: each reaped exactly the leases it expired, and was timed
    assert set(size["sweep"]) == {str(e) for e in EXPIRED}
    for e in EXPIRED:
        sweep = size["sweep"][str(e)]
        assert sweep["reaped"] == [e, e, e] and sweep["ms_median"] > 0
    assert size["ticks"] >= 1
    assert {"leader_hold", "sweep", "workers", "stats", "write_health"} <= set(size["tick_ms"])
    assert 0 < size["tick_ms"]["total"] <= size["tick_ms_max"]

    assert set(result["met"]) >= {
        "redis_cpu_under_half_core",
        "sweep_few_expired_under_50_ms",
        "sweep_not_o_workers",
        "tick_under_period",
    }
