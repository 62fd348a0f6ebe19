"""Plain-text tables for the client commands (`jobs list`, `files list`): columns as wide as
their widest cell, the last one never padded (a long name there stays whole, to copy)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

ELLIPSIS = "…"


def render(header: Sequence[str], rows: Sequence[Sequence[str]],
           max_widths: dict[int, int] | None = None) -> str:
    """`header` and `rows` as aligned columns two spaces apart; a cell longer than its
    column's entry in `max_widths` is cut, ending in an ellipsis."""
    limits = max_widths or {}
    table = [[clip(cell, limits.get(i)) for i, cell in enumerate(row)]
             for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in table)


def clip(text: str, width: int | None) -> str:
    if width is None or len(text) <= width:
        return text
    return text[:width - 1] + ELLIPSIS


def when(timestamp: int | None) -> str:
    """A Unix time as local date and minute, `2026-12-07 14:05`; `-` for none."""
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def size(n: int) -> str:
    """Bytes for a person: `812 B`, `14.2 KB`, `3.0 MB` (powers of 1024)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
