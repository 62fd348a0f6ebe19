"""Stream a tree from the artifact store as a .tar.gz, without building it in memory.

A producer thread writes the archive into a bounded queue; the response iterates the
queue. If the client goes away, the consumer stops and the producer gives up at its next
write.
"""

from __future__ import annotations

import gzip
import queue
import tarfile
import threading
import time
from collections.abc import Iterator

from sage_core.artifacts import ArtifactStore

CHUNK = 256 * 1024
_DONE = object()


class _Cancelled(Exception):
    pass


class _QueueWriter:
    def __init__(self, out: queue.Queue[object], cancelled: threading.Event):
        self._out, self._cancelled = out, cancelled
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer.extend(data)
        if len(self._buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if not self._buffer:
            return
        chunk = bytes(self._buffer)
        self._buffer.clear()
        while True:
            if self._cancelled.is_set():
                raise _Cancelled
            try:
                self._out.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue


def stream_tree_targz(store: ArtifactStore, key: str, root_name: str,
                      skip: frozenset[str] = frozenset()) -> Iterator[bytes]:
    """The tree `key` as a gzip'd tar whose members sit under `root_name/`."""
    members = [(rel, size) for rel, size in store.walk(key) if rel.split("/")[0] not in skip]
    out: queue.Queue[object] = queue.Queue(maxsize=8)
    cancelled = threading.Event()

    def produce() -> None:
        writer = _QueueWriter(out, cancelled)
        try:
            # Weights barely compress; level 1 keeps the CPU cost of a download low.
            with gzip.GzipFile(fileobj=writer, mode="wb", compresslevel=1) as gz, \
                    tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel, size in members:
                    info = tarfile.TarInfo(f"{root_name}/{rel}")
                    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
                    with store.open(f"{key}/{rel}") as source:
                        tar.addfile(info, source)
            writer.flush()
            out.put(_DONE)
        except _Cancelled:
            return
        except BaseException as exc:  # hand the error to the consumer
            out.put(exc)

    threading.Thread(target=produce, name=f"targz-{root_name}", daemon=True).start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        cancelled.set()
