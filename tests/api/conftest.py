"""An app per test on each database backend, with two API keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import LiveServer, RecordingDispatcher, Service
from fastapi.testclient import TestClient
from service_fixtures import *  # noqa: F403

from api.main import create_app
from sage_core.db.keys import create_key
from sage_core.db.session import make_engine, make_session_factory
from sage_core.settings import Settings
from sagetrain.client import Client


def make_keys(url: str) -> tuple[str, str]:
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        _, first = create_key(session, "first")
        _, second = create_key(session, "second")
    engine.dispose()
    return first, second


@pytest.fixture
def service(db_url: str, tmp_path: Path, models_dir: Path,
            request: pytest.FixtureRequest) -> Iterator[Service]:
    """The app; `@pytest.mark.service_settings(name=value, ...)` adds settings."""
    marker = request.node.get_closest_marker("service_settings")
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, models_dir=models_dir,
                        max_upload_bytes=64 * 1024, **(marker.kwargs if marker else {}))
    dispatcher = RecordingDispatcher()
    app = create_app(settings, dispatcher=dispatcher)
    key, other = make_keys(db_url)
    with TestClient(app) as client:
        yield Service(client, settings, dispatcher, key, other)


@pytest.fixture
def in_process(service: Service, monkeypatch: pytest.MonkeyPatch) -> Service:
    """sagetrain.client.Client (and so the CLI) talking to the test app, with the base URL
    and key from the environment as a user would set them."""
    def forward(request: httpx.Request) -> httpx.Response:
        got = service.client.request(request.method, str(request.url), headers=request.headers,
                                     content=request.content)
        return httpx.Response(got.status_code, headers=got.headers, content=got.content)

    transport = httpx.MockTransport(forward)
    original = Client.__init__

    def init(self: Client, base_url: str | None = None, api_key: str | None = None,
             timeout: float = 30.0, **kwargs: Any) -> None:
        original(self, base_url, api_key, timeout, transport=transport)

    monkeypatch.setattr(Client, "__init__", init)
    monkeypatch.setenv("SAGETRAIN_BASE_URL", "http://testserver")
    monkeypatch.setenv("SAGETRAIN_API_KEY", service.key)
    return service


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    """`sagetrain serve` in a subprocess (SQLite, local executor) with one API key."""
    with LiveServer.start(tmp_path_factory.mktemp("live"), models_dir) as server:
        yield server
