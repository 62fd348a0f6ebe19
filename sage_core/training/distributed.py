"""One job trained by N ranks: torch.distributed's elastic launcher, a process group (gloo on
the CPU, nccl on CUDA), and DDP or FSDP2. `run_training` hands a spec with resources.gpus > 1
here; `check_resources` refuses what N ranks cannot run (batch_size < N, lora with fsdp, a
single "cuda:K" device, more GPUs than are visible) before any rank starts.

Choices a caller may rely on:
- Launch: the calling process (the job's) runs `elastic_launch` (torchrun's standalone mode:
  a c10d rendezvous on localhost, no restarts) from a thread of its own, which starts
  `gpus` ranks as its child processes. Each rank is pinned to cuda:LOCAL_RANK (the GPUs in
  CUDA_VISIBLE_DEVICES, in order) or, on a CPU-only machine or with device "cpu", is one CPU
  process with (the cores this process may use) // gpus threads. A rank dies with the
  calling process (PR_SET_PDEATHSIG), so a job process that is killed leaves no rank behind.
  The launcher's error files live in a launcher-* folder of output_dir during the launch.
- Reporting: the caller's `Callbacks` stay in the calling process, called from the thread
  that called `run_distributed`, as a single-process run calls them. Rank 0 calls them
  through a pipe and waits for each answer (so an on_checkpoint folder is still there while
  it is copied); the other ranks report nothing.
- Stop: rank 0's `should_stop` answer, and its early-stopping decision, are broadcast after
  every step, so all ranks stop at the same step; rank 0 saves the resume checkpoint.
  Cancel, pause and SIGTERM reach the ranks this way, through the caller's `should_stop`.
- Batches: every rank draws the step's whole batch (the single-process order) and trains
  on its `rank_share` of it, in micro-batches of at most batch_size //
  gradient_accumulation_steps, its gradients synchronised at its last micro-batch only. A
  rank whose share of a short last batch is empty runs one example at weight 0 (every
  rank's backward takes part in the reduction). Each rank's loss is its examples' summed
  loss times ranks / the step's examples, and DDP averages gradients over ranks: the step's
  gradient is the single-process one, so the learning-rate schedule, logging intervals and
  metrics (the loss and train statistic summed over ranks, one all_reduce a step) do not
  depend on N. Dropout and augmentation draw from the same seed on every rank (with
  dropout on, N ranks match one rank in distribution, not bit for bit).
- Strategy: "ddp" replicates the model; "fsdp" shards parameters, gradients and optimizer
  state with FSDP2 (`fully_shard` on each repeated block, then the whole model; SAGE is
  elementwise, so each rank stepping its shard is exact; its compiled kernels are off, as
  they take no DTensor; not with lora, nor on GPUs without bf16). "auto": DDP, unless on
  CUDA the memory preflight (memory.py) finds that the model with its optimizer state does
  not fit rank 0's GPU.
- DDP: rank 0 alone evaluates (on the unwrapped module: the others wait at the next step's
  collectives), samples, writes metrics.jsonl, checkpoints, final/ and the sensitivity
  report, and judges the final model. At the end the ranks' parameters are compared (a
  checksum per tensor, all-gathered): a difference raises TrainingError("replicas_diverged").
  FSDP: every rank evaluates (a sharded forward needs them all), rank 0's result counts;
  rank 0 measures the sensitivity report alone, on the final model loaded whole from final/
  once the other ranks are done (where it does not fit, the report is skipped with a
  warning, as any failure of the report is).
- Checkpoints are the single-process ones (the Hugging Face folder, the optimizer's own
  state_dict with SAGE's Ibar; under FSDP both gathered whole onto rank 0's CPU first), so
  a run paused with N ranks resumes with any number of ranks and either strategy, 1 rank
  included; rank 0 picks the checkpoint and the others load it.
- Failures: the launcher ends every rank when one fails. What rank 0 raises (a
  SageTrainError with its code, an out-of-memory error) is raised in the caller, as is a
  callback's own exception; a rank killed by a signal, or another rank's error, raises
  TrainingError("worker_crashed") naming the rank and how it ended, as a job process's
  death fails its job.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from sage_core.errors import InvalidSpecError, SageTrainError, TrainingError
from sage_core.schemas import ResolvedSpec
from sage_core.schemas import check_resources as check_spec_resources
from sage_core.training.checkpointer import Checkpointer
from sage_core.training.interface import Callbacks, TrainResult
from sage_core.training.loop import Trainer
from sage_core.training.metric_logger import MetricLogger
from sage_core.training.sampler import rank_share
from sage_core.training.tasks import Encoded

POLL_SECONDS = 0.1  # how often the caller's thread looks at the launch between calls
# How long a rank waits in a collective. Under DDP the others wait there while rank 0
# evaluates, samples and saves (its on_checkpoint uploads the folder): nccl's default of 10
# minutes is too short for a large validation file or checkpoint.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
MONITOR_SECONDS = 0.2  # how often the launcher looks at its ranks


class CallbackFailed(RuntimeError):
    """A callback raised in the calling process; it re-raises the original there."""


@dataclass(frozen=True)
class RankJob:
    """What every rank needs to build its `Trainer`: `run_training`'s arguments."""

    spec: ResolvedSpec
    train_file: Path
    output_dir: Path
    models_dir: Path | None
    allow_hub_models: bool
    device: str | None
    validation_file: Path | None
    resume: bool
    max_steps: int | None
    log_every: int | None
    job_id: str | None
    base_model_dir: Path | None
    parent_pid: int


# --------------------------------------------------------------------- the calling process
def run_distributed(spec: ResolvedSpec, train_file: Path, output_dir: Path, *,
                    models_dir: Path | None, allow_hub_models: bool = False,
                    device: str | None = None, validation_file: Path | None = None,
                    callbacks: Callbacks | None = None, resume: bool = True,
                    max_steps: int | None = None, log_every: int | None = None,
                    job_id: str | None = None, base_model_dir: Path | None = None
                    ) -> TrainResult:
    """`run_training` with `spec.resources.gpus` ranks; the arguments are its own."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    ranks = spec.resources.gpus
    check_resources(spec, device)
    callbacks = callbacks or Callbacks()
    job = RankJob(spec, Path(train_file), Path(output_dir), models_dir, allow_hub_models,
                  device, validation_file, resume, max_steps, log_every, job_id,
                  base_model_dir, os.getpid())
    # The launcher's error files (a failed rank's message), removed after the launch; in the
    # output folder, so that a killed job process leaves them where its job's end cleans up.
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    logs = tempfile.TemporaryDirectory(prefix="launcher-", dir=output_dir)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=ranks, run_id=f"sagetrain-{uuid.uuid4().hex}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
        monitor_interval=MONITOR_SECONDS, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=logs.name))
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    outcome: dict[str, Any] = {}

    def launch() -> None:
        # Not the main thread: the launcher then leaves the process's signal handlers
        # alone, and SIGTERM still asks the job to checkpoint and stop (via should_stop).
        try:
            outcome["results"] = elastic_launch(config, _rank_main)(job, theirs)
        except BaseException as exc:
            outcome["error"] = exc

    launcher = threading.Thread(target=launch, name=f"ranks-{job_id or 'run'}", daemon=True)
    launcher.start()
    served = _serve(ours, callbacks, launcher)
    launcher.join()
    ours.close()
    theirs.close()
    logs.cleanup()
    if served.callback_error is not None:  # the caller's own (a database outage...)
        raise served.callback_error
    if "error" in outcome:
        raise _launch_failure(outcome["error"], served.rank0_error, ranks)
    result: TrainResult = outcome["results"][0]
    return result


def check_resources(spec: ResolvedSpec, device: str | None) -> None:
    """Refuse what N ranks cannot run, before any rank starts."""
    ranks = spec.resources.gpus
    check_spec_resources(spec.resources, spec.hyperparameters)
    if device is not None and device.startswith("cuda:"):
        raise InvalidSpecError(f"device {device!r} names one GPU but the job asks for "
                               f"{ranks}; use cuda", param="device")
    if _wants_cuda(device) and torch.cuda.device_count() < ranks:
        raise TrainingError(f"the job asks for {ranks} GPUs but {torch.cuda.device_count()} "
                            "are visible", code="device_unavailable")


def _wants_cuda(device: str | None) -> bool:
    return device == "cuda" or (device is None and torch.cuda.is_available())


@dataclass
class _Served:
    callback_error: BaseException | None = None  # the first callback that raised
    rank0_error: BaseException | None = None  # what rank 0 ended with


def _serve(conn: Connection, callbacks: Callbacks, launcher: threading.Thread) -> _Served:
    """Answer rank 0's callback calls until the launch ends."""
    served = _Served()
    while launcher.is_alive():
        if not conn.poll(POLL_SECONDS):
            continue
        name, args = conn.recv()
        if name == "failed":  # rank 0 is ending with this exception
            served.rank0_error = args[0]
            continue
        try:
            conn.send(("ok", getattr(callbacks, name)(*args)))
        except Exception as exc:
            served.callback_error = served.callback_error or exc
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    return served


def _launch_failure(error: BaseException, rank0_error: BaseException | None,
                    ranks: int) -> BaseException:
    """What to raise for a failed launch, the cause rather than its echoes (the other ranks
    fail at their next collective, "connection closed"): a rank killed by a signal, then rank
    0's own SageTrainError, then the first rank whose error is not such an echo (rank 0's
    as it raised it, another's message from the launcher's error file)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not isinstance(error, ChildFailedError):
        return error
    failures = sorted(error.failures.items())
    killed = [(rank, f) for rank, f in failures if f.exitcode < 0]
    if not killed and isinstance(rank0_error, SageTrainError):
        return rank0_error

    def message_of(rank: int, failure: Any) -> str:
        return str(rank0_error) if rank == 0 and rank0_error else _failure_message(failure)

    causes = [(rank, f) for rank, f in failures if not _echo(message_of(rank, f))]
    if not killed and rank0_error is not None and causes and causes[0][0] == 0:
        return rank0_error
    rank, failure = (killed or causes or failures)[0]
    if failure.exitcode < 0:
        message = f"rank {rank} of {ranks} was killed by signal {failure.signal_name()}"
        if failure.signal_name() == "SIGKILL":
            message += "; it may have run out of memory"
    else:
        message = f"rank {rank} of {ranks} failed (exit code {failure.exitcode})"
        found = _failure_message(failure)
        if found:
            message += f": {found}"
    return TrainingError(message, code="worker_crashed")


def _failure_message(failure: Any) -> str:
    """A failed rank's error, from the launcher's error file ({message, extraInfo})."""
    found: Any = failure.message
    found = found.get("message") if isinstance(found, dict) else found
    if (not isinstance(found, str) or not found.strip() or "error_file" in found
            or "To enable traceback" in found):  # the launcher's placeholders
        return ""
    return found.strip().splitlines()[-1]


def _echo(message: str) -> bool:
    """A collective that failed because another rank is gone."""
    return "Connection closed by peer" in message or "remote worker crash" in message


# --------------------------------------------------------------------- a rank
class _RemoteCallbacks:
    """Rank 0's side of the pipe: each call waits for the calling process's answer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call(self, name: str, *args: Any) -> Any:
        self.conn.send((name, args))
        kind, value = self.conn.recv()
        if kind == "error":
            raise CallbackFailed(value)
        return value

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_metrics=lambda row: self.call("on_metrics", row),
            on_checkpoint=lambda folder, step, metrics: self.call(
                "on_checkpoint", folder, step, metrics),
            should_stop=lambda: bool(self.call("should_stop")),
            on_event=lambda level, message, data: self.call("on_event", level, message, data))

    def failed(self, exc: BaseException) -> None:
        try:
            self.conn.send(("failed", (exc,)))
        except Exception:  # not picklable: its message will do
            self.conn.send(("failed", (TrainingError(f"{type(exc).__name__}: {exc}"),)))


def _rank_main(job: RankJob, conn: Connection) -> TrainResult | None:
    """A rank's life: join the process group, train, leave. Rank 0 returns the result."""
    from sage_core.lifeline import die_with_parent

    die_with_parent(job.parent_pid)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if _wants_cuda(job.device):
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    remote = _RemoteCallbacks(conn) if rank == 0 else None
    try:
        trainer = DistributedTrainer(
            job.spec, job.train_file, job.output_dir, models_dir=job.models_dir,
            allow_hub_models=job.allow_hub_models, device=str(device),
            validation_file=job.validation_file,
            callbacks=remote.callbacks() if remote else None, resume=job.resume,
            max_steps=job.max_steps, log_every=job.log_every, job_id=job.job_id,
            base_model_dir=job.base_model_dir)
        try:
            trainer.setup()
            result = trainer.train()
        finally:
            trainer.cleanup()
    except BaseException as exc:
        if remote is not None and not isinstance(exc, CallbackFailed):
            remote.failed(exc)
        raise
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None


class DistributedTrainer(Trainer):
    """A `Trainer` that is one rank of a process group (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.ranks = dist.get_rank(), dist.get_world_size()
        self._share_weight = 1.0  # 0.0: this step's share is empty, a stand-in example runs
        self._tokens_before = 0
        self.strategy = "ddp"  # decided before the model's memory check (_model_shards)
        self.sharded = False  # FSDP2: each rank holds a shard of the model
        self._full_model: dict[str, torch.Tensor] | None = None  # rank 0's, while saving

    # --- the pieces the loop swaps
    def _checkpointer(self) -> Checkpointer:
        return RankCheckpointer(self.output_dir, self.spec, self.train_file, rank=self.rank)

    def _metric_logger(self) -> MetricLogger:
        if self.rank == 0:
            return super()._metric_logger()
        return MetricLogger(None, self.callbacks.on_metrics)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            if self.placement.precision.scaler is not None:
                # each rank would find infs in its own shard and skip steps on its own
                raise InvalidSpecError("strategy fsdp needs GPUs with bf16 (fp16's loss "
                                       "scaling is per shard); use ddp", param="resources")

            # every rank built the same model from the same seed: the shards fit together
            for block in _blocks(model):
                fully_shard(block)
            fully_shard(model)
            self.sharded = True
            self.optimizer_compiled = False  # SAGE's compiled kernels take no DTensor
            assert isinstance(self.checkpointer, RankCheckpointer)
            self.checkpointer.sharded_model = model
            return model
        # DDP broadcasts rank 0's parameters and buffers here: every replica starts equal.
        device_ids = [self.placement.device] if self.placement.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def _model_shards(self, model: torch.nn.Module) -> int:
        self.strategy = self._strategy(model)
        return self.ranks if self.strategy == "fsdp" else 1

    def _strategy(self, model: torch.nn.Module) -> str:
        """The resources' strategy; "auto" is DDP unless the memory preflight finds that the
        model and its optimizer state do not fit one GPU (rank 0's finding, for all)."""
        requested = self.spec.resources.strategy
        if requested != "auto":
            return requested
        choice = ["ddp"]
        if self.rank == 0 and self.placement.device.type == "cuda":
            choice = ["ddp" if _fits_one_device(model, self.spec, self.placement.device)
                      else "fsdp"]
        dist.broadcast_object_list(choice, src=0)
        return str(choice[0])

    def _micro_batches(self, indices: list[int]) -> list[list[Encoded]]:
        share = rank_share(indices, self.rank, self.ranks)
        self._share_weight = 1.0 if share else 0.0
        self._tokens_before = self.progress.trained_tokens
        return super()._micro_batches(share or indices[:1])

    def _gradient_sync(self, *, last: bool) -> Any:
        if self.sharded:  # FSDP2 reduce-scatters at the last micro-batch's backward only
            self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            return super()._gradient_sync(last=last)
        return super()._gradient_sync(last=last) if last else self.train_model.no_sync()  # type: ignore[operator]

    def _loss_step(self, items: list[Encoded], step_examples: int
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        loss, statistic = super()._loss_step(items, step_examples)
        # DDP averages the ranks' gradients: each rank's loss counts ranks times
        weight = self.ranks * self._share_weight
        if statistic is not None and self._share_weight == 0.0:
            statistic = (statistic[0] * 0.0, statistic[1] * 0.0)
        return loss * weight, statistic

    def _step_totals(self, total: torch.Tensor,
                     statistic: tuple[torch.Tensor, torch.Tensor] | None
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        tokens = (self.progress.trained_tokens - self._tokens_before) * self._share_weight
        zero = torch.zeros((), device=total.device)
        parts = torch.stack([total / self.ranks, *(statistic or (zero, zero)),
                             torch.tensor(float(tokens), device=total.device)])
        dist.all_reduce(parts)
        self.progress.trained_tokens = self._tokens_before + int(parts[3].item())
        return parts[0], (parts[1], parts[2]) if statistic is not None else None

    def _clip_gradients(self) -> torch.Tensor:
        norm = super()._clip_gradients()
        # FSDP's norm is a replicated DTensor: every rank holds the whole value
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def _agree(self, decision: bool) -> bool:
        flag = torch.tensor([1.0 if decision else 0.0], device=self.placement.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    # --- what rank 0 alone does
    def _event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        if self.rank == 0:
            super()._event(level, message, data)

    def _evaluate_and_log(self) -> bool:
        # a sharded forward needs every rank: all evaluate, rank 0's decision counts
        return super()._evaluate_and_log() if self.rank == 0 or self.sharded else False

    def _save_checkpoint(self, *, evaluated: bool) -> Path:
        if self.sharded:
            self._gather(optimizer=True)
        try:
            if self.rank == 0:
                return super()._save_checkpoint(evaluated=evaluated)
            return self.output_dir
        finally:
            self._release()

    def _save_model(self, folder: Path) -> None:
        self.task.save_model(self.model, folder, state_dict=self._full_model)

    def _gather(self, *, optimizer: bool) -> None:
        """Every rank: the full model (and optimizer) state of a sharded run, assembled on
        rank 0's CPU in the single-process layout."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self._full_model = cast(dict[str, torch.Tensor],
                                get_model_state_dict(self.model, options=options))
        if optimizer:
            assert isinstance(self.checkpointer, RankCheckpointer)
            gathered = get_optimizer_state_dict(self.model, self.optimizer, options=options)
            # only rank 0 receives it
            self.checkpointer.gathered_optimizer = _numbered(gathered) if gathered else None

    def _release(self) -> None:
        self._full_model = None
        if isinstance(self.checkpointer, RankCheckpointer):
            self.checkpointer.gathered_optimizer = None

    def _finish(self, status: str) -> TrainResult:
        if self.sharded and status != "stopped":
            self._gather(optimizer=False)  # for final/
        elif not self.sharded:
            self._check_replicas()
        try:
            if self.rank == 0:
                return super()._finish(status)
        finally:
            self._release()
        return TrainResult(status=status, step=self.progress.step,
                           total_steps=self.plan.total_steps,
                           epoch=self.plan.epoch(self.progress.step), final_dir=None)

    def _sensitivity(self, final_dir: Path) -> dict[str, Any] | None:
        if not self.sharded:
            return super()._sensitivity(final_dir)
        # Rank 0 alone, the other ranks gone: the final model loaded whole from final/.
        sharded = self.model
        try:
            self.model = self.task.load_model(final_dir).to(self.placement.device)
        except Exception as exc:  # out of memory, most likely: a diagnostic, never fatal
            self._event("warning", f"sensitivity report skipped: {exc}")
            return None
        try:
            return super()._sensitivity(final_dir)
        finally:
            self.model = sharded

    def _check_replicas(self) -> None:
        """Every rank's parameters equal rank 0's, bit for bit (a float64 checksum each)."""
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        gathered = [torch.empty_like(sums) for _ in range(self.ranks)]
        dist.all_gather(gathered, sums)
        differ = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        if differ:
            raise TrainingError(f"the parameters of ranks {differ} differ from rank 0's",
                                code="replicas_diverged")


class RankCheckpointer(Checkpointer):
    """The single-process checkpointer, but only rank 0 touches the output folder: it picks
    the checkpoint to resume from (clearing what a fresh start leaves) and the others are
    told which one."""

    def __init__(self, *args: Any, rank: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank
        # FSDP: the sharded model, and the optimizer state gathered for the next save
        self.sharded_model: torch.nn.Module | None = None
        self.gathered_optimizer: dict[str, Any] | None = None

    def prepare(self, *, resume: bool) -> Path | None:
        chosen: list[Path | None] = [super().prepare(resume=resume) if self.rank == 0 else None]
        dist.broadcast_object_list(chosen, src=0)
        return chosen[0]

    def _optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        if self.sharded_model is None:
            return super()._optimizer_state(optimizer)
        assert self.gathered_optimizer is not None, "gathered by every rank first"
        return self.gathered_optimizer

    def _load_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        if self.sharded_model is None:
            return super()._load_optimizer_state(optimizer, state)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        # every rank reads the whole state and keeps its shard
        set_optimizer_state_dict(
            self.sharded_model, optimizer, _named(state, optimizer, self.sharded_model),
            options=StateDictOptions(full_state_dict=True))
        return None


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks (each child of an nn.ModuleList), innermost last: FSDP's units."""
    return [child for module in model.modules() if isinstance(module, torch.nn.ModuleList)
            for child in module.children()]


def _fits_one_device(model: torch.nn.Module, spec: ResolvedSpec, device: torch.device) -> bool:
    from sage_core.training.memory import check_memory_fits

    try:
        check_memory_fits(model, spec.hyperparameters, device)
    except TrainingError:
        return False
    except AttributeError:  # a config the estimate cannot read (no layers, no vocabulary)
        return True
    return True


def _numbered(state: dict[str, Any]) -> dict[str, Any]:
    """A full optimizer state keyed by parameter names (torch.distributed.checkpoint's) in
    `Optimizer.state_dict()`'s layout: parameters numbered in their groups' order."""
    ids: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        numbers = [ids.setdefault(name, len(ids)) for name in group["params"]]
        groups.append({**group, "params": numbers})
    return {"state": {ids[name]: value for name, value in state["state"].items()},
            "param_groups": groups}


def _named(state: dict[str, Any], optimizer: Optimizer, model: torch.nn.Module
           ) -> dict[str, Any]:
    """`_numbered`'s inverse, the names from `optimizer`'s parameters in `model`."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {"state": {order[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [order[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]]}

