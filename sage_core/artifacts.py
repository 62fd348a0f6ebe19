"""The artifact store: uploaded files, checkpoints and result files, under generated keys.

Keys are made by sagetrain (`files/file-….jsonl`, `jobs/ftjob-…/checkpoints/step-40`), never
from user input, and are checked anyway: letters, digits, `._-` and `/`, with no
empty, `.` or `..` segment. A key names either one object (a file) or a tree (a folder of
objects, such as a Hugging Face checkpoint). `LocalArtifactStore` keeps them under one
folder; an S3-compatible store can implement the same interface.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from sage_core.settings import Settings

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class ArtifactKeyError(ValueError):
    pass


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ArtifactKeyError(f"invalid artifact key: {key!r}")
    return key


class ArtifactStore(Protocol):
    def put_file(self, key: str, source: Path) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> int: ...
    def put_tree(self, key: str, source: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def walk(self, key: str) -> Iterator[tuple[str, int]]: ...
    def scratch_file(self) -> Path: ...


class LocalArtifactStore:
    """Artifacts as files under `root`. Writes land in `root/.tmp` and are renamed into
    place, so a reader never sees half an object."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ArtifactKeyError(f"invalid artifact key: {key!r}")
        return path

    def scratch_file(self) -> Path:
        """A fresh path on the store's filesystem, for streaming an upload before `put_file`."""
        return self._tmp / f"upload-{secrets.token_hex(12)}"

    def put_file(self, key: str, source: Path) -> int:
        """Move `source` (a file on the same machine) to `key`; returns its size."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = self.scratch_file()
        shutil.move(str(source), staged)
        os.replace(staged, target)
        return target.stat().st_size

    def put_bytes(self, key: str, data: bytes) -> int:
        staged = self.scratch_file()
        staged.write_bytes(data)
        return self.put_file(key, staged)

    def put_tree(self, key: str, source: Path) -> None:
        """Copy the folder `source` to the tree `key`, replacing what was there."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = self._tmp / f"tree-{secrets.token_hex(12)}"
        shutil.copytree(source, staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def local_path(self, key: str) -> Path:
        """A local path holding the object or tree (here: where it lives)."""
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def walk(self, key: str) -> Iterator[tuple[str, int]]:
        """(relative path, size) of every object in the tree `key`, sorted."""
        base = self._path(key)
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            yield path.relative_to(base).as_posix(), path.stat().st_size


def get_artifact_store(settings: Settings) -> ArtifactStore:
    """The S3-compatible store when SAGETRAIN_ARTIFACTS_URL is set (several machines),
    else the local folder."""
    if settings.artifacts_url:
        from sage_core.artifacts_s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.resolved_artifacts_dir)
