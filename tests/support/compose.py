"""docker-compose.yml brought up for real, with podman and podman-compose (no Docker engine
here), for tests/deploy. Images: framefleet's own Dockerfile over a debootstrap base (no
registry serves images here: deploy/podman/base-image), and a Prometheus image from
Debian's package (deploy/podman/prometheus.Containerfile) standing in for prom/prometheus.

podman runs with deploy/podman/containers.conf (CONTAINERS_CONF): nothing in /etc changes.
It cannot run health checks by itself (they need systemd) nor honour `depends_on:
service_healthy`: `healthy()` runs a service's declared check by hand, and the tests poll
readiness themselves. Each deployment is a compose project of its own, with its own ports,
secrets and volumes, and `down -v` removes all of it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "localhost/framefleet-base:bookworm"
IMAGE = "localhost/framefleet:test"
PROMETHEUS_IMAGE = "localhost/framefleet-prometheus:test"
PACKAGES = {  # command -> the Debian package that has it
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "fuse-overlayfs": "fuse-overlayfs",
    "newuidmap": "uidmap",
    "slirp4netns": "slirp4netns",
}


class DeployError(AssertionError):
    """The deployment could not be built, brought up, or did not reach a state in time."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def run(cmd: list[str], timeout: float, check: bool = True, **kw: Any) -> str:
    """A command's stdout; its stderr's tail in the error when it fails."""
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=kw.pop("env", podman_env()),
            check=False,
            **kw,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"{' '.join(cmd[:4])} ... took over {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout)[-3000:]
        raise DeployError(f"{' '.join(cmd[:6])} exited {done.returncode}:\n{tail}")
    return str(done.stdout)


def ensure_tools() -> None:
    """podman and its helpers from Debian's packages when missing (as root); in CI a missing
    tool that cannot be installed fails the test, it never skips."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise DeployError(f"the deployment test needs: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], timeout=300, env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], timeout=600, env=env)


def build_images(log: Path) -> None:
    """The base image (once a machine), framefleet's image and the Prometheus image. pip's
    CA bundle (PIP_CERT) goes in as a build secret and a local wheel directory
    (PIP_FIND_LINKS, the CPU torch) as a read-only volume, as the Dockerfile documents."""
    run([str(REPO / "deploy" / "podman" / "base-image"), BASE_IMAGE], timeout=600)
    build = ["podman", "build", "--build-arg", f"BASE={BASE_IMAGE}"]
    cert = pip_setting("cert")
    if cert and Path(cert).is_file():
        build += ["--secret", f"id=pipca,src={cert}"]
    wheels = pip_setting("find-links")
    if wheels and Path(wheels).is_dir():
        # the CPU torch is there; PyTorch's own index may be unreachable (it is here)
        build += ["-v", f"{wheels}:/wheels:ro", "--build-arg", "TORCH_INDEX="]
    with log.open("a") as out:
        for cmd in (
            [*build, "-t", IMAGE, str(REPO)],
            [
                *build,
                "-t",
                PROMETHEUS_IMAGE,
                "-f",
                str(REPO / "deploy" / "podman" / "prometheus.Containerfile"),
                str(REPO / "deploy" / "podman"),
            ],
        ):
            started = time.monotonic()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=podman_env())
            out.write(f"\n== {cmd[-1]}: {time.monotonic() - started:.0f} s\n")
            if done.returncode != 0:
                raise DeployError(f"{' '.join(cmd[:3])} failed: see {log}")


def pip_setting(name: str) -> str | None:
    """One of this machine's pip settings (its PIP_* variable, else pip's configuration
    files), which the image's build is handed the same way: a CA bundle, a wheel folder."""
    value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if value:
        return value.split()[0]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    for line in listed.splitlines():
        key, _, raw = line.partition("=")
        if key.endswith("." + name) and raw.strip("'\""):
            return raw.strip("'\"").split()[0]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def image_size_mb(image: str) -> float:
    out = run(["podman", "image", "inspect", image, "--format", "{{.Size}}"], timeout=60)
    return int(out.strip()) / 1e6


class Deployment:
    """One compose project: `up(services)`, the API's client, Prometheus's, and podman's
    view of each container."""

    def __init__(self, workdir: Path, override: str = "") -> None:
        self.dir = workdir
        self.project = f"fftest{os.getpid()}x{secrets.token_hex(2)}"
        self.api_port, self.prom_port, self.ray_port = free_port(), free_port(), free_port()
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(parents=True)
        for name in ("api_token", "ray_auth_token", "grafana_admin_password"):
            (secrets_dir / name).write_text(secrets.token_hex(24) + "\n")
            (secrets_dir / name).chmod(0o644)  # uid 1000 in the containers reads it
        self.token = (secrets_dir / "api_token").read_text().strip()
        self.env_file = workdir / "env"
        self.env_file.write_text(
            "\n".join(
                [
                    f"FRAMEFLEET_REDIS_PASSWORD={secrets.token_hex(16)}",
                    f"FRAMEFLEET_SECRETS_DIR={secrets_dir}",
                    f"FRAMEFLEET_IMAGE={IMAGE}",
                    f"PROMETHEUS_IMAGE={PROMETHEUS_IMAGE}",
                    f"FRAMEFLEET_VIDEOS_DIR={workdir / 'videos'}",
                    f"FRAMEFLEET_API_PORT={self.api_port}",
                    f"FRAMEFLEET_PROMETHEUS_PORT={self.prom_port}",
                    f"FRAMEFLEET_RAY_DASHBOARD_PORT={self.ray_port}",
                    "FRAMEFLEET_APPENDFSYNC=always",
                    "",
                ]
            )
        )
        self.override = workdir / "override.yml"
        self.override.write_text(override or "services: {}\n")
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
        )
        self.prometheus = httpx.Client(base_url=f"http://127.0.0.1:{self.prom_port}", timeout=10)

    def compose(self, *args: str, timeout: float = 300) -> str:
        exe = str(Path(sys.executable).parent / "podman-compose")
        cmd = [exe, "--env-file", str(self.env_file), "-f", str(REPO / "docker-compose.yml")]
        cmd += ["-f", str(self.override), "-p", self.project, *args]
        return run(cmd, timeout=timeout, cwd=str(REPO))

    def up(self, services: list[str]) -> None:
        self.compose("up", "-d", *services)

    def down(self) -> None:
        self.api.close()
        self.prometheus.close()
        self.compose("down", "-v", "-t", "10", timeout=180)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return run(["podman", *args], timeout=timeout, check=check)

    def healthy(self, service: str) -> bool:
        """The service's declared health check, run by hand (podman runs none itself here)."""
        done = subprocess.run(
            ["podman", "healthcheck", "run", self.container(service)],
            capture_output=True,
            text=True,
            timeout=60,
            env=podman_env(),
            check=False,
        )
        return done.returncode == 0

    def logs(self, service: str) -> str:
        done = subprocess.run(
            ["podman", "logs", self.container(service)],
            capture_output=True,
            text=True,
            timeout=60,
            env=podman_env(),
            check=False,
        )
        return done.stdout + done.stderr

    def volume_path(self, volume: str) -> Path:
        out = self.podman("volume", "inspect", f"{self.project}_{volume}")
        return Path(json.loads(out)[0]["Mountpoint"])

    def memory(self) -> dict[str, str]:
        """Each running container's memory use, as `podman stats` reports it."""
        out = self.podman("stats", "--no-stream", "--format", "json", timeout=120)
        prefix = f"{self.project}_"
        return {
            str(row["name"]).removeprefix(prefix).removesuffix("_1"): str(row["mem_usage"])
            for row in json.loads(out)
            if str(row["name"]).startswith(prefix)
        }

    def queue(self) -> dict[str, Any]:
        response = self.api.get("/v1/queue")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = self.prometheus.get("/api/v1/query", params={"query": promql})
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Polls `check` until it returns something true (errors count as not yet); the last
    error or value is in the failure."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except (httpx.HTTPError, DeployError, KeyError, ValueError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise DeployError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(every)
