"""POST /v1/fine_tuning/jobs/{id}/stream_token: a short-lived token that reads one job's
stream as `?token=` (for EventSource, which cannot send the key): good for that job only,
until it expires, while its key is live."""

from __future__ import annotations

import time

import pytest
from api_helpers import Service
from sqlalchemy import update

from api.services import stream_tokens
from sage_core.db.keys import hash_key
from sage_core.db.models import ApiKey, utcnow
from sage_core.db.session import make_engine, make_session_factory


def _ended_job(service: Service, key: str | None = None) -> str:
    job_id = service.create_job(key=key)["id"]
    r = service.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=service.auth(key))
    assert r.status_code == 200, r.text
    return job_id


def _token(service: Service, job_id: str, key: str | None = None) -> dict:
    r = service.client.post(f"/v1/fine_tuning/jobs/{job_id}/stream_token",
                            headers=service.auth(key))
    assert r.status_code == 200, r.text
    return r.json()


def _stream(service: Service, job_id: str, token: str) -> tuple[int, str]:
    """The status and body of the stream read with `token` and no Authorization header."""
    with service.client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/stream",
                               params={"token": token}) as r:
        return r.status_code, r.read().decode()


def test_a_token_reads_its_jobs_stream_without_the_key(service: Service) -> None:
    job_id = _ended_job(service)
    body = _token(service, job_id)
    assert body["fine_tuning_job_id"] == job_id
    assert time.time() < body["expires_at"] <= time.time() + stream_tokens.STREAM_TOKEN_SECONDS + 1
    assert service.key not in body["token"]
    status, text = _stream(service, job_id, body["token"])
    assert status == 200 and "event: end" in text and '"status": "cancelled"' in text


def test_a_token_is_refused_for_another_job(service: Service) -> None:
    first, second = _ended_job(service), _ended_job(service)
    status, text = _stream(service, second, _token(service, first)["token"])
    assert status == 401 and "invalid_stream_token" in text


def test_an_expired_token_is_refused(service: Service) -> None:
    job_id = _ended_job(service)
    key_id = _owner(service, job_id)
    secret = service.client.app.state.stream_token_secret  # type: ignore[attr-defined]
    stale, _ = stream_tokens.issue(secret, job_id, key_id,
                                   now=time.time() - stream_tokens.STREAM_TOKEN_SECONDS - 5)
    fresh, _ = stream_tokens.issue(secret, job_id, key_id)
    assert _stream(service, job_id, fresh)[0] == 200
    status, text = _stream(service, job_id, stale)
    assert status == 401 and "stream_token_expired" in text


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
    lambda t: t.replace(".", ".9", 1),  # a later expiry than signed
    lambda t: "key-nobody" + t[t.index("."):],  # another key id than signed
    lambda t: "garbage",
])
def test_a_forged_token_is_refused(service: Service, mangle) -> None:  # type: ignore[no-untyped-def]
    job_id = _ended_job(service)
    assert _stream(service, job_id, mangle(_token(service, job_id)["token"]))[0] == 401


def test_another_keys_job_gets_no_token(service: Service) -> None:
    job_id = _ended_job(service)
    r = service.client.post(f"/v1/fine_tuning/jobs/{job_id}/stream_token",
                            headers=service.auth(service.other_key))
    assert r.status_code == 404
    # and another key's token does not open this job's stream either
    theirs = _ended_job(service, key=service.other_key)
    assert _stream(service, job_id, _token(service, theirs, service.other_key)["token"])[0] == 401


def test_a_revoked_keys_tokens_stop_at_once(service: Service) -> None:
    job_id = _ended_job(service)
    token = _token(service, job_id)["token"]
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        s.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(service.key))
                  .values(revoked_at=utcnow()))
    engine.dispose()
    status, text = _stream(service, job_id, token)
    assert status == 401 and "revoked" in text


def test_the_header_still_works_and_a_token_needs_no_header(service: Service) -> None:
    job_id = _ended_job(service)
    with service.client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/stream",
                               headers=service.auth()) as r:
        assert r.status_code == 200
    with service.client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/stream") as r:
        assert r.status_code == 401


def _owner(service: Service, job_id: str) -> str:
    return service.client.get(f"/v1/fine_tuning/jobs/{job_id}",
                              headers=service.auth()).json()["organization_id"]
