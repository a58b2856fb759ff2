"""A real Prometheus (Debian's `prometheus`) for the tests, and what it scrapes: it runs on a
loopback port with its config, data and log in a directory of its own, scrapes the API every
second with a bearer token from a file (as deploy/prometheus/prometheus.yml does), and may
load rule files. Also `promtool`, and `framefleet api` in a subprocess for it to scrape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.deadline import left, wait_for
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
MISSING = "is missing: scripts/system-deps installs Debian's prometheus"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool` (the test fails without them, never skips)."""
    found = shutil.which(name)
    assert found, f"{name} {MISSING}"
    return found


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=left(120),
        check=False,
    )


class Prometheus:
    """One Prometheus scraping `target` (host:port) every `interval` (which is also its
    scrape timeout), evaluating `rule_files` every `evaluation`; started by the constructor,
    stopped by close()."""

    def __init__(
        self,
        tmp: Path,
        target: str,
        token: str,
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
        evaluation: str = "1s",
    ) -> None:
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "token").write_text(token)
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": evaluation,
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": "framefleet",
                    "authorization": {"credentials_file": str(tmp / "token")},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, **params: Any) -> Any:
        got = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = got.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector (each with its labels and [time, "value"])."""
        params = {"query": promql} | ({} if at is None else {"time": at})
        data = self._get("/api/v1/query", **params)
        assert data["resultType"] == "vector", (promql, data)
        return list(data["result"])

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """A range query's matrix (each series with its labels and [[time, "value"], ...])."""
        data = self._get("/api/v1/query_range", query=promql, start=start, end=end, step=step)
        return list(data["result"])

    def rules(self) -> list[dict[str, Any]]:
        """Every rule loaded, as /api/v1/rules gives them (name, health, state, lastError)."""
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def answers(self, promql: str) -> bool:
        """Whether the query has a result now (False while Prometheus starts)."""
        assert self.process.poll() is None, f"prometheus exited: {self.tail()}"
        try:
            return bool(self.query(promql))
        except (httpx.HTTPError, ValueError, AssertionError):  # starting: no JSON yet
            return False

    def wait_scraped(self, timeout: float = 60) -> None:
        wait_for(lambda: self.answers('up{job="framefleet"} == 1'), timeout, "a scrape")

    def tail(self) -> str:
        self.log.flush()
        return (self.dir / "prometheus.log").read_text()[-3000:]

    def close(self) -> None:
        stop(self.process)
        self.log.close()


class ApiProcess:
    """`framefleet api` in a subprocess on a free loopback port, its settings from FRAMEFLEET_*
    variables (`env`) only, as a container runs it; stopped with SIGTERM by close()."""

    def __init__(self, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "framefleet", "api", "--port", str(self.port)],
            env={**clean, **env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = log
        try:
            wait_for(self._answers, 60, f"the API to answer (log: {log})")
        except BaseException:
            self.close()
            raise

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        stop(self.process)
        self.log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s; reaped either way."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
