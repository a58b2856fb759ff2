"""Tools from outside the venv that some tests need (Debian packages, LazyFS), set up once per
session for the tests collected, before the first test starts: no test timeout covers an
apt-get or LazyFS's minute of build, and a run of tests that need none of them (tests/unit)
needs neither root nor apt nor LazyFS.

A test says what it needs with the marker `needs` (registered by tests/conftest.py):

    @pytest.mark.needs("lazyfs")              # one test
    pytestmark = pytest.mark.needs("promtool")  # a whole module

or through the tables below (by file, by fixture) for tests that carry no marker. A tool that
cannot be set up (not root, no apt-get, no /dev/fuse, a failed build) fails each test that
needs it, at set-up, saying what to install or do; it never skips. To add a tool: an entry in
TOOLS (its Debian packages for scripts/system-deps, and a check or a build when packages are
not all it takes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_DEPS = REPO / "scripts" / "system-deps"
LAZYFS = REPO / "scripts" / "lazyfs"
SETUP_TIMEOUT_S = 1800.0  # apt-get of chromium on a slow mirror; a build's lock wait


def _fuse() -> str:
    """'' when this user can mount FUSE file systems, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: LazyFS needs FUSE (in a container: --device /dev/fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return (
            "/dev/fuse is not readable and writable by this user: run the power-cut tests "
            "as root, or give this user access to /dev/fuse"
        )
    return ""


def _build_lazyfs() -> str:
    """Builds LazyFS from third_party/lazyfs when its build is not cached (scripts/lazyfs,
    about a minute the first time); '' once built, else why not."""
    done = _run([str(LAZYFS)], echo=True)
    if done.returncode != 0:
        return f"scripts/lazyfs could not build LazyFS: {_tail(done.stderr)}"
    binary = done.stdout.strip().splitlines()[-1:] or [""]
    if not os.access(binary[0], os.X_OK):
        return f"scripts/lazyfs printed no executable ({done.stdout.strip()!r})"
    return ""


@dataclass(frozen=True)
class Tool:
    packages: tuple[str, ...]  # Debian packages, installed by scripts/system-deps when missing
    prepare: tuple[Callable[[], str], ...] = ()  # then each in turn: '' when fine, else why not


TOOLS: dict[str, Tool] = {
    "redis-server": Tool(("redis-server",)),  # /usr/bin/redis-server: Redis with TLS
    "fuse3": Tool(("fuse3",), (_fuse,)),
    "lazyfs": Tool(("fuse3",), (_fuse, _build_lazyfs)),  # the power cut (tests/support/lazyfs.py)
    "prometheus": Tool(("prometheus",)),  # prometheus and promtool
    "promtool": Tool(("prometheus",)),
    "chromium": Tool(("chromium",)),  # /usr/bin/chromium, driven by playwright
    "jemalloc": Tool(("libjemalloc2",)),  # the embedded server's allocator (queue/server.py)
}

# Tests without a `needs` marker: by the file they are in (relative to the repository) ...
BY_FILE: dict[str, tuple[str, ...]] = {
    "tests/integration/test_metrics.py": ("prometheus",),
    "tests/acceptance/test_dashboard.py": ("chromium",),
}
# ... or by a fixture they use.
BY_FIXTURE: dict[str, tuple[str, ...]] = {
    "tls_redis": ("redis-server",),  # tests/integration/test_redis_urls.py
}

_PROBLEMS = pytest.StashKey[dict[str, str]]()  # tool -> why it is not there


def _run(args: list[str], echo: bool = False) -> subprocess.CompletedProcess[str]:
    """args' exit status, stdout and stderr; with echo, its stderr is shown as it comes (an
    apt-get or a build takes a while). Killed after SETUP_TIMEOUT_S."""
    out: list[str] = []
    err: list[str] = []

    def pump(stream: IO[str] | None, into: list[str], show: bool) -> None:
        assert stream is not None
        for line in stream:
            into.append(line)
            if show:
                sys.stderr.write("    " + line)
                sys.stderr.flush()

    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return subprocess.CompletedProcess(args, 1, "", str(exc))
    with proc:  # closes both pipes on the way out
        pumps = [
            threading.Thread(target=pump, args=(proc.stdout, out, False), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, err, echo), daemon=True),
        ]
        for t in pumps:
            t.start()
        try:
            proc.wait(SETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            err.append(f"{args[0]} took over {SETUP_TIMEOUT_S:.0f}s: killed\n")
        for t in pumps:
            t.join(10)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(out), "".join(err))


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def needed(item: pytest.Item) -> list[str]:
    """The tools `item` needs, in a stable order."""
    names: list[str] = []
    for marker in item.iter_markers("needs"):
        names.extend(str(a) for a in marker.args)
    try:
        rel = Path(item.path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        rel = ""
    names.extend(BY_FILE.get(rel, ()))
    for fixture in getattr(item, "fixturenames", ()):
        names.extend(BY_FIXTURE.get(fixture, ()))
    return list(dict.fromkeys(names))


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(*tools): tools from outside the venv the test needs, set up before the session's "
        f"first test (tests/support/tools.py): {', '.join(TOOLS)}",
    )


def set_up(session: pytest.Session) -> None:
    """After collection (and deselection), before any test: sets up every tool the collected
    tests need and remembers what could not be."""
    config = session.config
    problems: dict[str, str] = {}
    config.stash[_PROBLEMS] = problems
    wanted = list(dict.fromkeys(t for item in session.items for t in needed(item)))
    for name in wanted:
        if name not in TOOLS:
            problems[name] = f"unknown tool {name!r} in a needs marker (known: {', '.join(TOOLS)})"
    wanted = [t for t in wanted if t in TOOLS]
    if not wanted or config.option.collectonly:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    def work() -> None:
        say(f"tools for the collected tests: {', '.join(wanted)}")
        problems.update(_set_up(wanted, say))
        for name in wanted:
            if name in problems:
                say(f"  {name}: NOT available, its tests will fail: {problems[name]}")

    if capman is not None:
        with capman.global_and_fixture_disabled():
            work()
    else:
        work()


def _set_up(wanted: Iterable[str], say: Callable[[str], None]) -> dict[str, str]:
    problems: dict[str, str] = {}
    packages = list(dict.fromkeys(p for t in wanted for p in TOOLS[t].packages))
    missing = _missing(packages)
    if missing:
        say(f"  scripts/system-deps {' '.join(missing)}")
        done = _run([str(SYSTEM_DEPS), *missing], echo=True)
        still = _missing(missing)
        for name in wanted:
            lacking = [p for p in TOOLS[name].packages if p in still]
            if lacking:
                problems[name] = _tail(done.stderr)  # system-deps says what to install
    for name in wanted:
        if name in problems:
            continue
        for step in TOOLS[name].prepare:
            if step is _build_lazyfs:
                say("  LazyFS: scripts/lazyfs (built from third_party/lazyfs once, then cached)")
            why = step()
            if why:
                problems[name] = why
                break
    return problems


def _missing(packages: list[str]) -> list[str]:
    if not packages:
        return []
    done = _run([str(SYSTEM_DEPS), "--missing", *packages])
    if done.returncode != 0:
        return packages
    return done.stdout.split()


def check(item: pytest.Item) -> None:
    """At each test's set-up: fails it when a tool it needs could not be set up."""
    problems = item.config.stash.get(_PROBLEMS, {})
    for name in needed(item):
        if name in problems:
            pytest.fail(f"this test needs {name}: {problems[name]}", pytrace=False)
