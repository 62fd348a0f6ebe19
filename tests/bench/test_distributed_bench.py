"""bench/distributed.py's smoke mode runs (1 and 2 ranks, a few steps) and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "distributed.py"


def test_smoke_prints_a_row_per_rank_count(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[1]) > 0 for row in rows)
