"""Requests that race on one object, with real threads against the real database on both
backends: two cancels of one queued job, and a file deleted while a job is being created
with it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
from api_helpers import Service

from api.services.jobs import cancel_job
from sage_core.db.models import Job
from sage_core.db.session import make_engine, make_session_factory

JOBS = "/v1/fine_tuning/jobs"


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads of their own, released together; their results in order
    (an exception raised is the result)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:  # noqa: BLE001 - the caller asserts on it
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_cancels_of_a_queued_job_both_answer_cancelled(service: Service) -> None:
    """Each request read the job as queued before either cancelled it: the one whose UPDATE
    finds it cancelled already answers 200 with the cancelled job, not 409."""
    engine = make_engine(service.settings.resolved_database_url)
    sessions = make_session_factory(engine)
    try:
        for _ in range(5):
            job_id = service.create_job()["id"]
            read = threading.Barrier(2)

            def cancel(job_id: str = job_id, read: threading.Barrier = read) -> str:
                with sessions() as session:
                    job = session.get(Job, job_id)
                    assert job is not None and job.status == "queued"
                    session.commit()  # as the OwnedJob dependency does
                    read.wait()  # both have read "queued"
                    cancel_job(session, job)
                    return job.status

            assert at_once(cancel, cancel) == ["cancelled", "cancelled"]
    finally:
        engine.dispose()


def test_concurrent_cancels_over_http(service: Service) -> None:
    for _ in range(10):
        job_id = service.create_job()["id"]

        def cancel(job_id: str = job_id) -> httpx.Response:
            return service.client.post(f"{JOBS}/{job_id}/cancel", headers=service.auth())

        answers = at_once(cancel, cancel, cancel)
        assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
        assert {a.json()["status"] for a in answers} == {"cancelled"}
        events = service.client.get(f"{JOBS}/{job_id}/events", headers=service.auth()).json()
        assert [e["message"] for e in events["data"]].count("Job cancelled") == 1


def test_a_file_deleted_while_a_job_is_created_with_it(service: Service) -> None:
    """Never both: either the job is created and the delete gets 409 (the file is in use),
    or the file is deleted and the creation gets 400 (no such file)."""
    outcomes: set[tuple[int, int]] = set()
    for _ in range(40):
        file_id = service.upload()["id"]

        def create(file_id: str = file_id) -> httpx.Response:
            return service.client.post(JOBS, headers=service.auth(), json={
                "model": "tiny-bert", "training_file": file_id})

        def delete(file_id: str = file_id) -> httpx.Response:
            return service.client.delete(f"/v1/files/{file_id}", headers=service.auth())

        created, deleted = at_once(create, delete)
        pair = (created.status_code, deleted.status_code)
        assert pair in {(200, 409), (400, 200)}, (created.text, deleted.text)
        outcomes.add(pair)
        if created.status_code == 200:
            got = service.client.get(f"/v1/files/{file_id}", headers=service.auth())
            assert got.status_code == 200
            service.client.post(f"{JOBS}/{created.json()['id']}/cancel", headers=service.auth())
    print("outcomes seen:", sorted(outcomes))
