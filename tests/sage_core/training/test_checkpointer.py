"""Save and restore of a run's state, and the checks before a checkpoint is resumed, on a
model small enough to need no catalog."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from training_data import make_spec, spam_rows, write_jsonl

from sage_core.errors import InvalidSpecError
from sage_core.training.checkpointer import Checkpointer
from sage_core.training.optimization import build_optimizer, build_scheduler
from sage_core.training.progress import Progress, RunPlan

PLAN = RunPlan.make(4, n_epochs=2, warmup_ratio=0.25)


def _parts() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    optimizer = build_optimizer(model, make_spec().hyperparameters)
    return model, optimizer, build_scheduler(optimizer, PLAN)


def _save_model(folder: Path) -> None:
    (folder / "config.json").write_text("{}")


def test_restore_brings_back_optimizer_scheduler_rng_and_counters(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(8))
    checkpointer = Checkpointer(tmp_path / "out", make_spec(), train_file)
    assert checkpointer.prepare(resume=True) is None
    model, optimizer, scheduler = _parts()
    for _ in range(5):
        model(torch.randn(2, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    progress = Progress(step=5, trained_tokens=40, best_score=0.5, best_step=4)
    folder = checkpointer.save(progress, PLAN, _save_model, optimizer=optimizer,
                               scheduler=scheduler, scaler=None)
    saved = json.loads((folder / "trainer_state.json").read_text())
    assert (saved["epoch_index"], saved["batch_in_epoch"]) == (1, 1)
    expected = (random.random(), torch.rand(3))

    again = Checkpointer(tmp_path / "out", make_spec(), train_file)
    assert again.prepare(resume=True) == folder
    _, fresh_optimizer, fresh_scheduler = _parts()
    restored = again.restore(folder, PLAN, optimizer=fresh_optimizer,
                             scheduler=fresh_scheduler, scaler=None)
    assert restored == progress
    python_draw, torch_draw = random.random(), torch.rand(3)
    assert python_draw == expected[0] and torch.equal(torch_draw, expected[1])
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    for key, state in optimizer.state_dict()["state"].items():
        for name, tensor in state.items():
            assert torch.equal(fresh_optimizer.state_dict()["state"][key][name], tensor)


def test_a_checkpoint_of_another_spec_or_file_is_refused(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(8))
    out = tmp_path / "out"
    checkpointer = Checkpointer(out, make_spec(), train_file)
    checkpointer.prepare(resume=True)
    _, optimizer, scheduler = _parts()
    checkpointer.save(Progress(step=1), PLAN, _save_model, optimizer=optimizer,
                      scheduler=scheduler, scaler=None)
    with pytest.raises(InvalidSpecError, match=r"different job spec \(n_epochs differ\)"):
        Checkpointer(out, make_spec(n_epochs=2), train_file).prepare(resume=True)
    other = write_jsonl(tmp_path / "other.jsonl", spam_rows(8, seed=5))
    with pytest.raises(InvalidSpecError, match="different training file than other.jsonl"):
        Checkpointer(out, make_spec(), other).prepare(resume=True)
    assert Checkpointer(out, make_spec(n_epochs=2), train_file).prepare(resume=False) is None
    assert not (out / "checkpoints").exists()


def test_a_checkpoint_from_before_a_new_field_resumes(tmp_path: Path) -> None:
    """A spec saved before validation_split existed reads as its default, 0."""
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(8))
    out = tmp_path / "out"
    checkpointer = Checkpointer(out, make_spec(), train_file)
    checkpointer.prepare(resume=True)
    _, optimizer, scheduler = _parts()
    folder = checkpointer.save(Progress(step=1), PLAN, _save_model, optimizer=optimizer,
                               scheduler=scheduler, scaler=None)
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["spec"]["hyperparameters"]["validation_split"]
    state_file.write_text(json.dumps(state))
    assert Checkpointer(out, make_spec(), train_file).prepare(resume=True) == folder
    with pytest.raises(InvalidSpecError, match=r"\(validation_split differ\)"):
        Checkpointer(out, make_spec(validation_split=0.2), train_file).prepare(resume=True)
