"""The training engine: a resolved job spec, data files and a base model in; metrics,
checkpoints and a fine-tuned Hugging Face folder out. Imports torch and transformers, never
the database, the web or Celery.

    from sage_core.training import Callbacks, TrainResult, run_training

`run_training` is loaded on first use, so that importing the public types (or the
torch-free `preflight`) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sage_core.training.interface import Callbacks, TrainResult

if TYPE_CHECKING:
    from sage_core.training.loop import run_training

__all__ = ["Callbacks", "TrainResult", "run_training"]


def __getattr__(name: str) -> Any:
    if name == "run_training":
        from sage_core.training.loop import run_training

        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
