"""The S3-compatible artifact store against a local S3 server: the same contract as the
local store (objects, trees, replace, walk, delete, local copies), keys checked."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from s3_fixtures import *  # noqa: F403
from s3_fixtures import S3Server

from sage_core.artifacts import ArtifactKeyError, get_artifact_store
from sage_core.artifacts_s3 import S3ArtifactStore, parse_s3_url
from sage_core.settings import Settings


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path) -> S3ArtifactStore:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_server.endpoint_url,
                        artifacts_url=f"s3://{s3_server.bucket}/t{secrets.token_hex(3)}")
    chosen = get_artifact_store(settings)
    assert isinstance(chosen, S3ArtifactStore)
    return chosen


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_objects(store: S3ArtifactStore, tmp_path: Path) -> None:
    assert store.put_bytes("files/file-a.jsonl", b'{"text": "x"}\n') == 14
    with store.open("files/file-a.jsonl") as f:
        assert f.read() == b'{"text": "x"}\n'
    scratch = store.scratch_file()
    scratch.write_bytes(b"0123456789")
    assert store.put_file("files/file-b.csv", scratch) == 10
    assert not scratch.exists()  # moved into the store, as with the local store
    assert store.exists("files/file-b.csv") and not store.exists("files/file-c.csv")
    local = store.local_path("files/file-b.csv")
    assert local.read_bytes() == b"0123456789"
    assert store.local_path("files/file-b.csv") == local  # cached
    store.delete("files/file-b.csv")
    assert not store.exists("files/file-b.csv")
    with pytest.raises(FileNotFoundError):
        store.open("files/file-b.csv")
    with pytest.raises(FileNotFoundError):
        store.local_path("files/file-b.csv")


def test_trees_replace_walk_delete(store: S3ArtifactStore, tmp_path: Path) -> None:
    key = "jobs/ftjob-x/checkpoints/step-4"
    store.put_tree(key, _tree(tmp_path / "a", {"config.json": b"{}", "model.safetensors": b"w"
                                               * 100, "resume/state.pt": b"s"}))
    assert list(store.walk(key)) == [("config.json", 2), ("model.safetensors", 100),
                                     ("resume/state.pt", 1)]
    assert store.exists(key)
    store.put_tree(key, _tree(tmp_path / "b", {"config.json": b"{1}", "tokenizer.json": b"t"}))
    assert [name for name, _ in store.walk(key)] == ["config.json", "tokenizer.json"]
    with store.open(f"{key}/config.json") as f:
        assert f.read() == b"{1}"
    local = store.local_path(key)
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "tokenizer.json"]
    store.delete(key)
    assert not store.exists(key) and list(store.walk(key)) == []


def test_keys_are_checked(store: S3ArtifactStore) -> None:
    for bad in ("../etc/passwd", "/abs", "a//b", "files/../x", ""):
        with pytest.raises(ArtifactKeyError):
            store.put_bytes(bad, b"x")


def test_url_parsing() -> None:
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("http://bucket/x", "s3:///x", "s3://b/../x"):
        with pytest.raises((ValueError, ArtifactKeyError)):
            parse_s3_url(bad)
