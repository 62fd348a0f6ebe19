"""Job creation's fast path: the key cache of api/deps.py, and the insert that checks the key
and the files itself (api/services/jobs.py).

A key read in the last KEY_CACHE_SECONDS skips the lookup before the body is validated; the
insert checks the key again, so a revoked key never creates a job, and every other answer
re-reads the key. Past the bound, the cached key is read again before the body is looked at.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import Service
from sqlalchemy import event, func, select, update

from api.deps import KeyCache
from sage_core.db.keys import hash_key
from sage_core.db.models import ApiKey, Job, JobEvent, utcnow
from sage_core.db.session import make_engine, make_session_factory

JOBS = "/v1/fine_tuning/jobs"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(service: Service) -> FakeClock:
    clock = FakeClock()
    service.client.app.state.key_cache = KeyCache(ttl=5.0, clock=clock)  # type: ignore[attr-defined]
    return clock


def _revoke(service: Service) -> None:
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        s.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(service.key))
                  .values(revoked_at=utcnow()))
    engine.dispose()


def _counts(service: Service) -> tuple[int, int]:
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        jobs = s.scalar(select(func.count()).select_from(Job)) or 0
        events = s.scalar(select(func.count()).select_from(JobEvent)) or 0
    engine.dispose()
    return jobs, events


@pytest.fixture
def cached(service: Service, clock: FakeClock) -> Iterator[str]:
    """A training file, with the key in the cache (a first job made it)."""
    file_id = service.upload()["id"]
    service.create_job(training_file=file_id)
    yield file_id


def test_a_revoked_key_creates_no_job_while_cached(service: Service, cached: str) -> None:
    before = _counts(service)
    _revoke(service)
    r = service.client.post(JOBS, headers=service.auth(),
                            json={"model": "tiny-bert", "training_file": cached})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert _counts(service) == before


@pytest.mark.parametrize("body", [
    {"model": "no-such-model"},  # the catalog's error
    {"training_file": "file-nope"},  # the files' error, after the insert wrote nothing
])
def test_a_revoked_key_gets_401_not_the_error_while_cached(
        service: Service, cached: str, body: dict[str, object]) -> None:
    _revoke(service)
    r = service.client.post(JOBS, headers=service.auth(),
                            json={"model": "tiny-bert", "training_file": cached, **body})
    assert r.status_code == 401, r.text


def test_a_revoked_key_gets_no_replay_while_cached(service: Service, cached: str) -> None:
    body = {"model": "tiny-bert", "training_file": cached}
    headers = {**service.auth(), "Idempotency-Key": "k1"}
    assert service.client.post(JOBS, headers=headers, json=body).status_code == 200
    _revoke(service)
    assert service.client.post(JOBS, headers=headers, json=body).status_code == 401


def test_past_the_bound_a_revoked_key_is_refused_before_its_body(
        service: Service, cached: str, clock: FakeClock) -> None:
    _revoke(service)
    bad_body = {"model": "tiny-bert", "training_file": cached, "n_epochs": 3}  # unknown field
    # Within the bound the body may be validated before the key is read again (400 naming
    # the field); it still can create nothing.
    r = service.client.post(JOBS, headers=service.auth(), json=bad_body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n_epochs", r.text
    clock.now += 5.01
    r = service.client.post(JOBS, headers=service.auth(), json=bad_body)
    assert r.status_code == 401, r.text


def test_a_cached_key_still_gets_its_file_errors(service: Service, cached: str) -> None:
    other_file = service.upload(key=service.other_key)["id"]
    r = service.client.post(JOBS, headers=service.auth(),
                            json={"model": "tiny-bert", "training_file": other_file})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "training_file"
    assert "No such file" in r.json()["error"]["message"]
    r = service.client.post(JOBS, headers=service.auth(), json={
        "model": "tiny-bert", "training_file": cached, "validation_file": other_file})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "validation_file"


def test_a_file_validated_for_another_task_is_checked_again(service: Service,
                                                            cached: str) -> None:
    # `cached` was validated for text-classification: the insert's guard refuses it for
    # another task, and the careful path parses it again (fails here: its labels are no numbers).
    r = service.client.post(JOBS, headers=service.auth(), json={
        "model": "tiny-bert", "training_file": cached, "task": "text-regression"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "training_file"


def test_the_job_its_event_and_its_position_come_from_one_statement_on_postgres(
        service: Service, cached: str) -> None:
    engine = service.client.app.state.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        job = service.create_job(training_file=cached)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert job["queue_position"] == 2 and job["status"] == "queued"
    events = service.client.get(f"{JOBS}/{job['id']}/events", headers=service.auth()).json()
    assert [e["message"] for e in events["data"]] == [f"Created fine-tuning job: {job['id']}"]
    if engine.dialect.name == "postgresql":
        assert len(statements) == 1, statements  # the key came from the cache
        assert statements[0].lstrip().startswith("WITH")


def test_a_revoked_key_creates_no_sweep_while_cached(service: Service, cached: str) -> None:
    """A sweep is made on its own path (api/services/sweeps.py): it checks the key too."""
    before = _counts(service)
    _revoke(service)
    r = service.client.post(JOBS, headers=service.auth(), json={
        "model": "tiny-bert", "training_file": cached, "validation_file": cached,
        "sweep": {"learning_rate": [1e-4, 2e-4]}})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert _counts(service) == before
