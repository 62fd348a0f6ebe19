"""TensorBoard event files, written with `torch.utils.tensorboard` (needs the `tensorboard`
package) into the job's run folder, tensorboard/. When the job succeeds they are packed as
tensorboard.tar.gz (a folder `tensorboard/` inside) and published as a result file of the
job (purpose fine-tune-results): GET /v1/files/{id}/content downloads it, and
`tensorboard --logdir tensorboard` shows it.

A paused or shut-down attempt leaves the folder in the artifact store too
(`<job prefix>/tensorboard`), so that the next attempt, on this machine or another, appends
to it; it drops the earlier attempt's events from the step it resumes at (purge_step).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from sage_core.integration_specs import Integration
from worker.tracking.base import RunInfo

FOLDER = "tensorboard"
ARCHIVE = "tensorboard.tar.gz"


class TensorboardTracker:
    name = "tensorboard"

    def __init__(self, run: RunInfo) -> None:
        self.info = run
        self.folder = run.work_dir / FOLDER
        self._writer: Any = None
        self._hyperparameters: dict[str, Any] = {}
        self._last_step = 0

    def start(self, integration: Integration, hyperparameters: dict[str, Any]) -> None:
        # imported here so that a missing package fails the start, not the first row
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401

        if not self.folder.is_dir() and self.info.store.exists(self._stored):
            self._download()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hyperparameters = hyperparameters

    @property
    def _stored(self) -> str:
        return f"{self.info.artifact_prefix}/{FOLDER}"

    def _download(self) -> None:
        staged = self.folder.with_name(f"{FOLDER}.partial")
        shutil.rmtree(staged, ignore_errors=True)
        for name, _ in self.info.store.walk(self._stored):
            target = staged / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.info.store.open(f"{self._stored}/{name}") as src, \
                    target.open("wb") as out:
                shutil.copyfileobj(src, out)
        staged.rename(self.folder)

    def _writer_from(self, step: int) -> Any:
        # Opened at the first row, so that purge_step (events at and after it are dropped)
        # is where this attempt starts: a resumed attempt re-logs the steps after its
        # checkpoint.
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.folder), purge_step=step)
            text = json.dumps(self._hyperparameters, indent=2, sort_keys=True)
            self._writer.add_text("hyperparameters", f"```\n{text}\n```", step)
        return self._writer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        writer = self._writer_from(step)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        self._last_step = step

    def finish(self, summary: dict[str, float], *, status: str) -> Path | None:
        writer = self._writer_from(self._last_step)
        for key, value in summary.items():
            if key.startswith("sensitivity/"):  # the others were logged with their step
                writer.add_scalar(key, value, self._last_step)
        writer.close()
        self._writer = None
        if status == "stopped":  # paused or shut down: the next attempt goes on from here
            self.info.store.put_tree(self._stored, self.folder)
        if status != "succeeded":
            return None
        archive = self.info.work_dir / ARCHIVE
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(self.folder, arcname=FOLDER)
        self.info.store.delete(self._stored)
        return archive

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
