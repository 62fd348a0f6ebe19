"""Liveness and readiness, outside /v1 and without a key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SessionDep, SessionRoute, SettingsDep
from api.schemas import Health

router = APIRouter(tags=["health"], route_class=SessionRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers (on the event loop: no worker thread, no database)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(session: SessionDep, settings: SettingsDep) -> Health | JSONResponse:
    """The database answers, and the broker too when SAGETRAIN_BROKER_URL is set."""
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if settings.broker_url:
        checks["broker"] = _ping_broker(settings.broker_url)
    if all(v == "ok" for v in checks.values()):
        return Health(status="ok", checks=checks)
    return JSONResponse(Health(status="unavailable", checks=checks).model_dump(), status_code=503)


def _ping_broker(url: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
