"""The training loop: setup (data, model, optimizer, scheduler), train, save, cleanup.

One `Trainer` per run. It knows nothing of the task beyond the `Task` interface and
nothing of where results go beyond `Callbacks`; it never imports the database or the web.

Choices a caller may rely on:
- Train rows are logged every `log_every` optimizer steps (default: every step for runs of
  under 200 steps, else every total_steps // 100 steps, at most every 50), at the last
  step, and at a stop; `train_loss` and `grad_norm` are means over the steps since the
  previous row, `learning_rate` the rate of the row's step.
- Evaluation (with a validation file) every `eval_every_steps` and at each epoch end.
  The main metric, for early stopping and the "best" checkpoint, is valid_f1_macro for
  classification and valid_loss for regression (`Task.main_metric`).
- Checkpoints every `checkpoint_every_steps`, at each epoch end, at a stop and at early
  stopping. The newest KEEP_LAST of them are kept, plus the one with the best main metric
  (among checkpoints taken at an evaluation); the rest are deleted.
- `final/` holds the model of the last step (early stopping included), not the best one.
  With a validation file it also holds sensitivity.json, the final model's sensitivity
  report (`sensitivity.py`, on the first SENSITIVITY_BATCHES validation micro-batches),
  also returned as TrainResult.sensitivity; None without a validation file or at a stop.
- Step losses stay on the device until a row is logged (or an evaluation or checkpoint
  comes), so a non-finite loss raises TrainingError("nan_loss") at most `log_every` steps
  after it happened, naming its step, and never after a checkpoint of its weights.
- On CUDA: bf16 autocast (fp16 with loss scaling where bf16 is unsupported), fp32
  parameters and optimizer state, batches padded to a multiple of 8 and copied from pinned
  memory. On CPU: fp32, exact dynamic padding, bit-for-bit reproducible given the seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_core.catalog import resolve_model
from sage_core.datafiles import Dataset, load_dataset
from sage_core.errors import InvalidSpecError, TrainingError
from sage_core.schemas import ResolvedSpec
from sage_core.settings import get_settings
from sage_core.training import checkpoints as ckpt
from sage_core.training.interface import Callbacks, TrainResult
from sage_core.training.preflight import check_spec
from sage_core.training.tasks import Batch, Encoded, Task, get_task

LOG = logging.getLogger(__name__)

KEEP_LAST = 2  # resume checkpoints kept besides the best one
STATE_VERSION = 1
SENSITIVITY_FILE = "sensitivity.json"  # in final/, beside the model
SENSITIVITY_BATCHES = 8  # validation micro-batches for the final sensitivity pass


def resolve_device(requested: str | None) -> torch.device:
    name = requested or get_settings().device or (
        "cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidSpecError(f"unknown device {name!r}; use cpu or cuda",
                               param="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} was asked for but no CUDA GPU is available",
                            code="device_unavailable")
    return device


@dataclass
class Precision:
    """fp32 parameters and optimizer state always; on CUDA the forward and backward run
    under bf16 autocast, or fp16 autocast with loss scaling where bf16 is unsupported."""

    device_type: str
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls(device.type, None, None)
        if torch.cuda.is_bf16_supported():
            return cls("cuda", torch.bfloat16, None)
        return cls("cuda", torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    @property
    def label(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        name = str(self.autocast_dtype).removeprefix("torch.")
        return f"{name} autocast" + (" + loss scaling" if self.scaler else "")


@dataclass
class Progress:
    """The counters a resume restores, stored as JSON in each checkpoint."""

    step: int = 0
    trained_tokens: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    best_checkpoint_score: float | None = None
    best_checkpoint_step: int | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    last_train: dict[str, Any] = field(default_factory=dict)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run
    rebuilds it without replaying earlier epochs."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=generator).tolist()


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to the peak over `warmup_steps`, then linear decay towards 0. Step 0
    trains at peak/warmup rather than 0, so no step is wasted."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _flatten(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's fields with hyperparameters hoisted, for naming what differs."""
    flat = {k: v for k, v in spec.items() if k != "hyperparameters"}
    flat.update(spec.get("hyperparameters") or {})
    return flat


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Trainer:
    def __init__(self, spec: ResolvedSpec, train_file: Path, output_dir: Path, *,
                 validation_file: Path | None = None, callbacks: Callbacks | None = None,
                 device: str | None = None, resume: bool = True, max_steps: int | None = None,
                 log_every: int | None = None, job_id: str | None = None) -> None:
        self.spec = spec
        self.hp = spec.hyperparameters
        self.train_file = Path(train_file)
        self.validation_file = Path(validation_file) if validation_file is not None else None
        self.output_dir = Path(output_dir)
        self.callbacks = callbacks or Callbacks()
        self.requested_device = device
        self.resume = resume
        self.max_steps = max_steps
        self.requested_log_every = log_every
        self.log_prefix = f"[{job_id}] " if job_id else ""
        self.progress = Progress()
        self._metrics_fh: Any = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor, float, int]] = []
        self._window_start = 0.0
        self._paused = 0.0

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Everything that can fail on bad input runs first, before the model is loaded."""
        base_path = self._check_inputs()
        resume_from = self._prepare_output()
        self._setup_data()
        self._setup_model(base_path, resume_from)
        self._setup_optimizer()
        if resume_from is not None:
            self._restore(resume_from)
        self._open_metrics()
        self._event("info", (
            f"training {self.spec.model} ({self.spec.task}) on {len(self.train_items)} "
            f"examples" + (f", validating on {len(self.valid_items)}" if self.valid_items
                           else "")
            + f": {self.total_steps} steps of {self.hp.batch_size}, {self.hp.optimizer}, "
            f"{self.device.type} {self.precision.label}"))
        if resume_from is not None:
            self._event("info", f"resumed from step {self.progress.step}")

    def _check_inputs(self) -> str:
        """Validate spec, device, model name and data files; return the base model's path."""
        check_spec(self.spec, has_validation=self.validation_file is not None)
        for name, value in (("max_steps", self.max_steps), ("log_every", self.requested_log_every)):
            if value is not None and value < 1:
                raise ValueError(f"Invalid {name}: {value}")
        self.device = resolve_device(self.requested_device)
        self.precision = Precision.for_device(self.device)
        self.pad_multiple = 8 if self.device.type == "cuda" else 1
        base = resolve_model(self.spec.model)
        self.task: Task = get_task(self.spec.task)
        self._train_data, self._valid_data = self._load_data()
        self.task.load_processor(base.path)
        limit = self.task.max_length_limit()
        if limit is not None and self.hp.max_seq_length > limit:
            raise InvalidSpecError(
                f"max_seq_length {self.hp.max_seq_length} exceeds the {limit} tokens that "
                f"{self.spec.model} accepts", param="max_seq_length")
        self.train_digest = _file_digest(self.train_file)
        return base.path

    def _setup_data(self) -> None:
        self.micro_batch = self.hp.batch_size // self.hp.gradient_accumulation_steps
        self.train_items = self.task.encode(self._train_data, self.hp.max_seq_length)
        self.valid_items = (None if self._valid_data is None
                            else self.task.encode(self._valid_data, self.hp.max_seq_length))
        self.steps_per_epoch = math.ceil(len(self.train_items) / self.hp.batch_size)
        self.total_steps = self.steps_per_epoch * self.hp.n_epochs
        self.warmup_steps = math.ceil(self.hp.warmup_ratio * self.total_steps)
        self.log_every = self.requested_log_every or (
            1 if self.total_steps < 200 else min(50, self.total_steps // 100))

    def _setup_model(self, base_path: str, resume_from: Path | None) -> None:
        # Seeded before the head is initialised, so a fresh run's head is reproducible.
        seed_everything(self.spec.seed)
        if resume_from is None:
            self.model = self.task.build_model(base_path)
        else:
            self.model = self.task.load_model(resume_from)
        self.model.to(self.device)
        self.model.train()

    def _setup_optimizer(self) -> None:
        from sage_core.optim import make_optimizer

        self.optimizer = make_optimizer(
            self.model, self.hp.optimizer, lr=self.hp.learning_rate,
            weight_decay=self.hp.weight_decay, beta3=self.hp.beta3, scope=self.hp.sage_scope)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, self.warmup_steps))

    def _load_data(self) -> tuple[Dataset, Dataset | None]:
        train = load_dataset(self.train_file, self.spec.task, filename=self.train_file.name)
        valid = None
        if self.validation_file is not None:
            valid = load_dataset(self.validation_file, self.spec.task,
                                 filename=self.validation_file.name)
        self.task.prepare(
            train, valid, train_name=self.train_file.name,
            validation_name=self.validation_file.name if self.validation_file else None)
        return train, valid

    def _prepare_output(self) -> Path | None:
        """The checkpoint to resume from, checked against this run; or None for a fresh
        start, after clearing what an earlier run left."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(self.output_dir)
        latest = ckpt.find_latest(self.output_dir) if self.resume else None
        if latest is None:
            for name in (ckpt.CHECKPOINTS_DIR, ckpt.FINAL_DIR):
                shutil.rmtree(self.output_dir / name, ignore_errors=True)
            (self.output_dir / ckpt.METRICS_FILE).unlink(missing_ok=True)
            return None
        saved = ckpt.read_progress(latest)
        if saved.get("version") != STATE_VERSION:
            raise InvalidSpecError(f"checkpoint {latest.name} has an unknown format "
                                   f"{saved.get('version')!r}", param="output_dir")
        ours, theirs = _flatten(self.spec.model_dump(mode="json")), _flatten(saved["spec"])
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if changed:
            raise InvalidSpecError(
                f"checkpoint {latest.name} in {self.output_dir} was made with a different job "
                f"spec ({', '.join(changed)} differ); resume=False starts over",
                param="output_dir")
        if saved["train_digest"] != self.train_digest:
            raise InvalidSpecError(
                f"checkpoint {latest.name} was trained on a different training file than "
                f"{self.train_file.name}; resume=False starts over", param="training_file")
        return latest

    def _restore(self, folder: Path) -> None:
        saved = ckpt.read_progress(folder)
        state = ckpt.load_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**saved["progress"])
        epoch, batch = divmod(self.progress.step, self.steps_per_epoch)
        if (epoch, batch) != (saved["epoch_index"], saved["batch_in_epoch"]):
            raise TrainingError(f"checkpoint {folder.name} is at epoch {saved['epoch_index']} "
                                f"batch {saved['batch_in_epoch']}, which this data does not "
                                "reproduce", code="bad_checkpoint")
        ckpt.restore_rng(state["rng"])

    def _open_metrics(self) -> None:
        path = self.output_dir / ckpt.METRICS_FILE
        kept: list[str] = []
        if path.exists():
            # Rows after the checkpoint came from steps that will run again.
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.progress.step]
        self._metrics_fh = open(path, "w")  # noqa: SIM115 - closed in cleanup()
        for line in kept:
            self._metrics_fh.write(line + "\n")
        self._metrics_fh.flush()

    # ---------------------------------------------------------------- train
    def train(self) -> TrainResult:
        patience = self.hp.early_stopping_patience
        if (patience is not None and self.progress.evals_without_improvement >= patience
                and self.progress.step < self.total_steps):
            return self._finish("early_stopped")  # resumed from the early-stopping checkpoint
        start_epoch, start_batch = divmod(self.progress.step, self.steps_per_epoch)
        self._window_start, self._paused = time.perf_counter(), 0.0
        for epoch in range(start_epoch, self.hp.n_epochs):
            first = start_batch if epoch == start_epoch else 0
            for indices in self._step_indices(epoch, first):
                self._train_step(indices)
                self.progress.step += 1
                status = self._after_step()
                if status is not None:
                    return self._finish(status)
        return self._finish("completed")

    def _step_indices(self, epoch: int, first_batch: int) -> Iterator[list[int]]:
        order = epoch_permutation(len(self.train_items), self.spec.seed, epoch)
        size = self.hp.batch_size
        for b in range(first_batch, self.steps_per_epoch):
            yield order[b * size:(b + 1) * size]

    def _train_step(self, indices: list[int]) -> None:
        lr = float(self.scheduler.get_last_lr()[0])
        scaler = self.precision.scaler
        total = torch.zeros((), device=self.device)
        for start in range(0, len(indices), self.micro_batch):
            chunk = [self.train_items[i] for i in indices[start:start + self.micro_batch]]
            loss = self._loss_step(chunk, len(indices))
            (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.hp.max_grad_norm or math.inf, foreach=True)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # Kept as tensors: reading them forces a device sync, done only when a row is logged.
        self._pending.append((total, grad_norm.detach(), lr, len(indices)))

    def _loss_step(self, items: list[Encoded], step_examples: int) -> torch.Tensor:
        """The micro-batch's share of the step's mean loss."""
        batch = self.task.collate(items, self.pad_multiple)
        self.progress.trained_tokens += batch.tokens
        batch = batch.to(self.device)
        with self.precision.autocast():
            outputs = self.model(**batch.inputs)
        return self.task.loss(outputs, batch.targets).sum() / step_examples

    def _after_step(self) -> str | None:
        """Log, evaluate, checkpoint and decide whether to go on; a status ends the run."""
        step = self.progress.step
        at_epoch_end = step % self.steps_per_epoch == 0
        stop = self.callbacks.should_stop() or (
            self.max_steps is not None and step >= self.max_steps)
        stop = stop and step < self.total_steps
        if step % self.log_every == 0 or step == self.total_steps or stop:
            self._log_train()
        evaluate = self.valid_items is not None and (at_epoch_end or (
            self.hp.eval_every_steps is not None and step % self.hp.eval_every_steps == 0))
        early = False
        if evaluate:
            self._check_pending()
            with self._paused_clock():
                early = self._evaluate_and_log()
        every = self.hp.checkpoint_every_steps
        if at_epoch_end or stop or early or (every is not None and step % every == 0):
            self._check_pending()
            with self._paused_clock():
                self._save_checkpoint(evaluated=evaluate)
        if early:
            self._event("info", (
                f"early stopping at step {step}: valid_{self.task.main_metric} has not "
                f"improved for {self.progress.evals_without_improvement} evaluations "
                f"(best {self.progress.best_score:.4g} at step {self.progress.best_step})"))
            return "early_stopped"
        if stop:
            self._event("info", f"stopped at step {step}; resume checkpoint saved")
            return "stopped"
        return None

    @contextlib.contextmanager
    def _paused_clock(self) -> Iterator[None]:
        """Keep evaluation and checkpoint time out of samples_per_second."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start

    def _check_pending(self) -> list[tuple[float, float, float, int]]:
        """Read the pending step losses (a device sync); a non-finite one fails the run."""
        if not self._pending:
            return []
        losses = torch.stack([p[0] for p in self._pending]).tolist()
        norms = torch.stack([p[1].float() for p in self._pending]).tolist()
        first_step = self.progress.step - len(self._pending) + 1
        for offset, value in enumerate(losses):
            if not math.isfinite(value):
                raise TrainingError(
                    f"training loss is {value} at step {first_step + offset}; try a lower "
                    f"learning_rate (now {self.hp.learning_rate:g}) or max_grad_norm",
                    code="nan_loss")
        return [(loss, norm, p[2], p[3])
                for loss, norm, p in zip(losses, norms, self._pending, strict=True)]

    def _log_train(self) -> None:
        window = self._check_pending()
        if not window:
            return
        self._pending.clear()
        elapsed = max(time.perf_counter() - self._window_start - self._paused, 1e-9)
        # With loss scaling a skipped step has an infinite norm; leave those out of the mean.
        norms = [n for _, n, _, _ in window if math.isfinite(n)]
        row = {
            **self._position(),
            "train_loss": sum(w[0] for w in window) / len(window),
            "learning_rate": window[-1][2],
            "grad_norm": sum(norms) / len(norms) if norms else None,
            "samples_per_second": sum(w[3] for w in window) / elapsed,
        }
        self.progress.last_train = row
        self._emit(row)
        self._window_start, self._paused = time.perf_counter(), 0.0

    def _position(self) -> dict[str, Any]:
        step = self.progress.step
        return {"step": step, "total_steps": self.total_steps,
                "epoch": round(step / self.steps_per_epoch, 4)}

    def _emit(self, row: dict[str, Any]) -> None:
        assert self._metrics_fh is not None
        self._metrics_fh.write(json.dumps(row) + "\n")
        self._metrics_fh.flush()
        self.callbacks.on_metrics(dict(row))

    def _event(self, level: str, message: str) -> None:
        getattr(LOG, level)(self.log_prefix + message)
        self.callbacks.on_event(level, message)

    # ---------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """valid_loss plus the task's metrics, each prefixed valid_."""
        assert self.valid_items is not None
        items = self.valid_items
        # Length-sorted batches pad less; metrics do not depend on the order.
        order = sorted(range(len(items)), key=lambda i: len(items[i].features["input_ids"]))
        size = self.micro_batch * 2
        loss_sum = 0.0
        predictions: list[torch.Tensor] = []
        self.model.eval()
        try:
            for start in range(0, len(order), size):
                batch = self.task.collate([items[i] for i in order[start:start + size]],
                                          self.pad_multiple)
                batch = batch.to(self.device)
                with self.precision.autocast():
                    outputs = self.model(**batch.inputs)
                loss_sum += float(self.task.loss(outputs, batch.targets).sum())
                predictions.append(self.task.predict(outputs).cpu())
        finally:
            self.model.train()
        ordered = torch.cat(predictions).numpy()
        preds = np.empty_like(ordered)
        preds[np.asarray(order)] = ordered
        targets = np.asarray([it.target for it in items])
        metrics = {"loss": loss_sum / len(items), **self.task.metrics(preds, targets)}
        if not math.isfinite(metrics["loss"]):
            raise TrainingError(f"validation loss is {metrics['loss']} at step "
                                f"{self.progress.step}", code="nan_loss")
        return {f"valid_{k}": float(v) for k, v in metrics.items()}

    def _evaluate_and_log(self) -> bool:
        """Evaluate, log the row, track the best; True when early stopping is due."""
        metrics = self.evaluate()
        self._emit({**self._position(), **metrics})
        p = self.progress
        p.last_eval = metrics
        score = metrics[f"valid_{self.task.main_metric}"]
        if p.best_score is None or self._better(score, p.best_score):
            p.best_score, p.best_step, p.evals_without_improvement = score, p.step, 0
        else:
            p.evals_without_improvement += 1
        patience = self.hp.early_stopping_patience
        return (patience is not None and p.evals_without_improvement >= patience
                and p.step < self.total_steps)

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.task.greater_is_better else a < b

    # ---------------------------------------------------------------- save
    def _save_checkpoint(self, *, evaluated: bool) -> Path:
        p = self.progress
        step = p.step
        if evaluated:
            score = p.last_eval[f"valid_{self.task.main_metric}"]
            if p.best_checkpoint_score is None or self._better(score, p.best_checkpoint_score):
                p.best_checkpoint_score, p.best_checkpoint_step = score, step
        epoch, batch = divmod(step, self.steps_per_epoch)
        progress_json = {
            "version": STATE_VERSION, "step": step, "total_steps": self.total_steps,
            "epoch": step / self.steps_per_epoch, "epoch_index": epoch, "batch_in_epoch": batch,
            "spec": self.spec.model_dump(mode="json"), "train_digest": self.train_digest,
            "progress": asdict(p),
        }
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "rng": ckpt.capture_rng(),
        }

        def write(folder: Path) -> None:
            self.task.save_model(self.model, folder)
            torch.save(state, folder / ckpt.STATE_FILE)
            (folder / ckpt.PROGRESS_FILE).write_text(json.dumps(progress_json, indent=1))

        folder = ckpt.write_atomically(ckpt.checkpoint_dir(self.output_dir, step), write)
        self.callbacks.on_checkpoint(folder, step, self._checkpoint_metrics(evaluated))
        keep = [s for s in (p.best_checkpoint_step,) if s is not None]
        ckpt.prune(self.output_dir, keep_last=KEEP_LAST, keep=keep)
        return folder

    def _checkpoint_metrics(self, evaluated: bool) -> dict[str, Any]:
        metrics: dict[str, Any] = {"step": self.progress.step}
        if "train_loss" in self.progress.last_train:
            metrics["train_loss"] = self.progress.last_train["train_loss"]
        if evaluated:
            metrics.update(self.progress.last_eval)
        return metrics

    def _finish(self, status: str) -> TrainResult:
        final_dir = None
        if status != "stopped":
            final_dir = ckpt.write_atomically(
                self.output_dir / ckpt.FINAL_DIR, lambda f: self.task.save_model(self.model, f))
            if status == "completed":
                self._event("info", f"training completed at step {self.progress.step}")
        sensitivity = None
        if final_dir is not None and self.valid_items:
            # After every checkpoint and final/ are saved, so the pass changes nothing a
            # resume or a download reads.
            sensitivity = self._sensitivity()
            if sensitivity is not None:
                (final_dir / SENSITIVITY_FILE).write_text(json.dumps(sensitivity, indent=1))
        return TrainResult(
            status=status, step=self.progress.step, total_steps=self.total_steps,
            epoch=self.progress.step / self.steps_per_epoch, final_dir=final_dir,
            metrics=dict(self.progress.last_eval), trained_tokens=self.progress.trained_tokens,
            sensitivity=sensitivity)

    def _sensitivity(self) -> dict[str, Any] | None:
        """The final model's sensitivity report on the first validation batches; None (with
        a warning) if it fails, which never fails the run. RNG states are restored."""
        from sage_core.training.sensitivity import sensitivity_report

        assert self.valid_items is not None
        items = self.valid_items
        size = self.micro_batch

        def batches() -> Iterator[Batch]:
            for start in range(0, len(items), size):
                yield self.task.collate(items[start:start + size],
                                        self.pad_multiple).to(self.device)

        def loss_fn(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            with self.precision.autocast():
                outputs = model(**batch.inputs)
            return self.task.loss(outputs, batch.targets)

        rng = ckpt.capture_rng()
        start = time.perf_counter()
        try:
            report = sensitivity_report(self.model, batches(), loss_fn,
                                        max_batches=SENSITIVITY_BATCHES)
        except Exception as exc:  # a diagnostic: never lose the trained model over it
            LOG.exception("%ssensitivity pass failed", self.log_prefix)
            self._event("warning", f"sensitivity report skipped: {exc}")
            return None
        finally:
            ckpt.restore_rng(rng)
        report["step"] = self.progress.step
        report["seconds"] = round(time.perf_counter() - start, 3)
        return report

    def cleanup(self) -> None:
        if self._metrics_fh is not None:
            self._metrics_fh.close()
            self._metrics_fh = None
        for name in ("model", "optimizer", "scheduler"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_training(spec: ResolvedSpec, train_file: Path, output_dir: Path, *,
                 validation_file: Path | None = None, callbacks: Callbacks | None = None,
                 device: str | None = None, resume: bool = True, max_steps: int | None = None,
                 log_every: int | None = None, job_id: str | None = None) -> TrainResult:
    """Fine-tune `spec.model` on `train_file`, writing checkpoints/, final/ and metrics.jsonl
    under `output_dir`; resume from the latest checkpoint there unless `resume` is False
    (which deletes what an earlier run left).

    `max_steps` ends the run early, as a stop does (the schedule still spans the whole
    run): for benchmarks and smoke tests. `log_every` overrides the train-row interval.
    `job_id` prefixes the engine's own log lines ("[ftjob-...] ..."), not on_event's.
    Raises InvalidSpecError, DataFileError, UnknownModelError before any training starts,
    and TrainingError (code "nan_loss") for a non-finite loss.
    """
    trainer = Trainer(spec, train_file, output_dir, validation_file=validation_file,
                      callbacks=callbacks, device=device, resume=resume, max_steps=max_steps,
                      log_every=log_every, job_id=job_id)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
