"""A checkpoint's download: which part of its stored folder goes into the archive.

A checkpoint folder holds a Hugging Face model folder, the resume state beside it (never
downloaded) and, for a LoRA job, the peft adapter folder in `ADAPTER_DIR`. `merged` ships
the model folder, `adapter` the adapter folder alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from api.errors import InvalidRequestError
from api.services.archive import stream_tree_targz
from sage_core.artifacts import ArtifactStore
from sage_core.db.models import Checkpoint
from sage_core.names import ADAPTER_DIR, RESUME_FILES


@dataclass(frozen=True)
class Archive:
    name: str  # the archive's one top folder, and the download's file name
    chunks: Iterator[bytes]


def archive(store: ArtifactStore, checkpoint: Checkpoint, variant: str) -> Archive:
    """The .tar.gz of `variant` ("merged" or "adapter"); 400 (code no_adapter) for the
    adapter of a checkpoint that has none."""
    name = f"{checkpoint.job_id}-step-{checkpoint.step}"
    if variant == "adapter":
        key = f"{checkpoint.storage_key}/{ADAPTER_DIR}"
        if not store.exists(key):
            raise InvalidRequestError(
                f"checkpoint {checkpoint.id} has no LoRA adapter: job {checkpoint.job_id} "
                "trained every weight; download variant=merged", param="variant",
                code="no_adapter")
        name += "-adapter"
        return Archive(name, stream_tree_targz(store, key, name))
    return Archive(name, stream_tree_targz(store, checkpoint.storage_key, name,
                                           skip=RESUME_FILES | {ADAPTER_DIR}))
