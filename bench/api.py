"""API overhead: `sagetrain serve` against a bare FastAPI + SQLAlchemy app, on PostgreSQL.

Both run as uvicorn processes on loopback, on the same freshly migrated database:
- sagetrain: `sagetrain serve --executor none` (the real app: auth, ownership, validation,
  serialization; no jobs run);
- bare: one FastAPI app whose GET reads a job row by id and whose POST inserts one, with no
  auth and no logic (`python bench/api.py bare ...`).
Measured, side by side in one run:
- GET /v1/fine_tuning/jobs/{id}: requests/s with 32 concurrent keep-alive clients, and
  p50/p99 latency with one client. Goals: >= 0.8 x the bare app's throughput, p50 < 5 ms.
- POST /v1/fine_tuning/jobs: requests/s and p50/p99 latency with one client (job creation
  is bounded by GPUs, not HTTP: many clients creating at once is no real load). Goals:
  >= 0.4 x the bare app's, p50 < 10 ms.
The load generator is a minimal HTTP/1.1 client on asyncio streams, to keep its own CPU
cost low on a small machine. Each phase runs twice (--rounds), alternating the apps; the
best run is reported, and the ratio of each round, to show the spread on a busy machine,
and each server's own CPU time per request, which a busy machine disturbs much less than
requests/s, and PostgreSQL's. Both apps use the server's connection pool
(SAGETRAIN_DATABASE_POOL_SIZE). Every job either app creates stays queued, so POST runs
against a growing queue (its depth is printed); --queued N adds N queued jobs first.

    python bench/api.py [--requests 3000] [--latency-requests 500] [--rounds 2] [--queued 0]

Environment: SAGETRAIN_BENCH_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
is where a throwaway database `sagetrain_bench_<random>` is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ADMIN_URL = os.environ.get("SAGETRAIN_BENCH_PG_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CONCURRENCY = 32


# --- the bare app -------------------------------------------------------------------------

def bare_app(database_url: str, owner_id: str) -> Any:
    """FastAPI + SQLAlchemy with nothing else: read or insert a jobs row."""
    from fastapi import FastAPI
    from sqlalchemy import select

    from sage_core.db.ids import new_id
    from sage_core.db.models import Job, utcnow
    from sage_core.db.session import make_engine, make_session_factory
    from sage_core.settings import Settings

    # the same connection pool as sagetrain's server (api/main.py)
    settings = Settings()
    sessions = make_session_factory(make_engine(
        database_url, pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow))
    app = FastAPI()

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        with sessions() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            assert job is not None
            return {"id": job.id, "status": job.status, "model": job.model,
                    "created_at": int(job.created_at.timestamp()), "seed": job.seed,
                    "hyperparameters": job.spec.get("hyperparameters")}

    @app.post("/jobs")
    def create_job(body: dict[str, Any]) -> dict[str, Any]:
        job_id = new_id("ftjob")
        with sessions.begin() as s:
            s.add(Job(id=job_id, owner_id=owner_id, model=body["model"],
                      task="text-classification", spec={"hyperparameters": {}}, seed=1,
                      training_file_id=body["training_file"], status="queued",
                      queued_at=utcnow(), artifact_prefix=f"jobs/{job_id}",
                      result_file_ids=[]))
        return {"id": job_id, "status": "queued"}

    return app


def run_bare(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(bare_app(args.database_url, args.owner_id), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
    return 0


# --- load generation ----------------------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for uvicorn's answers."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_request(method: str, path: str, headers: dict[str, str],
                  body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive",
             *(f"{k}: {v}" for k, v in headers.items())]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _throughput(port: int, raw: bytes, total: int, concurrency: int) -> float:
    remaining = [total]
    connections = [Connection(port) for _ in range(concurrency)]

    async def client(conn: Connection) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            status, body = await conn.request(raw)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    elapsed = time.perf_counter() - start
    for c in connections:
        c.close()
    return total / elapsed


async def _latencies(port: int, raw: bytes, count: int) -> list[float]:
    conn = Connection(port)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        status, body = await conn.request(raw)
        out.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    conn.close()
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- setup ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def throwaway_database() -> Any:
    from sage_core.testing import throwaway_postgres

    return throwaway_postgres(ADMIN_URL, "sagetrain_bench")


@contextmanager
def server(argv: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    from sagetrain.server_process import started_server

    log_path = Path(env["SAGETRAIN_DATA_DIR"]) / f"server-{port}.log"
    with started_server(argv, env=env, url=f"http://127.0.0.1:{port}", log_path=log_path,
                        ready_path="/docs", stop_timeout=30) as proc:
        yield proc


def count_queued(url: str) -> int:
    """Queued jobs: POST's queue_position counts them (both apps' rows are queued jobs)."""
    from sqlalchemy import func, select
    from sqlalchemy.pool import NullPool

    from sage_core.db.models import Job
    from sage_core.db.session import make_engine

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Job)
                                   .where(Job.status == "queued")) or 0)
    finally:
        engine.dispose()


def seed_queue(url: str, owner_id: str, file_id: str, count: int) -> None:
    """`count` more queued jobs, as a deep queue would hold (--queued)."""
    from sqlalchemy import insert
    from sqlalchemy.pool import NullPool

    from sage_core.db.ids import JOB, new_id
    from sage_core.db.models import Job, utcnow
    from sage_core.db.session import make_engine

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for start in range(0, count, 5000):
                rows = []
                for _ in range(min(5000, count - start)):
                    job_id = new_id(JOB)
                    rows.append({"id": job_id, "owner_id": owner_id, "model": "seeded",
                                 "task": "text-classification", "spec": {}, "seed": 1,
                                 "training_file_id": file_id, "status": "queued",
                                 "created_at": utcnow(), "queued_at": utcnow(),
                                 "artifact_prefix": f"jobs/{job_id}", "result_file_ids": []})
                conn.execute(insert(Job), rows)
    finally:
        engine.dispose()


def run_bench(args: argparse.Namespace) -> int:
    import httpx

    from sage_core.db.migrate import upgrade

    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        upgrade(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAGETRAIN_")}
        env.update(SAGETRAIN_DATABASE_URL=url, SAGETRAIN_DATA_DIR=tmp)
        cli = [sys.executable, "-m", "sagetrain.cli"]
        key_out = subprocess.run([*cli, "keys", "create", "--name", "bench"], env=env,
                                 check=True, capture_output=True, text=True).stdout
        key = key_out.strip().splitlines()[-1]
        st_port, bare_port = free_port(), free_port()
        st_argv = [*cli, "serve", "--executor", "none", "--port", str(st_port),
                   "--no-access-log", "--log-level", "warning"]
        with server(st_argv, env, st_port) as st_proc:
            auth = {"Authorization": f"Bearer {key}"}
            base = f"http://127.0.0.1:{st_port}"
            data = b"".join(json.dumps({"text": f"message {i}", "label": ["ham", "spam"][i % 2]})
                            .encode() + b"\n" for i in range(100))
            file_id = httpx.post(f"{base}/v1/files", headers=auth, files={
                "file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}).json()["id"]
            body = {"model": "sentence-transformers/all-MiniLM-L6-v2", "training_file": file_id}
            created = httpx.post(f"{base}/v1/fine_tuning/jobs", headers=auth, json=body)
            created.raise_for_status()
            job_id = created.json()["id"]
            owner_id = created.json()["organization_id"]
            seed_queue(url, owner_id, file_id, args.queued)
            bare_argv = [sys.executable, __file__, "bare", "--port", str(bare_port),
                         "--database-url", url, "--owner-id", owner_id]
            with server(bare_argv, env, bare_port) as bare_proc:
                cases = [
                    Case("GET job", CONCURRENCY, GOALS["GET job"], {
                        "sagetrain": (st_port, build_request(
                            "GET", f"/v1/fine_tuning/jobs/{job_id}", auth)),
                        "bare": (bare_port, build_request("GET", f"/jobs/{job_id}", {}))}),
                    Case("POST job", 1, GOALS["POST job"], {
                        "sagetrain": (st_port, build_request(
                            "POST", "/v1/fine_tuning/jobs", auth, body)),
                        "bare": (bare_port, build_request("POST", "/jobs", {}, body))}),
                ]
                pids = {st_port: st_proc.pid, bare_port: bare_proc.pid}
                results = measure(cases, args, partial(count_queued, url), pids)
    report(cases, results, args)
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (both apps share the server;
    each app's runs are timed alone). Processes that end between two readings drop out, so
    this is for a server whose backends live as long as the apps' pooled connections."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split("(", 1)[1].rsplit(")", 1)
        if name.startswith("postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass(frozen=True)
class Case:
    name: str
    clients: int  # for requests/s; latency is always measured with one client
    goals: tuple[float, float]  # (least ratio to the bare app's requests/s, most p50 ms)
    apps: dict[str, tuple[int, bytes]]  # app -> (port, raw request)


GOALS = {"GET job": (0.8, 5.0), "POST job": (0.4, 10.0)}


def measure(cases: list[Case], args: argparse.Namespace, queued: Callable[[], int],
            pids: dict[int, int]) -> dict[str, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for case in cases:
        results[case.name] = {app: {"rps": 0.0, "p50": float("inf"), "p99": float("inf"),
                                    "cpu": float("inf"), "db_cpu": float("inf"),
                                    "rounds": [], "queued": []}
                              for app in case.apps}
        for port, raw in case.apps.values():  # warm up pools, caches, code paths
            asyncio.run(_throughput(port, raw, 300 // case.clients, case.clients))
        for _round in range(args.rounds):
            for app, (port, raw) in case.apps.items():
                results[case.name][app]["queued"].append(queued())
                cpu, db_cpu = cpu_seconds(pids[port]), database_cpu_seconds()
                if case.clients == 1:  # one run gives both
                    count = args.latency_requests
                    start = time.perf_counter()
                    lat = asyncio.run(_latencies(port, raw, count))
                    rps = count / (time.perf_counter() - start)
                else:
                    count = args.requests
                    rps = asyncio.run(_throughput(port, raw, count, case.clients))
                cpu = (cpu_seconds(pids[port]) - cpu) * 1000 / count
                db_cpu = (database_cpu_seconds() - db_cpu) * 1000 / count
                if case.clients != 1:
                    lat = asyncio.run(_latencies(port, raw, args.latency_requests))
                best = results[case.name][app]
                best["rps"] = max(best["rps"], rps)
                best["p50"] = min(best["p50"], statistics.median(lat))
                best["p99"] = min(best["p99"], percentile(lat, 0.99))
                best["cpu"] = min(best["cpu"], cpu)
                best["db_cpu"] = min(best["db_cpu"], db_cpu)
                best["rounds"].append(rps)
    return results


def report(cases: list[Case], results: dict[str, dict[str, dict[str, Any]]],
           args: argparse.Namespace) -> None:
    print(f"API overhead on PostgreSQL: req/s over {args.requests} requests at "
          f"{CONCURRENCY} concurrent clients (GET) or {args.latency_requests} at one client "
          f"(POST); latency over {args.latency_requests} at one client; best of "
          f"{args.rounds} rounds")
    print(f"{'case':<10} {'app':<10} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'vs bare':>8} {'CPU ms/req':>11} {'DB CPU ms/req':>14}")
    for case in cases:
        apps = results[case.name]
        bare = apps["bare"]["rps"]
        for app, r in apps.items():
            ratio = r["rps"] / bare if bare else float("nan")
            print(f"{case.name:<10} {app:<10} {case.clients:>7} {r['rps']:>8.0f} "
                  f"{r['p50']:>8.2f} {r['p99']:>8.2f} {ratio:>8.2f} {r['cpu']:>11.2f} "
                  f"{r['db_cpu']:>14.2f}")
    for case in cases:
        apps = results[case.name]
        least_ratio, most_p50 = case.goals
        ratio = apps["sagetrain"]["rps"] / apps["bare"]["rps"]
        p50 = apps["sagetrain"]["p50"]
        print(f"{case.name}: throughput ratio {ratio:.2f} (goal >= {least_ratio:.2f}: "
              f"{'met' if ratio >= least_ratio else 'NOT met'}), p50 {p50:.2f} ms (goal < "
              f"{most_p50:g} ms: {'met' if p50 < most_p50 else 'NOT met'})")
    # Each round runs sagetrain, then bare: on a busy machine the spread says how far the
    # best-of figures can be trusted.
    for case in cases:
        apps = results[case.name]
        ratios = [s / b for s, b in zip(apps["sagetrain"]["rounds"], apps["bare"]["rounds"],
                                        strict=True)]
        print(f"{case.name}: ratio per round " + " ".join(f"{r:.2f}" for r in ratios)
              + f" (median {statistics.median(ratios):.2f}); queued jobs as sagetrain's runs "
              "began: " + " ".join(str(n) for n in apps["sagetrain"]["queued"]))
    print("CPU ms/req: the server process's own CPU time (user + system, all threads) per "
          "request in the req/s run, least of the rounds; DB CPU ms/req: PostgreSQL's, alike")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("bare", help="(internal) serve the bare comparison app")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--database-url", required=True)
    bare.add_argument("--owner-id", required=True)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds per case, each running both apps (default 2)")
    parser.add_argument("--queued", type=int, default=0,
                        help="queued jobs to add before measuring (default 0)")
    args = parser.parse_args(argv)
    if args.command == "bare":
        return run_bare(args)
    return run_bench(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
