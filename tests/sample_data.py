"""Learnable training data for tests that go through the HTTP API or the workers: JSONL
bytes of alternating ham and spam messages, each six words drawn from its class."""

from __future__ import annotations

import json
import random

SPAM = ("free", "win", "prize", "call", "now", "cash", "claim", "urgent", "reply", "offer")
HAM = ("good", "hello", "see", "later", "home", "ok", "fine", "yes", "love", "movie")


def rows(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = SPAM if label == "spam" else HAM
        out.append(json.dumps({"text": " ".join(rng.choice(words) for _ in range(6)),
                               "label": label}))
    return ("\n".join(out) + "\n").encode()
