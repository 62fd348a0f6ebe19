"""Tiny random models for tests and examples: no download, built in well under a second.

`build_tiny_model(folder)` writes a Hugging Face folder (config + weights + tokenizer) for a
2-layer, 64-wide BERT with a small WordPiece vocabulary, which the catalog serves like any
other base model when the folder sits under SAGETRAIN_MODELS_DIR.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_WORDS = (
    "the a an is are was be to of and in it for on with as this that you i not "
    "free win prize call now text stop cash claim urgent reply offer "
    "good bad great terrible love hate movie film ok fine yes no hello see later home "
).split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return specials + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits] + _WORDS


def build_tiny_model(folder: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised tiny BERT (base model, no head) with its tokenizer."""
    import torch

    # transformers 5 serves BertTokenizerFast lazily, out of sight of its type stubs
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n")
    # positional: `vocab_file` in transformers 4, `vocab` (a path or a dict) in 5
    tokenizer = BertTokenizerFast(str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


@contextmanager
def throwaway_postgres(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database for one test or bench run, dropped (with
    FORCE) afterwards. `admin_url` names an existing database to connect through; a failure
    to reach it raises at entry, before anything is created."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from sage_core.db.session import dispose_engines

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        admin.dispose()
        raise
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # pooled connections into the database would make DROP wait for them
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
