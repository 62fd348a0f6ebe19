"""Issue 17, item 1: a burst of requests, half of them with a made-up key, against a real
`sagetrain serve` on SQLite while a job trains. Every transaction took SQLite's write lock
and key lookups kept theirs open while the request waited for a worker thread, so about 45
requests at once stalled the server for 30 s, answered 500 "database is locked" and killed
the job's process."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from api_helpers import LiveServer
from process_helpers import wait_for
from sample_data import rows

pytestmark = pytest.mark.slow

BURST = 200  # requests with a bogus key, and as many again with the real one


async def _burst(url: str, key: str) -> list[int]:
    limits = httpx.Limits(max_connections=2 * BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(token: str) -> int:
            try:
                r = await client.get("/v1/webhooks",
                                     headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError:
                return 0  # no answer at all
            return r.status_code

        tokens = [f"sk-st-bogus{i}" for i in range(BURST)] + [key] * BURST
        return list(await asyncio.gather(*(one(t) for t in tokens)))


def _poll_healthz(url: str, stop: threading.Event, slowest: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            slowest.append(time.monotonic() - started if ok else float("inf"))
            time.sleep(0.05)


@pytest.mark.timeout(300)
def test_a_burst_with_bogus_keys_neither_stalls_the_server_nor_kills_the_job(
        tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir) as server, server.client() as c:
        r = c.post("/v1/files", files={"file": ("train.jsonl", rows(400, 5))},
                   data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": r.json()["id"], "hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "max_seq_length": 16}})  # 200 steps
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]

        server.wait_training(c, job_id)

        stop, latencies = threading.Event(), list[float]()
        poller = threading.Thread(target=_poll_healthz, args=(server.url, stop, latencies))
        poller.start()
        try:
            for _ in range(2):  # the second burst finds the server as the first left it
                statuses = asyncio.run(_burst(server.url, server.key))
                assert statuses.count(401) == BURST, sorted(set(statuses))
                assert statuses.count(200) == BURST, sorted(set(statuses))
        finally:
            stop.set()
            poller.join()
        assert latencies and max(latencies) < 1.0, max(latencies)

        def finished() -> dict | None:
            job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 180, "the job to finish", interval=0.5)
        assert job["status"] == "succeeded", (job, server.log_text())
        assert "database is locked" not in server.log_text()


def test_a_locked_database_is_503_with_retry_after(
        tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that cannot get SQLite's write lock in time is answered 503, in the API's
    error shape, with Retry-After; reads go on meanwhile."""
    import sqlite3

    from api_helpers import RecordingDispatcher
    from fastapi.testclient import TestClient

    from api.main import create_app
    from sage_core.db import session as db_session
    from sage_core.db.keys import create_key
    from sage_core.db.migrate import upgrade
    from sage_core.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir)
    upgrade(settings.resolved_database_url)
    engine = db_session.make_engine(settings.resolved_database_url)
    with db_session.make_session_factory(engine).begin() as session:
        _, key = create_key(session, "locked")
    engine.dispose()
    monkeypatch.setattr(db_session, "SQLITE_BUSY_TIMEOUT_MS", 200)
    app = create_app(settings, dispatcher=RecordingDispatcher())
    holder = sqlite3.connect(tmp_path / "data" / "sagetrain.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a long write elsewhere
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            auth = {"Authorization": f"Bearer {key}"}
            r = client.post("/v1/webhooks", headers=auth, json={"url": "https://example.com/"})
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit()
            assert r.json()["error"]["code"] == "database_busy"
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert client.get("/v1/webhooks", headers=auth).status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        holder.close()


def test_every_api_route_ends_its_handlers_transactions(tmp_path: Path) -> None:
    """A sync handler's session must be closed in its own thread (api/deps.py SessionRoute):
    a router added without it would hold a transaction while FastAPI waits for a thread to
    check the answer."""
    from fastapi.routing import APIRoute

    from api.deps import SessionRoute
    from api.main import create_app
    from sage_core.settings import Settings

    def api_routes(routes: list) -> list[APIRoute]:  # type: ignore[type-arg]
        found = []
        for route in routes:  # FastAPI keeps an included router as one entry
            inner = getattr(route, "original_router", None)
            if inner is not None:
                found += api_routes(inner.routes)
            elif isinstance(route, APIRoute):
                found.append(route)
        return found

    app = create_app(Settings(data_dir=tmp_path / "data"))
    routes = [r for r in api_routes(app.routes) if r.path.startswith(("/v1/", "/readyz"))]
    assert len(routes) > 10
    assert [r.path for r in routes if not isinstance(r, SessionRoute)] == []
