"""Bring a job's latest checkpoint from the artifact store to this machine's run folder.

The engine resumes from the newest complete checkpoint in the job's output folder, which
lives on the worker's own disk. When a job moves to another machine (its worker died, it
was paused and resumed elsewhere) that folder is empty or behind; every checkpoint was
also copied to the shared artifact store with its resume state (optimizer, scheduler,
RNG, data position), so the newest one there is copied back first.

A job whose model is another job's fine-tuned model ("ft:...") starts from that job's final
model, copied from the store the same way (`restore_fine_tuned_model`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.artifacts import ArtifactStore
from sage_core.db.models import Checkpoint, Job, JobStatus
from sage_core.errors import SageTrainError
from sage_core.names import ADAPTER_DIR, RESUME_FILES

log = logging.getLogger("sagetrain.worker")


def restore_latest_checkpoint(sessions: sessionmaker[Session], store: ArtifactStore,
                              job_id: str, output_dir: Path) -> int | None:
    """Copy the job's newest resumable stored checkpoint into `output_dir` if it is newer
    than any there. Returns its step, or None if nothing was copied."""
    from sage_core.training import checkpoints as ckpt

    local = ckpt.list_checkpoints(output_dir)
    local_step = local[-1][0] if local else -1
    with sessions() as s:
        stored = s.execute(select(Checkpoint.step, Checkpoint.storage_key)
                           .where(Checkpoint.job_id == job_id, Checkpoint.step > local_step)
                           .order_by(Checkpoint.step.desc())).all()
    for step, key in stored:
        files = [name for name, _ in store.walk(key)] if store.exists(key) else []
        if ckpt.STATE_FILE not in files or ckpt.PROGRESS_FILE not in files:
            continue  # a final model without resume state, or a partial upload

        def download(folder: Path, key: str = key, files: list[str] = files) -> None:
            for name in files:
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with store.open(f"{key}/{name}") as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)

        ckpt.write_atomically(ckpt.checkpoint_dir(output_dir, step), download)
        log.info("[%s] restored checkpoint step-%d from the artifact store", job_id, step)
        return step
    return None


def restore_fine_tuned_model(sessions: sessionmaker[Session], store: ArtifactStore,
                             owner_id: str, name: str, folder: Path) -> Path:
    """Copy the final model of the owner's succeeded job whose fine-tuned model is `name`
    into `folder` (a plain Hugging Face folder: no resume state, no LoRA adapter) for a job
    that trains it further. Raises SageTrainError (param "model") if there is none."""
    # The final checkpoint is the one at the job's last step (the runner stores final/
    # there when no periodic checkpoint fell on it). A sweep's parent shows its best
    # child's name but has no checkpoints of its own: the join finds the child's.
    with sessions() as s:
        key = s.scalar(
            select(Checkpoint.storage_key).join(Job, Job.id == Checkpoint.job_id)
            .where(Job.owner_id == owner_id, Job.fine_tuned_model == name,
                   Job.status == JobStatus.SUCCEEDED)
            .order_by((Checkpoint.step == Job.step).desc(), Checkpoint.step.desc()).limit(1))
    if key is None or not store.exists(key):
        raise SageTrainError(f"the fine-tuned model {name!r} is no longer available",
                             param="model", code="model_not_found")
    files = [file for file, _ in store.walk(key)
             if file not in RESUME_FILES and not file.startswith(f"{ADAPTER_DIR}/")]

    def download(target: Path) -> None:
        for file in files:
            path = target / file
            path.parent.mkdir(parents=True, exist_ok=True)
            with store.open(f"{key}/{file}") as src, path.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)

    from sage_core.training import checkpoints as ckpt

    ckpt.write_atomically(folder, download)
    log.info("copied %s (checkpoint %s) to %s", name, key, folder)
    return folder
