"""`sagetrain worker`: a Celery worker that runs fine-tuning jobs, each in its own process,
a job asking for N GPUs holding N of the worker's slots at once. Needs SAGETRAIN_BROKER_URL
and a database and artifact store that the API and every other worker share
(SAGETRAIN_DATABASE_URL, SAGETRAIN_ARTIFACTS_URL or a shared SAGETRAIN_ARTIFACTS_DIR).

Slots: `--gpus 0,1,2,3` on a GPU machine (each job's CUDA_VISIBLE_DEVICES lists the GPUs it
holds); `--slots N` on a machine without GPUs (a job of N "GPUs" runs N processes). The worker
consumes the queue of each job size it can hold (`gpu`, `gpu.2`, ... `gpu.K`) and registers
its slots in the database, so that a job bigger than every live worker waits, then fails
(SAGETRAIN_GPU_WAIT_SECONDS)."""

from __future__ import annotations

import argparse
import os
import socket
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", default=None,
                        help="comma-separated base queues to take jobs from (default: "
                             "SAGETRAIN_TASK_QUEUE, 'gpu'); the worker consumes each one's "
                             "queues for job sizes 1 to its slots ('gpu', 'gpu.2', ...)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="jobs at once (default: one per slot)")
    parser.add_argument("--gpus", default=None,
                        help="GPU indices this worker holds, e.g. 0,1,2,3; a job asking for N "
                             "GPUs takes N of them at once (default: SAGETRAIN_WORKER_GPUS)")
    parser.add_argument("--slots", type=int, default=None,
                        help="on a machine without GPUs (no --gpus): processes this worker "
                             "holds; a job asking for N 'GPUs' takes N of them (default: "
                             "SAGETRAIN_WORKER_SLOTS, else --concurrency, else 1)")
    parser.add_argument("--hostname", default=None,
                        help="Celery node name, also its name in the workers registry "
                             "(default: sagetrain-<pid>@<host>)")
    parser.add_argument("--loglevel", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    from sage_core.settings import get_settings

    if args.slots is not None and args.slots < 1:
        print(f"sagetrain worker: Invalid --slots: {args.slots}", file=sys.stderr)
        return 2
    if args.gpus is not None:
        os.environ["SAGETRAIN_WORKER_GPUS"] = args.gpus
    if args.slots is not None:
        os.environ["SAGETRAIN_WORKER_SLOTS"] = str(args.slots)
    elif args.concurrency is not None and args.gpus is None:
        os.environ.setdefault("SAGETRAIN_WORKER_SLOTS", str(args.concurrency))
    get_settings.cache_clear()
    settings = get_settings()
    if not settings.broker_url:
        print("sagetrain worker: set SAGETRAIN_BROKER_URL (redis://host:6379/0)", file=sys.stderr)
        return 2
    from sage_core.broker import worker_queues
    from sage_core.slots import parse_gpus, worker_slots

    if parse_gpus(settings.worker_gpus) and settings.worker_slots is not None:
        print("sagetrain worker: --slots is for a machine without GPUs; with --gpus, each GPU "
              "is a slot", file=sys.stderr)
        return 2
    try:
        slots = worker_slots(settings)
    except ValueError as exc:
        print(f"sagetrain worker: --gpus {settings.worker_gpus}: {exc}", file=sys.stderr)
        return 2
    concurrency = args.concurrency or len(slots)
    if not 1 <= concurrency <= len(slots):
        what = "GPUs" if slots.gpus else "slots"
        print(f"sagetrain worker: --concurrency {concurrency} needs as many {what}, got "
              f"{len(slots)} ({','.join(slots.ids)})", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=args.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.celery_app import app

    hostname = args.hostname or f"sagetrain-{os.getpid()}@{socket.gethostname()}"
    bases = [q.strip() for q in (args.queues or settings.task_queue).split(",") if q.strip()]
    app.worker_main([
        "worker", "--pool=threads", f"--concurrency={concurrency}",
        f"--queues={','.join(worker_queues(bases, len(slots)))}",
        f"--loglevel={args.loglevel}", f"--hostname={hostname}",
        # Workers need not know each other: the database coordinates them.
        "--without-gossip", "--without-mingle",
    ])
    return 0
