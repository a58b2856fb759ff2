"""A real power cut for the durability tests: LazyFS (third_party/lazyfs), a FUSE file
system that keeps written data in its own cache until the writer fsyncs it, and drops what
is not fsynced on `cut_power()`. A kill -9 alone cannot tell fsync modes apart: the killed
server's writes are already in the kernel's page cache and survive.

    with LazyFS(tmp_path / "disk", tmp_path / "mnt") as disk:
        ...  # a server with its data dir under disk.mount; kill -9 it
        disk.cut_power()  # what was not fsynced is gone
        ...  # start it again on the same dir

The binary is built by scripts/lazyfs, which the session runs after collection for tests
marked `needs("lazyfs")` (tests/support/tools.py), before the first test: no test timeout
covers the minute the build takes. A test that finds no build, no usable /dev/fuse or no
fusermount3 fails with LazyFSError saying what to do, it does not skip. Every wait has a
deadline, and the mount never outlives the `with`: a busy or stuck mount is detached lazily
and its daemon killed, and then the exit raises LazyFSError (unless the body raised).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "lazyfs"
READY_LINE = "waiting for fault commands"
CLEARED = b"finished::clear-cache\n"


class LazyFSError(RuntimeError):
    """LazyFS is missing, did not mount, did not obey in time, or did not unmount cleanly."""


def lazyfs_binary(timeout: float = 30.0, *, build: bool = False) -> Path:
    """The binary of a finished build (scripts/lazyfs --locate); with `build`, built first
    when missing (scripts/lazyfs: about a minute the first time)."""
    args = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--locate"]
    try:
        found = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LazyFSError(f"{' '.join(args)} failed: {exc}") from exc
    path = Path((found.stdout.strip().splitlines() or [""])[-1])  # a build prints it last
    if found.returncode != 0 or not os.access(path, os.X_OK):
        raise LazyFSError(
            f"the power-cut tests need LazyFS: {found.stderr.strip() or found.stdout.strip()}"
        )
    return path


def _mountinfo_unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)  # \040: a space


def is_mounted(path: Path) -> bool:
    """From /proc/self/mountinfo, so that a stuck FUSE daemon cannot make this hang."""
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return any(_mountinfo_unescape(line.split()[4]) == target for line in f)


class LazyFS:
    """LazyFS mounted on `mount`, keeping its files in `root` (both made if missing)."""

    def __init__(
        self,
        root: Path,
        mount: Path,
        *,
        binary: Path | None = None,
        cache_size: str = "256mb",  # LazyFS allocates it up front: 1gb takes seconds
        timeout: float = 10.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.mount = Path(mount).resolve()
        self.binary = binary
        self.cache_size = cache_size
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._ctl: Path | None = None
        self._done_fd: int | None = None

    @property
    def log_path(self) -> Path:
        assert self._ctl is not None, "not mounted"
        return self._ctl / "lazyfs.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def _fail(self, what: str) -> LazyFSError:
        tail = "\n".join(self.log().splitlines()[-15:])
        return LazyFSError(f"LazyFS on {self.mount}: {what}\n{tail}")

    def __enter__(self) -> LazyFS:
        binary = self.binary or lazyfs_binary()
        if not os.path.exists("/dev/fuse"):
            raise LazyFSError("no /dev/fuse: LazyFS needs FUSE (docker: --device /dev/fuse)")
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise LazyFSError("/dev/fuse is not readable and writable: run as root, or get access")
        if shutil.which("fusermount3") is None:
            raise LazyFSError("fusermount3 not found: install Debian's fuse3 (scripts/system-deps)")
        if is_mounted(self.mount):
            raise LazyFSError(f"{self.mount} is already a mount point")
        self.root.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        # LazyFS ignores a --config-path with "-o" anywhere in it, any case (main.cpp takes
        # it for a FUSE option) and looks for config/default.toml instead: a name such as
        # /tmp/lazyfs-Oq3x... did that. No hyphen here; mkdtemp's own letters have none.
        self._ctl = ctl = Path(tempfile.mkdtemp(prefix="lazyfs_", dir="/tmp"))
        if "-o" in str(ctl).lower():
            raise LazyFSError(f"{ctl}: LazyFS would not take a config path with '-o' in it")
        try:
            self._start(binary, ctl)
        except BaseException:
            self._teardown()
            raise
        return self

    def _start(self, binary: Path, ctl: Path) -> None:
        faults, done = ctl / "faults.fifo", ctl / "done.fifo"
        os.mkfifo(faults, 0o600)
        os.mkfifo(done, 0o600)
        # LazyFS opens the notifier fifo for writing before it reads commands, which blocks
        # until a reader has it open: open it first (non-blocking, so this does not wait).
        self._done_fd = os.open(done, os.O_RDONLY | os.O_NONBLOCK)
        config = ctl / "lazyfs.toml"
        config.write_text(
            "[faults]\n"
            f'fifo_path="{faults}"\n'
            f'fifo_path_completed="{done}"\n'
            "[cache]\n"
            "apply_eviction=false\n"
            "[cache.simple]\n"
            f'custom_size="{self.cache_size}"\n'
            "blocks_per_page=1\n"
            "[filesystem]\n"
            "log_all_operations=false\n"
            'logfile=""\n'
        )
        args = [str(binary), str(self.mount), "--config-path", str(config)]
        args += ["-o", "modules=subdir", "-o", f"subdir={self.root}", "-f"]  # -f: our child
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                # ulimit -c 0: LazyFS aborts on its way out (a thread it does not join); no core.
                ["sh", "-c", 'ulimit -c 0; exec "$0" "$@"', *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ctl,
                start_new_session=True,
            )
        end = time.monotonic() + self.timeout
        while not (is_mounted(self.mount) and READY_LINE in self.log()):
            if self.process.poll() is not None:
                raise self._fail(f"exited with {self.process.returncode} before it was mounted")
            if time.monotonic() > end:
                raise self._fail(f"not mounted and ready within {self.timeout}s")
            time.sleep(0.02)

    def cut_power(self) -> None:
        """Drop every write not yet fsynced, as a power cut does; returns once LazyFS says
        it is done (its notifier fifo), within the timeout."""
        assert self._ctl is not None and self._done_fd is not None, "not mounted"
        if self.process is None or self.process.poll() is not None:
            raise self._fail("is not running")
        with contextlib.suppress(BlockingIOError):
            while os.read(self._done_fd, 4096):  # nothing stale may count as an answer
                pass
        try:  # non-blocking: ENXIO at once, not a hang, if LazyFS no longer reads it
            fd = os.open(self._ctl / "faults.fifo", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise self._fail(f"its fault fifo cannot be opened: {exc}") from exc
        try:
            os.write(fd, b"lazyfs::clear-cache\n")
        finally:
            os.close(fd)
        got = b""
        end = time.monotonic() + self.timeout
        while CLEARED not in got:
            left = end - time.monotonic()
            if left <= 0:
                raise self._fail(f"did not clear its cache within {self.timeout}s")
            ready, _, _ = select.select([self._done_fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self._done_fd, 4096)
                got += chunk
                if not chunk:  # no writer: LazyFS is gone
                    time.sleep(0.05)
            if self.process.poll() is not None:
                raise self._fail(f"exited with {self.process.returncode} during the power cut")

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        problem = self._teardown()
        if problem and et is None:
            raise LazyFSError(problem)

    def _unmount(self, *flags: str) -> str:
        """'' once unmounted, else why not."""
        try:
            done = subprocess.run(
                ["fusermount3", "-u", *flags, str(self.mount)],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0 and is_mounted(self.mount):
            return done.stderr.strip() or f"fusermount3 exited with {done.returncode}"
        return ""

    def _teardown(self) -> str:
        """Unmount (lazily if it must) and end the daemon, whatever state they are in;
        returns '' when all went cleanly, else what had to be forced."""
        problems: list[str] = []
        was_mounted = unmounted = is_mounted(self.mount)
        if was_mounted:
            why = self._unmount()
            if why:
                unmounted = False
                problems.append(f"unmount failed ({why}): detached lazily")
                self._unmount("-z")
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(self.timeout if unmounted else 0.5)  # it exits once unmounted
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if process.poll() is not None:
                    break
                if unmounted:
                    problems.append(f"the daemon did not exit: sent {sig.name}")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(2.0)
        if is_mounted(self.mount):  # the daemon is dead now: a lazy unmount cannot block
            self._unmount("-z")
            if is_mounted(self.mount):
                problems.append(f"{self.mount} is still mounted")
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None
        if self._ctl is not None:
            log = self.log()
            shutil.rmtree(self._ctl, ignore_errors=True)
            self._ctl = None
            if problems:
                problems.append("LazyFS log:\n" + "\n".join(log.splitlines()[-15:]))
        self.process = None
        return "; ".join(problems)
