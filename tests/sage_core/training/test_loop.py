"""The training loop end to end on the tiny BERT: learning, outputs, determinism, resume,
gradient accumulation, early stopping and failures."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from training_data import make_spec, regression_rows, spam_rows, write_jsonl

from sage_core.errors import DataFileError, InvalidSpecError, TrainingError, UnknownModelError
from sage_core.optim.groups import NO_BLOCKS_REASON
from sage_core.training import Callbacks, TrainResult, run_training
from sage_core.training.checkpoints import STATE_FILE, list_checkpoints, load_state
from sage_core.training.loop import Trainer
from sage_core.training.tasks import TextClassification

TRAIN_KEYS = {"step", "total_steps", "epoch", "train_loss", "learning_rate", "grad_norm",
              "samples_per_second"}
CLASSIFICATION_EVAL_KEYS = {"step", "total_steps", "epoch", "valid_loss", "valid_accuracy",
                            "valid_f1_macro", "valid_mcc", "baseline_accuracy",
                            "baseline_f1_macro", "baseline_mcc"}


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.checkpoints: list[tuple[Path, int, dict[str, Any]]] = []
        self._calls = itertools.count(1)
        self.stop_after = stop_after

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_metrics=self.rows.append,
            on_checkpoint=lambda folder, step, m: self.checkpoints.append((folder, step, m)),
            should_stop=lambda: self.stop_after is not None
            and next(self._calls) >= self.stop_after,
            on_event=lambda level, message, data: self.events.append((level, message)),
        )

    def train_losses(self) -> dict[int, float]:
        return {r["step"]: r["train_loss"] for r in self.rows if "train_loss" in r}

    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if "valid_loss" in r]


Train = Callable[..., tuple[TrainResult, Recorder]]


@pytest.fixture
def train(train_models_dir: Path) -> Train:
    """run_training on the CPU with the test models, recording what it reports."""

    def run(spec: Any, train_file: Path, out: Path, valid: Path | None = None,
            recorder: Recorder | None = None, **kwargs: Any) -> tuple[TrainResult, Recorder]:
        recorder = recorder or Recorder()
        result = run_training(spec, train_file, out, validation_file=valid,
                              callbacks=recorder.callbacks(), models_dir=train_models_dir,
                              device="cpu", **kwargs)
        return result, recorder

    return run


@pytest.mark.parametrize("optimizer", ["sage", "adamax-sage", "adamw", "adamax"])
def test_classification_learns_with_each_optimizer(
        train: Train, optimizer: str, spam_files: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, valid_file = spam_files
    spec = make_spec(optimizer=optimizer, n_epochs=5)
    result, rec = train(spec, train_file, tmp_path / "out", valid_file)
    assert result.status == "completed"
    assert result.step == result.total_steps == 80  # ceil(128 / 8) * 5
    assert result.epoch == 5.0
    losses = list(rec.train_losses().values())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert result.metrics["valid_accuracy"] >= 0.9
    assert set(result.metrics) == CLASSIFICATION_EVAL_KEYS - {"step", "total_steps", "epoch"}
    assert result.warnings == []  # a model that learnt: nothing to warn about


def test_outputs_rows_and_final_folder(train: Train, spam_files: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train_file, valid_file = spam_files
    out = tmp_path / "out"
    result, rec = train(make_spec(n_epochs=2, checkpoint_every_steps=5), train_file, out,
                        valid_file)
    train_rows = [r for r in rec.rows if "train_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 33))  # short runs log every step
    assert all(set(r) == TRAIN_KEYS for r in train_rows)
    assert [r["step"] for r in rec.evals()] == [16, 32]  # each epoch end
    assert all(set(r) == CLASSIFICATION_EVAL_KEYS | {"eval_seconds"} for r in rec.evals())
    assert all(r["eval_seconds"] >= 0 for r in rec.evals())
    assert train_rows[0]["learning_rate"] < train_rows[4]["learning_rate"]  # warmup
    assert result.trained_tokens == 2 * 128 * 7  # [CLS] + 5 words + [SEP], 2 epochs
    on_disk = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == rec.rows

    # checkpoints at 5, 10, 15, 16 (epoch), 20, 25, 30, 32; the last two and the best kept
    assert [s for _, s, _ in rec.checkpoints] == [5, 10, 15, 16, 20, 25, 30, 32]
    assert rec.checkpoints[3][2]["valid_accuracy"] == rec.evals()[0]["valid_accuracy"]
    kept = [s for s, _ in list_checkpoints(out)]
    assert kept[-2:] == [30, 32] and len(kept) <= 3

    assert result.final_dir == out / "final"
    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.config.label2id == {"ham": 0, "spam": 1}
    with torch.no_grad():
        logits = model(**tokenizer(["free cash prize now", "hello see you later"],
                                   return_tensors="pt", padding=True)).logits
    assert logits.argmax(-1).tolist() == [1, 0]
    checkpoint = AutoModelForSequenceClassification.from_pretrained(out / "checkpoints/step-32")
    assert checkpoint.config.id2label == {0: "ham", 1: "spam"}


def test_pairs_and_int_labels(train: Train, tmp_path: Path) -> None:
    rows = spam_rows(64, labels=(0, 1), pairs=True)
    train_file = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result, _ = train(make_spec(n_epochs=1), train_file, tmp_path / "out")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(result.final_dir)
    assert config.id2label == {0: "0", 1: "1"}
    assert result.metrics == {}  # no validation file, no evaluation


def test_the_engine_reads_no_settings(train: Train, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sage_core.catalog
    import sage_core.settings

    def forbidden() -> None:
        raise AssertionError("the engine called get_settings()")

    monkeypatch.setattr(sage_core.settings, "get_settings", forbidden)
    monkeypatch.setattr(sage_core.catalog, "get_settings", forbidden)
    monkeypatch.setenv("SAGETRAIN_MODELS_DIR", str(tmp_path / "elsewhere"))
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(16))
    result, _ = train(make_spec(n_epochs=1), train_file, tmp_path / "out")
    assert result.status == "completed"


def test_regression_learns_and_reports_correlations(train: Train, tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", regression_rows(128, seed=1))
    valid_file = write_jsonl(tmp_path / "valid.jsonl", regression_rows(32, seed=2))
    spec = make_spec(task="text-regression", n_epochs=5)
    result, rec = train(spec, train_file, tmp_path / "out", valid_file)
    assert set(rec.evals()[-1]) == {"step", "total_steps", "epoch", "valid_loss",
                                    "valid_pearson", "valid_spearman", "baseline_loss",
                                    "eval_seconds"}
    assert result.metrics["valid_loss"] < rec.evals()[0]["valid_loss"]
    # the mean predictor's squared error, the same in every row; the model beats it
    assert {r["baseline_loss"] for r in rec.evals()} == {result.metrics["baseline_loss"]}
    assert result.metrics["valid_loss"] < result.metrics["baseline_loss"]
    assert result.warnings == []
    assert result.metrics["valid_pearson"] > 0.8
    assert result.metrics["valid_spearman"] > 0.8
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(result.final_dir)
    assert config.num_labels == 1 and config.problem_type == "regression"


def test_same_seed_same_losses(train: Train, spam_files: tuple[Path, Path],
                               tmp_path: Path) -> None:
    train_file, _ = spam_files
    _, a = train(make_spec(n_epochs=1), train_file, tmp_path / "a")
    _, b = train(make_spec(n_epochs=1), train_file, tmp_path / "b")
    _, c = train(make_spec(n_epochs=1, seed=1), train_file, tmp_path / "c")
    assert a.train_losses() == b.train_losses()
    assert a.train_losses() != c.train_losses()


@pytest.mark.parametrize("optimizer", ["sage", "adamw"])
def test_resume_continues_bit_for_bit(train: Train, optimizer: str,
                                      spam_files: tuple[Path, Path], tmp_path: Path,
                                      train_models_dir: Path) -> None:
    train_file, valid_file = spam_files
    spec = make_spec(n_epochs=2, optimizer=optimizer)
    full, whole = train(spec, train_file, tmp_path / "full", valid_file)

    out = tmp_path / "resumed"
    stopped, first = train(spec, train_file, out, valid_file, recorder=Recorder(stop_after=11))
    assert stopped.status == "stopped" and stopped.step == 11 and stopped.final_dir is None
    assert [s for _, s, _ in first.checkpoints] == [11]
    assert ("info", "stopped at step 11; resume checkpoint saved") in first.events

    if optimizer == "sage":  # SAGE's sensitivity average travels with the checkpoint
        saved = load_state(out / "checkpoints/step-11")["optimizer"]["state"]
        assert any("exp_avg_ipt" in s for s in saved.values())
        trainer = Trainer(spec, train_file, out, validation_file=valid_file,
                          models_dir=train_models_dir, device="cpu")
        trainer.setup()
        try:
            restored = trainer.optimizer.state_dict()["state"]
            for key, state in saved.items():
                for name, tensor in state.items():
                    assert torch.equal(restored[key][name], tensor), (key, name)
            assert trainer.progress.step == 11
        finally:
            trainer.cleanup()

    result, second = train(spec, train_file, out, valid_file)
    assert ("info", "resumed from step 11") in second.events
    assert result.status == "completed" and result.step == full.step
    assert min(second.train_losses()) == 12
    expected = {s: v for s, v in whole.train_losses().items() if s > 11}
    assert second.train_losses() == expected  # bitwise on CPU in fp32
    assert result.metrics == full.metrics
    assert result.trained_tokens == full.trained_tokens
    assert result.warnings == full.warnings  # what they judge travels with the checkpoint

    def comparable(path: Path) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        timings = ("samples_per_second", "eval_seconds")
        return [{k: v for k, v in r.items() if k not in timings} for r in rows]

    assert comparable(out / "metrics.jsonl") == comparable(tmp_path / "full/metrics.jsonl")


def test_resume_ignores_partial_checkpoints_and_rejects_other_specs(
        train: Train, spam_files: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, _ = spam_files
    out = tmp_path / "out"
    spec = make_spec(n_epochs=1)
    train(spec, train_file, out, recorder=Recorder(stop_after=3))
    # a crash mid-write leaves a temporary folder; one without a state is incomplete
    (out / "checkpoints/.tmp-step-9-deadbeef").mkdir()
    (out / "checkpoints/step-7").mkdir()
    (out / "checkpoints/step-7/config.json").write_text("{}")
    with pytest.raises(InvalidSpecError, match="different job spec.*n_epochs"):
        train(make_spec(n_epochs=2), train_file, out)
    result, rec = train(spec, train_file, out)
    assert ("info", "resumed from step 3") in rec.events
    assert not (out / "checkpoints/.tmp-step-9-deadbeef").exists()
    # resume=False starts over
    result, rec = train(spec, train_file, out, resume=False)
    assert min(rec.train_losses()) == 1 and result.status == "completed"


def test_gradient_accumulation_matches_one_big_batch(train: Train, tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(64))
    # no dropout: its masks depend on the micro-batch shapes
    one = make_spec(model="tiny-bert-nodrop", n_epochs=1, batch_size=8)
    two = make_spec(model="tiny-bert-nodrop", n_epochs=1, batch_size=8,
                    gradient_accumulation_steps=2)
    _, a = train(one, train_file, tmp_path / "a")
    _, b = train(two, train_file, tmp_path / "b")
    la, lb = a.train_losses(), b.train_losses()
    assert la.keys() == lb.keys() == set(range(1, 9))
    assert torch.allclose(torch.tensor(list(la.values())), torch.tensor(list(lb.values())),
                          rtol=1e-4, atol=1e-5)


def test_early_stopping(train: Train, spam_files: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, valid_file = spam_files
    # a learning rate too small to change predictions: no evaluation improves on the first
    spec = make_spec(learning_rate=1e-9, eval_every_steps=2, early_stopping_patience=2)
    result, rec = train(spec, train_file, tmp_path / "out", valid_file)
    assert result.status == "early_stopped"
    assert result.step == 6 and result.final_dir is not None
    assert [r["step"] for r in rec.evals()] == [2, 4, 6]
    assert any(m.startswith("early stopping at step 6") for _, m in rec.events)
    # resuming an early-stopped run does not train on
    again, rec = train(spec, train_file, tmp_path / "out", valid_file)
    assert again.status == "early_stopped" and again.step == 6
    assert again.metrics == result.metrics and not rec.rows


def test_non_finite_loss_fails_the_run(train: Train, spam_files: tuple[Path, Path],
                                       tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    original = TextClassification.loss
    calls = itertools.count()

    def poisoned(self: TextClassification, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        loss = original(self, outputs, targets)
        return loss * float("nan") if next(calls) >= 3 else loss

    monkeypatch.setattr(TextClassification, "loss", poisoned)
    with pytest.raises(TrainingError, match="training loss is nan at step 4") as info:
        train(make_spec(n_epochs=1), spam_files[0], tmp_path / "out")
    assert info.value.code == "nan_loss"
    assert not (tmp_path / "out/final").exists()


def test_bad_training_data_names_file_and_line(train: Train, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "free cash", "label": "spam"}\n{"text": "hi", "label": "ham"}\n'
                   '{"text": "no label here"}\n')
    with pytest.raises(DataFileError, match=r"bad\.jsonl: line 3, field 'label'"):
        train(make_spec(), bad, tmp_path / "out")


@pytest.mark.parametrize(("overrides", "with_valid", "message"), [
    ({"batch_size": 8, "gradient_accumulation_steps": 3}, True,
     r"batch_size \(8\).*gradient_accumulation_steps \(3\)"),
    ({"early_stopping_patience": 2}, False, "early_stopping_patience needs a validation_file"),
    ({"eval_every_steps": 5}, False, "eval_every_steps needs a validation_file"),
    ({"max_seq_length": 1024}, True, "max_seq_length 1024 exceeds the 512 tokens"),
])
def test_conflicting_options_fail_before_any_work(
        train: Train, overrides: dict[str, Any], with_valid: bool, message: str,
        spam_files: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, valid_file = spam_files
    with pytest.raises(InvalidSpecError, match=message):
        train(make_spec(**overrides), train_file, tmp_path / "out",
              valid_file if with_valid else None)
    assert not (tmp_path / "out/checkpoints").exists()


def test_a_model_without_blocks_warns_that_sage_covers_everything(
        train: Train, spam_files: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = TextClassification.build_model

    def without_blocks(self: TextClassification, base_path: str) -> torch.nn.Module:
        # the same layers in an nn.Sequential: the model runs as before, but has no
        # nn.ModuleList for SAGE's scope to find
        model = original(self, base_path)
        model.bert.encoder.layer = torch.nn.Sequential(*model.bert.encoder.layer)
        return model

    monkeypatch.setattr(TextClassification, "build_model", without_blocks)
    result, rec = train(make_spec(n_epochs=1), spam_files[0], tmp_path / "out", max_steps=2)
    assert result.step == 2
    assert ("warning", NO_BLOCKS_REASON) in rec.events
    _, plain = train(make_spec(n_epochs=1, optimizer="adamw"), spam_files[0],
                     tmp_path / "adamw", max_steps=1)
    assert not [event for event in plain.events if event[0] == "warning"]


def test_unknown_model_and_unknown_validation_label(
        train: Train, spam_files: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, _ = spam_files
    with pytest.raises(UnknownModelError, match="tiny-bert"):
        train(make_spec(model="no-such-model"), train_file, tmp_path / "out")
    odd = write_jsonl(tmp_path / "odd.jsonl", spam_rows(4, labels=("ham", "eggs")))
    with pytest.raises(InvalidSpecError, match="odd.jsonl: label 'eggs'"):
        train(make_spec(), train_file, tmp_path / "out", odd)


def test_cuda_asked_for_without_a_gpu(spam_files: tuple[Path, Path], tmp_path: Path,
                                      train_models_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TrainingError, match="no CUDA GPU") as info:
        run_training(make_spec(), spam_files[0], tmp_path / "out",
                     models_dir=train_models_dir, device="cuda")
    assert info.value.code == "device_unavailable"


def test_checkpoint_state_holds_everything_to_resume(
        train: Train, spam_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    train(make_spec(n_epochs=1), spam_files[0], out, recorder=Recorder(stop_after=5))
    folder = out / "checkpoints/step-5"
    state = load_state(folder)
    assert set(state) == {"optimizer", "scheduler", "scaler", "rng"}
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    progress = json.loads((folder / "trainer_state.json").read_text())
    assert (progress["step"], progress["epoch_index"], progress["batch_in_epoch"]) == (5, 0, 5)
    assert progress["spec"]["hyperparameters"]["optimizer"] == "sage"
    assert (folder / STATE_FILE).is_file() and (folder / "model.safetensors").is_file()


def test_phases_are_announced_in_order(train: Train, spam_files: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    """No silent phase: loading, tokenizing, evaluating and the sensitivity report each
    start with an info event, in the order they run; the plan event says what the ETA
    needs."""
    train_file, valid_file = spam_files
    recorder = Recorder()
    plans: list[dict[str, Any]] = []
    callbacks = recorder.callbacks()
    on_event = callbacks.on_event

    def record(level: str, message: str, data: dict[str, Any] | None) -> None:
        if data and "plan" in data:
            plans.append(data["plan"])
        on_event(level, message, data)

    recorder.callbacks = lambda: Callbacks(  # type: ignore[method-assign]
        on_metrics=callbacks.on_metrics, on_checkpoint=callbacks.on_checkpoint,
        should_stop=callbacks.should_stop, on_event=record)
    result, rec = train(make_spec(n_epochs=2), train_file, tmp_path / "out", valid_file,
                        recorder=recorder)
    assert result.status == "completed"
    messages = [m for _, m in rec.events]
    phases = ["Tokenizing 160 examples", "Loading model ", "training ",
              "Evaluating on 32 examples", "training completed",
              "Measuring sensitivity on 4 batches"]
    found = [next(i for i, m in enumerate(messages) if m.startswith(p)) for p in phases]
    assert found == sorted(found)
    # later evaluations of well under a second are not announced again
    assert sum(m.startswith("Evaluating on") for m in messages) <= len(rec.evals())
    assert plans == [{"total_steps": 32, "steps_per_epoch": 16, "batch_size": 8, "log_every": 1,
                      "validation_examples": 32,
                      "eval_every_steps": None, "evaluates": True, "sensitivity_batches": 4,
                      "resumed_step": None}]
