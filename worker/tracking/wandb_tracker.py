"""Weights & Biases, through the `wandb` library.

The worker's environment holds the credentials and the mode, as OpenAI's organisation
settings do: WANDB_API_KEY, WANDB_MODE (offline: the run is written locally, for `wandb
sync` later), WANDB_BASE_URL, WANDB_DIR. The local run folder goes to WANDB_DIR, else
DATA_DIR/wandb (never the worker's working directory). The W&B run id is the job id, so a
paused or requeued job's later attempts continue the same run; a sweep's children are
grouped by their parent job's id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sage_core.integration_specs import Integration
from worker.tracking.base import RunInfo

# Seconds wandb.init may wait for its service and the server before it gives up.
INIT_TIMEOUT_SECONDS = 60.0


class WandbTracker:
    name = "wandb"

    def __init__(self, run: RunInfo) -> None:
        self.info = run
        self._run: Any = None

    def start(self, integration: Integration, hyperparameters: dict[str, Any]) -> None:
        import wandb

        spec = integration.wandb
        assert spec is not None
        folder = Path(os.environ.get("WANDB_DIR") or self.info.settings.default_wandb_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tags = list(dict.fromkeys([*spec.tags, self.info.job_id]))
        self._run = wandb.init(
            project=spec.project, entity=spec.entity, name=spec.name or self.info.job_id,
            tags=tags, config=hyperparameters, dir=str(folder), id=self.info.job_id,
            group=self.info.parent_job_id,
            resume="allow", reinit="create_new", job_type="fine-tune",
            settings=wandb.Settings(console="off", silent=True, save_code=False,
                                    disable_git=True, init_timeout=INIT_TIMEOUT_SECONDS))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def finish(self, summary: dict[str, float], *, status: str) -> Path | None:
        if summary:
            self._run.summary.update(summary)
        self._run.summary["status"] = status
        self._run.finish(exit_code=1 if status == "failed" else 0)
        self._run = None
        return None

    def close(self) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=1)
