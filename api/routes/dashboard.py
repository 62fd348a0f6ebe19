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
# The page runs only its own scripts and styles (ES modules and Chart.js under /dashboard/),
# talks only to this server, and is never framed: an injected script or a clickjacking
# frame gets nowhere near the key the page holds. Styles set by script go through the
# CSSOM (element.style), which the policy allows; a style attribute in markup it refuses.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data: blob:; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@router.get("/")
def dashboard_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers=PAGE_HEADERS)


@router.get("/dashboard/{name}")
def dashboard_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"No such file: '{name}'")
    relative, media_type = ASSETS[name]
    path = STATIC_DIR / relative
    if name in VENDORED and not path.is_file():
        raise NotFoundError(f"{relative} is not built: run `make setup` (or `make vendor`) "
                            "in the source tree, which copies it from web/node_modules")
    return FileResponse(path, media_type=media_type, headers=ASSET_HEADERS)
