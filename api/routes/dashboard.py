"""The dashboard: one static page at `/` and its script and stylesheet, served without a
key. The page asks for the user's key and calls the /v1 API with it, like any client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from sage_core.errors import NotFoundError

router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# A fixed list, so a request can never name a file outside it.
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


@router.get("/")
def dashboard_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/{name}")
def dashboard_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"No such file: '{name}'")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache"})
