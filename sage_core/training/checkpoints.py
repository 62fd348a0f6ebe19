"""Checkpoint folders: writing them atomically, finding the latest, pruning old ones.

Layout under a run's output folder:
    checkpoints/step-<N>/   a Hugging Face folder (config.json, model.safetensors, tokenizer)
                            plus STATE_FILE (optimizer, scheduler, scaler, RNG tensors) and
                            PROGRESS_FILE (step, data position, spec, metrics; JSON)
A folder is written under a temporary name and renamed into place, so a crash mid-write
leaves only a `.tmp-*` folder, which `find_latest` ignores and `remove_partial` deletes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_core.names import PROGRESS_FILE, STATE_FILE

LOG = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS_DIR / f"step-{step}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file() and (child / PROGRESS_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_latest(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_progress(folder: Path) -> dict[str, Any]:
    return json.loads((folder / PROGRESS_FILE).read_text())


def _fsync_tree(folder: Path) -> None:
    # Without this a power cut after the rename could leave a complete-looking folder of
    # empty files: the rename reaches the disk before the data otherwise.
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_folder), then move the finished folder to `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():
            # Rename the old one aside first: os.replace cannot replace a non-empty folder.
            old = target.parent / f".tmp-old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def remove_partial(output_dir: Path) -> None:
    for parent in (output_dir, output_dir / CHECKPOINTS_DIR):
        if parent.is_dir():
            for child in parent.glob(".tmp-*"):
                shutil.rmtree(child, ignore_errors=True)


def prune(output_dir: Path, *, keep_last: int, keep: Iterable[int] = ()) -> list[int]:
    """Delete all but the newest `keep_last` checkpoints and the steps in `keep`."""
    found = list_checkpoints(output_dir)
    protected = set(keep) | {step for step, _ in found[-keep_last:]}
    removed = []
    for step, folder in found:
        if step not in protected:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(step)
    return removed


def capture_rng() -> dict[str, Any]:
    """Every RNG the run draws from, in types torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
