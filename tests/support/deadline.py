"""Each test's own deadline: its pytest-timeout limit (which covers set-up too) less a
margin for the teardown, set by tests/conftest.py as the test starts. In-test waits end
there and fail saying what they waited for, instead of a bare timeout."""

from __future__ import annotations

import time
from collections.abc import Callable

TEARDOWN_S = 20.0
at: float | None = None  # time.monotonic() the running test must be done by, if limited


def left(at_most: float) -> float:
    """`at_most` seconds, or fewer if the test's deadline comes first (one at least)."""
    if at is None:
        return at_most
    return max(1.0, min(at_most, at - time.monotonic()))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    """Until predicate() holds; AssertionError saying what it waited for after `timeout`
    seconds, or sooner if the test's own deadline comes first."""
    end = time.monotonic() + left(timeout)
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
