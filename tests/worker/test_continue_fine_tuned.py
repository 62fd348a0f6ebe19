"""A job whose model is an earlier job's fine-tuned model ("ft:...") starts from that
job's final weights, copied from the artifact store, and trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select
from worker_helpers import WorkerEnv

from sage_core.db.models import Checkpoint, Job
from sage_core.training.loop import Trainer
from worker.runner import run_job


def _final_weights(env: WorkerEnv, job: Job) -> dict[str, torch.Tensor]:
    with env.sessions() as s:
        key = s.scalar(select(Checkpoint.storage_key).where(
            Checkpoint.job_id == job.id, Checkpoint.step == job.step))
    assert key is not None
    return load_file(env.store.local_path(key) / "model.safetensors")


def test_a_job_continues_from_a_fine_tuned_model(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    first_id = env.add_job(rows=16, n_epochs=1, learning_rate_multiplier=3.0)
    assert run_job(first_id, env.settings) == "succeeded"
    first = env.job(first_id)
    assert first.fine_tuned_model is not None

    loaded: list[dict[str, torch.Tensor]] = []
    setup_model = Trainer._setup_model

    def capture(self: Trainer, base_path: str, resume_from: Path | None) -> None:
        setup_model(self, base_path, resume_from)
        loaded.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(Trainer, "_setup_model", capture)
    second_id = env.add_job(rows=16, n_epochs=1, model=first.fine_tuned_model)
    assert run_job(second_id, env.settings) == "succeeded", env.job(second_id).error
    second = env.job(second_id)
    # named after the base model, as OpenAI names a fine-tune of a fine-tune
    assert second.model == first.fine_tuned_model
    assert second.fine_tuned_model == f"ft:tiny-bert:t:{second_id.removeprefix('ftjob-')}"

    # Every weight the second job started from, the classifier head included, is the first
    # job's final one (a fresh start from tiny-bert would draw a new random head).
    (start,) = loaded
    final = _final_weights(env, first)
    assert set(final) <= set(start)
    for name, tensor in final.items():
        torch.testing.assert_close(start[name], tensor, rtol=0, atol=0, msg=name)
    # ... and it trained on from there.
    after = _final_weights(env, second)
    assert any(not torch.equal(after[name], final[name]) for name in final)
    # the copy lived in the job's run folder, removed with it
    assert not (env.settings.data_dir / "runs" / second_id).exists()


def test_a_fine_tuned_model_that_is_gone_fails_the_job(env: WorkerEnv) -> None:
    missing = "ft:tiny-bert:t:doesnotexist"
    job_id = env.add_job(rows=16, n_epochs=1, model=missing)
    assert run_job(job_id, env.settings) == "failed"
    error: Any = env.job(job_id).error
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert missing in error["message"]
