"""GET /v1/fine_tuning/jobs/{id}/stream: events and metrics as Server-Sent Events, resumable
with Last-Event-ID, ending when the job ends. The runner is simulated by writing rows."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from api_helpers import Service
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.services import stream
from sage_core.db.events import add_event
from sage_core.db.models import Job, JobMetric, utcnow
from sage_core.db.session import make_engine, make_session_factory

Message = tuple[str, str, dict]  # (event, id, data)


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "POLL_SECONDS", 0.05)


@pytest.fixture
def db(service: Service):  # type: ignore[no-untyped-def]
    engine = make_engine(service.settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _url(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/stream"


def _read(service: Service, job_id: str, last_id: str | None = None,
          on_message: Callable[[Message], None] | None = None) -> list[Message]:
    """Every message until the server closes the stream (ping comments skipped)."""
    headers = service.auth() | ({"Last-Event-ID": last_id} if last_id else {})
    out: list[Message] = []
    fields: dict[str, str] = {}
    with service.client.stream("GET", _url(job_id), headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if fields:
                message = (fields["event"], fields["id"], json.loads(fields["data"]))
                out.append(message)
                if on_message:
                    on_message(message)
                fields = {}
    return out


def _write_rows(factory: Callable[[], Session], job_id: str, first: int, count: int) -> None:
    """`count` events and metrics rows, alternating, created a second apart."""
    start = utcnow() + timedelta(seconds=first * 2)
    with factory.begin() as s:  # type: ignore[attr-defined]
        for i in range(first, first + count):
            event = add_event(s, job_id, f"step {i}")
            event.created_at = start + timedelta(seconds=2 * (i - first))
            s.add(JobMetric(job_id=job_id, step=i, kind="train",
                            created_at=start + timedelta(seconds=2 * (i - first) + 1),
                            data={"step": i, "epoch": i / 10, "train_loss": 1.0 / (i + 1)}))


def _finish(factory: Callable[[], Session], job_id: str, status: str) -> None:
    with factory.begin() as s:  # type: ignore[attr-defined]
        s.execute(update(Job).where(Job.id == job_id).values(status=status,
                                                             finished_at=utcnow()))


def test_streams_rows_in_order_then_ends_and_resumes(service: Service, db) -> None:  # type: ignore[no-untyped-def]
    job_id = service.create_job()["id"]
    _write_rows(db, job_id, 1, 3)
    _finish(db, job_id, "succeeded")

    got = _read(service, job_id)
    assert [name for name, _, _ in got] == ["event"] + ["event", "metrics"] * 3 + ["end"]
    assert got[0][2]["message"] == f"Created fine-tuning job: {job_id}"
    assert [d["message"] for n, _, d in got if n == "event"][1:] == ["step 1", "step 2", "step 3"]
    assert [d for n, _, d in got if n == "metrics"] == [
        {"step": i, "epoch": i / 10, "train_loss": 1.0 / (i + 1)} for i in (1, 2, 3)]
    assert got[-1][2] == {"status": "succeeded"}
    # the same shapes as /events and /metrics
    events = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                headers=service.auth()).json()["data"]
    assert [d for n, _, d in got if n == "event"] == events[::-1]
    metrics = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics",
                                 headers=service.auth()).json()["data"]
    assert [d for n, _, d in got if n == "metrics"] == metrics
    ids = [i for _, i, _ in got]
    assert ids[0] == f"{got[0][2]['id']}.0" and len(set(ids[:-1])) == len(ids) - 1

    for middle in (1, 4):  # after an event, after a metrics row
        assert _read(service, job_id, last_id=ids[middle]) == got[middle + 1:]
    assert _read(service, job_id, last_id=ids[-1]) == got[-1:]
    # only metrics seen so far (no event yet): the events all come again, the metrics do not
    metric_id = ids[2].rpartition(".")[2]
    again = _read(service, job_id, last_id=f"0.{metric_id}")
    assert [(n, d) for n, _, d in again] == [(n, d) for i, (n, _, d) in enumerate(got) if i != 2]


@pytest.mark.parametrize("last_id", ["garbage", "0.x", "ftevent-nope.0", ".1"])
def test_bad_last_event_id_is_400(service: Service, last_id: str) -> None:
    job_id = service.create_job()["id"]
    r = service.client.get(_url(job_id), headers=service.auth() | {"Last-Event-ID": last_id})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "Last-Event-ID"


def test_auth_and_ownership(service: Service) -> None:
    job_id = service.create_job()["id"]
    assert service.client.get(_url(job_id)).status_code == 401
    assert service.client.get(_url(job_id), headers=service.auth(service.other_key)
                              ).status_code == 404
    r = service.client.get(_url("ftjob-nope"), headers=service.auth())
    assert r.status_code == 404 and r.json()["error"]["param"] == "fine_tuning_job_id"


def test_rows_written_while_streaming_arrive(service: Service, db) -> None:  # type: ignore[no-untyped-def]
    job_id = service.create_job()["id"]
    with db.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running"))
    first_seen = threading.Event()
    seen_in_time: list[bool] = []

    def runner() -> None:
        _write_rows(db, job_id, 1, 1)
        # the stream must deliver these while the job still runs
        seen_in_time.append(first_seen.wait(10))
        _write_rows(db, job_id, 2, 1)
        _finish(db, job_id, "failed")

    def on_message(message: Message) -> None:
        if message[0] == "metrics":
            first_seen.set()

    thread = threading.Timer(0.2, runner)
    thread.start()
    try:
        got = _read(service, job_id, on_message=on_message)
    finally:
        first_seen.set()
        thread.join()
    assert seen_in_time == [True]
    assert [n for n, _, _ in got] == ["event", "event", "metrics", "event", "metrics", "end"]
    assert got[-1][2] == {"status": "failed"}
