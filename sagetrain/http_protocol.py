"""uvicorn's h11 protocol with a deadline for a request's head (line and headers).

uvicorn closes a connection that stays idle `timeout_keep_alive` seconds after a response,
but it sets no limit on a connection that was opened and never sent a request, or that
sends its headers a byte at a time: such connections would stay open for ever. Here a
connection must send a complete request head within `header_timeout` seconds of opening,
or of the end of its previous response; otherwise it is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def protocol_with_header_timeout(header_timeout: float) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn.Config's `http`) with this header deadline."""

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

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request's head arrived: its body has limits of its own
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
