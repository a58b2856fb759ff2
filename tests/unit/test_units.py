"""How durations read on the dashboard and in the terminal."""

from __future__ import annotations

import pytest

from framefleet.ops.units import duration


@pytest.mark.parametrize(
    ("seconds", "words", "short"),
    [
        (None, "—", "—"),
        (-3, "0 ms", "0ms"),
        (0.85, "850 ms", "850ms"),
        (4.24, "4.2 s", "4.2s"),
        (9.96, "10 s", "10s"),  # not "10.0"
        (42.4, "42 s", "42s"),
        (59.6, "1 min 00 s", "1m 00s"),
        (185, "3 min 05 s", "3m 05s"),
        (7800, "2 h 10 min", "2h 10m"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 04 h", "3d 04h"),
    ],
)
def test_durations(seconds: float | None, words: str, short: str) -> None:
    assert duration(seconds) == words
    assert duration(seconds, short=True) == short


def test_printable_escapes_what_could_drive_a_terminal_and_keeps_the_rest() -> None:
    from framefleet.text import printable

    assert printable("cam1[/] é 日本 a.b") == "cam1[/] é 日本 a.b"
    assert printable("\x1b[2Jx\x07") == "\\x1b[2Jx\\x07"
    assert printable("\x9b31m") == "\\x9b31m"  # a C1 control: CSI on some terminals
    assert printable("\u202egnp.exe\u200b") == "\\u202egnp.exe\\u200b"  # bidi, zero width
    assert printable(None) == "None"
