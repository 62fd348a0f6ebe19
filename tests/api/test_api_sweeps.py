"""Sweeps and A/B comparisons in one request: POST /v1/fine_tuning/jobs with `sweep` or
`compare_to` makes a parent and one ordinary child job per (optimizer, learning rate); the
parent is settled from its children; GET .../{id}/sweep reports them. Children are driven
here through the same transitions a worker uses (the end-to-end run is in
test_e2e_sweeps.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import TRAIN_JSONL, Service
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import transitions
from sage_core.db.models import Checkpoint, JobEvent, JobMetric, WebhookDelivery
from sage_core.db.recovery import release_lost_job
from sage_core.db.session import make_engine, make_session_factory
from sagetrain.cli import main
from sagetrain.client import Client, SageTrainAPIError

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def sessions(service: Service) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(service.settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _files(service: Service) -> dict[str, str]:
    return {"training_file": service.upload()["id"],
            "validation_file": service.upload(TRAIN_JSONL, "valid.jsonl")["id"]}


def _regression_files(service: Service) -> dict[str, str]:
    data = b'{"text": "a", "label": 0.5}\n{"text": "b", "label": 1.5}\n'
    return {"training_file": service.upload(data, "r.jsonl", task="text-regression")["id"],
            "validation_file": service.upload(data, "rv.jsonl", task="text-regression")["id"]}


def _post(service: Service, **body: Any) -> Any:
    body.setdefault("model", "tiny-bert")
    return service.client.post(JOBS, headers=service.auth(), json=body)


def _sweep(service: Service, **body: Any) -> dict[str, Any]:
    r = _post(service, **_files(service), **body)
    assert r.status_code == 200, r.text
    return r.json()


def _get(service: Service, job_id: str) -> dict[str, Any]:
    r = service.client.get(f"{JOBS}/{job_id}", headers=service.auth())
    assert r.status_code == 200, r.text
    return r.json()


def _children(parent: dict[str, Any]) -> list[str]:
    return [run["job_id"] for run in parent["sweep"]["runs"]]


def _finish(sessions: sessionmaker[Session], job_id: str, *, status: str = "succeeded",
            evals: list[dict[str, float]] = (), sensitivity: Any = None) -> None:  # type: ignore[assignment]
    """Claim the job and end it as a worker would, after logging `evals` (in order)."""
    with sessions.begin() as s:
        assert transitions.claim(s, job_id, owner="w", lease_seconds=60)
        for step, row in enumerate(evals, start=1):
            s.add(JobMetric(job_id=job_id, step=step, kind="eval", data={"epoch": 1.0, **row}))
    with sessions.begin() as s:
        if status == "succeeded":
            extra = {"sensitivity": sensitivity} if sensitivity is not None else {}
            assert transitions.succeed(s, job_id, owner="w", fine_tuned_model=f"ft:{job_id}",
                                       **extra)
        elif status == "failed":
            assert transitions.fail(s, job_id, owner="w", error={
                "code": "nan_loss", "message": "loss is nan", "param": None})
        else:
            assert transitions.cancel(s, job_id)


# --- creation -----------------------------------------------------------------------------

def test_parent_and_children_are_created_and_children_dispatched(service: Service) -> None:
    parent = _sweep(service, seed=7, suffix="ab", metadata={"team": "x"},
                    hyperparameters={"n_epochs": 1, "batch_size": 4, "warmup_ratio": 0.2},
                    sweep={"learning_rate": [1e-4, 3e-4]},
                    compare_to=["adamw", {"optimizer": "adamax", "learning_rate": [2e-4]}])
    assert parent["status"] == "running" and parent["parent_job_id"] is None
    assert parent["queue_position"] is None and parent["seed"] == 7
    assert parent["sweep"]["metric"] == "valid_f1_macro"
    assert parent["sweep"]["greater_is_better"] is True
    assert parent["sweep"]["best_job_id"] is None
    runs = [(r["optimizer"], r["learning_rate"]) for r in parent["sweep"]["runs"]]
    # own optimizer first over sweep.learning_rate, adamw over 5e-5 x (1/3, 1, 3)
    assert runs == [("sage", 1e-4), ("sage", 3e-4), ("adamw", 1.66667e-05), ("adamw", 5e-05),
                    ("adamw", 1.5e-4), ("adamax", 2e-4)]
    child_ids = _children(parent)
    assert service.dispatcher.dispatched == child_ids  # never the parent
    positions = []
    for child_id, (optimizer, lr) in zip(child_ids, runs, strict=True):
        child = _get(service, child_id)
        assert child["status"] == "queued" and child["parent_job_id"] == parent["id"]
        positions.append(child["queue_position"])
        events = service.client.get(f"{JOBS}/{child_id}/events", headers=service.auth())
        assert [e["message"] for e in events.json()["data"]] == [
            f"Created fine-tuning job: {child_id} (sweep {parent['id']}: {optimizer}, "
            f"learning rate {lr:g}, seed 7)"]
        assert child["sweep"] is None
        hp = child["hyperparameters"]
        assert (hp["optimizer"], hp["learning_rate"]) == (optimizer, lr)
        assert (hp["n_epochs"], hp["batch_size"], hp["warmup_ratio"]) == (1, 4, 0.2)
        assert child["seed"] == 7 and child["suffix"] == "ab"
        assert child["metadata"] == {"team": "x"}
        assert (child["training_file"], child["validation_file"]) == (
            parent["training_file"], parent["validation_file"])
    listed = service.client.get(f"{JOBS}?limit=100", headers=service.auth()).json()["data"]
    assert {j["id"] for j in listed} == {parent["id"], *child_ids}
    assert sorted(positions) == list(range(1, len(child_ids) + 1))  # queued like any job


def test_compare_to_alone_runs_own_default_grid(service: Service) -> None:
    parent = _sweep(service, compare_to=["adamw"], hyperparameters={"optimizer": "sage"})
    runs = [(r["optimizer"], r["learning_rate"]) for r in parent["sweep"]["runs"]]
    assert runs == [("sage", 5e-05), ("sage", 1.5e-4), ("sage", 4.5e-4),
                    ("adamw", 1.66667e-05), ("adamw", 5e-05), ("adamw", 1.5e-4)]
    # all children share the seed chosen for the parent
    seeds = {_get(service, i)["seed"] for i in _children(parent)}
    assert seeds == {parent["seed"]}


def test_regression_ranks_by_valid_loss(service: Service) -> None:
    files = _regression_files(service)
    r = _post(service, **files, task="text-regression", sweep={"learning_rate": [1e-4, 2e-4]})
    assert r.status_code == 200, r.text
    assert r.json()["sweep"]["metric"] == "valid_loss"
    assert r.json()["sweep"]["greater_is_better"] is False


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"sweep": {"batch_size": [8, 16]}}, "sweep.batch_size", "only learning_rate"),
    ({"sweep": {}}, "sweep.learning_rate", "Missing"),
    ({"sweep": {"learning_rate": [1e-4]}}, "sweep.learning_rate", "2 to 8"),
    ({"sweep": {"learning_rate": [1e-4] + [i * 1e-5 for i in range(1, 9)]}},
     "sweep.learning_rate", "2 to 8"),
    ({"sweep": {"learning_rate": [1e-4, 1e-4]}}, "sweep.learning_rate", "distinct"),
    ({"sweep": {"learning_rate": [0, 1e-4]}}, "sweep.learning_rate", "(0, 1]"),
    ({"sweep": {"learning_rate": [1e-4, 2]}}, "sweep.learning_rate", "(0, 1]"),
    ({"sweep": {"learning_rate": [1e-4, 2e-4]}, "hyperparameters": {"learning_rate": 1e-4}},
     "hyperparameters.learning_rate", "sweep"),
    ({"sweep": {"learning_rate": [1e-4, 2e-4]},
      "hyperparameters": {"learning_rate_multiplier": 2}},
     "hyperparameters.learning_rate_multiplier", "sweep"),
    ({"compare_to": ["sage"]}, "compare_to[0]", "own optimizer"),
    ({"compare_to": ["adamw", {"optimizer": "adamw"}]}, "compare_to[1]", "twice"),
    ({"compare_to": [{"optimizer": "adamw", "learning_rate": []}]},
     "compare_to[0].learning_rate", "1 to 8"),
    ({"compare_to": ["nadam"]}, "compare_to[0]", ""),
    ({"sweep": {"seeds": []}}, "sweep.seeds", "1 to 5"),
    ({"sweep": {"seeds": [1, 2, 3, 4, 5, 6]}}, "sweep.seeds", "1 to 5"),
    ({"sweep": {"seeds": [1, 1]}}, "sweep.seeds", "distinct"),
    ({"sweep": {"seeds": [-1]}}, "sweep.seeds", "distinct"),
    ({"sweep": {"seeds": [1, 2]}, "seed": 3}, "seed", "sweep.seeds"),
    ({"sweep": {"learning_rate": [i * 1e-5 for i in range(1, 9)], "seeds": [1, 2, 3, 4, 5]},
      "compare_to": [{"optimizer": "adamw", "learning_rate": [1e-5, 2e-5]}]},
     "sweep", "50 child jobs"),
    ({"compare_to": []}, "compare_to", ""),
])
def test_bad_requests_name_the_field(service: Service, body: dict[str, Any], param: str,
                                     words: str) -> None:
    r = _post(service, **_files(service), **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert words in error["message"], error
    assert service.client.get(JOBS, headers=service.auth()).json()["data"] == []
    assert service.dispatcher.dispatched == []


def test_seeds_run_every_optimizer_and_rate_once_per_seed(service: Service) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 3e-4], "seeds": [1, 2, 3]},
                    compare_to=[{"optimizer": "adamw", "learning_rate": [5e-5]}])
    runs = [(r["optimizer"], r["learning_rate"], r["seed"]) for r in parent["sweep"]["runs"]]
    assert runs == [("sage", 1e-4, 1), ("sage", 1e-4, 2), ("sage", 1e-4, 3),
                    ("sage", 3e-4, 1), ("sage", 3e-4, 2), ("sage", 3e-4, 3),
                    ("adamw", 5e-5, 1), ("adamw", 5e-5, 2), ("adamw", 5e-5, 3)]
    assert parent["seed"] == 1
    assert [_get(service, i)["seed"] for i in _children(parent)] == [1, 2, 3] * 3
    assert len(service.dispatcher.dispatched) == 9


def test_a_sweep_of_seeds_alone(service: Service) -> None:
    parent = _sweep(service, sweep={"seeds": [5, 6]}, hyperparameters={"learning_rate": 2e-4})
    assert [(r["optimizer"], r["learning_rate"], r["seed"]) for r in parent["sweep"]["runs"]
            ] == [("sage", 2e-4, 5), ("sage", 2e-4, 6)]


def test_the_report_pairs_seeds_and_warns(
        service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 3e-4], "seeds": [1, 2]},
                    compare_to=[{"optimizer": "adamw", "learning_rate": [5e-5]}])
    ids = _children(parent)
    scores = [0.5, 0.6, 0.9, 0.92, 0.7, 0.8]  # sage 1e-4, sage 3e-4, adamw, seeds 1 and 2
    for job_id, score in zip(ids, scores, strict=True):
        _finish(sessions, job_id, evals=[{"valid_f1_macro": score}])
    report = service.client.get(f"{JOBS}/{parent['id']}/sweep", headers=service.auth()).json()
    assert report["validation_rows"] == 6
    assert [c["seed"] for c in report["children"]] == [1, 2] * 3
    assert [(r["optimizer"], r["learning_rate"], r["n"], r["best"]) for r in report["rates"]
            ] == [("sage", 1e-4, 2, False), ("sage", 3e-4, 2, True), ("adamw", 5e-5, 2, True)]
    [comparison] = report["comparisons"]
    assert (comparison["a"], comparison["b"], comparison["seeds"]) == ("sage", "adamw", [1, 2])
    assert comparison["difference"] == pytest.approx(0.16)
    assert comparison["verdict"] == "no difference shown"  # 12.706 * 0.04 / sqrt(2) > 0.16
    codes = [w["code"] for w in report["warnings"]]
    assert codes == ["best_at_grid_edge", "validation_too_small"]
    assert report["best"]["id"] == ids[3]  # the best single child is still named


def test_a_sweep_needs_a_validation_file(service: Service) -> None:
    r = _post(service, training_file=service.upload()["id"], compare_to=["adamw"])
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "validation_file"


def test_idempotent_replay_returns_the_parent(service: Service) -> None:
    body = {"model": "tiny-bert", **_files(service), "sweep": {"learning_rate": [1e-4, 2e-4]}}
    headers = {**service.auth(), "Idempotency-Key": "k1"}
    first = service.client.post(JOBS, headers=headers, json=body)
    again = service.client.post(JOBS, headers=headers, json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(service.dispatcher.dispatched) == 2
    other = service.client.post(JOBS, headers=headers,
                                json={**body, "sweep": {"learning_rate": [1e-4, 3e-4]}})
    assert other.status_code == 409


# --- cancelling ---------------------------------------------------------------------------

def test_cancelling_the_parent_cancels_unfinished_children(
        service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4, 3e-4]})
    done, running, queued = _children(parent)
    _finish(sessions, done, evals=[{"valid_f1_macro": 0.5}])
    with sessions.begin() as s:
        assert transitions.claim(s, running, owner="w", lease_seconds=60)
    r = service.client.post(f"{JOBS}/{parent['id']}/cancel", headers=service.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["fine_tuned_model"] is None
    assert [_get(service, i)["status"] for i in (done, running, queued)] == [
        "succeeded", "cancelled", "cancelled"]
    events = service.client.get(f"{JOBS}/{queued}/events", headers=service.auth()).json()
    assert any(parent["id"] in e["message"] for e in events["data"])
    # a second cancel of the parent is a no-op answer, as for any cancelled job
    again = service.client.post(f"{JOBS}/{parent['id']}/cancel", headers=service.auth())
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_the_parent_cannot_be_paused(service: Service) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    r = service.client.post(f"{JOBS}/{parent['id']}/pause", headers=service.auth())
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_job_state"
    child = _children(parent)[0]
    r = service.client.post(f"{JOBS}/{child}/pause", headers=service.auth())
    assert r.status_code == 200 and r.json()["status"] == "paused"
    r = service.client.post(f"{JOBS}/{child}/resume", headers=service.auth())
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert service.dispatcher.dispatched.count(child) == 2  # created, then resumed


# --- settling -----------------------------------------------------------------------------

REPORT: dict[str, Any] = {
    "overall": {"count": 300, "mean": 2e-6,
                "fraction_below": {"1e-08": 0.1, "1e-07": 0.2, "1e-06": 0.5}},
    "blocks": {
        "bert.encoder.layer.0": {"count": 100, "mean": 1e-6,
                                 "fraction_below": {"1e-08": 0.1, "1e-07": 0.3, "1e-06": 0.6}},
        "bert.encoder.layer.1": {"count": 300, "mean": 3e-6,
                                 "fraction_below": {"1e-08": 0.2, "1e-07": 0.2, "1e-06": 0.4}}},
    "modules": {},
}


def test_parent_settles_on_the_best_child_by_last_eval(
        service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]},
                    compare_to=[{"optimizer": "adamw", "learning_rate": [5e-5, 1e-4]}])
    sage_lo, sage_hi, adamw_lo, adamw_hi = _children(parent)
    # sage_lo's best evaluation is the highest of all, but its last one is not
    _finish(sessions, sage_lo, evals=[{"valid_f1_macro": 0.99}, {"valid_f1_macro": 0.60}],
            sensitivity=REPORT)
    _finish(sessions, sage_hi, evals=[{"valid_f1_macro": 0.80, "valid_loss": 0.3}],
            sensitivity=REPORT)
    _finish(sessions, adamw_lo, status="failed")
    assert _get(service, parent["id"])["status"] == "running"  # one child left
    _finish(sessions, adamw_hi, evals=[{"valid_f1_macro": 0.70}])

    settled = _get(service, parent["id"])
    assert settled["status"] == "succeeded", settled
    assert settled["fine_tuned_model"] == f"ft:{sage_hi}"
    assert settled["sweep"]["best_job_id"] == sage_hi
    assert settled["finished_at"] is not None
    models = [m["id"] for m in service.client.get("/v1/models", headers=service.auth()).json()[
        "data"]]
    assert models.count(f"ft:{sage_hi}") == 1  # the parent shares it: listed once

    r = service.client.get(f"{JOBS}/{parent['id']}/sweep", headers=service.auth())
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["object"] == "fine_tuning.job.sweep" and report["status"] == "succeeded"
    assert [(c["id"], c["status"], c["score"]) for c in report["children"]] == [
        (sage_lo, "succeeded", 0.60), (sage_hi, "succeeded", 0.80),
        (adamw_lo, "failed", None), (adamw_hi, "succeeded", 0.70)]
    assert report["children"][1]["metrics"] == {"valid_f1_macro": 0.80, "valid_loss": 0.3}
    assert report["best"]["id"] == sage_hi
    sides = {b["optimizer"]: b for b in report["best_per_optimizer"]}
    assert [b["optimizer"] for b in report["best_per_optimizer"]] == ["sage", "adamw"]
    assert (sides["sage"]["job_id"], sides["sage"]["learning_rate"]) == (sage_hi, 2e-4)
    assert (sides["adamw"]["job_id"], sides["adamw"]["score"]) == (adamw_hi, 0.70)
    summary = sides["sage"]["sensitivity"]
    assert summary["overall"] == {"mean": 2e-6, "fraction_below": REPORT["overall"][
        "fraction_below"]}
    assert summary["blocks"]["count"] == 2
    assert summary["blocks"]["mean"] == pytest.approx((1e-6 * 100 + 3e-6 * 300) / 400)
    assert summary["blocks"]["fraction_below"]["1e-07"] == pytest.approx(
        (0.3 * 100 + 0.2 * 300) / 400)
    assert sides["adamw"]["sensitivity"] is None  # adamw_hi stored no report

    with sessions() as s:
        messages = s.scalars(select(JobEvent.message).where(
            JobEvent.job_id == parent["id"])).all()
    assert sum(m.startswith("Sweep finished") for m in messages) == 1


def test_the_parent_lists_its_promoted_childs_checkpoints(
        service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    worse, better = _children(parent)

    def checkpoints(job_id: str) -> list[dict[str, Any]]:
        r = service.client.get(f"{JOBS}/{job_id}/checkpoints", headers=service.auth())
        assert r.status_code == 200, r.text
        return r.json()["data"]

    with sessions.begin() as s:
        for job_id in (worse, better):
            s.add(Checkpoint(id=f"ftckpt-{job_id}", job_id=job_id, step=3, metrics={},
                             storage_key=f"jobs/{job_id}/checkpoints/step-3",
                             fine_tuned_model_checkpoint=f"ft:{job_id}:ckpt-step-3"))
    assert checkpoints(parent["id"]) == []  # not settled: no best child yet
    _finish(sessions, worse, evals=[{"valid_f1_macro": 0.5}])
    _finish(sessions, better, evals=[{"valid_f1_macro": 0.9}])
    listed = checkpoints(parent["id"])
    assert [(c["id"], c["fine_tuning_job_id"]) for c in listed] == [
        (f"ftckpt-{better}", better)]
    assert listed == checkpoints(better)


def test_regression_sweep_promotes_the_lowest_valid_loss(
        service: Service, sessions: sessionmaker[Session]) -> None:
    files = _regression_files(service)
    parent = _post(service, **files, task="text-regression",
                   sweep={"learning_rate": [1e-4, 2e-4]}).json()
    first, second = _children(parent)
    _finish(sessions, first, evals=[{"valid_loss": 0.2}])
    _finish(sessions, second, evals=[{"valid_loss": 0.4}])
    assert _get(service, parent["id"])["fine_tuned_model"] == f"ft:{first}"


def test_no_child_succeeded_fails_the_parent_naming_them(
        service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    failed, cancelled = _children(parent)
    _finish(sessions, failed, status="failed")
    r = service.client.post(f"{JOBS}/{cancelled}/cancel", headers=service.auth())
    assert r.status_code == 200
    settled = _get(service, parent["id"])
    assert settled["status"] == "failed" and settled["fine_tuned_model"] is None
    assert settled["error"]["code"] == "sweep_failed"
    assert f"{failed} failed" in settled["error"]["message"]
    assert f"{cancelled} cancelled" in settled["error"]["message"]


def test_a_child_failed_by_the_reaper_settles_the_parent(
        service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    good, lost = _children(parent)
    _finish(sessions, good, evals=[{"valid_f1_macro": 0.5}])
    with sessions.begin() as s:
        assert transitions.claim(s, lost, owner="w", lease_seconds=60)
    with sessions.begin() as s:
        assert release_lost_job(s, lost, reason="test", max_lost_leases=1) == "failed"
    settled = _get(service, parent["id"])
    assert settled["status"] == "succeeded" and settled["fine_tuned_model"] == f"ft:{good}"


def test_parent_webhook_is_sent_once(service: Service, sessions: sessionmaker[Session]) -> None:
    service.client.post("/v1/webhooks", headers=service.auth(),
                        json={"url": "https://example.com/hook"})
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    for child in _children(parent):
        _finish(sessions, child, evals=[{"valid_f1_macro": 0.5}])
    with sessions() as s:
        count = s.scalar(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.job_id == parent["id"]))
    assert count == 1


def test_two_children_ending_at_once_settle_the_parent_once(
        service: Service, sessions: sessionmaker[Session]) -> None:
    """Each child's transaction holds its UPDATE a while before committing: without the
    parent's lock, each would see the other still running and nobody would settle it."""
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    children = _children(parent)
    for child in children:
        with sessions.begin() as s:
            assert transitions.claim(s, child, owner="w", lease_seconds=60)
            s.add(JobMetric(job_id=child, step=1, kind="eval", data={"valid_f1_macro": 0.5}))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def finish(child: str) -> None:
        try:
            barrier.wait(10)
            with sessions.begin() as s:
                assert transitions.succeed(s, child, owner="w", fine_tuned_model=f"ft:{child}")
                threading.Event().wait(0.5)  # both UPDATEs in flight together
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(c,)) for c in children]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    settled = _get(service, parent["id"])
    assert settled["status"] == "succeeded"
    assert settled["fine_tuned_model"] == f"ft:{children[0]}"  # a tie goes to the first
    with sessions() as s:
        finished = s.scalar(select(func.count()).select_from(JobEvent).where(
            JobEvent.job_id == parent["id"], JobEvent.message.like("Sweep finished%")))
    assert finished == 1


# --- the report's 404s --------------------------------------------------------------------

def test_an_ordinary_job_or_a_child_is_not_a_sweep(service: Service) -> None:
    job = service.create_job()
    r = service.client.get(f"{JOBS}/{job['id']}/sweep", headers=service.auth())
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_a_sweep"
    assert job["parent_job_id"] is None and job["sweep"] is None
    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    child = _children(parent)[0]
    r = service.client.get(f"{JOBS}/{child}/sweep", headers=service.auth())
    assert r.status_code == 404 and parent["id"] in r.json()["error"]["message"]


def test_a_report_while_running(service: Service, sessions: sessionmaker[Session]) -> None:
    parent = _sweep(service, compare_to=[{"optimizer": "adamw", "learning_rate": [1e-4]}],
                    hyperparameters={"learning_rate": 2e-4})
    own, other = _children(parent)
    _finish(sessions, other, evals=[{"valid_f1_macro": 0.4}])
    report = service.client.get(f"{JOBS}/{parent['id']}/sweep",
                                headers=service.auth()).json()
    assert report["status"] == "running"
    sides = {b["optimizer"]: b for b in report["best_per_optimizer"]}
    assert sides["sage"]["job_id"] is None and sides["adamw"]["job_id"] == other
    assert report["best"]["id"] == other
    assert [c["status"] for c in report["children"]] == ["queued", "succeeded"]
    assert report["children"][0]["learning_rate"] == 2e-4


# --- client and CLI -----------------------------------------------------------------------

def test_client_and_cli(in_process: Service, sessions: sessionmaker[Session],
                        capsys: pytest.CaptureFixture[str]) -> None:
    service = in_process
    files = _files(service)
    with Client() as client:
        parent = client.create_job("tiny-bert", files["training_file"],
                                   validation_file=files["validation_file"],
                                   sweep={"learning_rate": [1e-4, 2e-4]},
                                   compare_to=[{"optimizer": "adamw", "learning_rate": [5e-5]}])
        assert [r["optimizer"] for r in parent["sweep"]["runs"]] == ["sage", "sage", "adamw"]
        report = client.sweep_report(parent["id"])
        assert [c["status"] for c in report["children"]] == ["queued"] * 3
        plain = client.create_job("tiny-bert", files["training_file"])
        with pytest.raises(SageTrainAPIError) as info:
            client.sweep_report(plain["id"])
        assert info.value.code == "not_a_sweep"

    capsys.readouterr()
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file",
                 files["training_file"], "--validation-file", files["validation_file"],
                 "--optimizer", "adamw", "--sweep-lr", "1e-4", "3e-4",
                 "--compare-to", "sage", "adamax=1e-4,2e-4"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert [(r["optimizer"], r["learning_rate"]) for r in created["sweep"]["runs"]] == [
        ("adamw", 1e-4), ("adamw", 3e-4), ("sage", 5e-05), ("sage", 1.5e-4), ("sage", 4.5e-4),
        ("adamax", 1e-4), ("adamax", 2e-4)]
    assert main(["jobs", "sweep", created["id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["fine_tuning_job_id"] == created["id"] and len(shown["children"]) == 7
    assert main(["jobs", "sweep", created["id"]]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"sweep {created['id']}: running; valid_f1_macro")
    assert "1 queued" in table
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file",
                 files["training_file"], "--validation-file", files["validation_file"],
                 "--learning-rate", "1e-4", "--sweep-seeds", "3", "4"]) == 0
    seeded = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in seeded["sweep"]["runs"]] == [3, 4]
    assert main(["jobs", "sweep", plain["id"]]) == 1
    assert "is not a sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["jobs", "create", "--model", "m", "--training-file", "f", "--compare-to", "sgd"])
    assert "unknown optimizer 'sgd'" in capsys.readouterr().err


def test_the_openai_client_parses_a_parent_and_a_child(service: Service) -> None:
    pytest.importorskip("openai")
    from openai.types.fine_tuning import FineTuningJob

    parent = _sweep(service, sweep={"learning_rate": [1e-4, 2e-4]})
    for body in (parent, _get(service, _children(parent)[0])):
        job = FineTuningJob.model_validate(body)
        assert job.id == body["id"] and job.status == body["status"]
        assert job.hyperparameters.n_epochs == 10  # auto: 6 rows take one step an epoch
