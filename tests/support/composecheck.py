"""docker-compose.yml checked as a file: what a typo or a forgotten line would break before
anyone brings it up. `problems(doc)` lists what is wrong (empty when nothing is), so the
tests can show each check refusing a broken copy."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from framefleet import settings as settings_module
from framefleet.cli import build_parser
from framefleet.settings import ApiSettings, Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
# services built from framefleet's image, and those that are other programs
FRAMEFLEET_SERVICES = {"redis", "ray-head", "ray-worker", "ray-worker-gpu", "coordinator", "api"}
RAY_WORKERS = {"ray-worker", "ray-worker-gpu"}
SECRET_VARIABLES = {"FRAMEFLEET_API_TOKEN", "FRAMEFLEET_API_READ_TOKEN", "RAY_AUTH_TOKEN"}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")


def load(path: Path = COMPOSE) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def setting_names() -> set[str]:
    """Every FRAMEFLEET_* variable Settings.from_env reads (its sections' name maps)."""
    names: set[str] = set()
    for attr, value in vars(settings_module).items():
        if attr.startswith("_") and attr.endswith("_ENV") and isinstance(value, dict):
            names.update(value.values())
    return names


def resolve(value: str) -> str:
    """A compose value with each ${VAR:-default} as its default (${VAR:?..} as "x"), as a
    deployment that sets nothing in .env gets it."""
    return _INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) == "-" else "x", value)


def command(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return [str(c) for c in ([cmd] if isinstance(cmd, str) else cmd)]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return " ".join(test) if isinstance(test, list) else str(test)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        yield err


def _cli_problem(name: str, argv: list[str]) -> str | None:
    """A `framefleet ...` command that the CLI's parser refuses."""
    with _quiet() as err:
        try:
            parsed = build_parser().parse_args([resolve(a) for a in argv])
        except SystemExit:
            return f"{name}: `framefleet {' '.join(argv)}` is refused by the CLI: {err.getvalue()}"
    assert isinstance(parsed, argparse.Namespace)
    return None


def problems(doc: Mapping[str, Any]) -> list[str]:  # noqa: C901 (a list of checks)
    found: list[str] = []
    services: dict[str, Any] = doc.get("services") or {}
    known = setting_names()
    api_port = str(ApiSettings().port)
    for name, svc in services.items():
        cmd, env = command(svc), environment(svc)
        if not healthcheck_text(svc):
            found.append(f"{name}: no health check")
        for port in svc.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                found.append(f"{name}: port {port} is published beyond loopback")
        for var in env:
            if var in SECRET_VARIABLES:
                found.append(f"{name}: {var} is set in the compose file (use a secret file)")
            elif var.startswith("FRAMEFLEET_") and var not in known:
                found.append(f"{name}: {var} is not a framefleet setting")
        if name in FRAMEFLEET_SERVICES and name != "redis":
            try:
                Settings.from_env({k: resolve(v) for k, v in env.items()})
            except SettingsError as exc:
                found.append(f"{name}: its settings are refused: {exc}")
        if cmd[:1] == ["framefleet"]:
            problem = _cli_problem(name, cmd[1:])
            if problem:
                found.append(problem)
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                found.append(f"{name}: depends on {dep}, which is no service")
            elif (cond or {}).get("condition") != "service_healthy":
                found.append(f"{name}: depends on {dep} without condition service_healthy")
        for secret in svc.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret.get("source")
            if source not in (doc.get("secrets") or {}):
                found.append(f"{name}: secret {source} is not declared")
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith(("/", ".", "$")) and source not in (doc.get("volumes") or {}):
                found.append(f"{name}: volume {source} is not declared")
        ray_node = name in RAY_WORKERS or name == "coordinator"
        if ray_node and "RAY_gcs_rpc_server_reconnect_timeout_s" not in env:
            found.append(f"{name}: no RAY_gcs_rpc_server_reconnect_timeout_s (Ray's 60 s)")
        ray_token = env.get("RAY_AUTH_MODE") == "token" and "RAY_AUTH_TOKEN_PATH" in env
        if name in FRAMEFLEET_SERVICES - {"redis", "api"} and not ray_token:
            found.append(f"{name}: Ray's token does not come from a secret file")
    for secret, spec in (doc.get("secrets") or {}).items():
        if set(spec) != {"file"}:
            found.append(f"secret {secret}: only `file:` secrets keep the value out of here")
    head = command(services.get("ray-head", {}))
    if "--num-cpus=0" not in head:
        found.append("ray-head: the head must offer no CPUs (--num-cpus=0)")
    gpu = services.get("ray-worker-gpu", {})
    if gpu.get("profiles") != ["gpu"]:
        found.append("ray-worker-gpu: must stay behind the gpu profile")
    devices = (((gpu.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
        "devices"
    ) or []
    if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
        found.append("ray-worker-gpu: no NVIDIA device reservation")
    api = services.get("api", {})
    if command(api)[-2:] != ["--port", api_port]:
        found.append(f"api: must listen on the settings' port {api_port}")
    if not any(str(p).endswith(f":{api_port}") for p in api.get("ports") or []):
        found.append(f"api: container port {api_port} is not published")
    if f"localhost:{api_port}/" not in healthcheck_text(api):
        found.append("api: its health check does not ask the API's port")
    if environment(api).get("FRAMEFLEET_API_TOKEN_FILE", "").startswith("/run/secrets/") is False:
        found.append("api: its token must come from a secret file (FRAMEFLEET_API_TOKEN_FILE)")
    redis = " ".join(command(services.get("redis", {})))
    for flag in ("--appendonly yes", "--maxmemory-policy noeviction", "requirepass"):
        if flag not in redis:
            found.append(f"redis: {flag!r} is missing")
    url = environment(services.get("coordinator", {})).get("FRAMEFLEET_REDIS_URL", "")
    if "@redis:6379" not in url:
        found.append("coordinator: FRAMEFLEET_REDIS_URL does not name the redis service")
    return found


def prometheus_targets(path: Path = REPO / "deploy" / "prometheus" / "prometheus.yml") -> set[str]:
    doc = yaml.safe_load(path.read_text())
    return {
        t for job in doc["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
