"""Per-key rate limits and quotas through the real API, on both backends: 429 with
Retry-After and the error naming the limit; other keys unaffected; exact under concurrent
requests (the counts are the database's rows, checked with the key's row locked)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import TRAIN_JSONL, RecordingDispatcher, Service
from fastapi.testclient import TestClient

from api.main import create_app
from sage_core.db.keys import create_key
from sage_core.db.session import make_engine, make_session_factory
from sage_core.settings import Settings

SweepBody = dict[str, Any]


@pytest.fixture
def limited(db_url: str, tmp_path: Path, models_dir: Path) -> Iterator[Callable[..., Service]]:
    """A service with the given settings (limits), its two keys."""
    made: list[TestClient] = []

    def start(**limits: Any) -> Service:
        settings = Settings(data_dir=tmp_path / "data", database_url=db_url,
                            models_dir=models_dir, max_upload_bytes=64 * 1024, **limits)
        dispatcher = RecordingDispatcher()
        key, other = make_keys(db_url)
        client = TestClient(create_app(settings, dispatcher=dispatcher)).__enter__()
        made.append(client)
        return Service(client, settings, dispatcher, key, other)

    yield start
    for client in made:
        client.__exit__(None, None, None)


def make_keys(url: str) -> tuple[str, str]:
    return key_with(url), key_with(url)


def key_with(db_url: str, **quotas: int) -> str:
    engine = make_engine(db_url)
    with make_session_factory(engine).begin() as session:
        _, key = create_key(session, "limited", **quotas)
    engine.dispose()
    return key


def post_job(svc: Service, file_id: str, key: str | None = None, **extra: Any) -> httpx.Response:
    return svc.client.post("/v1/fine_tuning/jobs", headers=svc.auth(key),
                           json={"model": "tiny-bert", "training_file": file_id, **extra})


def post_file(svc: Service, key: str | None = None, data: bytes = TRAIN_JSONL) -> httpx.Response:
    return svc.client.post("/v1/files", headers=svc.auth(key), files={
        "file": ("train.jsonl", data)}, data={"purpose": "fine-tune"})


def assert_limited(response: httpx.Response, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == code, error
    for word in words:
        assert word in error["message"], error
    retry = int(response.headers["Retry-After"])
    assert 1 <= retry <= 60, retry
    return error


def test_job_creation_rate_limit(limited: Callable[..., Service]) -> None:
    svc = limited(job_rate_limit=2, rate_limit_window=60)
    file_id = svc.upload()["id"]
    assert [post_job(svc, file_id).status_code for _ in range(2)] == [200, 200]
    assert_limited(post_job(svc, file_id), "rate_limit_exceeded", "2 per 60 s",
                   "SAGETRAIN_JOB_RATE_LIMIT")
    other_file = svc.upload(key=svc.other_key)["id"]
    assert post_job(svc, other_file, key=svc.other_key).status_code == 200  # per key
    assert len(svc.dispatcher.dispatched) == 3  # the refused job was never queued
    listed = svc.client.get("/v1/fine_tuning/jobs", headers=svc.auth()).json()["data"]
    assert len(listed) == 2


def test_a_replayed_idempotent_request_is_not_limited(limited: Callable[..., Service]) -> None:
    svc = limited(job_rate_limit=1)
    file_id = svc.upload()["id"]
    headers = {**svc.auth(), "Idempotency-Key": "once"}
    body = {"model": "tiny-bert", "training_file": file_id}
    first = svc.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    again = svc.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_running_jobs_quota_of_a_key(limited: Callable[..., Service], db_url: str) -> None:
    svc = limited()
    key = key_with(db_url, max_running_jobs=2)
    file_id = svc.upload(key=key)["id"]
    jobs = [post_job(svc, file_id, key=key) for _ in range(2)]
    assert [r.status_code for r in jobs] == [200, 200]
    assert_limited(post_job(svc, file_id, key=key), "max_running_jobs_exceeded",
                   "2 fine-tuning jobs queued or running", "max_running_jobs")
    # A sweep's children count, each: 2 more do not fit either.
    sweep = post_job(svc, file_id, key=key, validation_file=file_id,
                     sweep={"learning_rate": [1e-4, 3e-4]})
    assert_limited(sweep, "max_running_jobs_exceeded", "adds 2 more")
    # A paused or cancelled job holds no place.
    first = jobs[0].json()["id"]
    assert svc.client.post(f"/v1/fine_tuning/jobs/{first}/pause",
                           headers=svc.auth(key)).status_code == 200
    third = post_job(svc, file_id, key=key)
    assert third.status_code == 200
    # Resuming the paused job would make 3: refused until one ends.
    resume = f"/v1/fine_tuning/jobs/{first}/resume"
    assert_limited(svc.client.post(resume, headers=svc.auth(key)),
                   "max_running_jobs_exceeded", "it has 2")
    assert svc.client.post(f"/v1/fine_tuning/jobs/{third.json()['id']}/cancel",
                           headers=svc.auth(key)).status_code == 200
    resumed = svc.client.post(resume, headers=svc.auth(key))
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
    # The server's default (unset here) leaves other keys alone.
    assert post_job(svc, svc.upload()["id"]).status_code == 200


def test_the_servers_default_quota_and_a_keys_own(limited: Callable[..., Service],
                                                   db_url: str) -> None:
    svc = limited(max_running_jobs=1)
    file_id = svc.upload()["id"]
    assert post_job(svc, file_id).status_code == 200
    assert_limited(post_job(svc, file_id), "max_running_jobs_exceeded", "1 fine-tuning job")
    roomier = key_with(db_url, max_running_jobs=3)
    own_file = svc.upload(key=roomier)["id"]
    assert [post_job(svc, own_file, key=roomier).status_code for _ in range(3)] == [200] * 3


def test_a_sweep_counts_its_children(limited: Callable[..., Service], db_url: str) -> None:
    svc = limited()
    key = key_with(db_url, max_running_jobs=2)
    file_id = svc.upload(key=key)["id"]
    sweep = post_job(svc, file_id, key=key, validation_file=file_id,
                     sweep={"learning_rate": [1e-4, 3e-4]})
    assert sweep.status_code == 200, sweep.text
    assert_limited(post_job(svc, file_id, key=key), "max_running_jobs_exceeded", "has 2")


def test_storage_quota(limited: Callable[..., Service], db_url: str) -> None:
    svc = limited()
    key = key_with(db_url, max_storage_bytes=2 * len(TRAIN_JSONL) + 10)
    kept = [post_file(svc, key) for _ in range(2)]
    assert [r.status_code for r in kept] == [200, 200]
    refused = assert_limited(post_file(svc, key), "max_storage_exceeded", "max_storage",
                             "Delete files")
    assert refused["param"] == "file"
    files = svc.client.get("/v1/files", headers=svc.auth(key)).json()["data"]
    assert len(files) == 2
    stored = list((svc.settings.resolved_artifacts_dir / "files").iterdir())
    assert len(stored) == 2  # nothing of the refused upload is left
    assert svc.client.delete(f"/v1/files/{kept[0].json()['id']}",
                             headers=svc.auth(key)).status_code == 200
    assert post_file(svc, key).status_code == 200
    assert post_file(svc).status_code == 200  # another key: the default, unlimited


def test_the_servers_default_storage_quota_reads_a_size() -> None:
    assert Settings(max_storage_bytes="10G").max_storage_bytes == 10 * 1024**3  # type: ignore[arg-type]
    assert Settings(max_storage_bytes="500M").max_storage_bytes == 500 * 1024**2  # type: ignore[arg-type]


def test_file_upload_rate_limit(limited: Callable[..., Service]) -> None:
    svc = limited(file_rate_limit=2, rate_limit_window=30)
    assert [post_file(svc).status_code for _ in range(2)] == [200, 200]
    error = assert_limited(post_file(svc), "rate_limit_exceeded", "2 per 30 s",
                           "SAGETRAIN_FILE_RATE_LIMIT")
    assert error["param"] is None
    assert post_file(svc, svc.other_key).status_code == 200


def _at_once(count: int, call: Callable[[], httpx.Response]) -> list[int]:
    barrier = threading.Barrier(count)
    codes: list[int] = []

    def one() -> None:
        barrier.wait()
        codes.append(call().status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return sorted(codes)


def test_limits_hold_under_concurrent_requests(limited: Callable[..., Service],
                                               db_url: str) -> None:
    svc = limited(job_rate_limit=3, file_rate_limit=4)
    file_id = svc.upload()["id"]
    assert _at_once(8, lambda: post_job(svc, file_id)) == [200] * 3 + [429] * 5
    key = key_with(db_url, max_running_jobs=2)
    own = svc.upload(key=key)["id"]
    assert _at_once(6, lambda: post_job(svc, own, key=key)) == [200] * 2 + [429] * 4
    # svc.key has uploaded one file so far: 3 more fit in its window of 4
    assert _at_once(6, lambda: post_file(svc)) == [200] * 3 + [429] * 3


def test_an_empty_setting_is_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker compose passes an unset variable as an empty one."""
    for name in ("JOB_RATE_LIMIT", "FILE_RATE_LIMIT", "MAX_RUNNING_JOBS", "MAX_STORAGE_BYTES"):
        monkeypatch.setenv(f"SAGETRAIN_{name}", "")
    settings = Settings()
    assert (settings.job_rate_limit, settings.file_rate_limit, settings.max_running_jobs,
            settings.max_storage_bytes) == (None, None, None, None)
    monkeypatch.setenv("SAGETRAIN_MAX_STORAGE_BYTES", "1.5G")
    monkeypatch.setenv("SAGETRAIN_JOB_RATE_LIMIT", "30")
    settings = Settings()
    assert (settings.max_storage_bytes, settings.job_rate_limit) == (int(1.5 * 1024**3), 30)
    monkeypatch.setenv("SAGETRAIN_JOB_RATE_LIMIT", "0")
    with pytest.raises(ValueError, match="job_rate_limit"):
        Settings()


def test_two_api_servers_share_the_limits(limited: Callable[..., Service]) -> None:
    """Two API servers on one database (as behind a load balancer): the counts are the
    database's, so the limit holds over both together."""
    first = limited(job_rate_limit=4)
    second = limited(job_rate_limit=4)
    second.key = first.key
    file_id = first.upload()["id"]
    servers = [first, second] * 5
    calls = iter(servers)
    codes = _at_once(len(servers), lambda: post_job(next(calls), file_id))
    assert codes == [200] * 4 + [429] * 6
