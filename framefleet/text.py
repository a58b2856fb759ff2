"""Text that came from outside (ids, URIs, worker names, errors and reason phrases from
remote servers), made safe to put on an operator's terminal."""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 and C1 controls, DEL, and the invisible marks that reorder or hide text (bidi overrides,
# zero-width characters): what must never reach a terminal from an id, a URI or a reason.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """`value` as text with each control character written as an escape (`\\x1b`,
    `\\u202e`), so that an escape sequence in it cannot drive the terminal; the rest, other
    scripts included, is left as it is."""
    return _UNPRINTABLE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
