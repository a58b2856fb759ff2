"""deploy/prometheus: the compose deployment's Prometheus config and the alert rules, checked by
`promtool` (the config, the rules, and the rules' unit tests, which must fail once a threshold
is moved), then loaded by a real Prometheus that scrapes a real API: every rule evaluates
without error, and the alerts a live queue calls for go pending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.settings import QueueSettings
from tests.support.deadline import wait_for
from tests.support.prometheus import DEPLOY, ApiProcess, Prometheus, promtool

pytestmark = pytest.mark.needs("prometheus")

RULES = DEPLOY / "rules" / "framefleet.yml"
UNIT_TESTS = DEPLOY / "tests" / "framefleet_test.yml"
CONFIG = DEPLOY / "prometheus.yml"
READ = "alerts-read-token"


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_accepts_the_rules_and_each_alert_says_what_to_do() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = _alerts()
    assert f"SUCCESS: {len(alerts) + 1} rules found" in checked.stdout  # and one recording
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule.get("for"), name
        for key in ("summary", "description", "threshold", "runbook"):
            assert rule["annotations"].get(key, "").strip(), (name, key)


def test_promtool_accepts_the_compose_config(tmp_path: Path) -> None:
    """The config as compose mounts it; checked on a copy whose token file and rules
    directory are where this machine has them (promtool opens both)."""
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "framefleet" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8321"]}]
    auth = job["authorization"]
    assert auth["credentials_file"] == "/run/secrets/framefleet_api_token"
    (tmp_path / "token").write_text("a-read-token\n")
    auth["credentials_file"] = str(tmp_path / "token")
    config["rule_files"] = [str(RULES.parent / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alerts()) + 1} rules found" in checked.stdout, checked.stdout


def _cases() -> dict[str, tuple[int, int]]:
    """Per alert: (evaluations where it is expected to fire, where it is expected not to)."""
    cases: dict[str, tuple[int, int]] = {}
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in test.get("alert_rule_test", []):
            fires, quiet = cases.get(check["alertname"], (0, 0))
            expected = bool(check.get("exp_alerts"))
            cases[check["alertname"]] = (fires + expected, quiet + (not expected))
    return cases


def test_each_alert_fires_in_a_unit_test_and_stays_quiet_in_another() -> None:
    cases = _cases()
    for name in _alerts():
        fires, quiet = cases.get(name, (0, 0))
        assert fires >= 1 and quiet >= 1, (name, fires, quiet)
    tested = promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


# Each threshold moved one way (a firing case stops firing) or the other (a quiet case fires),
# and each alert's `for:` removed (its pending evaluation fires): the unit tests must fail.
MOVED = [
    ("FramefleetDeadRateHigh", "expr", "ratio_rate15m > 0.05", "ratio_rate15m > 0.2"),
    ("FramefleetDeadRateHigh", "expr", "ratio_rate15m > 0.05", "ratio_rate15m > 0.03"),
    ("FramefleetDeadRateHigh", "expr", "[15m]) >= 5", "[15m]) >= 3"),
    ("FramefleetOldestQueuedItemTooOld", "expr", "> 7200", "> 8000"),
    ("FramefleetOldestQueuedItemTooOld", "expr", "> 7200", "> 6000"),
    ("FramefleetOldestQueuedItemTooOld", "expr", "paused == 0", "paused >= 0"),
    ("FramefleetBacklogWithoutConsumers", "expr", '"queued"} > 0', '"queued"} > 20'),
    ("FramefleetBacklogWithoutConsumers", "expr", "consumers == 0", "consumers < 5"),
    ("FramefleetNoLeader", "expr", "== 0", "< 0"),
    ("FramefleetNoLeader", "expr", "== 0", "<= 1"),
    ("FramefleetHealthReportStale", "expr", "< 60", "< 100"),
    ("FramefleetHealthReportStale", "expr", "< 60", "< 2"),
    ("FramefleetRayGcsLost", "expr", "[10m]", "[30m]"),
    ("FramefleetRayGcsLost", "expr", "max_over_time", "min_over_time"),
    ("FramefleetRedisDown", "expr", "== 0", "< 0"),
    ("FramefleetRedisDown", "expr", "== 0", "<= 1"),
    ("FramefleetApiDown", "expr", "== 0", "< 0"),
    ("FramefleetApiDown", "expr", '{job="framefleet"} == 0', " == 0"),
    ("FramefleetRedisMemoryHigh", "expr", "> 0.9", "> 0.96"),
    ("FramefleetRedisMemoryHigh", "expr", "> 0.9", "> 0.8"),
    ("FramefleetRedisMemoryHigh", "expr", "max_bytes > 0\n", "max_bytes >= 0\n"),
    ("FramefleetNoProgress", "expr", "timestamp_seconds > 3600", "timestamp_seconds > 5000"),
    ("FramefleetNoProgress", "expr", "age_seconds > 3600", "age_seconds > 300"),
    ("FramefleetNoProgress", "expr", "paused == 0", "paused >= 0"),
] + [(name, "for", None, "0s") for name in _alerts()]


@pytest.mark.parametrize(
    ("alert", "field", "old", "new"),
    [pytest.param(*m, id=f"{m[0]}: {m[2] or m[1]} -> {m[3]}".replace("\n", "")) for m in MOVED],
)
def test_the_unit_tests_fail_when_a_threshold_moves(
    tmp_path: Path, alert: str, field: str, old: str | None, new: str
) -> None:
    rules = yaml.safe_load(RULES.read_text())
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    if old is None:
        rule[field] = new
    else:
        assert rule[field].count(old) == 1, (alert, old, rule[field])
        rule[field] = rule[field].replace(old, new)
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(rules))
    (tmp_path / "tests" / UNIT_TESTS.name).write_text(UNIT_TESTS.read_text())
    tested = promtool("test", "rules", str(tmp_path / "tests" / UNIT_TESTS.name))
    assert tested.returncode != 0, f"{alert}: {old} -> {new} passed the unit tests"
    assert f"alertname: {alert}," in tested.stdout + tested.stderr, tested.stdout


def _by_name(prom: Prometheus) -> dict[str, dict[str, Any]]:
    return {rule["name"]: rule for rule in prom.rules()}


def _states(prom: Prometheus) -> dict[str, str]:
    return {name: rule.get("state", "") for name, rule in _by_name(prom).items()}


def test_a_real_prometheus_evaluates_every_rule_on_a_real_api(tmp_path: Path) -> None:
    """The API over a queue with a backlog, no coordinator and no decode actor, one video done
    and one dead, then with its Redis killed. Prometheus (its scrape timeout longer than the
    API's Redis limit, as in the compose config) evaluates every rule each second: all of
    them healthy throughout, the dead ratio recorded, and the alerts the queue calls for
    pending (their `for:` keeps them from firing within a test)."""
    server = EmbeddedServer(tmp_path / "redis").start()
    env = {
        "FRAMEFLEET_REDIS_URL": server.url,
        "FRAMEFLEET_QUEUE": "alerts",
        "FRAMEFLEET_API_TOKEN": "alerts-write-token",
        "FRAMEFLEET_API_READ_TOKEN": READ,
    }
    client = connect(server.url)
    queue = Queue(client, QueueSettings(name="alerts"))
    try:
        with (
            ApiProcess(tmp_path / "api.log", **env) as api,
            Prometheus(tmp_path / "prom", f"127.0.0.1:{api.port}", READ, [RULES], "7s") as prom,
        ):
            queue.enqueue([f"/v/{n}.mp4" for n in "abc"])
            prom.wait_scraped()
            wait_for(lambda: prom.answers("framefleet_items_enqueued_total == 3"), 30, "3 queued")
            done, dead = queue.claim(2, "decoder-test-0")
            queue.ack(done, "file:///out/a")
            queue.fail(dead, "not a video", retryable=False, cls="not_a_video")
            wait_for(
                lambda: prom.answers("framefleet:items_dead:ratio_rate15m == 0.5"),
                60,
                "the dead ratio recorded (1 dead, 1 done)",
            )
            wait_for(
                lambda: _states(prom)["FramefleetBacklogWithoutConsumers"] == "pending",
                30,
                f"a backlog without consumers pending: {_states(prom)}",
            )
            rules = _by_name(prom)
            assert all(r["health"] == "ok" and not r.get("lastError") for r in rules.values())
            states = _states(prom)
            assert states["FramefleetNoLeader"] == "pending", states  # no coordinator runs
            quiet = set(_alerts()) - {"FramefleetBacklogWithoutConsumers", "FramefleetNoLeader"}
            assert {states[name] for name in quiet} == {"inactive"}, states
            assert prom.query("framefleet_redis_memory_used_bytes > 0")
            server.kill()
            wait_for(
                lambda: _states(prom)["FramefleetRedisDown"] == "pending",
                60,
                "Redis down pending",
            )
            states = _states(prom)
            assert states["FramefleetApiDown"] == "inactive", states  # the scrape still works
            assert states["FramefleetBacklogWithoutConsumers"] == "inactive", states
            assert all(r["health"] == "ok" for r in prom.rules()), prom.rules()
    finally:
        client.close()
        server.stop()
