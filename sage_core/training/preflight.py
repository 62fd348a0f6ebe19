"""Checks of a spec that need no model and no data: run before any work starts. Torch-free."""

from __future__ import annotations

from sage_core.errors import InvalidSpecError
from sage_core.schemas import ResolvedSpec


def check_spec(spec: ResolvedSpec, *, has_validation: bool) -> None:
    """Raise InvalidSpecError for options that cannot be honoured together."""
    hp = spec.hyperparameters
    if hp.batch_size % hp.gradient_accumulation_steps:
        raise InvalidSpecError(
            f"batch_size ({hp.batch_size}) must be a multiple of gradient_accumulation_steps "
            f"({hp.gradient_accumulation_steps}): batch_size is the examples per optimizer step, "
            "split into equal micro-batches", param="gradient_accumulation_steps")
    if has_validation and hp.validation_split > 0:
        raise InvalidSpecError("validation_split holds out training rows when there is no "
                               "validation file; give one or the other",
                               param="validation_split")
    if not (has_validation or hp.validation_split > 0):
        for name in ("early_stopping_patience", "eval_every_steps"):
            if getattr(hp, name) is not None:
                raise InvalidSpecError(f"{name} needs a validation_file (or a "
                                       "validation_split)", param=name)
