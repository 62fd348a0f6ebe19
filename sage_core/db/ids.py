"""Public ids: a prefix and a url-safe token that sorts by creation time.

The token starts with a process-wide monotonic microsecond clock (11 base32 characters), so
ids created by one process sort in creation order even within one microsecond, and ends with
random characters so ids cannot be guessed.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_lock = threading.Lock()
_last_us = 0


def _monotonic_us() -> int:
    global _last_us
    with _lock:
        now = time.time_ns() // 1000
        _last_us = max(now, _last_us + 1)
        return _last_us


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """`prefix-<time><random>`, e.g. `ftjob-01h2x...`."""
    # 65 random bits, encoded as 13 base32 characters (one system call, not thirteen)
    random_part = _encode(int.from_bytes(secrets.token_bytes(9)) >> 7, 13)
    return f"{prefix}-{_encode(_monotonic_us(), 11)}{random_part}"


FILE, JOB, CHECKPOINT, EVENT, KEY = "file", "ftjob", "ftckpt", "ftevent", "key"
