"""Ids sort by creation; artifact keys cannot escape the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_core.artifacts import ArtifactKeyError, LocalArtifactStore
from sage_core.db.ids import new_id


def test_ids_sort_in_creation_order() -> None:
    ids = [new_id("ftjob") for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i.startswith("ftjob-") and len(i) == len("ftjob-") + 24 for i in ids)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "-a", "a//b", "a/./b", ""])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ArtifactKeyError):
        store.put_bytes(key, b"x")


def test_put_open_walk_delete(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    assert store.put_bytes("files/file-1.jsonl", b"hello") == 5
    with store.open("files/file-1.jsonl") as f:
        assert f.read() == b"hello"
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"123")
    store.put_tree("jobs/ftjob-1/checkpoints/step-1", folder)
    assert list(store.walk("jobs/ftjob-1/checkpoints/step-1")) == [
        ("config.json", 2), ("sub/w.bin", 3)]
    store.delete("jobs/ftjob-1/checkpoints/step-1")
    store.delete("files/file-1.jsonl")
    assert not store.exists("files/file-1.jsonl")
    assert not store.exists("jobs/ftjob-1/checkpoints/step-1")
