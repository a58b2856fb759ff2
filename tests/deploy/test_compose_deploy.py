"""docker-compose.yml as a user meets it: the image built from the Dockerfile, Valkey, the Ray
head, one CPU worker, the coordinator, the API and Prometheus brought up with podman-compose,
videos enqueued over the API, a kill -9 of the Ray head and a restart of Valkey survived,
the metrics and the alert rules seen in Prometheus.

Run by scripts/test-deploy (marked `deploy`: not in pytest's default selection). The tests
share one deployment (building and starting it takes minutes) and run in file order, each
building on the state the previous one left: the module is one story, told in steps.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from tests.deploy import FIGURES
from tests.support.compose import (
    IMAGE,
    Deployment,
    build_images,
    ensure_tools,
    image_size_mb,
    wait_for,
)
from tests.support.models import write_tiny_detr
from tests.support.videos import write_video

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

SERVICES = ["redis", "ray-head", "ray-worker", "coordinator", "api", "prometheus"]
SHORT = {f"short{i}.mp4": 24 for i in range(3)}  # name -> frames
LATE = {"after-restart.mp4": 24}  # enqueued after Valkey's restart
LONG = {f"long{i}.mp4": 3000 for i in range(10)}  # long enough to be in flight at a kill
OVERRIDE = """\
services:
  ray-worker:
    volumes:
      - {models}:/models:ro
  coordinator:
    environment:
      FRAMEFLEET_MODEL: /models/tiny
      FRAMEFLEET_LEADER_TTL_S: "10"
    volumes:
      - {models}:/models:ro
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("deploy")
    (work / "videos").mkdir()
    for name, frames in {**SHORT, **LONG, **LATE}.items():
        write_video(work / "videos" / name, frames=frames)
    write_tiny_detr(work / "models" / "tiny")
    for path in [work, *work.rglob("*")]:  # the containers run as uid 1000
        path.chmod(0o755 if path.is_dir() else 0o644)
    ensure_tools()
    started = time.monotonic()
    build_images(work / "build.log")
    FIGURES["images built s (layers cached where unchanged)"] = round(time.monotonic() - started)
    FIGURES["image MB"] = round(image_size_mb(IMAGE))
    d = Deployment(work, OVERRIDE.format(models=work / "models"))
    try:
        started = time.monotonic()
        d.up(SERVICES)
        wait_for("the API ready (Redis and a fresh leader report)", lambda: ready(d), 240)
        FIGURES["up to ready s"] = round(time.monotonic() - started)
        yield d
    finally:
        for service in SERVICES:  # what each container said, for a failure's diagnosis
            (work / f"{service}.log").write_text(d.logs(service))
        d.down()
        (work / "figures.json").write_text(json.dumps(FIGURES, indent=1))  # and the summary


def ready(d: Deployment) -> bool:
    return d.api.get("/readyz").status_code == 200


def enqueue(d: Deployment, names: list[str]) -> list[str]:
    response = d.api.post("/v1/items", json={"items": [{"uri": f"/videos/{n}"} for n in names]})
    assert response.status_code == 200, response.text
    body: dict[str, list[str]] = response.json()
    assert len(body["new"]) == len(names), body
    return body["new"]


def item(d: Deployment, item_id: str) -> dict[str, Any]:
    response = d.api.get(f"/v1/items/{item_id}")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def all_done(d: Deployment, ids: list[str]) -> bool:
    states = [item(d, i)["state"] for i in ids]
    assert "dead" not in states, [item(d, i) for i in ids if item(d, i)["state"] == "dead"]
    return all(s == "done" for s in states)


def done_once(d: Deployment, ids: list[str], frames: int, zombies: int = 0) -> None:
    """Each video done, acknowledged once (no stale ack, no delivery charged), with one
    output version on the mounted results volume, and each frame through the model once.
    `zombies`: the stale acks allowed, from a fleet whose driver died with the head. Its
    leases are given back, but its actors on the worker node live on until Ray ends them
    and may finish a video meanwhile: their ack is refused (the fence), and the next
    fleet acks the video from the outputs they left (seen: "its outputs were there
    already"), so it is still acked once and its frames counted once."""
    q = d.queue()
    counters = q["counters"]
    assert counters.get("acked_total") == len(ids), counters
    assert counters.get("stale_ack_total", 0) <= zombies, counters
    assert counters.get("frames_total") == frames, counters
    results = d.volume_path("results")
    for item_id in ids:
        it = item(d, item_id)
        assert it["state"] == "done" and it["deliveries"] == 0 and it["attempts"] == 0, it
        versions = [p for p in (results / item_id).iterdir()]
        assert len(versions) == 1, versions
        assert (versions[0] / "_manifest.json").is_file()
        assert (versions[0] / "detections.parquet").is_file()
        manifest = d.api.get(f"/v1/items/{item_id}/manifest")
        assert manifest.status_code == 200, manifest.text


def test_every_service_passes_its_declared_health_check(deployment: Deployment) -> None:
    for service in SERVICES:
        wait_for(f"{service}'s health check", partial(deployment.healthy, service), 120, 2)


def test_videos_enqueued_over_the_api_are_each_done_once(deployment: Deployment) -> None:
    d = deployment
    ids = enqueue(d, list(SHORT))
    wait_for("the short videos done", lambda: all_done(d, ids), 180)
    done_once(d, ids, sum(SHORT.values()))
    FIGURES["memory after the first videos"] = d.memory()


def test_the_coordinator_logs_each_outcome(deployment: Deployment) -> None:
    """One INFO line per video, with its id and URI, in the coordinator's container log (the
    actors' lines reach the driver's stderr)."""
    d = deployment
    for item_id in ids_of(d, "done"):
        line = re.compile(rf"INFO .*\b{item_id}\b.*done")
        wait_for(f"the outcome line of {item_id}", partial(outcome, d, line), 60)


def outcome(d: Deployment, line: re.Pattern[str]) -> bool:
    return line.search(d.logs("coordinator")) is not None


def ids_of(d: Deployment, state: str) -> list[str]:
    response = d.api.get("/v1/items", params={"state": state, "limit": 100})
    response.raise_for_status()
    return [row["id"] for row in response.json()["items"]]


def test_prometheus_scrapes_the_fleet_and_evaluates_every_rule(deployment: Deployment) -> None:
    d = deployment
    wait_for(
        "framefleet_items_succeeded_total in Prometheus",
        lambda: [r for r in d.query("framefleet_items_succeeded_total") if r["value"][1] == "3"],
        90,
        3,
    )

    def rules() -> list[dict[str, Any]] | None:
        response = d.prometheus.get("/api/v1/rules")
        response.raise_for_status()
        found = [r for g in response.json()["data"]["groups"] for r in g["rules"]]
        evaluated = [r for r in found if r.get("lastEvaluation", "").startswith("20")]
        return found if found and len(evaluated) == len(found) else None

    found = wait_for("every rule evaluated", rules, 90, 3)
    bad = [(r["name"], r.get("lastError")) for r in found if r["health"] != "ok"]
    assert not bad, bad
    firing = [r["name"] for r in found if r.get("state") == "firing"]
    assert not firing, f"alerts firing on a healthy fleet: {firing}"


def test_a_ray_head_killed_mid_work_is_resumed_by_the_coordinator(
    deployment: Deployment,
) -> None:
    d = deployment
    before = d.queue()["counters"]
    ids = enqueue(d, list(LONG))
    wait_for(
        "videos in flight",
        lambda: d.queue()["counts"]["leased"] > 0 and d.queue()["counts"]["queued"] > 0,
        120,
        0.5,
    )
    d.podman("kill", "-s", "KILL", d.container("ray-head"))
    assert d.queue()["counts"]["done"] < len(SHORT) + len(LONG), "all done before the kill"
    d.podman("start", d.container("ray-head"))
    started = time.monotonic()
    wait_for("the long videos done after the head's restart", lambda: all_done(d, ids), 420, 2)
    FIGURES["head kill to all done s"] = round(time.monotonic() - started)
    FIGURES["memory after the long videos"] = d.memory()
    done_once(d, [*ids_of(d, "done")], sum(SHORT.values()) + sum(LONG.values()), len(LONG))
    after = d.queue()["counters"]
    assert after.get("leader_changes_total") == before.get("leader_changes_total"), (
        "the coordinator itself resumed, no standby took over"
    )
    logs = d.logs("coordinator")
    assert "lost the GCS" in logs or "GCS" in logs, logs[-3000:]


def test_nothing_acknowledged_is_lost_when_valkey_restarts(deployment: Deployment) -> None:
    """AOF with appendfsync always (this test's .env): a kill -9 of Valkey and a start lose
    no acknowledged video, and the fleet goes on taking work."""
    d = deployment
    done_before = sorted(ids_of(d, "done"))
    counters = d.queue()["counters"]
    d.podman("kill", "-s", "KILL", d.container("redis"))
    d.podman("start", d.container("redis"))
    wait_for("the API ready after Valkey's restart", lambda: ready(d), 120)
    assert sorted(ids_of(d, "done")) == done_before
    assert d.queue()["counters"]["acked_total"] == counters["acked_total"]
    again = d.api.post("/v1/items", json={"uri": "/videos/short0.mp4"})
    assert again.status_code == 200 and again.json()["new"] == [], again.text  # still done
    ids = enqueue(d, list(LATE))
    wait_for("a video enqueued after the restart done", lambda: all_done(d, ids), 180)
