"""Benchmarks: run apart from the tests (`framefleet bench NAME`). Each script puts the
repository root on sys.path (it needs tests.support, and this package) and prints one JSON
line with `emit`."""

from __future__ import annotations

import json
from typing import Any


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print the result as one JSON line; with `out`, also append the line to that file."""
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
