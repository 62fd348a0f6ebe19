"""Sizes as people write them (binary units), and back."""

from __future__ import annotations

import pytest

from sage_core.sizes import format_size, parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("500M", 500 * 1024**2), ("10G", 10 * 1024**3), ("10g", 10 * 1024**3),
    ("1.5G", 3 * 1024**3 // 2), ("10GiB", 10 * 1024**3), ("2KB", 2048), (" 1T ", 1024**4),
    ("0", 0)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "10X", "-1G", "1,5G", "ten"])
def test_a_bad_size_names_itself(text: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid size: {text!r}"):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (512, 2048, 10 * 1024**3, 3 * 1024**2 // 2)] == [
        "512", "2K", "10G", "1.5M"]
