"""deploy/grafana: the provisioning files have what Grafana reads (it cannot be had here, so
they are checked as files), and every query of every dashboard panel returns data from a real
Prometheus that scraped a real fleet (`framefleet up`: the embedded Redis, a local Ray, the
coordinator and the API) while it processed real videos, one of them not a video at all.

The queries run as Grafana would send them: the dashboard's variables at their defaults,
$__rate_interval at 1m (Grafana's least for a 15 s scrape interval), $__range the run's
span; range queries for time series, instant ones where the panel says so."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.deadline import wait_for
from tests.support.models import write_tiny_detr
from tests.support.prometheus import ROOT, Prometheus
from tests.support.servers import free_port
from tests.support.videos import write_video

pytestmark = pytest.mark.needs("prometheus")

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "framefleet.json"
DATASOURCE_UID = "prometheus"
BUILTINS = {"__rate_interval", "__range", "__interval"}
VIDEOS, FRAMES = 3, 32
READ, WRITE = "grafana-read-token", "grafana-write-token"


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each dashboard variable's default value."""
    return {v["name"]: str(v["current"]["value"]) for v in dashboard["templating"]["list"]}


def test_the_data_source_is_provisioned_with_the_uid_the_panels_name() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090" and source["access"] == "proxy"
    assert source["name"] and source["isDefault"] is True


def test_the_dashboards_are_provisioned_from_a_folder() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning/dashboards/framefleet.yml").read_text())
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["name"] and provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_dashboard_is_one_grafana_loads() -> None:
    """Valid JSON with a uid, a schema version, panels with unique ids on a 24-column grid that
    do not overlap, each query on the provisioned data source, and every $variable defined."""
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and 36 <= dashboard["schemaVersion"] <= 41
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(g["y"] + r, g["x"] + c) for r in range(g["h"]) for c in range(g["w"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    variables = _variables(dashboard)
    assert float(variables["gpu_hour_price"]) == 2.5
    queried = [p for p in panels if p["type"] not in ("row", "text")]
    assert len(queried) >= 15
    for panel in queried:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= BUILTINS | set(variables), (panel["title"], used)
    [cost] = [p for p in queried if p["title"].startswith("Cost per 1,000 videos")]
    assert "$gpu_hour_price" in cost["targets"][0]["expr"]


@dataclass
class Run:
    """The Prometheus that scraped the fleet, and the span of its scrapes."""

    prometheus: Prometheus
    start: float
    end: float


def _enqueue(api: str, paths: list[Path]) -> None:
    body = {"items": [{"uri": str(p)} for p in paths]}
    got = httpx.post(
        f"{api}/v1/items", json=body, headers={"Authorization": f"Bearer {WRITE}"}, timeout=30
    )
    assert got.status_code == 200, got.text
    assert len(got.json()["new"]) == len(paths)


def _stop(proc: subprocess.Popen[bytes], data: Path) -> None:
    """Ctrl-C to `up` (it stops Ray, the API and its server), then kill -9 of what is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with contextlib.suppress(OSError, ValueError, KeyError):  # its server's own session
        os.kill(int(json.loads((data / "server.json").read_text())["pid"]), signal.SIGKILL)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One fleet for the module, scraped by Prometheus every second. A first video makes
    every series exist (a labelled counter appears at its first count, which increase() and
    rate() cannot see: in a fleet that runs for days, once); the run measured is the next
    VIDEOS videos and one that is not a video, until each is done or dead and a few scrapes
    after."""
    tmp = tmp_path_factory.mktemp("grafana")
    videos, data = tmp / "videos", tmp / "redis"
    videos.mkdir()
    paths = [write_video(videos / f"clip-{i}.mp4", frames=FRAMES) for i in range(VIDEOS + 1)]
    (videos / "notes.mp4").write_text("meeting notes, not a video\n")  # dead: not_a_video
    port = free_port()
    ray_temp = tempfile.mkdtemp(prefix="ffgr-", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    env |= {
        "FRAMEFLEET_DATA_DIR": str(data),
        "FRAMEFLEET_QUEUE": "grafana",
        "FRAMEFLEET_RAY_TEMP_DIR": ray_temp,
        "FRAMEFLEET_TICK_S": "0.5",
        "FRAMEFLEET_DECODE_ACTORS": "1",
        "FRAMEFLEET_INFERENCE_ACTORS": "1",
        "FRAMEFLEET_CHUNK_FRAMES": "8",
        "FRAMEFLEET_TORCH_THREADS": "1",
        "FRAMEFLEET_ALLOWED_ROOTS": str(videos),
        "FRAMEFLEET_API_PORT": str(port),
        "FRAMEFLEET_API_TOKEN": WRITE,
        "FRAMEFLEET_API_READ_TOKEN": READ,
        "PYTHONPATH": str(ROOT),
    }
    model = write_tiny_detr(tmp / "detr")
    argv = ["up", "--out", str(tmp / "out"), "--model", str(model)]
    with (tmp / "up.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet", *argv],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, (tmp / "up.log").read_text()[-3000:]
        try:
            return httpx.get(f"{api}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    prometheus: Prometheus | None = None
    try:
        wait_for(answers, 120, "the API of `framefleet up`")
        prometheus = prom = Prometheus(tmp / "prometheus", f"127.0.0.1:{port}", READ)
        prom.wait_scraped()
        _enqueue(api, paths[:1])
        seen = "framefleet_items_succeeded_total == {} and on() framefleet_items_dead_total == {}"
        wait_for(lambda: prom.answers(seen.format(1, 0)), 240, f"a video done ({tmp}/up.log)")
        _scraped_after(prom, time.time())
        start = time.time()
        _enqueue(api, [*paths[1:], videos / "notes.mp4"])
        wait_for(lambda: prom.answers(seen.format(VIDEOS + 1, 1)), 240, "the videos finished")
        _scraped_after(prom, time.time())  # rates want samples after the change
        yield Run(prom, start - 2, time.time())  # from a scrape before the enqueue
    finally:
        if prometheus is not None:
            prometheus.close()
        _stop(proc, data)
        shutil.rmtree(ray_temp, ignore_errors=True)


def _scraped_after(prom: Prometheus, t: float) -> None:
    wait_for(lambda: prom.answers(f"timestamp(up) > {t + 4}"), 30, "4 more scrapes")


def _expr(target: dict[str, Any], span_s: float) -> str:
    """The target's query as Grafana sends it: variables at their defaults, built-ins set."""
    values = _variables(_dashboard()) | {
        "__rate_interval": "1m",
        "__range": f"{math.ceil(span_s)}s",
        "__interval": "2s",
    }
    expr = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], target["expr"])
    expr = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)
    assert "$" not in expr, expr
    return expr


def _finite(values: list[list[Any]]) -> list[float]:
    return [float(v) for _, v in values if math.isfinite(float(v))]


def _results(run: Run, target: dict[str, Any]) -> list[tuple[dict[str, str], list[float]]]:
    """Each series of the target's result: its labels and its finite values."""
    expr = _expr(target, run.end - run.start)
    if target.get("instant"):
        return [(s["metric"], _finite([s["value"]])) for s in run.prometheus.query(expr, run.end)]
    series = run.prometheus.query_range(expr, run.start, run.end, 2)
    return [(s["metric"], _finite(s["values"])) for s in series]


@pytest.mark.timeout(480)  # the first to use the fleet waits for it
def test_every_panel_query_returns_data_from_a_fleet_that_ran(run: Run) -> None:
    empty = []
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            results = _results(run, target)
            if not any(values for _, values in results):
                empty.append(f"{panel['title']} / {target['refId']}: {_expr(target, 60)}")
    assert not empty, "no data:\n" + "\n".join(empty)


@pytest.mark.timeout(480)
def test_the_cost_panel_is_gpu_seconds_per_video_at_the_hour_price(run: Run) -> None:
    """On CPU the device is `cpu` (the figures are the CPU time, priced as GPU time): GPU-
    seconds per video are the busy seconds over the videos done in the range (the counters'
    own values at its ends), and the cost per 1,000 videos that times 1,000 / 3,600 x
    gpu_hour_price."""
    panels = {p["title"]: p for p in _panels(_dashboard())}
    [(labels, [per_video])] = _results(run, panels["GPU-seconds per video"]["targets"][0])
    [(cost_labels, [cost])] = _results(run, panels["Cost per 1,000 videos"]["targets"][0])
    assert labels == cost_labels == {"device": "cpu"}
    assert cost == pytest.approx(per_video * 1000 / 3600 * 2.5)
    busy, done = "framefleet_inference_busy_seconds_total", "framefleet_items_succeeded_total"
    [(busy0, busy1), (done0, done1)] = [
        [float(run.prometheus.query(name, at)[0]["value"][1]) for at in (run.start, run.end)]
        for name in (busy, done)
    ]
    assert done1 - done0 == VIDEOS
    assert per_video == pytest.approx((busy1 - busy0) / VIDEOS, rel=0.05)
