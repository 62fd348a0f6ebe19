"""Errors come out in OpenAI's shape from one place; health endpoints need no key."""

from __future__ import annotations

from pathlib import Path

from api_helpers import Service
from fastapi.testclient import TestClient

from api.main import create_app
from sage_core.settings import Settings


def test_unknown_route_and_method(service: Service) -> None:
    r = service.client.get("/v1/nothing", headers=service.auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = service.client.put("/v1/files", headers=service.auth())
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param",
                                                               "code"}


def test_bad_json_body_is_400(service: Service) -> None:
    r = service.client.post("/v1/fine_tuning/jobs", headers={
        **service.auth(), "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"


def test_bad_query_names_the_param(service: Service) -> None:
    r = service.client.get("/v1/fine_tuning/jobs?limit=0", headers=service.auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_unexpected_error_is_500_in_shape(service: Service) -> None:
    app = service.client.app

    @app.get("/boom")  # type: ignore[union-attr]
    def boom() -> None:
        raise RuntimeError("secret detail")

    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/boom")
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text


def test_health_and_docs(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}
    assert service.client.get("/docs").status_code == 200
    spec = service.client.get("/openapi.json").json()
    assert "/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/content" in spec["paths"]


def test_readyz_checks_the_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/15")
    from sage_core.db.migrate import upgrade

    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.json()["checks"]["database"] == "ok"
        assert r.json()["checks"]["broker"] == "ok"  # Redis runs on development machines
    bad = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(bad)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")
