"""The artifact store in an S3-compatible bucket (AWS S3, MinIO, Ceph...), for services whose
API and workers run on several machines: SAGETRAIN_ARTIFACTS_URL=s3://bucket/prefix, with
SAGETRAIN_S3_ENDPOINT_URL for anything but AWS, and credentials the usual boto3 way
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role).

A key is an object `prefix/key`; a tree is the objects under `prefix/key/`. S3 has no
rename, but a single PUT is atomic, so a reader never sees half an object. Replacing a
tree uploads the new objects over the old ones, then deletes those that are no longer
part of it.

Training reads local files: `local_path` downloads an object or a tree into a cache under
the data folder (through a temporary name, then a rename). Uploaded files never change
under their key, so a cached copy of the right size is reused.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from sage_core.artifacts import ArtifactKeyError, check_key
from sage_core.settings import Settings


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"Invalid artifacts URL: {url!r}; expected s3://bucket/prefix")
    prefix = parsed.path.strip("/")
    if prefix:
        check_key(prefix)
    return parsed.netloc, prefix


class S3ArtifactStore:
    def __init__(self, bucket: str, prefix: str, cache_dir: Path, *,
                 endpoint_url: str | None = None, client: Any = None):
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                # MinIO and most others want path-style addressing; AWS accepts it too.
                s3={"addressing_style": "path"}))
        self.client = client
        self.bucket, self.prefix = bucket, prefix
        self.cache_dir = Path(cache_dir).resolve()
        self._tmp = self.cache_dir / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ArtifactStore:
        assert settings.artifacts_url is not None
        bucket, prefix = parse_s3_url(settings.artifacts_url)
        return cls(bucket, prefix, settings.data_dir / "artifact-cache",
                   endpoint_url=settings.s3_endpoint_url)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _objects(self, key: str) -> Iterator[tuple[str, int]]:
        """(name relative to the tree `key`, size) of each object under `key/`."""
        base = self._name(key) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(base):], int(obj["Size"])

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    # --- the ArtifactStore protocol -------------------------------------------------------

    def scratch_file(self) -> Path:
        """A fresh local path for streaming an upload before `put_file`."""
        return self._tmp / f"upload-{secrets.token_hex(12)}"

    def put_file(self, key: str, source: Path) -> int:
        """Upload `source` to `key` and remove it (as the local store moves it)."""
        size = Path(source).stat().st_size
        self.client.upload_file(str(source), self.bucket, self._name(key))
        Path(source).unlink(missing_ok=True)
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        return len(data)

    def put_tree(self, key: str, source: Path) -> None:
        source = Path(source)
        new = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
        for rel in sorted(new):
            self.client.upload_file(str(source / rel), self.bucket, self._name(f"{key}/{rel}"))
        stale = [rel for rel, _ in self._objects(key) if rel not in new]
        self._delete_names([self._name(f"{key}/{rel}") for rel in stale])

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from exc
            raise
        return body  # a streaming, closable file object (botocore StreamingBody)

    def local_path(self, key: str) -> Path:
        """A local copy of the object or tree `key`, in the cache."""
        target = self.cache_dir / check_key(key)
        if self.cache_dir not in target.resolve().parents:
            raise ArtifactKeyError(f"invalid artifact key: {key!r}")
        head = self._head(key)
        if head is not None:
            if target.is_file() and target.stat().st_size == int(head["ContentLength"]):
                return target
            staged = self.scratch_file()
            self.client.download_file(self.bucket, self._name(key), str(staged))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            return target
        members = list(self._objects(key))
        if not members:
            raise FileNotFoundError(key)
        staged = self._tmp / f"tree-{secrets.token_hex(12)}"
        for rel, _ in members:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self._name(f"{key}/{rel}"), str(staged / rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a tree may have been replaced since it was cached
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staged, target)
        return target

    def exists(self, key: str) -> bool:
        if self._head(key) is not None:
            return True
        return next(iter(self._objects(key)), None) is not None

    def delete(self, key: str) -> None:
        names = [self._name(key)] + [self._name(f"{key}/{rel}") for rel, _ in self._objects(key)]
        self._delete_names(names)
        cached = self.cache_dir / key
        if cached.is_dir():
            shutil.rmtree(cached, ignore_errors=True)
        else:
            cached.unlink(missing_ok=True)

    def walk(self, key: str) -> Iterator[tuple[str, int]]:
        """(relative path, size) of every object in the tree `key`, sorted."""
        yield from sorted(self._objects(key))

    def _delete_names(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):  # DeleteObjects takes 1000 at most
            batch = names[start:start + 1000]
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": n} for n in batch], "Quiet": True})
