"""Device and precision selection (the CUDA half runs where a GPU is present)."""

from __future__ import annotations

import pytest
import torch

from sage_core.errors import InvalidSpecError, TrainingError
from sage_core.training.device import Placement, resolve_device


def test_cpu_runs_in_fp32_with_exact_padding() -> None:
    placement = Placement.resolve("cpu")
    assert placement.device == torch.device("cpu")
    assert placement.label == "cpu fp32" and placement.pad_multiple == 1
    assert placement.precision.scaler is None


def test_default_is_cuda_only_where_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected


def test_unknown_or_missing_devices_are_refused() -> None:
    with pytest.raises(InvalidSpecError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA GPU") as info:
            resolve_device("cuda")
        assert info.value.code == "device_unavailable"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocasts_and_pads_to_eight() -> None:
    placement = Placement.resolve("cuda")
    assert placement.pad_multiple == 8
    assert placement.precision.autocast_dtype in (torch.bfloat16, torch.float16)
    with placement.autocast():
        out = torch.nn.Linear(4, 4).cuda()(torch.ones(2, 4, device="cuda"))
    assert out.dtype == placement.precision.autocast_dtype
