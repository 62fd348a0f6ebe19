"""Refuses a NUL character in a request's path or query before any route, dependency or
database sees it: PostgreSQL cannot store or even compare one in a text value (the query
fails with a DataError), and no id, name or cursor of ours contains one.

A path with NUL names nothing (404); a query or header with one is a bad parameter (400).
Body strings are checked by the request models (`api.schemas.refuse_nul`); anything that
still reaches the database is answered 400 by api/errors.py's handler of DataError.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_json

_NUL_IN_QUERY = (b"\x00", b"%00")


class RefuseNulMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if "\x00" in scope["path"]:
                response = error_json(404, "No such object: the path contains a NUL "
                                      "character", code="not_found")
                await response(scope, receive, send)
                return
            query: bytes = scope.get("query_string", b"")
            problem = None
            if any(nul in query for nul in _NUL_IN_QUERY):
                problem = "The query string contains a NUL character"
            elif any(b"\x00" in value for _, value in scope.get("headers", ())):
                problem = "A header contains a NUL character"
            if problem is not None:
                response = error_json(400, problem, code="invalid_value")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
