"""What a run saves and restores: the model, the optimizer (SAGE's Ibar included), the
scheduler, the loss scaler, every RNG, the data position and the progress counters, plus
the checks that a checkpoint belongs to this run before it is resumed.

The folder layout, atomic writes and pruning are `checkpoints.py`'s; this module decides
what goes into a folder. A distributed run swaps this piece (one rank writes, all read).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from sage_core.errors import InvalidSpecError, TrainingError
from sage_core.schemas import ResolvedSpec
from sage_core.training import checkpoints as ckpt
from sage_core.training.progress import Progress, RunPlan

KEEP_LAST = 2  # resume checkpoints kept besides the best one
STATE_VERSION = 1

SaveModel = Callable[[Path], None]  # writes the Hugging Face model folder's files


def _flatten(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's fields with hyperparameters hoisted, for naming what differs. Resources
    are left out: a checkpoint resumes on any number of GPUs (processes); so are
    integrations, which only say where the run is reported."""
    flat = {k: v for k, v in spec.items()
            if k not in ("hyperparameters", "resources", "integrations")}
    flat.update(spec.get("hyperparameters") or {})
    return flat


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's spec with the defaults of fields added since it was saved (e.g.
    validation_split, 0), so that a job paused across an upgrade resumes."""
    try:
        return ResolvedSpec.model_validate(spec).model_dump(mode="json")
    except ValueError:
        return spec


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Checkpointer:
    """Checkpoints of one run under `output_dir` (see checkpoints.py for the layout)."""

    def __init__(self, output_dir: Path, spec: ResolvedSpec, train_file: Path, *,
                 keep_last: int = KEEP_LAST) -> None:
        self.output_dir, self.spec, self.train_file = output_dir, spec, train_file
        self.keep_last = keep_last
        self.train_digest = file_digest(train_file)

    def prepare(self, *, resume: bool) -> Path | None:
        """The checkpoint to resume from, checked against this run; or None for a fresh
        start, after clearing what an earlier run left."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(self.output_dir)
        latest = ckpt.find_latest(self.output_dir) if resume else None
        if latest is None:
            for name in (ckpt.CHECKPOINTS_DIR, ckpt.FINAL_DIR):
                shutil.rmtree(self.output_dir / name, ignore_errors=True)
            (self.output_dir / ckpt.METRICS_FILE).unlink(missing_ok=True)
            return None
        self._check_compatible(latest, ckpt.read_progress(latest))
        return latest

    def _check_compatible(self, folder: Path, saved: dict[str, Any]) -> None:
        if saved.get("version") != STATE_VERSION:
            raise InvalidSpecError(f"checkpoint {folder.name} has an unknown format "
                                   f"{saved.get('version')!r}", param="output_dir")
        ours, theirs = _flatten(self.spec.model_dump(mode="json")), _flatten(
            _with_defaults(saved["spec"]))
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if changed:
            raise InvalidSpecError(
                f"checkpoint {folder.name} in {self.output_dir} was made with a different job "
                f"spec ({', '.join(changed)} differ); resume=False starts over",
                param="output_dir")
        if saved["train_digest"] != self.train_digest:
            raise InvalidSpecError(
                f"checkpoint {folder.name} was trained on a different training file than "
                f"{self.train_file.name}; resume=False starts over", param="training_file")

    def restore(self, folder: Path, plan: RunPlan, *, optimizer: Optimizer,
                scheduler: LRScheduler, scaler: torch.amp.GradScaler | None) -> Progress:
        """Load the state saved in `folder` into the given objects and the RNGs; return the
        progress counters. The model itself is loaded by the task (`Task.load_model`)."""
        saved = ckpt.read_progress(folder)
        state = ckpt.load_state(folder)
        self._load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = Progress(**saved["progress"])
        if plan.data_position(progress.step) != (saved["epoch_index"], saved["batch_in_epoch"]):
            raise TrainingError(f"checkpoint {folder.name} is at epoch {saved['epoch_index']} "
                                f"batch {saved['batch_in_epoch']}, which this data does not "
                                "reproduce", code="bad_checkpoint")
        ckpt.restore_rng(state["rng"])
        return progress

    def save(self, progress: Progress, plan: RunPlan, save_model: SaveModel, *,
             optimizer: Optimizer, scheduler: LRScheduler,
             scaler: torch.amp.GradScaler | None) -> Path:
        """Write checkpoints/step-<N>/ atomically; return the folder."""
        step = progress.step
        epoch, batch = plan.data_position(step)
        progress_json = {
            "version": STATE_VERSION, "step": step, "total_steps": plan.total_steps,
            "epoch": plan.epoch(step), "epoch_index": epoch, "batch_in_epoch": batch,
            "spec": self.spec.model_dump(mode="json"), "train_digest": self.train_digest,
            "progress": asdict(progress),
        }
        state = {
            "optimizer": self._optimizer_state(optimizer),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "rng": ckpt.capture_rng(),
        }

        def write(folder: Path) -> None:
            save_model(folder)
            torch.save(state, folder / ckpt.STATE_FILE)
            (folder / ckpt.PROGRESS_FILE).write_text(json.dumps(progress_json, indent=1))

        return ckpt.write_atomically(ckpt.checkpoint_dir(self.output_dir, step), write)

    def _optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        """What STATE_FILE holds of the optimizer: its own state_dict (parameters numbered
        in their groups' order), whatever the number of processes that trained it."""
        return optimizer.state_dict()

    def _load_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def prune(self, keep: Iterable[int | None] = ()) -> None:
        """Delete all but the newest `keep_last` checkpoints and the steps in `keep`."""
        ckpt.prune(self.output_dir, keep_last=self.keep_last,
                   keep=[s for s in keep if s is not None])

    def save_final(self, save_model: SaveModel) -> Path:
        """final/: the model alone, as users download it."""
        return ckpt.write_atomically(self.output_dir / ckpt.FINAL_DIR, save_model)
