"""The compiled SAGE implementation (placeholder until the fused kernel lands)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def compiled_kernels_available(device: torch.device) -> bool:
    return False


def _compiled_sage(*args: Any, **kwargs: Any) -> None:
    raise NotImplementedError("compiled SAGE is not available yet")


_ = Tensor
