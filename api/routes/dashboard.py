"""The dashboard: one static page at `/` and its scripts, stylesheet, icon and the vendored
chart library, served without a key. The page asks for the user's key and calls the /v1 API
with it, like any client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from sage_core.errors import NotFoundError

router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
JS, CSS, SVG = "text/javascript", "text/css", "image/svg+xml"
# A fixed list, so a request can never name a file outside it: name -> (path under
# STATIC_DIR, media type).
ASSETS = {
    "dashboard.js": ("dashboard.js", JS),
    "api.js": ("api.js", JS),
    "charts.js": ("charts.js", JS),
    "forms.js": ("forms.js", JS),
    "views.js": ("views.js", JS),
    "dashboard.css": ("dashboard.css", CSS),
    "favicon.svg": ("favicon.svg", SVG),
    # copied from web/node_modules by `make setup` (`make vendor`); not in git
    "chart.umd.js": ("vendor/chart.umd.js", JS),
}
VENDORED = {"chart.umd.js"}


@router.get("/")
def dashboard_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/{name}")
def dashboard_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"No such file: '{name}'")
    relative, media_type = ASSETS[name]
    path = STATIC_DIR / relative
    if name in VENDORED and not path.is_file():
        raise NotFoundError(f"{relative} is not built: run `make setup` (or `make vendor`) "
                            "in the source tree, which copies it from web/node_modules")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
