"""Durations as people read them, for the dashboard ("3 min 05 s") and the terminal ("3m 05s")."""

from __future__ import annotations

_WORDS = {"ms": " ms", "s": " s", "m": " min", "h": " h", "d": " d"}


def duration(seconds: float | None, short: bool = False) -> str:
    """850 ms, 4.2 s, 42 s, 3 min 05 s, 2 h 10 min, 3 d 04 h (short: 850ms ... 3d 04h); a
    dash for None. Two units at most, the second zero-padded so that columns line up."""
    if seconds is None:
        return "—"

    def unit(name: str) -> str:
        return name if short else _WORDS[name]

    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f}{unit('ms')}"
    if s < 9.95:
        return f"{s:.1f}{unit('s')}"
    whole = round(s)
    for size, big, small, per in ((86400, "d", "h", 3600), (3600, "h", "m", 60), (60, "m", "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit(big)} {whole % size // per:02d}{unit(small)}"
    return f"{whole}{unit('s')}"
