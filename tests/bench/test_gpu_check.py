"""bench/gpu_check.py runs only where there is a GPU, which is seldom: its parity part runs
here on the CPU, and its refusal without CUDA is checked, so the script cannot rot unseen."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sage_core.optim.sage import compiled_kernels_available

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu_check", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not compiled_kernels_available(torch.device("cpu")),
    reason="torch.compile cannot build CPU kernels here (no C++ compiler)",
)
def test_parity_cases_pass_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().parity("cpu") is True
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("parity")]
    assert len(lines) == 8  # 2 bases x 4 cases
    assert all(line.endswith(" ok") for line in lines), lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_says_so_and_exits_2() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--skip-train"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
