"""The runner: claim a job row, train it with `run_training`, record what happens.

- Claim: a conditional UPDATE queued -> running under a lease (`lease_owner`); if no row
  changed, another worker has the job (or it was cancelled) and the runner returns.
- During the run, the training callbacks become rows: job_metrics, job_events,
  checkpoints (folders copied into the artifact store), and progress on the job. A
  heartbeat thread extends the lease; `should_stop` reads the job at most once a second
  and stops the run when it was cancelled, asked to pause, or lost its lease, or when the
  process was told to shut down (SIGTERM).
- At the end the job is succeeded (fine-tuned model name, a metrics CSV as a result
  file), paused, requeued (shutdown: it resumes from its checkpoint), or failed with
  {code, message, param}. Every path leaves the job out of `running` unless it is no longer
  this worker's to change.

Runs in whatever process launched it; keeps no state outside the database, the artifact
store and the job's output folder (stable across attempts, so a new attempt resumes).

A job whose spec asks for resources.gpus > 1 trains with that many ranks, children of this
process (`sage_core.training.distributed`): this process keeps the lease and the heartbeat,
and the callbacks above run here as for one process (rank 0 calls them over a pipe). Cancel,
pause and SIGTERM reach every rank through `should_stop`; a rank's death fails the job
with worker_crashed, as the death of a job's process does; no rank outlives this process.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.artifacts import ArtifactStore, get_artifact_store
from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.ids import CHECKPOINT, FILE, new_id
from sage_core.db.models import Checkpoint, File, Job, JobMetric, JobStatus, utcnow
from sage_core.db.session import get_engine, make_session_factory, read_only
from sage_core.errors import SageTrainError
from sage_core.schemas import ResolvedSpec
from sage_core.settings import Settings, get_settings
from sage_core.transient import (
    TransientJobError,
    is_out_of_memory,
    is_transient,
    out_of_memory_message,
)
from worker.eta import Eta, finish_at
from worker.restore import restore_fine_tuned_model, restore_latest_checkpoint
from worker.tracking import RunInfo, Trackers, start_trackers, summary_of

log = logging.getLogger("sagetrain.worker")

STOP_POLL_SECONDS = 1.0
# Under the job's output folder: the fine-tuned model an "ft:..." job starts from.
BASE_MODEL_DIR = "base-model"
_JOB_ID = re.compile(r"^ftjob-[0-9a-z]{1,40}$")

# Set by SIGTERM/SIGINT: stop at the next step, save a checkpoint, requeue the job.
shutdown_requested = threading.Event()


def install_stop_signals() -> None:
    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping the job at the next step", signum)
        shutdown_requested.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def fine_tuned_name(job: Job) -> str:
    # A job that trained a fine-tuned model further names its base model, as OpenAI does,
    # not the chain ("ft:ft:..."); catalog names have no colons.
    base = job.model.split(":")[1] if job.model.startswith("ft:") else job.model
    return f"ft:{base}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


def run_job(job_id: str, settings: Settings | None = None, *, worker_id: str | None = None,
            store: ArtifactStore | None = None) -> str | None:
    """Run the queued job `job_id` to an end. Returns the job's status afterwards, or None
    if this worker could not claim it."""
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    settings = settings or get_settings()
    runner = JobRunner(job_id, settings, worker_id=worker_id or default_worker_id(),
                       store=store or get_artifact_store(settings))
    return runner.run()


class JobRunner:
    def __init__(self, job_id: str, settings: Settings, *, worker_id: str,
                 store: ArtifactStore):
        self.job_id, self.settings, self.owner, self.store = job_id, settings, worker_id, store
        self.sessions: sessionmaker[Session] = make_session_factory(get_engine(settings))
        # for the reads alone: on SQLite they never wait for, or hold, the write lock
        self.reads: sessionmaker[Session] = make_session_factory(
            read_only(get_engine(settings)))
        self.output_dir = (settings.data_dir / "runs" / job_id).resolve()
        self._lost = threading.Event()  # the job was cancelled or another worker has it
        self._stop_cached = False
        self._stop_checked = 0.0
        self._eta = Eta()  # this attempt's rate, evaluations and report: estimated_finish
        self.job: Job | None = None
        self.trackers: Trackers | None = None  # the job's integrations, once started

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> str | None:
        with self.sessions.begin() as s:
            if not transitions.claim(s, self.job_id, owner=self.owner,
                                     lease_seconds=self.settings.lease_seconds):
                log.info("[%s] not claimed: not queued, or another worker has it", self.job_id)
                return None
            job = s.get(Job, self.job_id)
            assert job is not None
            add_event(s, self.job_id, f"Fine-tuning job started (attempt {job.attempt})")
        self.job = job
        heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                     name=f"heartbeat-{self.job_id}")
        heartbeat.start()
        try:
            self._train(job)
        except SageTrainError as exc:
            self._fail(exc.code, exc.message, exc.param)
        except BaseException as exc:
            if is_transient(exc):
                # The database or broker is unreachable: not the job's fault. Leave it
                # running under our lease for the supervisor (or, failing that, the
                # reaper once the lease expires) to put back in the queue.
                raise TransientJobError(f"{type(exc).__name__}: {exc}") from exc
            if is_out_of_memory(exc):  # the job's size, not a bug: say what to change
                self._fail("out_of_memory", out_of_memory_message(exc), "hyperparameters")
            else:
                log.exception("[%s] unexpected error", self.job_id)
                self._fail("internal_error", f"{type(exc).__name__}: {exc}", None)
            if not isinstance(exc, Exception):
                raise
        finally:
            try:  # a no-op unless an ending above did not get to it
                self._finish_tracking("stopped")
            except Exception:  # e.g. the database that the warning goes to is down
                log.exception("[%s] could not end the integrations' runs", self.job_id)
            self._lost.set()  # ends the heartbeat
            heartbeat.join(timeout=5)
        return self._final_status()

    def _train(self, job: Job) -> None:
        from sage_core.training import Callbacks, run_training

        spec = ResolvedSpec.model_validate(job.spec)
        train_file = self._file_path(job.training_file_id, "training_file")
        valid_file = (self._file_path(job.validation_file_id, "validation_file")
                      if job.validation_file_id else None)
        # A job that ran on another machine resumes from its checkpoint in the store.
        restore_latest_checkpoint(self.sessions, self.store, self.job_id, self.output_dir)
        base_model_dir = None
        if job.model.startswith("ft:"):  # trains one of the owner's fine-tuned models further
            base_model_dir = restore_fine_tuned_model(
                self.sessions, self.store, job.owner_id, job.model,
                self.output_dir / BASE_MODEL_DIR)
        self.trackers = self._start_tracking(job, spec)
        callbacks = Callbacks(on_metrics=self._on_metrics, on_checkpoint=self._on_checkpoint,
                              should_stop=self._should_stop, on_event=self._on_event)
        result = run_training(spec, train_file, self.output_dir, validation_file=valid_file,
                              callbacks=callbacks, models_dir=self.settings.models_dir,
                              allow_hub_models=self.settings.allow_hub_models,
                              device=self.settings.device, resume=True,
                              base_model_dir=base_model_dir)
        if result.status == "stopped":
            self._stopped(result.step)
            return
        self._succeed(result)

    def _start_tracking(self, job: Job, spec: ResolvedSpec) -> Trackers | None:
        """The job's integrations, started with its hyperparameters; one that cannot start
        is a warning event."""
        if not spec.integrations:
            return None
        run = RunInfo(job_id=job.id, model=job.model, task=spec.task,
                      parent_job_id=job.parent_id, settings=self.settings,
                      work_dir=self.output_dir,
                      store=self.store, artifact_prefix=job.artifact_prefix)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        hyperparameters = {
            "job_id": job.id, "model": job.model, "task": spec.task, "seed": spec.seed,
            "training_file": job.training_file_id, "validation_file": job.validation_file_id,
            **spec.hyperparameters.model_dump(mode="json"),
            "resources": spec.resources.model_dump(mode="json")}
        return start_trackers(spec.integrations, run, hyperparameters,
                              lambda message, data: self._on_event("warning", message, data))

    def _finish_tracking(self, status: str, summary: dict[str, float] | None = None) -> list[str]:
        """End the integrations' runs; the ids of the result files they left (TensorBoard's
        archive), each a file of the job's owner with purpose fine-tune-results."""
        trackers, self.trackers = self.trackers, None
        if trackers is None:
            return []
        ids = []
        for path in trackers.finish(summary or {}, status=status):
            ids.append(self._store_result_file(path.name, path))
        return ids

    def _file_path(self, file_id: str, param: str) -> Path:
        with self.reads() as s:
            row = s.scalar(select(File).where(File.id == file_id, File.owner_id == self._owner()))
        if row is None or not self.store.exists(row.storage_key):
            raise SageTrainError(f"{param} {file_id} no longer exists", param=param,
                                 code="file_not_found")
        return self.store.local_path(row.storage_key)

    def _owner(self) -> str:
        assert self.job is not None
        return self.job.owner_id

    # --- callbacks (training thread) --------------------------------------------------------

    def _on_metrics(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        kind = "eval" if any(k.startswith("valid_") for k in row) else "train"
        data = {k: v for k, v in row.items() if k not in ("step", "total_steps")}
        values: dict[str, Any] = {"step": step}
        if row.get("total_steps"):
            values["total_steps"] = int(row["total_steps"])
        if row.get("epoch") is not None:
            values["epoch"] = float(row["epoch"])
        if self.trackers is not None:
            self.trackers.log(row)
        self._eta.on_row(row)
        left = self._eta.seconds_left(step)
        values["estimated_finish"] = None if left is None else finish_at(utcnow(), left)
        with self.sessions.begin() as s:
            s.add(JobMetric(job_id=self.job_id, step=step, kind=kind, data=data))
            if not transitions.heartbeat(s, self.job_id, owner=self.owner,
                                         lease_seconds=self.settings.lease_seconds,
                                         **values):
                self._lost.set()
            if kind == "eval":
                shown = ", ".join(f"{k}={v:.4g}" for k, v in data.items()
                                  if k.startswith("valid_") and isinstance(v, int | float))
                add_event(s, self.job_id, f"Step {step}: {shown}", type="metrics",
                          data={"step": step, **data})

    def _on_checkpoint(self, folder: Path, step: int, metrics: dict[str, Any]) -> None:
        assert self.job is not None
        key = f"{self.job.artifact_prefix}/checkpoints/step-{step}"
        with self.sessions.begin() as s:
            add_event(s, self.job_id, f"Uploading checkpoint step {step}",
                      data={"phase": "upload", "step": step})
        self.store.put_tree(key, folder)  # the engine may prune its folder later
        name = f"{fine_tuned_name(self.job)}:ckpt-step-{step}"
        clean = {k: v for k, v in metrics.items() if k != "step"}
        with self.sessions.begin() as s:
            existing = s.scalar(select(Checkpoint).where(
                Checkpoint.job_id == self.job_id, Checkpoint.step == step))
            if existing is None:
                s.add(Checkpoint(id=new_id(CHECKPOINT), job_id=self.job_id, step=step,
                                 metrics=clean, storage_key=key,
                                 fine_tuned_model_checkpoint=name))
            else:  # the same step saved again by a resumed attempt
                existing.metrics, existing.storage_key = clean, key
            add_event(s, self.job_id, f"Checkpoint saved at step {step}")

    def _should_stop(self) -> bool:
        if shutdown_requested.is_set() or self._lost.is_set():
            return True
        now = time.monotonic()
        if now - self._stop_checked < STOP_POLL_SECONDS:
            return self._stop_cached
        self._stop_checked = now
        with self.reads() as s:
            row = s.execute(select(Job.status, Job.pause_requested, Job.lease_owner)
                            .where(Job.id == self.job_id)).one_or_none()
        self._stop_cached = (row is None or row.status != JobStatus.RUNNING
                             or row.pause_requested or row.lease_owner != self.owner)
        return self._stop_cached

    def _on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        plan = data.get("plan") if data else None
        if isinstance(plan, dict):
            self._eta.on_plan(plan)
        with self.sessions.begin() as s:
            if isinstance(plan, dict):
                self._drop_replayed_metrics(s, plan.get("resumed_step"))
            add_event(s, self.job_id, message, level=level, data=data)
            report = self._eta.report_seconds()
            # the last row's estimate counted the report from then; it starts now
            if (data and data.get("phase") == "sensitivity" and report is not None
                    and not transitions.heartbeat(
                        s, self.job_id, owner=self.owner,
                        lease_seconds=self.settings.lease_seconds,
                        estimated_finish=finish_at(utcnow(), report))):
                self._lost.set()

    def _drop_replayed_metrics(self, s: Session, resumed_step: int | None) -> None:
        """Delete the rows an earlier attempt logged past the step this one resumes from
        (every row if it starts over): those steps run again and log their rows anew, so
        the job keeps one row per step, the latest attempt's."""
        after = resumed_step if isinstance(resumed_step, int) else -1
        s.execute(delete(JobMetric).where(JobMetric.job_id == self.job_id,
                                          JobMetric.step > after))

    # --- endings ----------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._lost.wait(self.settings.heartbeat_seconds):
            try:
                with self.sessions.begin() as s:
                    alive = transitions.heartbeat(s, self.job_id, owner=self.owner,
                                                  lease_seconds=self.settings.lease_seconds)
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("[%s] heartbeat failed", self.job_id, exc_info=True)
                continue
            if not alive:
                log.info("[%s] the job is no longer ours to run; stopping", self.job_id)
                self._lost.set()

    def _stopped(self, step: int) -> None:
        self._finish_tracking("stopped")
        with self.sessions.begin() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            if job.pause_requested and transitions.paused(s, self.job_id, owner=self.owner):
                add_event(s, self.job_id, f"Job paused at step {step}; checkpoint saved")
            elif transitions.requeue(s, self.job_id, owner=self.owner):
                add_event(s, self.job_id, f"Worker shut down at step {step}; job queued again "
                                          "to resume from its checkpoint", level="warn")
            elif job.status == JobStatus.CANCELLED:
                add_event(s, self.job_id, f"Training stopped at step {step} after cancel")
        if self._final_status() in JobStatus.FINAL:
            self._remove_output()

    def _succeed(self, result: Any) -> None:
        assert self.job is not None
        job = self.job
        if result.final_dir is not None:
            self._ensure_final_checkpoint(result.final_dir, result.step, result.metrics)
        results_id = self._store_results_csv()
        # recorded with the success; left NULL (not JSON null) without a report
        report = getattr(result, "sensitivity", None)
        tracked = self._finish_tracking("succeeded", summary_of(result.metrics, report))
        sensitivity = {"sensitivity": report} if report is not None else {}
        warnings = [{"code": str(w["code"]), "message": str(w["message"])}
                    for w in getattr(result, "warnings", None) or []]
        with self.sessions.begin() as s:
            done = transitions.succeed(
                s, self.job_id, owner=self.owner, fine_tuned_model=fine_tuned_name(job),
                trained_tokens=int(result.trained_tokens),
                result_file_ids=[results_id, *tracked],
                step=int(result.step), total_steps=int(result.total_steps),
                epoch=float(result.epoch), warnings=warnings, **sensitivity)
            if done:
                note = " (early stopping)" if result.status == "early_stopped" else ""
                add_event(s, self.job_id, f"The job has successfully completed{note}")
        self._remove_output()

    def _ensure_final_checkpoint(self, final_dir: Path, step: int, metrics: dict) -> None:
        with self.reads() as s:
            have = s.scalar(select(Checkpoint.id).where(
                Checkpoint.job_id == self.job_id, Checkpoint.step == step))
        if have is None:
            self._on_checkpoint(final_dir, step, {"step": step, **metrics})

    def _store_results_csv(self) -> str:
        """The logged rows as a CSV (one row per step and kind, latest attempt wins), kept as
        a file object of the job's owner with purpose fine-tune-results."""
        with self.reads() as s:
            rows = s.scalars(select(JobMetric).where(JobMetric.job_id == self.job_id)
                             .order_by(JobMetric.step, JobMetric.id)).all()
        latest = {(r.step, r.kind): {"step": r.step, **r.data} for r in rows}
        columns = ["step", "epoch"]
        for row in latest.values():
            columns += [c for c in row if c not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(latest.values())
        return self._store_result_file("step_metrics.csv", out.getvalue().encode())

    def _store_result_file(self, filename: str, content: bytes | Path) -> str:
        """`content` (bytes, or a local file that is moved) as a file object of the job's
        owner with purpose fine-tune-results; returns its id."""
        file_id = new_id(FILE)
        key = f"files/{file_id}{''.join(Path(filename).suffixes)}"
        size = (self.store.put_bytes(key, content) if isinstance(content, bytes)
                else self.store.put_file(key, content))
        with self.sessions.begin() as s:
            s.add(File(id=file_id, owner_id=self._owner(), filename=filename,
                       purpose="fine-tune-results", bytes=size, storage_key=key,
                       status="processed"))
        return file_id

    def _fail(self, code: str, message: str, param: str | None) -> None:
        log.error("[%s] failed: %s: %s", self.job_id, code, message)
        try:
            self._finish_tracking("failed")
        except Exception:  # recording the failure comes first
            log.exception("[%s] could not end the integrations' runs", self.job_id)
        try:
            with self.sessions.begin() as s:
                if transitions.fail(s, self.job_id, owner=self.owner,
                                    error={"code": code, "message": message, "param": param}):
                    add_event(s, self.job_id, f"Fine-tuning job failed: {message}",
                              level="error")
        except Exception:
            log.exception("[%s] could not record the failure", self.job_id)
            return
        if self._final_status() in JobStatus.FINAL:
            self._remove_output()

    def _final_status(self) -> str | None:
        with self.reads() as s:
            return s.scalar(select(Job.status).where(Job.id == self.job_id))

    def _remove_output(self) -> None:
        """A finished job's local run folder is no longer needed: its checkpoints are in
        the artifact store."""
        shutil.rmtree(self.output_dir, ignore_errors=True)
