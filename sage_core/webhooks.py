"""Sending queued webhook deliveries, signed the Standard Webhooks way.

Each request carries `webhook-id` (the delivery's id, the same on every retry, so a receiver
can drop duplicates), `webhook-timestamp` (unix seconds of this try) and `webhook-signature:
v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the base64-decoded part of
the endpoint's `whsec_` secret. A 2xx answer delivers; anything else (or no answer) is
retried after `min(base * 2**(attempts - 1), cap)` seconds, and after `max_attempts` tries
the delivery is marked failed.

A delivery is claimed before it is sent by a conditional UPDATE that pushes its
`next_attempt_at` past the request's timeout, so several servers may run `deliver_due` at
once without sending one delivery twice at the same time.

URLs are checked when registered (`sage_core.net_guard.check_http_url`), and again where
they are sent: the host is resolved, refused if any of its addresses is loopback, private,
link-local or unspecified (unless `allow_private_targets`), and the connection is pinned to
the checked address (DNS rebinding cannot swap it). Any exception while sending one
delivery is that delivery's failed try, never the end of the round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db.models import WebhookDelivery, WebhookEndpoint, utcnow
from sage_core.db.webhooks import DELIVERED, FAILED, PENDING
from sage_core.net_guard import BlockedTargetError, resolve_public
from sage_core.periodic import PeriodicThread
from sage_core.settings import Settings

log = logging.getLogger("sagetrain.webhooks")
SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one request."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
            "content-type": "application/json"}


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *,
                     tolerance: float = TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """What a receiver checks: one of the `v1` signatures matches and the timestamp is within
    `tolerance` seconds of `now` (a replayed old request fails). Header names are matched
    case-insensitively."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp = lower.get("webhook-id"), lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature", "")
    if not msg_id or not stamp:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    try:
        expected = sign(secret, msg_id, timestamp, body).removeprefix("v1,")
    except ValueError:  # a secret that is not base64
        return False
    return any(hmac.compare_digest(sig.removeprefix("v1,"), expected)
               for sig in signatures.split() if sig.startswith("v1,"))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 10.0
    cap_seconds: float = 3600.0
    timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.webhook_max_attempts, settings.webhook_backoff_base,
                   settings.webhook_backoff_cap, settings.webhook_timeout)

    def delay(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed try."""
        return timedelta(seconds=min(self.base_seconds * 2 ** (attempts - 1), self.cap_seconds))


def _claim(session: Session, delivery_id: str, now: datetime, until: datetime) -> bool:
    stmt = (update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
                   WebhookDelivery.next_attempt_at <= now)
            .values(next_attempt_at=until)
            .execution_options(synchronize_session=False))
    result = session.execute(stmt)
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def _send(client: httpx.Client, endpoint: WebhookEndpoint, delivery: WebhookDelivery,
          now: datetime, timeout: float, allow_private: bool) -> str | None:
    """POST one delivery; None on a 2xx answer, else what went wrong."""
    try:
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        headers = signed_headers(endpoint.secret, delivery.id, int(now.timestamp()), body)
        target = resolve_public(endpoint.url, allow_private=allow_private)
        response = client.post(target.url, content=body, headers=headers | target.headers,
                               timeout=timeout, extensions=target.extensions)
    except (httpx.HTTPError, BlockedTargetError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:1000]
    except Exception as exc:  # an endpoint's own failure, never the round's
        log.warning("webhook %s to %s: %s: %s", delivery.id, endpoint.url[:200],
                    type(exc).__name__, exc)
        return f"{type(exc).__name__}: {exc}"[:1000]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def deliver_due(sessions: sessionmaker[Session], client: httpx.Client,
                now: datetime | None = None, *, policy: RetryPolicy | None = None,
                limit: int = 100, allow_private: bool = False) -> dict[str, str]:
    """Send every pending delivery due at `now`. Returns {delivery id: its status after}.
    `allow_private`: call loopback, private and link-local addresses too."""
    now = now or utcnow()
    policy = policy or RetryPolicy()
    with sessions() as s:
        due = s.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)).all()
    # A claim lasts past the request's timeout, so a server that dies mid-send leaves the
    # delivery to be retried by another after that.
    claim_until = now + timedelta(seconds=policy.timeout_seconds + 30)
    outcome: dict[str, str] = {}
    for delivery_id in due:
        with sessions.begin() as s:
            if not _claim(s, delivery_id, now, claim_until):
                continue  # another server has it
        with sessions() as s:
            delivery = s.get(WebhookDelivery, delivery_id)
            endpoint = s.get(WebhookEndpoint, delivery.endpoint_id) if delivery else None
            if delivery is None or endpoint is None:
                continue  # its endpoint was deleted meanwhile
            s.expunge_all()
        error = _send(client, endpoint, delivery, now, policy.timeout_seconds, allow_private)
        attempts = delivery.attempts + 1
        values: dict[str, object] = {"attempts": attempts, "last_error": error}
        if error is None:
            values |= {"status": DELIVERED, "delivered_at": utcnow()}
        elif attempts >= policy.max_attempts:
            values |= {"status": FAILED}
            log.warning("webhook %s to %s failed for good after %d tries: %s", delivery_id,
                        endpoint.url, attempts, error)
        else:
            values |= {"next_attempt_at": now + policy.delay(attempts)}
        with sessions.begin() as s:
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                      .values(**values).execution_options(synchronize_session=False))
        outcome[delivery_id] = str(values.get("status", PENDING))
    return outcome


class WebhookSender:
    """A daemon thread that runs `deliver_due` every `settings.webhook_interval` seconds."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self.policy = RetryPolicy.from_settings(settings)
        self.interval = settings.webhook_interval
        self.allow_private = settings.allow_private_targets
        self._client = httpx.Client(follow_redirects=False)
        self._thread = PeriodicThread("sagetrain-webhooks", self.run_once, self.interval)

    def start(self) -> WebhookSender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.stop(timeout):
            self._client.close()

    def run_once(self) -> dict[str, str]:
        return deliver_due(self.sessions, self._client, policy=self.policy,
                           allow_private=self.allow_private)
