"""The training loop: setup (data, model, optimizer, scheduler), train, save, cleanup.

One `Trainer` per run. It knows nothing of the task beyond the `Task` interface and
nothing of where results go beyond `Callbacks`; it never imports the database or the web,
and reads no process settings: its caller passes the models folder and the device.

Choices a caller may rely on:
- Train rows are logged every `log_every` optimizer steps (default: every step for runs of
  under 200 steps, else every total_steps // 100 steps, at most every 50), at the last
  step, and at a stop; `train_loss` and `grad_norm` are means over the steps since the
  previous row, `learning_rate` the rate of the row's step. Chat and completion rows also
  hold train_mean_token_accuracy (loss tokens predicted right, over all the row's steps).
- Evaluation (with a validation file) every `eval_every_steps` and at each epoch end:
  valid_loss and the task's metrics, prefixed valid_ (valid_accuracy, valid_f1_macro,
  valid_mcc; valid_pearson, valid_spearman; valid_mean_token_accuracy for chat,
  completion and seq2seq; seq2seq's valid_bleu and valid_chrf of its translations of the
  whole file, `Task.generation_metrics`; valid_accuracy, valid_f1_macro and, over 5
  classes, valid_top5_accuracy for image-classification). The main metric, for early
  stopping and the "best" checkpoint, is valid_f1_macro for classification, valid_bleu for
  seq2seq, valid_accuracy for image-classification, valid_loss for the others
  (`sage_core.names.main_metric`). Only training batches are augmented (`Task.augment`: an
  image task's crops and flips). After each evaluation a causal LM answers the first
  validation prompts greedily (seq2seq shows its first translations, an image task its
  first predictions): one "Sample at step N: ..." event each, with data
  {step, prompt, reference, answer} (`Task.sample_events`; RNG and train mode restored).
- Each evaluation row also carries the task's trivial baseline on the validation file,
  computed once at setup (`Task.baselines`), as baseline_<metric> (baseline_accuracy,
  baseline_f1_macro for the majority class; baseline_loss for regression's mean;
  baseline_bleu for seq2seq's copied source; none for chat and completion).
- At the end (not at a stop) the final model is judged (verdicts.py): predicts_one_class,
  no_better_than_baseline and loss_diverged, each a "warning" event with data {code} and
  an entry {code, message} of TrainResult.warnings.
- Losses are per-example means, and a step's loss is the mean over its examples, so every
  example weighs equally (a chat example: the mean over its own trained tokens).
- Checkpoints every `checkpoint_every_steps`, at each epoch end, at a stop and at early
  stopping. The newest KEEP_LAST of them are kept, plus the one with the best main metric
  (among checkpoints taken at an evaluation); the rest are deleted.
- `final/` holds the model of the last step (early stopping included), not the best one.
  With a validation file it also holds sensitivity.json, the final model's sensitivity
  report (`sensitivity_hook.py`, on the first SENSITIVITY_BATCHES validation micro-batches),
  also returned as TrainResult.sensitivity; None without a validation file or at a stop.
- With no validation file and hyperparameters.validation_split > 0, that fraction of the
  training examples is held out (`holdout.py`: seeded by the spec's seed, stratified by
  label for classification, so a resumed run holds out the same ones) and serves as the
  validation file in everything above. An info event names the held-out lines (data:
  {validation_split, seed, stratified, count, lines}, the first EVENT_LINES lines);
  final/validation_split.json holds them all.
- Each phase that can take over a second starts with an info event, data {phase, ...}:
  "Tokenizing N examples" (tokenize), "Loading model X" (load_model), "Compiling the
  optimizer's kernels (first step)" (compile, when `SAGE.will_compile`), "Evaluating on N
  examples" (evaluate: the first evaluation and any after one of over a second) and
  "Measuring sensitivity on N batches" (sensitivity). The setup event ("training X ...")
  carries {plan: total_steps, steps_per_epoch, batch_size, log_every, validation_examples,
  eval_every_steps, evaluates, sensitivity_batches}, and each evaluation row its wall time
  as eval_seconds: what a caller needs for an ETA (worker/eta.py).
- Step losses stay on the device until a row is logged (or an evaluation or checkpoint
  comes), so a non-finite loss raises TrainingError("nan_loss") at most `log_every` steps
  after it happened, naming its step, and never after a checkpoint of its weights.
- On CUDA: bf16 autocast (fp16 with loss scaling where bf16 is unsupported), fp32
  parameters and optimizer state, batches padded to a multiple of 8 and copied from pinned
  memory. On CPU: fp32, exact dynamic padding, bit-for-bit reproducible given the seed.

The loop's body calls one collaborator per concern, each in its own module:
`Placement` (device.py: device, precision, batches on the device), `EpochSampler`
(sampler.py: which examples each step sees), `RunPlan` and `Progress` (progress.py),
`build_optimizer`/`build_scheduler` (optimization.py), `Checkpointer` (checkpointer.py:
save, resume and its checks), `MetricLogger` and `TrainWindow` (metric_logger.py),
`Evaluator` and `BestTracker` (evaluator.py: evaluation, early stopping, the best
checkpoint) and `SensitivityHook` (sensitivity_hook.py). A new kind of task is a `Task`
subclass (tasks.py). A distributed run (distributed.py, one `Trainer` per rank) swaps the
`_checkpointer` and fills the seams a single process leaves as they are: `_model_shards`
(for the memory check), `_wrap` (the module the forward runs through), `_micro_batches`
(this process's share of a step), `_gradient_sync`, `_step_totals` (the step's loss summed
over processes), `_clip_gradients`, `_agree` (one process's stop decision for all) and
`_metric_logger`; the device (`_placement`) and the batches (`_sampler`) stay.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from sage_core.catalog import check_fits_task, find_model
from sage_core.datafiles import Dataset, load_dataset
from sage_core.errors import InvalidSpecError
from sage_core.schemas import ResolvedSpec
from sage_core.training import checkpoints as ckpt
from sage_core.training.checkpointer import Checkpointer
from sage_core.training.device import Placement
from sage_core.training.evaluator import BestTracker, Evaluator
from sage_core.training.holdout import EVENT_LINES, Holdout, split_dataset
from sage_core.training.interface import Callbacks, TrainResult
from sage_core.training.metric_logger import MetricLogger, TrainWindow
from sage_core.training.optimization import (
    build_optimizer,
    build_scheduler,
    sage_scope_warning,
)
from sage_core.training.preflight import check_spec
from sage_core.training.progress import Progress, RunPlan
from sage_core.training.registry import get_task
from sage_core.training.sampler import EpochSampler
from sage_core.training.sensitivity_hook import SENSITIVITY_BATCHES, SensitivityHook
from sage_core.training.tasks import Encoded, Task
from sage_core.training.verdicts import LOSS_ROWS, run_verdicts

LOG = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class Trainer:
    def __init__(self, spec: ResolvedSpec, train_file: Path, output_dir: Path, *,
                 models_dir: Path | None, allow_hub_models: bool = False,
                 device: str | None = None, validation_file: Path | None = None,
                 callbacks: Callbacks | None = None, resume: bool = True,
                 max_steps: int | None = None, log_every: int | None = None,
                 job_id: str | None = None, base_model_dir: Path | None = None) -> None:
        self.spec = spec
        self.hp = spec.hyperparameters
        self.train_file = Path(train_file)
        self.validation_file = Path(validation_file) if validation_file is not None else None
        self.output_dir = Path(output_dir)
        self.models_dir, self.allow_hub_models = models_dir, allow_hub_models
        self.base_model_dir = base_model_dir
        self.callbacks = callbacks or Callbacks()
        self.requested_device = device
        self.resume = resume
        self.max_steps = max_steps
        self.requested_log_every = log_every
        self.log_prefix = f"[{job_id}] " if job_id else ""
        self.progress = Progress()
        self.logger: MetricLogger | None = None
        self._eval_seconds: float | None = None  # the last evaluation's wall time
        self.optimizer_compiled: bool | None = None  # SAGE's `compiled` (None: automatic)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Everything that can fail on bad input runs first, before the model is loaded."""
        base_path = self._check_inputs()
        resume_from = self.checkpointer.prepare(resume=self.resume)
        self._setup_data()
        self._setup_model(base_path, resume_from)
        self._setup_optimizer()
        if resume_from is not None:
            self.progress = self.checkpointer.restore(
                resume_from, self.plan, optimizer=self.optimizer, scheduler=self.scheduler,
                scaler=self.placement.precision.scaler)
        self.logger = self._metric_logger()
        self._event("info", (
            f"training {self.spec.model} ({self.spec.task}) on {len(self.train_items)} "
            f"examples" + (f", validating on {len(self.valid_items)}" if self.valid_items
                           else "")
            + f": {self.plan.total_steps} steps of {self.hp.batch_size}, {self.hp.optimizer}, "
            f"{self.placement.label}"), {"plan": {
                **self._plan_record(),
                # Rows a caller holds past this step came from steps that run again.
                "resumed_step": self.progress.step if resume_from is not None else None}})
        if resume_from is not None:
            self._event("info", f"resumed from step {self.progress.step}")

    def _plan_record(self) -> dict[str, Any]:
        """What a caller needs to estimate the run's end (worker/runner.py's ETA): when the
        evaluations come and how many batches the sensitivity report measures."""
        evaluates = self.evaluator is not None
        return {
            "total_steps": self.plan.total_steps,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "batch_size": self.hp.batch_size,
            "log_every": self.plan.log_every,
            "validation_examples": len(self.valid_items or []),
            "eval_every_steps": self.hp.eval_every_steps if evaluates else None,
            "evaluates": evaluates,
            "sensitivity_batches": (
                min(SENSITIVITY_BATCHES, math.ceil(len(self.valid_items or []) / self.micro_batch))
                if evaluates else 0),
        }

    def _check_inputs(self) -> str:
        """Validate spec, device, model name and data files; return the base model's path."""
        check_spec(self.spec, has_validation=self.validation_file is not None)
        self.holdout: Holdout | None = None
        for name, value in (("max_steps", self.max_steps), ("log_every", self.requested_log_every)):
            if value is not None and value < 1:
                raise ValueError(f"Invalid {name}: {value}")
        self.placement = self._placement()
        base_path = (str(self.base_model_dir) if self.base_model_dir is not None else
                     find_model(self.spec.model, models_dir=self.models_dir,
                                allow_hub_models=self.allow_hub_models).path)
        from transformers import AutoConfig

        check_fits_task(AutoConfig.from_pretrained(base_path).to_dict(), self.spec.model,
                        self.spec.task, self.hp.architecture)
        self.task: Task = get_task(self.spec.task, self.hp)
        self._train_data, self._valid_data = self._load_data()
        self.task.load_processor(base_path)
        limit = self.task.max_length_limit()
        if limit is not None and self.hp.max_seq_length > limit:
            raise InvalidSpecError(
                f"max_seq_length {self.hp.max_seq_length} exceeds the {limit} tokens that "
                f"{self.spec.model} accepts", param="max_seq_length")
        self.checkpointer = self._checkpointer()
        return base_path

    def _metric_logger(self) -> MetricLogger:
        return MetricLogger(self.output_dir / ckpt.METRICS_FILE, self.callbacks.on_metrics,
                            resumed_step=self.progress.step)

    def _placement(self) -> Placement:
        return Placement.resolve(self.requested_device)

    def _checkpointer(self) -> Checkpointer:
        return Checkpointer(self.output_dir, self.spec, self.train_file)

    def _sampler(self) -> EpochSampler:
        return EpochSampler(len(self.train_items), self.hp.batch_size, self.spec.seed)

    def _load_data(self) -> tuple[Dataset, Dataset | None]:
        train = load_dataset(self.train_file, self.spec.task, filename=self.train_file.name)
        valid = None
        if self.validation_file is not None:
            valid = load_dataset(self.validation_file, self.spec.task,
                                 filename=self.validation_file.name)
        elif self.hp.validation_split > 0:
            total = len(train.examples)
            self.holdout = split_dataset(train, self.hp.validation_split, self.spec.seed)
            train, valid = self.holdout.train, self.holdout.valid
            self._event("info", self.holdout.message(total, self.hp.validation_split,
                                                     self.train_file.name),
                        self.holdout.record(self.hp.validation_split, self.spec.seed,
                                            max_lines=EVENT_LINES))
        self.task.prepare(
            train, valid, train_name=self.train_file.name,
            validation_name=self.validation_file.name if self.validation_file else None)
        return train, valid

    def _setup_data(self) -> None:
        hp = self.hp
        examples = len(self._train_data.examples) + (
            len(self._valid_data.examples) if self._valid_data is not None else 0)
        self._event("info", f"Tokenizing {examples} examples",
                    {"phase": "tokenize", "examples": examples})
        self.micro_batch = hp.batch_size // hp.gradient_accumulation_steps
        self.train_items = self.task.encode(self._train_data, hp.max_seq_length,
                                            param="training_file", report=self._event)
        self.valid_items = (None if self._valid_data is None
                            else self.task.encode(self._valid_data, hp.max_seq_length,
                                                  param="validation_file", report=self._event))
        self.sampler = self._sampler()
        self.plan = RunPlan.make(self.sampler.steps_per_epoch, n_epochs=hp.n_epochs,
                                 warmup_ratio=hp.warmup_ratio, log_every=self.requested_log_every)
        self.window = TrainWindow(hp.learning_rate, self.task.train_statistic_name)
        self.tracker = BestTracker(self.spec.task, patience=hp.early_stopping_patience,
                                   total_steps=self.plan.total_steps)
        self.evaluator = None if self.valid_items is None else Evaluator(
            self.task, self.valid_items, self.placement, self.micro_batch * 2)
        # the task's trivial baseline on the validation file, once: in every evaluation row
        self.baselines = {} if not self.valid_items else {
            f"baseline_{k}": float(v)
            for k, v in self.task.baselines(self.train_items, self.valid_items).items()}

    def _setup_model(self, base_path: str, resume_from: Path | None) -> None:
        # Seeded before the head is initialised, so a fresh run's head is reproducible.
        seed_everything(self.spec.seed)
        self._event("info", f"Loading model {self.spec.model}",
                    {"phase": "load_model", "model": self.spec.model})
        if resume_from is None:
            self.model = self.task.build_model(base_path)
        else:
            self.model = self.task.load_model(resume_from)
        self.task.prepare_model(self.model, self.placement.device,
                                shards=self._model_shards(self.model))
        self.model.to(self.placement.device)
        self.model.train()
        self.train_model = self._wrap(self.model)

    def _model_shards(self, model: torch.nn.Module) -> int:
        """How many devices share the model's weights and optimizer state (FSDP)."""
        return 1

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training forward runs through; `self.model` stays the task's
        own (evaluation, samples, saving)."""
        return model

    def _setup_optimizer(self) -> None:
        warning = sage_scope_warning(self.model, self.hp)
        if warning is not None:
            self._event("warning", warning)
        self.optimizer = build_optimizer(self.model, self.hp, compiled=self.optimizer_compiled)
        self.scheduler = build_scheduler(self.optimizer, self.plan)

    # ---------------------------------------------------------------- train
    def train(self) -> TrainResult:
        if self.tracker.early_stop_due(self.progress):
            return self._finish("early_stopped")  # resumed from the early-stopping checkpoint
        start_epoch, start_batch = self.plan.data_position(self.progress.step)
        will_compile = getattr(self.optimizer, "will_compile", None)
        if will_compile is not None and will_compile():
            self._event("info", "Compiling the optimizer's kernels (first step)",
                        {"phase": "compile"})
        self.window.restart_clock()
        for epoch in range(start_epoch, self.hp.n_epochs):
            first = start_batch if epoch == start_epoch else 0
            for indices in self.sampler.batches(epoch, first):
                self._train_step(indices)
                self.progress.step += 1
                status = self._after_step()
                if status is not None:
                    return self._finish(status)
        return self._finish("completed")

    def _train_step(self, indices: list[int]) -> None:
        lr = float(self.scheduler.get_last_lr()[0])
        scaler = self.placement.precision.scaler
        total = torch.zeros((), device=self.placement.device)
        statistic: tuple[torch.Tensor, torch.Tensor] | None = None
        chunks = self._micro_batches(indices)
        for n, chunk in enumerate(chunks):
            with self._gradient_sync(last=n == len(chunks) - 1):
                loss, chunk_statistic = self._loss_step(chunk, len(indices))
                (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach()
            if chunk_statistic is not None:
                statistic = chunk_statistic if statistic is None else (
                    statistic[0] + chunk_statistic[0], statistic[1] + chunk_statistic[1])
        total, statistic = self._step_totals(total, statistic)
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = self._clip_gradients()
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # Kept as tensors: reading them forces a device sync, done only when a row is logged.
        self.window.add(total, grad_norm.detach(), lr, len(indices), statistic)

    def _micro_batches(self, indices: list[int]) -> list[list[Encoded]]:
        """The step's examples this process trains on, in micro-batches."""
        return [[self.train_items[i] for i in indices[start:start + self.micro_batch]]
                for start in range(0, len(indices), self.micro_batch)]

    def _gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Around each micro-batch's backward; `last`: the step's last one."""
        return contextlib.nullcontext()

    def _step_totals(self, total: torch.Tensor,
                     statistic: tuple[torch.Tensor, torch.Tensor] | None
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The step's mean loss and train statistic over all its examples."""
        return total, statistic

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradients to max_grad_norm; return their norm before."""
        return torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.hp.max_grad_norm or math.inf, foreach=True)

    def _agree(self, decision: bool) -> bool:
        """The run's decision (stop, early stop), given this process's."""
        return decision

    def _loss_step(self, items: list[Encoded], step_examples: int
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The micro-batch's share of the step's mean loss, and its train statistic."""
        batch = self.placement.batch(self.task, items, train=True)
        self.progress.trained_tokens += batch.tokens
        with self.placement.autocast():
            outputs = self.train_model(**batch.inputs)
        loss = self.task.loss(outputs, batch.targets).sum() / step_examples
        return loss, self.task.train_statistic(outputs, batch.targets)

    def _after_step(self) -> str | None:
        """Log, evaluate, checkpoint and decide whether to go on; a status ends the run."""
        step, plan = self.progress.step, self.plan
        at_epoch_end = step % plan.steps_per_epoch == 0
        stop = self._agree(self.callbacks.should_stop()) or (
            self.max_steps is not None and step >= self.max_steps)
        stop = stop and step < plan.total_steps
        if step % plan.log_every == 0 or step == plan.total_steps or stop:
            self._log_train()
        evaluate = self.evaluator is not None and (at_epoch_end or (
            self.hp.eval_every_steps is not None and step % self.hp.eval_every_steps == 0))
        early = False
        if evaluate:
            self.window.check(step)
            with self.window.paused():
                early = self._agree(self._evaluate_and_log())
        every = self.hp.checkpoint_every_steps
        if at_epoch_end or stop or early or (every is not None and step % every == 0):
            self.window.check(step)
            with self.window.paused():
                self._save_checkpoint(evaluated=evaluate)
        if early:
            self._event("info", self.tracker.early_stop_message(self.progress))
            return "early_stopped"
        if stop:
            self._event("info", f"stopped at step {step}; resume checkpoint saved")
            return "stopped"
        return None

    def _log_train(self) -> None:
        values = self.window.flush(self.progress.step)
        if values is None:
            return
        row = {**self.plan.position(self.progress.step), **values}
        self.progress.last_train = row
        if "train_loss" in row:
            p, loss = self.progress, float(row["train_loss"])
            if p.first_train_loss is None:
                p.first_train_loss = loss
            else:  # the latest rows after the first
                p.last_train_losses = [*p.last_train_losses, loss][-LOSS_ROWS:]
        self._log(row)
        self.window.restart_clock()

    def _evaluate_and_log(self) -> bool:
        """Evaluate, log the row, track the best; True when early stopping is due."""
        assert self.evaluator is not None
        # The first evaluation is announced, and any after one that took over a second.
        if self._eval_seconds is None or self._eval_seconds > 1.0:
            n = len(self.evaluator.items)
            self._event("info", f"Evaluating on {n} examples",
                        {"phase": "evaluate", "examples": n, "step": self.progress.step})
        start = time.perf_counter()
        metrics = {**self.evaluator.evaluate(self.model, self.progress.step), **self.baselines}
        self._eval_seconds = time.perf_counter() - start
        # the row also says how long the evaluation took (the runner's ETA counts it)
        self._log({**self.plan.position(self.progress.step), **metrics,
                   "eval_seconds": round(self._eval_seconds, 3)})
        self.tracker.observe(self.progress, metrics)
        self._samples()
        return self.tracker.early_stop_due(self.progress)

    def _samples(self) -> None:
        """The task's samples (a causal LM's answers) as events. Sampling draws no random
        number the run would miss: the RNG states are restored, and train mode too. A
        diagnostic: a failure is a warning, never the run's end."""
        rng = ckpt.capture_rng()
        try:
            samples = self.task.sample_events(self.model, self.progress.step)
        except Exception as exc:
            LOG.exception("%ssamples failed", self.log_prefix)
            self._event("warning", f"samples skipped at step {self.progress.step}: {exc}")
            return
        finally:
            ckpt.restore_rng(rng)
            self.model.train()
        for message, data in samples:
            self._event("info", message, data)

    def _log(self, row: dict[str, Any]) -> None:
        assert self.logger is not None
        self.logger.log(row)

    def _event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        getattr(LOG, level)(self.log_prefix + message)
        self.callbacks.on_event(level, message, data)

    # ---------------------------------------------------------------- save
    def _save_model(self, folder: Path) -> None:
        self.task.save_model(self.model, folder)

    def _save_checkpoint(self, *, evaluated: bool) -> Path:
        if evaluated:
            self.tracker.checkpoint_taken(self.progress)
        folder = self.checkpointer.save(
            self.progress, self.plan, self._save_model, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.placement.precision.scaler)
        self.callbacks.on_checkpoint(folder, self.progress.step,
                                     self._checkpoint_metrics(evaluated))
        self.checkpointer.prune(keep=[self.progress.best_checkpoint_step])
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
            final_dir = self.checkpointer.save_final(self._save_model)
            if status == "completed":
                self._event("info", f"training completed at step {self.progress.step}")
        if final_dir is not None and self.holdout is not None:
            self.holdout.write(final_dir, self.hp.validation_split, self.spec.seed)
        sensitivity = None
        if final_dir is not None and self.valid_items:
            sensitivity = self._sensitivity(final_dir)
        warnings = self._verdicts() if status != "stopped" else []
        for warning in warnings:
            self._event("warning", warning["message"], {"code": warning["code"]})
        p = self.progress
        return TrainResult(
            status=status, step=p.step, total_steps=self.plan.total_steps,
            epoch=self.plan.epoch(p.step), final_dir=final_dir, metrics=dict(p.last_eval),
            trained_tokens=p.trained_tokens, sensitivity=sensitivity, warnings=warnings)

    def _verdicts(self) -> list[dict[str, str]]:
        """The final model's warnings (verdicts.py). A classifier's predictions are the
        last evaluation's when it was of the final step (always, but for a run resumed
        from its early-stopping checkpoint)."""
        p, ev = self.progress, self.evaluator
        predicted = targets = None
        if (ev is not None and ev.last_predictions is not None and ev.last_step == p.step):
            predicted = self.task.predicted_classes(ev.last_predictions)
            if predicted is not None:
                targets = [int(cast(int, it.target)) for it in ev.items]
        return run_verdicts(
            metric=self.tracker.metric, greater_is_better=self.tracker.greater_is_better,
            best=p.best_score, baselines=self.baselines,
            first_train_loss=p.first_train_loss, last_train_losses=p.last_train_losses,
            predicted=predicted, targets=targets,
            label_names=getattr(self.task, "label_names", None))

    def _sensitivity(self, final_dir: Path) -> dict[str, Any] | None:
        """The final model's sensitivity report, written to final/; None (with a warning)
        if it fails, which never fails the run."""
        assert self.valid_items is not None
        hook = SensitivityHook(self.task, self.valid_items, self.placement, self.micro_batch)
        batches = hook.batch_count()
        self._event("info", f"Measuring sensitivity on {batches} batches",
                    {"phase": "sensitivity", "batches": batches})
        try:
            report = hook.measure(self.model, self.progress.step)
        except Exception as exc:  # a diagnostic: never lose the trained model over it
            LOG.exception("%ssensitivity pass failed", self.log_prefix)
            self._event("warning", f"sensitivity report skipped: {exc}")
            return None
        hook.write(report, final_dir)
        return report

    def cleanup(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        for name in ("model", "train_model", "optimizer", "scheduler"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_training(spec: ResolvedSpec, train_file: Path, output_dir: Path, *,
                 models_dir: Path | None, allow_hub_models: bool = False,
                 device: str | None = None, validation_file: Path | None = None,
                 callbacks: Callbacks | None = None, resume: bool = True,
                 max_steps: int | None = None, log_every: int | None = None,
                 job_id: str | None = None, base_model_dir: Path | None = None) -> TrainResult:
    """Fine-tune `spec.model` on `train_file`, writing checkpoints/, final/ and metrics.jsonl
    under `output_dir`; resume from the latest checkpoint there unless `resume` is False
    (which deletes what an earlier run left).

    `models_dir` and `allow_hub_models` say where `spec.model` may come from (the catalog,
    `sage_core.catalog.find_model`); `device` is "cpu", "cuda" or "cuda:N" (None: CUDA if a
    GPU is present). The engine reads no settings of its own: callers pass these.
    `max_steps` ends the run early, as a stop does (the schedule still spans the whole
    run): for benchmarks and smoke tests. `log_every` overrides the train-row interval.
    `job_id` prefixes the engine's own log lines ("[ftjob-...] ..."), not on_event's.
    `base_model_dir`: a local folder to start from instead of the catalog's `spec.model`
    (a fine-tuned model trained further; `spec.model` then only names it).
    Raises InvalidSpecError, DataFileError, UnknownModelError before any training starts,
    and TrainingError (code "nan_loss") for a non-finite loss.
    A spec with resources.gpus > 1 trains with that many ranks (distributed.py).
    """
    if spec.resources.gpus > 1:
        from sage_core.training.distributed import run_distributed

        return run_distributed(
            spec, train_file, output_dir, models_dir=models_dir,
            allow_hub_models=allow_hub_models, device=device, validation_file=validation_file,
            callbacks=callbacks, resume=resume, max_steps=max_steps, log_every=log_every,
            job_id=job_id, base_model_dir=base_model_dir)
    trainer = Trainer(spec, train_file, output_dir, models_dir=models_dir,
                      allow_hub_models=allow_hub_models, device=device,
                      validation_file=validation_file, callbacks=callbacks, resume=resume,
                      max_steps=max_steps, log_every=log_every, job_id=job_id,
                      base_model_dir=base_model_dir)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
