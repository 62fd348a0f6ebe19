"""`sagetrain worker`: a Celery worker that runs fine-tuning jobs, one per GPU at a time,
each in its own process. Needs SAGETRAIN_BROKER_URL and a database and artifact store
that the API and every other worker share (SAGETRAIN_DATABASE_URL, SAGETRAIN_ARTIFACTS_URL
or a shared SAGETRAIN_ARTIFACTS_DIR)."""

from __future__ import annotations

import argparse
import os
import socket
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", default=None,
                        help="comma-separated queues to take jobs from (default: "
                             "SAGETRAIN_TASK_QUEUE, 'gpu')")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="jobs at once (default: one per GPU in --gpus, else 1)")
    parser.add_argument("--gpus", default=None,
                        help="GPU indices to hand out, one per concurrent job, e.g. 0,1 "
                             "(default: SAGETRAIN_WORKER_GPUS; none: jobs see every GPU)")
    parser.add_argument("--hostname", default=None,
                        help="Celery node name (default: sagetrain-<pid>@<host>)")
    parser.add_argument("--loglevel", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    from sage_core.settings import get_settings

    if args.gpus is not None:
        os.environ["SAGETRAIN_WORKER_GPUS"] = args.gpus
        get_settings.cache_clear()
    settings = get_settings()
    if not settings.broker_url:
        print("sagetrain worker: set SAGETRAIN_BROKER_URL (redis://host:6379/0)", file=sys.stderr)
        return 2
    from worker.supervisor import parse_gpus

    gpus = parse_gpus(settings.worker_gpus)
    concurrency = args.concurrency or max(1, len(gpus))
    if concurrency < 1 or (gpus and concurrency > len(gpus)):
        print(f"sagetrain worker: --concurrency {concurrency} needs as many GPUs, got "
              f"{len(gpus)} ({settings.worker_gpus})", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=args.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.celery_app import app

    hostname = args.hostname or f"sagetrain-{os.getpid()}@{socket.gethostname()}"
    app.worker_main([
        "worker", "--pool=threads", f"--concurrency={concurrency}",
        f"--queues={args.queues or settings.task_queue}", f"--loglevel={args.loglevel}",
        f"--hostname={hostname}",
        # Workers need not know each other: the database coordinates them.
        "--without-gossip", "--without-mingle",
    ])
    return 0
