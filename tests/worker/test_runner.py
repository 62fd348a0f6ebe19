"""The runner on the tiny model: success, failures, pause/resume, cancel, shutdown, lost lease.

Stops are made deterministic by acting from inside the metrics callback at a given step,
with the runner's stop poll unthrottled.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from worker_helpers import WorkerEnv

from sage_core.db import transitions
from sage_core.db.models import Checkpoint, File, Job, JobEvent, JobMetric
from sage_core.transient import TransientJobError
from worker import runner
from worker.runner import JobRunner, run_job


def act_at_step(monkeypatch: pytest.MonkeyPatch, step: int,
                action: Callable[[JobRunner], None]) -> None:
    """Call `action(runner)` once, right after the train row of `step` is recorded; the
    engine polls should_stop before logging, so the run stops at `step + 1`."""
    monkeypatch.setattr(runner, "STOP_POLL_SECONDS", 0.0)
    original = JobRunner._on_metrics
    done: list[bool] = []

    def wrapped(self: JobRunner, row: dict[str, Any]) -> None:
        original(self, row)
        if row.get("step") == step and "train_loss" in row and not done:
            done.append(True)
            action(self)

    monkeypatch.setattr(JobRunner, "_on_metrics", wrapped)


def test_job_runs_to_succeeded(env: WorkerEnv) -> None:
    job_id = env.add_job()
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    job = env.job(job_id)
    assert job.fine_tuned_model == f"ft:tiny-bert:t:{job_id.removeprefix('ftjob-')}"
    assert (job.step, job.total_steps, job.epoch) == (8, 8, 2.0)
    assert job.trained_tokens and job.trained_tokens > 0 and job.error is None
    assert job.finished_at is not None and job.estimated_finish is None
    assert not (env.settings.data_dir / "runs" / job_id).exists()
    with env.sessions() as s:
        kinds = [m.kind for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id))]
        ckpts = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                          .order_by(Checkpoint.step)).all()
        results = s.get(File, job.result_file_ids[0])
    assert kinds.count("train") == 8 and kinds.count("eval") == 2
    assert [c.step for c in ckpts] == [4, 8]
    assert ckpts[-1].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-8"
    assert "valid_loss" in ckpts[-1].metrics
    assert (env.store.local_path(ckpts[-1].storage_key) / "model.safetensors").is_file()
    assert results is not None and results.purpose == "fine-tune-results"
    assert results.owner_id == job.owner_id
    with env.store.open(results.storage_key) as f:
        table = list(csv.DictReader(io.StringIO(f.read().decode())))
    assert [int(r["step"]) for r in table][:3] == [1, 2, 3] and "train_loss" in table[0]
    assert any(r["valid_accuracy"] for r in table)
    events = env.events(job_id)
    assert events[-1] == "The job has successfully completed"
    assert "Checkpoint saved at step 8" in events
    # every phase starts with an event, the checkpoint's upload included
    upload = events.index("Uploading checkpoint step 8")
    assert upload < events.index("Checkpoint saved at step 8")
    for phase in ("Tokenizing ", "Loading model tiny-bert", "Evaluating on ",
                  "Measuring sensitivity on "):
        assert any(e.startswith(phase) for e in events), phase
    # the sensitivity report, recorded with the success (the job has a validation file)
    report = job.sensitivity
    assert report is not None and report["examples"] == 16
    assert report["overall"]["count"] > 0 and report["blocks"] and report["modules"]
    assert set(report["overall"]) >= {"mean", "median", "histogram_log10", "fraction_below"}


def test_no_sensitivity_report_without_validation_file(env: WorkerEnv) -> None:
    job_id = env.add_job(rows=16, validation=False, n_epochs=1)
    assert run_job(job_id, env.settings) == "succeeded"
    assert env.job(job_id).sensitivity is None
    with env.sessions() as s:  # SQL NULL, not a JSON null
        assert s.scalar(select(Job.id).where(Job.id == job_id,
                                             Job.sensitivity.is_(None))) == job_id


def test_the_engines_warnings_are_on_the_succeeded_job_its_events_and_json(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.schemas import JobPublic
    from sage_core.training import loop

    found = [{"code": "predicts_one_class", "message": "one class. Train for more epochs"},
             {"code": "no_better_than_baseline", "message": "never beat the baseline"}]
    monkeypatch.setattr(loop, "run_verdicts", lambda **facts: [dict(w) for w in found])
    job_id = env.add_job(rows=16, n_epochs=1)
    assert run_job(job_id, env.settings) == "succeeded"
    job = env.job(job_id)
    assert job.warnings == found
    shown = JobPublic.from_row(job).model_dump(mode="json")
    assert shown["status"] == "succeeded" and shown["warnings"] == found
    with env.sessions() as s:
        warned = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                  JobEvent.level == "warn")
                           .order_by(JobEvent.created_at, JobEvent.id)).all()
    assert [(e.message, e.data) for e in warned] == [
        (w["message"], {"code": w["code"]}) for w in found]
    assert env.events(job_id)[-1] == "The job has successfully completed"
    # a job without warnings, and one from before migration 0008, show an empty list
    job.warnings = None
    assert JobPublic.from_row(job).warnings == []


def test_a_claimed_job_is_not_run_twice(env: WorkerEnv) -> None:
    job_id = env.add_job()
    with env.sessions.begin() as s:
        assert transitions.claim(s, job_id, owner="other", lease_seconds=60)
    assert run_job(job_id, env.settings, worker_id="w1") is None
    assert env.job(job_id).lease_owner == "other"
    cancelled = env.add_job()
    with env.sessions.begin() as s:
        transitions.cancel(s, cancelled)
    assert run_job(cancelled, env.settings) is None


def test_sagetrain_errors_fail_the_job(env: WorkerEnv) -> None:
    job_id = env.add_job(model="no-such-model")
    assert run_job(job_id, env.settings) == "failed"
    error = env.job(job_id).error
    assert error is not None and error["code"] == "model_not_found" and error["param"] == "model"
    gone = env.add_job()
    with env.sessions.begin() as s:
        key = s.scalar(select(File.storage_key).where(File.id == env.job(gone).training_file_id))
    env.store.delete(key)
    assert run_job(gone, env.settings) == "failed"
    assert env.job(gone).error["code"] == "file_not_found"


def test_unexpected_errors_fail_the_job(env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    import sage_core.training

    monkeypatch.setattr(sage_core.training, "run_training", boom, raising=False)
    job_id = env.add_job()
    assert run_job(job_id, env.settings) == "failed"
    job = env.job(job_id)
    assert job.error == {"code": "internal_error", "message": "RuntimeError: disk on fire",
                         "param": None}
    assert env.events(job_id)[-1].startswith("Fine-tuning job failed")


def test_pause_then_resume_continues(env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = env.add_job()

    def pause(r: JobRunner) -> None:
        with r.sessions.begin() as s:
            assert transitions.request_pause(s, job_id)

    act_at_step(monkeypatch, 3, pause)
    assert run_job(job_id, env.settings) == "paused"
    job = env.job(job_id)
    assert job.step == 4 and not job.pause_requested
    assert (env.settings.data_dir / "runs" / job_id / "checkpoints" / "step-4").is_dir()
    with env.sessions.begin() as s:
        assert transitions.resume(s, job_id)
    assert run_job(job_id, env.settings) == "succeeded"
    job = env.job(job_id)
    assert job.attempt == 2 and job.step == 8
    events = env.events(job_id)
    paused_at = events.index("Job paused at step 4; checkpoint saved")
    assert any("resum" in e and "4" in e for e in events[paused_at + 1:]), events


def test_cancel_stops_the_run(env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = env.add_job()

    def cancel(r: JobRunner) -> None:
        with r.sessions.begin() as s:
            assert transitions.cancel(s, job_id)

    act_at_step(monkeypatch, 2, cancel)
    assert run_job(job_id, env.settings) == "cancelled"
    job = env.job(job_id)
    assert job.fine_tuned_model is None and job.result_file_ids == []
    assert env.events(job_id)[-1] == "Training stopped at step 3 after cancel"
    assert not (env.settings.data_dir / "runs" / job_id).exists()


def test_shutdown_requeues_to_resume(env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = env.add_job()
    act_at_step(monkeypatch, 2, lambda r: runner.shutdown_requested.set())
    try:
        assert run_job(job_id, env.settings) == "queued"
    finally:
        runner.shutdown_requested.clear()
    assert env.job(job_id).step == 3
    assert run_job(job_id, env.settings) == "succeeded"


def test_a_worker_that_lost_its_lease_changes_nothing(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = env.add_job()

    def steal(r: JobRunner) -> None:
        with r.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id).values(lease_owner="thief"))

    act_at_step(monkeypatch, 2, steal)
    assert run_job(job_id, env.settings, worker_id="w1") == "running"
    job = env.job(job_id)
    assert job.lease_owner == "thief" and job.fine_tuned_model is None


def test_runner_leaves_a_job_to_retry_on_a_database_outage(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def outage(self: JobRunner, row: dict[str, Any]) -> None:
        raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(JobRunner, "_on_metrics", outage)
    job_id = env.add_job()
    with pytest.raises(TransientJobError):
        run_job(job_id, env.settings, worker_id="w1")
    job = env.job(job_id)
    assert (job.status, job.lease_owner, job.error) == ("running", "w1", None)


def test_out_of_memory_fails_with_a_clear_error(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    def oom(self: JobRunner, row: dict[str, Any]) -> None:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(JobRunner, "_on_metrics", oom)
    job_id = env.add_job()
    assert run_job(job_id, env.settings) == "failed"
    error = env.job(job_id).error
    assert error is not None and error["code"] == "out_of_memory"
    assert "smaller batch_size" in error["message"]


def test_engine_events_keep_their_data(env: WorkerEnv) -> None:
    job_id = env.add_job()
    job_runner = JobRunner(job_id, env.settings, worker_id="w1", store=env.store)
    sample = {"step": 3, "prompt": "hello", "reference": "hi", "answer": "hi"}
    job_runner._on_event("info", "Sample at step 3: hi", sample)
    job_runner._on_event("warning", "2 of 9 examples were truncated")
    with env.sessions() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                         .order_by(JobEvent.created_at, JobEvent.id)).all()
        got = [(r.level, r.message, r.data) for r in rows]
    assert got[-2:] == [("info", "Sample at step 3: hi", sample),
                        ("warn", "2 of 9 examples were truncated", None)]


def test_estimated_finish_is_set_from_real_rows_and_never_past(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_core.db.models import utcnow

    seen: list[tuple[Any, Any]] = []
    real = transitions.heartbeat

    def spy(*args: Any, **kwargs: Any) -> bool:
        if "estimated_finish" in kwargs:
            seen.append((utcnow(), kwargs["estimated_finish"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner.transitions, "heartbeat", spy)
    job_id = env.add_job()
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    estimates = [(at, value) for at, value in seen if value is not None]
    assert estimates  # from the first train row on
    assert all(value >= at for at, value in estimates)


# --- after a crash: one metrics row per step, the resumed attempt's ---

CRASHED = 999.0  # a train_loss no real step of the tiny model logs


def crashed_attempt_logged(env: WorkerEnv, job_id: str, steps: range) -> None:
    """Rows an attempt logged past its last checkpoint before its process died."""
    with env.sessions.begin() as s:
        for step in steps:
            s.add(JobMetric(job_id=job_id, step=step, kind="train",
                            data={"train_loss": CRASHED, "epoch": step / 4}))


def metrics(env: WorkerEnv, job_id: str) -> list[JobMetric]:
    with env.sessions() as s:
        return list(s.scalars(select(JobMetric).where(JobMetric.job_id == job_id)
                              .order_by(JobMetric.step, JobMetric.id)))


def assert_one_row_per_step(rows: list[JobMetric]) -> None:
    counts = Counter((row.step, row.kind) for row in rows)
    assert [key for key, n in counts.items() if n > 1] == [], counts
    assert [r.step for r in rows if r.kind == "train"] == list(range(1, 9))
    assert all(r.data.get("train_loss") != CRASHED for r in rows)


def test_a_resumed_job_keeps_the_resumed_attempts_rows(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = env.add_job()

    def pause(r: JobRunner) -> None:
        with r.sessions.begin() as s:
            assert transitions.request_pause(s, job_id)

    act_at_step(monkeypatch, 3, pause)
    assert run_job(job_id, env.settings) == "paused"  # checkpoint at step 4
    crashed_attempt_logged(env, job_id, range(5, 7))  # then a crash after step 6
    with env.sessions.begin() as s:
        assert transitions.resume(s, job_id)
    assert run_job(job_id, env.settings) == "succeeded"
    rows = metrics(env, job_id)
    assert_one_row_per_step(rows)
    assert [r.step for r in rows if r.kind == "eval"] == [4, 8]


def test_a_job_that_starts_over_keeps_none_of_the_crashed_attempts_rows(
        env: WorkerEnv) -> None:
    job_id = env.add_job()
    crashed_attempt_logged(env, job_id, range(1, 4))  # died before its first checkpoint
    assert run_job(job_id, env.settings) == "succeeded"
    assert_one_row_per_step(metrics(env, job_id))
