"""The embedded server of a data dir is shared by its user's processes that use it (issue 21,
finding 13): it runs while any of them does, whoever started it; the long-running commands
(`run`, `up`, `coordinator`: `embedded(..., keep_alive=True)`) start it again if it dies,
whoever started it first; and once no client is left, one killed -9 included, it stops.

The clients are real processes: `framefleet api`, and small scripts that do what the
commands do (`embedded(settings)`, with keep_alive for the fleet commands), each on the
test's own data dir and a port of the server's own choosing."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from redis import Redis
from redis.exceptions import RedisError

from framefleet.queue import EmbeddedServer, connect
from framefleet.queue.server import running_url
from tests.support.deadline import left
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]

CLIENT = """
import signal, sys
from pathlib import Path
from framefleet.queue import embedded
from framefleet.settings import RedisSettings

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # a clean exit, as the CLI's
settings = RedisSettings(data_dir=Path(sys.argv[1]), appendfsync="always")
with embedded(settings, keep_alive=sys.argv[2] == "keep_alive") as url:
    print(url, flush=True)
    sys.stdin.read()  # until the test closes it
"""


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    env["FRAMEFLEET_DATA_DIR"] = str(data)
    return env


class Client:
    """A process using the embedded server of `data`: with keep_alive, what `run`, `up` and
    `coordinator` do; without, what `api`, `enqueue` and the other commands do."""

    def __init__(self, data: Path, *, keep_alive: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(data), "keep_alive" if keep_alive else "use"],
            cwd=ROOT,
            env=_env(data),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], left(60))
        self.url = self.proc.stdout.readline().strip() if ready else ""
        if not self.url.startswith("redis://"):
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"the client did not get a server: {err}")

    def leave(self) -> None:
        """Its `with embedded(...)` block ends (the command is done, or Ctrl-C)."""
        _, err = self.proc.communicate(timeout=left(60))
        assert self.proc.returncode == 0, err

    def kill(self) -> None:
        """kill -9: nothing of it runs any more, its finally blocks neither."""
        self.proc.kill()
        self.proc.communicate(timeout=left(30))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def _server_pid(data: Path) -> int | None:
    try:
        return int(json.loads((data / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _answers(url: str) -> bool:
    client = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except RedisError:
        return False
    finally:
        client.close()


def _until(check: Callable[[], bool], what: str, within: float) -> None:
    end = time.monotonic() + left(within)
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(0.05)


def _holds(check: Callable[[], bool], what: str, for_s: float) -> None:
    """`check` stays true for `for_s` seconds (a few rounds of every watcher's polling)."""
    end = time.monotonic() + for_s
    while time.monotonic() < end:
        assert check(), what
        time.sleep(0.05)


def _processes_naming(data: Path) -> list[str]:
    """The live processes whose command line names the data dir (a client, a helper)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = p.info["cmdline"] or []
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(str(data) in a for a in cmdline):
            found.append(" ".join(cmdline))
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_the_server_outlives_the_client_that_started_it_while_another_uses_it(
    tmp_path: Path,
) -> None:
    """`framefleet api` started the server, `up` (here: its keep_alive client) attached; the
    API's exit took the fleet's Redis away with it. Now the same server runs on until its
    last client is done, and then stops."""
    data = tmp_path / "redis"
    api = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "api", "--port", str(free_port())],
        cwd=ROOT,
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _until(lambda: running_url(data) is not None, "`framefleet api` started a server", 60)
        pid = _server_pid(data)
        assert pid is not None
        with Client(data, keep_alive=True) as fleet:
            assert fleet.url == running_url(data)  # it attached to the API's server
            connect(fleet.url).set("ff:test", "kept")
            api.send_signal(signal.SIGTERM)
            assert api.wait(left(30)) == 0
            _holds(
                lambda: _answers(fleet.url) and _server_pid(data) == pid,
                "the server stopped (or was replaced) with the API that had started it",
                3.0,
            )
            assert connect(fleet.url).get("ff:test") == "kept"
            fleet.leave()
        assert running_url(data) is None  # its last client stopped it on its way out
        assert not _alive(pid)
    finally:
        _stop(api)


@pytest.mark.parametrize("starter", ["runs", "has left"])
def test_a_long_running_command_starts_the_server_again_whoever_started_it(
    tmp_path: Path, starter: str
) -> None:
    """A short command (`api`, `enqueue`) started the server and `run` attached: when the
    server is killed -9 (the OOM killer), `run` starts it again from its append-only file,
    on the URL its clients have, though it did not start it first."""
    data = tmp_path / "redis"
    with Client(data, keep_alive=False) as first, Client(data, keep_alive=True) as fleet:
        assert fleet.url == first.url
        connect(fleet.url).set("ff:test", "kept")  # appendfsync always: on disk when answered
        if starter == "has left":
            first.leave()
        pid = _server_pid(data)
        assert pid is not None and _answers(fleet.url)
        os.kill(pid, signal.SIGKILL)
        _until(
            lambda: _server_pid(data) not in (None, pid) and _answers(fleet.url),
            "the long-running client started the server again",
            20,
        )
        assert connect(fleet.url).get("ff:test") == "kept"
        if starter == "runs":
            first.leave()
        fleet.leave()
    assert running_url(data) is None


def test_a_server_whose_clients_were_all_killed_stops(tmp_path: Path) -> None:
    """`run` started the server, `api` attached; both were killed -9 (a `timeout` ended the
    run, the API's container was stopped hard): the server used to run on, orphaned, until
    someone killed it by hand. It serves the client left after the first kill, and stops
    soon after the last, leaving no helper behind."""
    data = tmp_path / "redis"
    with Client(data, keep_alive=True) as fleet, Client(data, keep_alive=False) as api:
        pid = _server_pid(data)
        assert pid is not None
        fleet.kill()
        _holds(
            lambda: _answers(api.url) and _server_pid(data) == pid,
            "the server stopped while a client was still using it",
            2.0,
        )
        api.kill()
        _until(lambda: not _alive(pid), "the server stopped once its clients were all gone", 15)
        assert running_url(data) is None
        _until(lambda: not _processes_naming(data), "every helper of the data dir exited", 10)


def test_a_server_started_on_its_own_is_left_to_whoever_started_it(tmp_path: Path) -> None:
    """`framefleet redis` (or a program with its own EmbeddedServer) runs the server: the
    clients that come and go, killed or not, leave it running; its starter stops it."""
    data = tmp_path / "redis"
    with EmbeddedServer(data) as server:
        with Client(data, keep_alive=False) as one:
            assert one.url == server.url
            one.leave()
        with Client(data, keep_alive=True) as two:
            two.kill()
        _until(lambda: not _processes_naming(data), "every helper of the data dir exited", 10)
        assert running_url(data) == server.url
        assert server.process is not None and server.process.poll() is None
    assert running_url(data) is None
