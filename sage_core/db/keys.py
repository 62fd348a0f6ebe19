"""API keys: long random tokens (`sk-st-…`), stored only as their sha256.

A plain hash is enough here: the keys carry 256 bits of randomness, so there is nothing to
brute-force, and a fast hash keeps each request's key lookup cheap.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import cache

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from sage_core.db.ids import KEY, new_id
from sage_core.db.models import ApiKey

KEY_PREFIX = "sk-st-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str, *, max_running_jobs: int | None = None,
               max_storage_bytes: int | None = None) -> tuple[ApiKey, str]:
    """Add a key row named `name`, with its own quotas (None: the server's defaults; see
    `sage_core.db.limits`); returns it and the key itself (shown once, never stored)."""
    if max_running_jobs is not None and max_running_jobs < 1:
        raise ValueError(f"Invalid max_running_jobs: {max_running_jobs}")
    if max_storage_bytes is not None and max_storage_bytes < 0:
        raise ValueError(f"Invalid max_storage_bytes: {max_storage_bytes}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id(KEY), name=name, key_hash=hash_key(plaintext),
                 prefix=plaintext[: len(KEY_PREFIX) + 4], max_running_jobs=max_running_jobs,
                 max_storage_bytes=max_storage_bytes)
    session.add(row)
    session.flush()
    return row, plaintext


@cache
def _by_hash() -> Select[ApiKey]:
    # Built once: the statement object memoizes its cache key, which saves CPU per request.
    return select(ApiKey).where(ApiKey.key_hash == bindparam("key_hash"))


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    """The live key row for `plaintext`, or None."""
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
        return None
    row = session.scalar(_by_hash(), {"key_hash": hash_key(plaintext)})
    return row if row is not None and row.revoked_at is None else None
