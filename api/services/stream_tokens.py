"""Short-lived tokens for one job's live stream, for clients that cannot send an
Authorization header (a browser's EventSource): `?token=` instead of the key.

A token is `<key id>.<expiry, unix seconds>.<signature>`, the signature an HMAC-SHA256 with
the server's secret over the job id, the key id and the expiry, so it is good for that job
only, until then, and only while its key is live (the key row is read on every use: a
revoked key's tokens fail at once). The key itself never appears in a URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import AuthenticationError
from sage_core.db.models import ApiKey, Job
from sage_core.errors import NotFoundError
from sage_core.settings import Settings

STREAM_TOKEN_SECONDS = 300
INVALID = "invalid_stream_token"


def secret_of(settings: Settings) -> bytes:
    """The configured secret, else a random one for this process."""
    if settings.stream_token_secret:
        return settings.stream_token_secret.encode()
    return secrets.token_bytes(32)


def _signature(secret: bytes, job_id: str, key_id: str, expires: int) -> str:
    digest = hmac.new(secret, f"stream\n{job_id}\n{key_id}\n{expires}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: bytes, job_id: str, key_id: str, now: float | None = None,
          ) -> tuple[str, int]:
    """A token for `job_id`'s stream on behalf of key `key_id`, and its expiry."""
    expires = int(now if now is not None else time.time()) + STREAM_TOKEN_SECONDS
    return f"{key_id}.{expires}.{_signature(secret, job_id, key_id, expires)}", expires


def verify(session: Session, secret: bytes, job_id: str, token: str) -> Job:
    """The job `token` grants; 401 for a malformed, forged, expired or revoked-key token
    (a token for another job fails its signature), 404 if the job is gone."""
    key_id, _, rest = token.partition(".")
    expiry, _, signature = rest.partition(".")
    well_formed = key_id and expiry.isascii() and expiry.isdigit() and signature
    # compared as bytes: compare_digest raises on a str with non-ASCII characters
    if not well_formed or not hmac.compare_digest(
            signature.encode(), _signature(secret, job_id, key_id, int(expiry)).encode()):
        raise AuthenticationError("Invalid stream token: get one from POST "
                                  f"/v1/fine_tuning/jobs/{job_id}/stream_token",
                                  param="token", code=INVALID)
    if int(expiry) < time.time():
        raise AuthenticationError("This stream token has expired: get a new one from POST "
                                  f"/v1/fine_tuning/jobs/{job_id}/stream_token",
                                  param="token", code="stream_token_expired")
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        raise AuthenticationError("The API key this stream token was issued for is revoked.",
                                  param="token", code=INVALID)
    job = session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == key.id))
    if job is None:
        raise NotFoundError(f"No such fine-tuning job: '{job_id}'", param="fine_tuning_job_id")
    session.commit()  # end the read, as the other ownership lookups do
    return job
