"""A real headless browser for the dashboard tests: Debian's chromium driven by playwright
(no browser is downloaded: `playwright install` is never run), one profile per context,
and a record of everything a page asked for or complained about."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 860}


def playwright_or_fail() -> Any:
    """playwright's sync API, with a failure (never a skip) that says how to get it."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no {CHROMIUM}: the dashboard tests drive Debian's chromium; run scripts/system-deps"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/test (it installs the dev extras)")
    return sync_playwright


@dataclass
class Watched:
    """One browser context (its own profile) with one page, and what that page did: every
    request's URL, the requests that failed, console errors and uncaught exceptions."""

    context: Any
    page: Any
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        """The requests to anywhere but 127.0.0.1."""
        return [u for u in self.requests if urlsplit(u).hostname != "127.0.0.1"]

    def attach(self) -> None:
        page = self.page
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("requestfailed", self._failed)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("dialog", self._dialog)

    def _failed(self, request: Any) -> None:
        why = request.failure or ""
        # A refresh in flight when the page is left is aborted by the browser: not a failure
        # of the dashboard's, and the only one forgiven.
        fragment = request.headers.get("x-framefleet-fragment") == "1"
        if not (fragment and "ERR_ABORTED" in why):
            self.failed.append(f"{request.method} {request.url}: {why}")

    def _console(self, message: Any) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            self.errors.append(f"{message.text} ({where})")

    def _dialog(self, dialog: Any) -> None:
        """Every confirm() the page asks is answered yes (and kept for the test to read)."""
        self.dialogs.append(dialog.message)
        dialog.accept()


@contextlib.contextmanager
def chromium(
    playwright: Any, base: Path, name: str, color_scheme: str = "light"
) -> Iterator[Watched]:
    """A chromium of its own (a temporary profile under `base`), one page, watched."""
    profile = tempfile.mkdtemp(prefix=f"profile-{name}-", dir=base)
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=str(CHROMIUM),
        args=["--no-sandbox"],  # as root, chromium wants no sandbox
        headless=True,
        viewport=VIEWPORT,
        color_scheme=color_scheme,
        locale="en-GB",
        timezone_id="UTC",
    )
    try:
        page = context.pages[0] if context.pages else context.new_page()
        watched = Watched(context, page)
        watched.attach()
        yield watched
    finally:
        context.close()


def log_in(page: Any, base_url: str, token: str) -> None:
    """Open the dashboard, get sent to its login form, give the token, land on the overview."""
    page.goto(f"{base_url}/ui/")
    assert "/ui/login" in page.url, page.url
    page.fill("input[name=token]", token)
    page.click("form.stack button")
    page.wait_for_url(f"{base_url}/ui/")


# Wraps fetch() before any script of the page runs, to note (by the page's clock, which a
# test may have installed) each call the dashboard's script makes for a refresh.
_NOTE_REFRESHES = """
window.framefleetRefreshes = [];
const framefleetFetch = window.fetch;
window.fetch = function (resource, options) {
  const headers = (options && options.headers) || {};
  if (headers["X-Framefleet-Fragment"]) window.framefleetRefreshes.push(Date.now());
  return framefleetFetch.apply(this, arguments);
};
"""


def note_refreshes(page: Any) -> None:
    """From the next page loaded on: refreshes(page) says when its script asked for one."""
    page.add_init_script(_NOTE_REFRESHES)


def refreshes(page: Any) -> list[float]:
    """The page's clock (ms) at each refresh its script asked for since it was loaded."""
    return [float(t) for t in page.evaluate("window.framefleetRefreshes")]
