"""Small helpers the command modules share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def answer(as_json: bool, value: Any, words: str) -> None:
    """A command's answer: `value` as one JSON document (--json), else `words`."""
    if as_json:
        print_json(value)
    else:
        print(words)


def as_uri(text: str) -> str:
    """A local path given on the command line becomes absolute; URIs pass unchanged."""
    if "://" in text:
        return text
    return str(Path(text).expanduser().absolute())
