"""The deployment test's figures (image size, build and start times, each service's memory)
in the run's summary, for the README."""

from __future__ import annotations

import json

import pytest

from tests.deploy import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "deployment figures")
        terminalreporter.write_line(json.dumps(FIGURES, indent=1))
