"""`create_app(settings)`: the FastAPI application. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.body_guard import BodyGuard
from api.dispatch import Dispatcher, NullDispatcher
from api.errors import install_error_handlers
from api.input_guard import RefuseNulMiddleware
from api.openapi import install_openapi
from api.prometheus import RequestDurationMiddleware, make_registry
from api.routes import dashboard, files, health, jobs, models, prometheus, webhooks
from api.services import stream_tokens
from sage_core import __version__
from sage_core.artifacts import ArtifactStore, get_artifact_store
from sage_core.db.session import make_engine, make_session_factory, read_only
from sage_core.settings import Settings, get_settings

DESCRIPTION = """Fine-tune Hugging Face Transformers with the SAGE optimizer, over an
OpenAI-shaped API. Every /v1 call needs `Authorization: Bearer <api key>`."""


def create_app(settings: Settings | None = None, *, dispatcher: Dispatcher | None = None,
               store: ArtifactStore | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url, pool_size=settings.database_pool_size,
                         max_overflow=settings.database_max_overflow)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="sagetrain", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    # Writes (POST, DELETE) use session_factory; reads (GET, key lookups, the stream and the
    # metrics) the read-only one, which on SQLite never takes or waits for the write lock.
    app.state.session_factory = make_session_factory(engine)
    app.state.read_session_factory = make_session_factory(read_only(engine))
    app.state.store = store or get_artifact_store(settings)
    app.state.dispatcher = dispatcher or NullDispatcher()
    app.state.stream_token_secret = stream_tokens.secret_of(settings)
    install_error_handlers(app)
    app.state.metrics_registry, durations = make_registry(app.state.read_session_factory)
    app.add_middleware(RefuseNulMiddleware)
    app.add_middleware(RequestDurationMiddleware, histogram=durations)
    app.add_middleware(BodyGuard, settings=settings)  # outermost: before anything reads
    for module in (health, prometheus, files, jobs, models, dashboard, webhooks):
        app.include_router(module.router)
    install_openapi(app)
    return app
