"""uvicorn's h11 protocol with a deadline for a request's head (line and headers), and one
for a request still in flight when the server stops.

uvicorn closes a connection that stays idle `timeout_keep_alive` seconds after a response,
but it sets no limit on a connection that was opened and never sent a request, or that
sends its headers a byte at a time: such connections would stay open for ever. Here a
connection must send a complete request head within `header_timeout` seconds of opening,
or of the end of its previous response; otherwise it is closed.

When the server stops, uvicorn closes idle connections and waits for the others to finish
their request, however long that takes (an upload arriving slowly, an event stream, a
request waiting on a locked database). Here a request still in flight `shutdown_timeout`
seconds after the stop began is answered 503 if its response has not started, and its
connection is closed either way, so that the server's wait for connections ends.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

SHUTTING_DOWN = json.dumps({"error": {
    "message": "The server is shutting down; try again shortly.", "type": "server_error",
    "param": None, "code": "shutting_down"}}).encode()


def protocol_with_header_timeout(header_timeout: float, shutdown_timeout: float | None = None
                                 ) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn.Config's `http`) with this header deadline, and this
    deadline for requests in flight once the server stops (None: none)."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def shutdown(self) -> None:
            super().shutdown()
            if shutdown_timeout is not None and self.in_flight():
                self.loop.call_later(shutdown_timeout, self._on_shutdown_deadline)

        def in_flight(self) -> bool:
            """A request arrived (or is arriving) and its response is not complete."""
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.in_flight():
                return  # a request's head arrived: its body has limits of its own
            if not self.transport.is_closing():
                self.transport.close()

        def _on_shutdown_deadline(self) -> None:
            if not self.in_flight() or self.transport.is_closing():
                return
            assert self.cycle is not None
            if not self.cycle.response_started:
                self.cycle.response_started = True  # the application's answer is dropped
                self._answer_shutting_down()
            self.cycle.disconnected = True
            self.transport.close()

        def _answer_shutting_down(self) -> None:
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(SHUTTING_DOWN)).encode()),
                       (b"retry-after", b"5"), (b"connection", b"close")]
            try:
                data = self.conn.send(h11.Response(status_code=503, headers=headers))
                data += self.conn.send(h11.Data(data=SHUTTING_DOWN)) or b""
                data += self.conn.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError:
                return  # no valid place for an answer: the connection is only closed
            self.transport.write(data or b"")

    return HeaderTimeoutProtocol
