"""The client leases of a data dir's shared embedded server, and its reaper: a small detached
process that stops the server once no client holds a lease on it, when the last one was
killed -9 included (whose own exit could not stop it).

The files of the data dir that this uses (server.py has the rest):

- `.lock`: whoever starts the server, attaches to it, stops it, or looks whether any client
  is left holds it (flock, exclusive), so that none of these interleave;
- `clients.lock`: each client holds a shared flock on it for as long as it uses the server.
  The kernel drops it when the process ends, however it ends, so an exclusive flock that is
  granted at once (asked for under `.lock`, so that no client comes meanwhile) means that
  no client is left;
- `reaper.json`: the pid of the data dir's reaper (one at most);
- `server.json`: the server's pid and port, and `shared` when it was started for its clients
  (by `embedded()`) and is to stop once they are gone. A server started on its own
  (`framefleet redis`, an EmbeddedServer of a program's own) is left to its starter.

Stdlib only: the reaper runs as `python -I -S reaper.py DATA_DIR`, starts in milliseconds,
and needs nothing of the environment it was started from."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
LEASES_FILE = "clients.lock"
REAPER_FILE = "reaper.json"
STATE_FILE = "server.json"
INTERVAL_S = 0.5  # how often the reaper looks whether any client is left


def pid_alive(pid: int) -> bool:
    """True while `pid` runs: a zombie (exited, not yet waited for by its parent) does not,
    nor does a pid of 0 or less."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # it ended meanwhile, or there is no /proc here
        return not Path("/proc/self/stat").exists()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _runs(pid: int, *marks: str) -> bool:
    """`pid` runs, and is what `marks` say (in its executable's path or command line, where
    these can be read): not some other process that got its pid after it ended."""
    if not pid_alive(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True
    return all(m in exe or m in cmdline for m in marks)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def server_runs(state: dict[str, Any] | None) -> bool:
    """The server that `state` (server.json) names still runs."""
    if state is None:
        return False
    try:
        pid, port = int(state["pid"]), int(state["port"])
    except (KeyError, TypeError, ValueError):
        return False
    binary = state.get("binary")
    return _runs(pid, os.path.realpath(binary), str(port)) if binary else pid_alive(pid)


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """The data dir's `.lock`, held (exclusive) for the duration."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


def take_lease(data_dir: Path) -> int:
    """A client's lease: an fd holding a shared flock on `clients.lock` (close it to give the
    lease back). Taken under `.lock`, it is granted at once: an exclusive flock on it is only
    ever held under `.lock` too, and only for a moment."""
    fd = os.open(data_dir / LEASES_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unleased(data_dir: Path) -> bool:
    """No client holds a lease. Ask under `.lock`, so that none takes one meanwhile."""
    fd = os.open(data_dir / LEASES_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def stop_server(data_dir: Path, timeout: float = 10.0) -> None:
    """SIGTERM the shared server of `data_dir` (it flushes its AOF and exits), SIGKILL it if
    it has not exited within `timeout`, and remove its state file. A server that is not
    shared is left alone. Call it under `.lock`, having seen that no client is left."""
    state = read_json(data_dir / STATE_FILE)
    if state is None or not state.get("shared"):
        return
    try:
        pid = int(state["pid"])
    except (KeyError, TypeError, ValueError):
        return
    if server_runs(state):
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.02)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        if (read_json(data_dir / STATE_FILE) or {}).get("pid") == pid:
            (data_dir / STATE_FILE).unlink()


def reaper_runs(data_dir: Path) -> bool:
    """The reaper that `reaper.json` names still runs, for this data dir."""
    reaper = read_json(data_dir / REAPER_FILE) or {}
    pid = reaper.get("pid")
    return isinstance(pid, int) and _runs(pid, Path(__file__).name, str(data_dir))


def reap(data_dir: Path, interval: float = INTERVAL_S) -> None:
    """Every `interval`, under `.lock`: once no client is left, stop the shared server if one
    runs, and end. It ends too when `reaper.json` names another (this one was thought gone)."""
    me = os.getpid()
    while True:
        with locked(data_dir):
            if (read_json(data_dir / REAPER_FILE) or {}).get("pid") != me:
                return
            if unleased(data_dir):
                stop_server(data_dir)
                with contextlib.suppress(OSError):
                    (data_dir / REAPER_FILE).unlink()
                return
        time.sleep(interval)


def main(argv: list[str]) -> int:
    """Fork the reaper of DATA_DIR into a session of its own, print its pid and return: the
    caller writes that pid to `reaper.json` (under `.lock`, which the reaper waits for) and
    is not its parent, so that it never has to wait for it."""
    data_dir = Path(argv[1]).resolve()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        return 0
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the caller reads our stdout until every copy of it is closed
        os.dup2(null, fd)
    os.close(null)
    try:
        reap(data_dir)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
