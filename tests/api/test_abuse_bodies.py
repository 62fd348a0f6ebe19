"""Issue 17, items 2, 3 and 12, against a real `sagetrain serve` over raw sockets:

- slow uploads hold no database transaction (SQLite's write lock, or a PostgreSQL
  connection of a small pool) while their bodies trickle in, and a body slower than the
  limit is cut off with 408;
- a body to /v1 without a live key gets 401 before it is read; with one, a body over the
  JSON cap gets 413 naming the limit, from Content-Length or while a chunked one is read;
- idle connections, and connections that never finish their headers, are closed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import LiveServer
from sample_data import rows

pytestmark = pytest.mark.slow

JSON_CAP = 64 * 1024
LIMITS = {
    "SAGETRAIN_MAX_JSON_BODY_BYTES": str(JSON_CAP),
    "SAGETRAIN_BODY_MIN_BYTES_PER_SECOND": "100",
    "SAGETRAIN_BODY_GRACE_SECONDS": "3",
    "SAGETRAIN_KEEP_ALIVE_TIMEOUT": "2",
    "SAGETRAIN_HEADER_TIMEOUT": "3",
    # a small pool: slow uploads that each held a connection would exhaust it
    "SAGETRAIN_DATABASE_POOL_SIZE": "4",
    "SAGETRAIN_DATABASE_MAX_OVERFLOW": "0",
}
BOUNDARY = "sagetrain-test-boundary"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in
                                                           headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """The status of the response on `sock` and what came with it, or (0, b"") if the
    connection was closed without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.settimeout(1)
        while True:  # the rest of a short body
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return 0, data
    return int(data.split()[1]), data


def _multipart(data: bytes) -> tuple[bytes, bytes]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"fine-tune\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"train.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n")
    return head.encode() + data, f"\r\n--{BOUNDARY}--\r\n".encode()


def _slow_upload(url: str, key: str, seconds: float, pieces: int, out: list[int]) -> None:
    """POST /v1/files with its body sent in `pieces` over `seconds`; its status to `out`."""
    body, tail = _multipart(rows(60, 7))
    step = len(body) // pieces + 1
    with _connect(url) as sock:
        sock.sendall(_head("POST", "/v1/files", {
            "Authorization": f"Bearer {key}", "Content-Length": str(len(body) + len(tail)),
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
        for start in range(0, len(body), step):
            sock.sendall(body[start:start + step])
            time.sleep(seconds / pieces)
        sock.sendall(tail)
        out.append(_status(sock, 60)[0])


@pytest.fixture
def server(tmp_path: Path, models_dir: Path, db_url: str) -> Iterator[LiveServer]:
    with LiveServer.start(tmp_path, models_dir,
                          {**LIMITS, "SAGETRAIN_DATABASE_URL": db_url}) as live:
        yield live


def test_slow_uploads_hold_nothing_and_a_too_slow_one_is_cut_off(server: LiveServer) -> None:
    statuses: list[int] = []
    uploads = [threading.Thread(target=_slow_upload, args=(server.url, server.key, 14, 28,
                                                           statuses)) for _ in range(8)]
    for upload in uploads:
        upload.start()
    time.sleep(2)  # every upload is under way, its key checked
    with server.client() as c:
        slowest = 0.0
        for i in range(6):
            started = time.monotonic()
            assert c.get("/readyz").status_code == 200
            r = c.post("/v1/webhooks", json={"url": f"https://example.com/{i}"})
            assert r.status_code == 200, r.text
            assert c.get("/v1/files").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.5)
    print(f"slowest round of requests during the uploads: {slowest:.2f} s")
    assert slowest < 4, slowest  # each waited for the uploads to end (or 30 s) before
    for upload in uploads:
        upload.join(60)
    assert statuses == [200] * len(uploads), statuses

    with _connect(server.url) as sock:  # 2 bytes a second: under the 100 bytes/s minimum
        body, tail = _multipart(rows(60, 8))
        sock.sendall(_head("POST", "/v1/files", {
            "Authorization": f"Bearer {server.key}",
            "Content-Length": str(len(body) + len(tail)),
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
        started = time.monotonic()
        sock.sendall(body[:400])
        status, answer = 0, b""
        for byte in body[400:460]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # closed by the server
            time.sleep(0.5)
        status, answer = _status(sock, 10)
    assert status == 408, answer
    assert b"request_timeout" in answer
    assert time.monotonic() - started < 25
    scratch = list((server.root / "data" / "artifacts").rglob("*"))
    assert not [p for p in scratch if p.is_file() and "scratch" in str(p)], scratch


def test_bodies_need_a_key_before_they_are_read_and_json_has_a_cap(
        tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir, LIMITS) as server:
        huge = 200 * 1024 * 1024
        for auth in ({}, {"Authorization": "Bearer sk-st-bogus"}):
            with _connect(server.url) as sock:
                started = time.monotonic()
                sock.sendall(_head("POST", "/v1/fine_tuning/jobs", {
                    "Content-Type": "application/json", "Content-Length": str(huge), **auth}))
                sock.sendall(b"{" + b" " * 65536)
                status, answer = _status(sock, 10)  # long before 200 MiB could be sent
            assert status == 401, answer
            assert b"invalid_api_key" in answer
            assert time.monotonic() - started < 10

        key = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
        with _connect(server.url) as sock:
            sock.sendall(_head("POST", "/v1/fine_tuning/jobs",
                               {**key, "Content-Length": str(JSON_CAP + 1)}))
            status, answer = _status(sock, 10)
        assert status == 413, answer
        assert str(JSON_CAP).encode() in answer and b"request_too_large" in answer

        with _connect(server.url) as sock:  # chunked: no length to check up front
            sock.sendall(_head("POST", "/v1/webhooks", {**key,
                                                        "Transfer-Encoding": "chunked"}))
            chunk = b" " * 16384
            try:
                for _ in range(2 * JSON_CAP // len(chunk)):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # closed by the server once past the cap
            status, answer = _status(sock, 10)
        assert status == 413, answer
        assert str(JSON_CAP).encode() in answer

        with httpx.Client(base_url=server.url, headers=key) as c:  # under the cap: as before
            r = c.post("/v1/webhooks", json={"url": "https://example.com/hook"})
            assert r.status_code == 200, r.text


def test_idle_and_slow_header_connections_are_closed(tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir, LIMITS) as server:
        def closed_after(sock: socket.socket) -> float:
            started = time.monotonic()
            sock.settimeout(30)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            return time.monotonic() - started

        with _connect(server.url) as sock:  # opened, and nothing sent
            assert 2 < closed_after(sock) < 15
        with _connect(server.url) as sock:  # half a request line, then nothing
            sock.sendall(b"GET /healthz HT")
            assert 2 < closed_after(sock) < 15
        with _connect(server.url) as sock:  # one request, then idle on keep-alive
            sock.sendall(_head("GET", "/healthz", {}))
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert closed_after(sock) < 15
