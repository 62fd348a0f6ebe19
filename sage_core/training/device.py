"""Where a run computes and in what precision: the device, autocast, and how batches reach it.

A distributed run swaps this piece (one device per rank); the loop only asks a `Placement`
for batches on its device and for the autocast context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sage_core.errors import InvalidSpecError, TrainingError
from sage_core.training.tasks import Batch, Encoded, Task


def resolve_device(requested: str | None) -> torch.device:
    """`requested` ("cpu", "cuda", "cuda:1"), or CUDA if a GPU is present, else the CPU."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidSpecError(f"unknown device {name!r}; use cpu or cuda",
                               param="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} was asked for but no CUDA GPU is available",
                            code="device_unavailable")
    return device


@dataclass
class Precision:
    """fp32 parameters and optimizer state always; on CUDA the forward and backward run
    under bf16 autocast, or fp16 autocast with loss scaling where bf16 is unsupported."""

    device_type: str
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls(device.type, None, None)
        if torch.cuda.is_bf16_supported():
            return cls("cuda", torch.bfloat16, None)
        return cls("cuda", torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    @property
    def label(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        name = str(self.autocast_dtype).removeprefix("torch.")
        return f"{name} autocast" + (" + loss scaling" if self.scaler else "")


@dataclass
class Placement:
    """A run's device and precision. On CUDA batches are padded to a multiple of 8 (fewer
    distinct shapes, each of which costs kernel selection); on the CPU exactly."""

    device: torch.device
    precision: Precision

    @classmethod
    def resolve(cls, requested: str | None) -> Placement:
        device = resolve_device(requested)
        return cls(device, Precision.for_device(device))

    @property
    def pad_multiple(self) -> int:
        return 8 if self.device.type == "cuda" else 1

    @property
    def label(self) -> str:
        return f"{self.device.type} {self.precision.label}"

    def batch(self, task: Task, items: Sequence[Encoded], *, train: bool = False) -> Batch:
        """`items` collated on the device; a training batch (`train`) also augmented
        (`Task.augment`), an evaluation batch never."""
        batch = task.collate(items, self.pad_multiple)
        if train:
            batch = task.augment(batch)
        return batch.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.precision.autocast()
