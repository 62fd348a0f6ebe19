"""Issue 18: `sagetrain serve` stops on SIGTERM within SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS
whatever it is doing (an upload arriving slowly, open event streams, requests waiting on a
locked database, a running job), exits 0, and leaves no job process behind; a running job
goes back to the queue after a checkpoint and resumes under the next `serve`."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from api_helpers import LiveServer, worker_pids
from process_helpers import wait_for
from sample_data import rows

pytestmark = pytest.mark.slow

DEADLINE = 10.0  # SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS in these tests
SLACK = 5.0  # a loaded machine's start-up of the stop, and the exit itself
SETTINGS = {"SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS": str(DEADLINE)}


def _terminate(server: LiveServer) -> float:
    """SIGTERM the server; return how long it took to exit, which must be within the
    deadline, with status 0."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(DEADLINE + SLACK)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        pytest.fail(f"still running {DEADLINE + SLACK:.0f} s after SIGTERM; log:\n"
                    f"{server.log_text()[-3000:]}")
    took = time.monotonic() - started
    assert server.proc.returncode == 0, (server.proc.returncode, server.log_text()[-3000:])
    print(f"exited {took:.1f} s after SIGTERM")  # shown by pytest -rP
    return took


def _upload(client: httpx.Client) -> str:
    r = client.post("/v1/files", files={"file": ("train.jsonl", rows(40, 1))},
                    data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


@contextmanager
def _slow_upload(url: str, key: str) -> Iterator[list[bytes]]:
    """An upload whose body trickles in (fast enough for the body guard's minimum rate) and
    never ends; yields what the server answered, filled in once it answers or hangs up."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    boundary = "stopboundary"
    sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {key}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {50_000_000}\r\n\r\n"
                  f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
                  f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; "
                  f"name=\"file\"; filename=\"train.jsonl\"\r\n\r\n").encode())
    answer: list[bytes] = []
    done = threading.Event()

    def trickle() -> None:
        line = rows(1, 2)
        sock.settimeout(0.2)
        try:
            while not done.is_set():
                sock.sendall(line * 200)  # ~10 kB every 0.2 s: well above the minimum rate
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    continue
                answer.append(got)
                return
        except OSError:
            answer.append(b"")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield answer
    finally:
        done.set()
        thread.join(5)
        sock.close()


@pytest.mark.timeout(180)
def test_sigterm_during_a_slow_upload_answers_503_at_the_deadline(
        tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir, SETTINGS) as server:
        with _slow_upload(server.url, server.key) as answer:
            time.sleep(1.0)  # the upload is under way
            assert not answer
            took = _terminate(server)
            wait_for(lambda: answer, 5, "the upload's connection to end")
        assert took < DEADLINE + SLACK
        assert answer[0].startswith(b"HTTP/1.1 503"), answer
        assert "for 1 request(s) in flight" in server.log_text()


@pytest.mark.timeout(120)
def test_a_second_sigterm_exits_at_once(tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir, SETTINGS) as server:
        with _slow_upload(server.url, server.key):
            time.sleep(1.0)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert server.proc.poll() is None  # waiting for the upload
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(DEADLINE) == 1
            assert time.monotonic() - started < 3.0
        assert "SIGTERM again: exiting now" in server.log_text()


async def _open_streams(url: str, key: str, job_id: str, count: int, opened: asyncio.Event,
                        ended: list[float]) -> None:
    limits = httpx.Limits(max_connections=count + 5, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=30),
                                 limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        started = 0

        async def one() -> None:
            nonlocal started
            try:
                async with client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/stream") as r:
                    assert r.status_code == 200
                    started += 1
                    if started == count:
                        opened.set()
                    async for _ in r.aiter_bytes():
                        pass
            except httpx.HTTPError:
                pass
            ended.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.timeout(180)
def test_sigterm_with_100_open_event_streams_closes_them_and_exits(
        tmp_path: Path, models_dir: Path) -> None:
    # A job asking for more GPUs than the server holds stays queued: its stream stays open.
    with LiveServer.start(tmp_path, models_dir, {**SETTINGS,
                                                 "SAGETRAIN_GPU_WAIT_SECONDS": "600"}) as server, \
            server.client() as c:
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": _upload(c), "resources": {"gpus": 2},
            "hyperparameters": {"batch_size": 4}})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        ended: list[float] = []
        loop = asyncio.new_event_loop()
        opened = asyncio.Event()
        streams = threading.Thread(target=loop.run_until_complete, args=(
            _open_streams(server.url, server.key, job_id, 100, opened, ended),), daemon=True)
        streams.start()
        wait_for(lambda: opened.is_set(), 60, "100 open streams")
        assert not ended
        took = _terminate(server)
        streams.join(10)
        assert len(ended) == 100
        assert took < DEADLINE + SLACK


async def _burst(url: str, key: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def one(i: int) -> int:
            try:
                r = await client.post("/v1/files", data={"purpose": "fine-tune"},
                                      files={"file": (f"t{i}.jsonl", rows(20, i))})
            except httpx.HTTPError:
                return 0  # no answer: the connection was closed
            return r.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


@pytest.mark.timeout(240)
def test_sigterm_during_a_burst_blocked_on_the_database_exits_by_the_deadline(
        tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir, SETTINGS) as server:
        db = sqlite3.connect(tmp_path / "data" / "sagetrain.db", timeout=1,
                             isolation_level=None)
        db.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held until the end
        try:
            statuses: list[int] = []
            burst = threading.Thread(target=lambda: statuses.extend(
                asyncio.run(_burst(server.url, server.key, 120))), daemon=True)
            burst.start()
            time.sleep(3.0)  # every request is in, waiting on the lock or for a thread
            assert not statuses
            took = _terminate(server)
            burst.join(10)
        finally:
            db.rollback()
            db.close()
        assert took < DEADLINE + SLACK
        assert len(statuses) == 120
        assert set(statuses) <= {503, 0}, sorted(set(statuses))
        assert statuses.count(503) > 0


@pytest.mark.timeout(420)
def test_sigterm_during_a_running_job_hands_it_back_and_it_resumes(
        tmp_path: Path, models_dir: Path) -> None:
    with LiveServer.start(tmp_path, models_dir, SETTINGS) as server, server.client() as c:
        r = c.post("/v1/files", files={"file": ("train.jsonl", rows(400, 5))},
                   data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": r.json()["id"], "hyperparameters": {
                "n_epochs": 6, "batch_size": 4, "max_seq_length": 16}})  # 600 steps
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]

        server.wait_training(c, job_id, past_step=5)
        took = _terminate(server)
        assert took < DEADLINE + SLACK
        assert worker_pids(job_id) == []
        log = server.log_text()
        assert f"for job {job_id} to checkpoint" in log, log[-3000:]

    key = server.key  # the job's owner
    with LiveServer.start(tmp_path, models_dir, SETTINGS) as server, httpx.Client(
            base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job  # not failed, not left running
        checkpoints = c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        assert checkpoints, "no checkpoint was saved on the way out"
        saved = max(cp["step_number"] for cp in checkpoints)

        def resumed() -> bool:
            events = c.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                           params={"limit": 100}).json()["data"]
            return any("esum" in e["message"] for e in events)

        wait_for(resumed, 120, "the job to resume")
        wait_for(lambda: c.get(f"/v1/fine_tuning/jobs/{job_id}").json()["progress"]["step"]
                 > saved, 120, "the job to train past its checkpoint")
        assert c.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] in (
            "running", "succeeded")
        took = _terminate(server)
        assert worker_pids(job_id) == []
    assert worker_pids(job_id) == []
