"""docker-compose.yml, the Dockerfile and .dockerignore checked as files (tests/deploy brings
them up for real): the commands exist in the CLI, the variables are settings, the ports agree,
every service has a health check, no secret is written in the file. Each check is also shown
refusing a broken copy, so none passes by being unable to fail."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.composecheck import REPO, load, problems, prometheus_targets


def test_the_compose_file_passes_every_check() -> None:
    assert problems(load()) == []


def _drop_healthcheck(d: dict[str, Any]) -> None:
    del d["services"]["coordinator"]["healthcheck"]


def _unknown_command(d: dict[str, Any]) -> None:
    d["services"]["coordinator"]["command"] = ["framefleet", "coordinater", "--join", "h:1"]


def _unknown_flag(d: dict[str, Any]) -> None:
    d["services"]["coordinator"]["command"] = ["framefleet", "coordinator", "--jion", "h:1"]


def _unknown_setting(d: dict[str, Any]) -> None:
    d["services"]["api"]["environment"]["FRAMEFLEET_API_TOKEN_FIEL"] = "/run/secrets/x"


def _bad_value(d: dict[str, Any]) -> None:
    d["services"]["coordinator"]["environment"]["FRAMEFLEET_LEASE_S"] = "soon"


def _inline_token(d: dict[str, Any]) -> None:
    d["services"]["api"]["environment"]["FRAMEFLEET_API_TOKEN"] = "s3cret"


def _public_port(d: dict[str, Any]) -> None:
    d["services"]["api"]["ports"] = ["8321:8321"]


def _other_api_port(d: dict[str, Any]) -> None:
    d["services"]["api"]["command"][-1] = "8080"


def _head_with_cpus(d: dict[str, Any]) -> None:
    d["services"]["ray-head"]["command"].remove("--num-cpus=0")


def _no_reconnect_timeout(d: dict[str, Any]) -> None:
    del d["services"]["ray-worker"]["environment"]["RAY_gcs_rpc_server_reconnect_timeout_s"]


def _gpu_without_profile(d: dict[str, Any]) -> None:
    del d["services"]["ray-worker-gpu"]["profiles"]


def _no_aof(d: dict[str, Any]) -> None:
    cmd = d["services"]["redis"]["command"]
    cmd[-1] = cmd[-1].replace("--appendonly yes", "--appendonly no")


def _undeclared_volume(d: dict[str, Any]) -> None:
    d["services"]["api"]["volumes"] = ["outputs:/results:ro"]


def _inline_secret(d: dict[str, Any]) -> None:
    d["secrets"]["api_token"] = {"environment": "FRAMEFLEET_API_TOKEN"}


def _unhealthy_dependency(d: dict[str, Any]) -> None:
    d["services"]["coordinator"]["depends_on"]["redis"] = {"condition": "service_started"}


BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no health check": _drop_healthcheck,
    "refused by the CLI": _unknown_command,
    "--jion": _unknown_flag,
    "FRAMEFLEET_API_TOKEN_FIEL is not a framefleet setting": _unknown_setting,
    "FRAMEFLEET_LEASE_S='soon'": _bad_value,
    "FRAMEFLEET_API_TOKEN is set in the compose file": _inline_token,
    "beyond loopback": _public_port,
    "settings' port 8321": _other_api_port,
    "--num-cpus=0": _head_with_cpus,
    "RAY_gcs_rpc_server_reconnect_timeout_s": _no_reconnect_timeout,
    "gpu profile": _gpu_without_profile,
    "--appendonly yes": _no_aof,
    "volume outputs is not declared": _undeclared_volume,
    "only `file:` secrets": _inline_secret,
    "without condition service_healthy": _unhealthy_dependency,
}


@pytest.mark.parametrize("expected", list(BREAKS))
def test_each_check_refuses_a_broken_copy(expected: str) -> None:
    doc = copy.deepcopy(load())
    BREAKS[expected](doc)
    found = problems(doc)
    assert any(expected in p for p in found), found


def test_prometheus_scrapes_the_api_service_on_its_port() -> None:
    doc = load()
    assert "api" in doc["services"]
    assert prometheus_targets() == {"api:8321"}


def test_the_image_runs_as_a_user_and_bakes_no_weights() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "ARG TORCH=cpu" in dockerfile  # the CUDA build is --build-arg TORCH=cuda
    assert "HF_HOME=" in dockerfile
    assert "from_pretrained" not in dockerfile and "huggingface-cli" not in dockerfile


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # everything out, then the few paths back in
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "framefleet"}
    copied = {
        line.split()[1].rstrip("/")
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    }
    assert copied <= allowed | {"constraints.txt", "pyproject.toml"}
