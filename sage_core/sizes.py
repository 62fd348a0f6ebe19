"""Sizes as people write them: `10G`, `500M`, `1.5T`, `4096` (bytes). Binary units, as
Docker's and Kubernetes' `Gi` are: 1K = 1024 bytes, 1G = 1024**3."""

from __future__ import annotations

import re

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in `text` ("10G", "500M", "1.5g", "10GiB", "4096"); ValueError naming it."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"Invalid size: {text!r} (write it as 4096, 500M, 10G or 1T)")
    number, unit = match.groups()
    return int(float(number) * UNITS[unit.upper()])


def format_size(size: int) -> str:
    """`size` bytes in the largest unit that keeps it at least 1: "10G", "1.5M", "512"."""
    for unit in ("T", "G", "M", "K"):
        if size >= UNITS[unit]:
            return f"{size / UNITS[unit]:.4g}{unit}"
    return str(size)
