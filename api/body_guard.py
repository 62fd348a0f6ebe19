"""A pure ASGI middleware that guards request bodies before the application reads them.

- A body sent to /v1 needs a live key first: without one the request gets 401 and its body
  is never read (the connection is closed after the answer, with the rest unsent). The key
  found is handed to `get_current_key` in `request.state.api_key`, so it is read once.
- Size: a body larger than MAX_JSON_BODY_BYTES (an upload, POST /v1/files: its own limit,
  MAX_UPLOAD_BYTES, checked exactly by its parser) gets 413 naming the limit, from its
  Content-Length before any of it is read, or as soon as a chunked one passes it.
- Time: a body must arrive within BODY_TIMEOUT_SECONDS, and after BODY_GRACE_SECONDS at an
  average of at least BODY_MIN_BYTES_PER_SECOND; otherwise 408, and the connection closes.
  A request that trickles its body in holds nothing else meanwhile: no database
  transaction is open while a body is read (see api/deps.py).
"""

from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import authenticate
from api.errors import AuthenticationError, error_body
from api.uploads import ENVELOPE_BYTES
from sage_core.settings import Settings

UPLOAD_PATH = "/v1/files"


class BodyLimitError(StarletteHTTPException):
    """Raised to the application from `receive`: the body broke a limit. The error handlers
    answer it in the API's error shape, with `code`."""

    def __init__(self, status_code: int, message: str, code: str):
        super().__init__(status_code, message)
        self.code = code


def too_large(limit: int) -> BodyLimitError:
    return BodyLimitError(413, f"Request body larger than the limit of {limit} bytes.",
                          "request_too_large")


class BodyGuard:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and (not length.isdigit() or int(length) == 0):
            await self.app(scope, receive, send)  # no body to guard
            return
        path: str = scope["path"]
        if path.startswith("/v1/"):
            refused = await self._authenticate(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        limit = self._size_limit(scope)
        if length.isdigit() and int(length) > limit:
            error = too_large(limit)
            await _answer(error.status_code, str(error.detail), error.code)(scope, receive, send)
            return
        await self.app(scope, _LimitedBody(receive, limit, self.settings), send)

    def _size_limit(self, scope: Scope) -> int:
        if scope["path"] == UPLOAD_PATH and scope["method"] == "POST":
            return self.settings.max_upload_bytes + ENVELOPE_BYTES
        return self.settings.max_json_body_bytes

    async def _authenticate(self, scope: Scope) -> JSONResponse | None:
        """None if the request's key is live (kept in the request's state), or if the
        check could not be made (the application then makes it, and answers any error);
        otherwise the 401 to send."""
        request = Request(scope)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _answer(401, "You didn't provide an API key. Send it as "
                                "'Authorization: Bearer <key>'.", "invalid_api_key")
        try:
            request.state.api_key = await run_in_threadpool(authenticate, request, token)
        except AuthenticationError as exc:
            return _answer(401, exc.message, exc.code)
        except Exception:  # e.g. the database is busy: the application answers that
            return None
        return None


def _answer(status: int, message: str, code: str) -> JSONResponse:
    # Sent before the body is read: close the connection rather than read the rest.
    return JSONResponse(error_body(message, type_="invalid_request_error", code=code),
                        status_code=status, headers={"Connection": "close"})


class _LimitedBody:
    """`receive` with the size and time limits: the first broken limit raises BodyLimitError
    to the application (which then answers it); after the body, messages pass through."""

    def __init__(self, receive: Receive, limit: int, settings: Settings):
        self._receive, self._limit = receive, limit
        self._timeout = settings.body_timeout_seconds
        self._min_rate = settings.body_min_bytes_per_second
        self._grace = settings.body_grace_seconds
        self._started = time.monotonic()
        self._received = 0
        self._done = False

    async def __call__(self) -> Message:
        if self._done:
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self._seconds_left())
        except TimeoutError:
            raise self._too_slow() from None
        if message["type"] != "http.request":
            return message
        self._received += len(message.get("body", b""))
        if self._received > self._limit:
            raise too_large(self._limit)
        if not message.get("more_body", False):
            self._done = True
        elif self._seconds_left() <= 0:
            raise self._too_slow()
        return message

    def _seconds_left(self) -> float:
        """Until the body breaks a time limit, if no more of it arrives."""
        deadline = self._timeout
        if self._min_rate > 0:
            deadline = min(deadline, max(self._grace, self._received / self._min_rate))
        return deadline - (time.monotonic() - self._started)

    def _too_slow(self) -> BodyLimitError:
        elapsed = time.monotonic() - self._started
        return BodyLimitError(
            408, f"The request body arrived too slowly: {self._received} bytes in "
                 f"{elapsed:.0f} s (limits: {self._timeout:.0f} s in all, and at least "
                 f"{self._min_rate} bytes/s after the first {self._grace:.0f} s).",
            "request_timeout")
