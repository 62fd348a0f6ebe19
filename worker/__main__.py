"""`python -m worker run JOB_ID [--worker-id ID]`: run one job in this process."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="claim and run one queued fine-tuning job")
    run.add_argument("job_id")
    run.add_argument("--worker-id", default=None,
                     help="lease owner name to claim the job under (default: host:pid:random)")
    run.add_argument("--parent-pid", type=int, default=None,
                     help="die with this process (the supervisor that started this one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.parent_pid is not None:
        from sage_core.lifeline import die_with_parent

        die_with_parent(args.parent_pid)
    from sage_core.transient import EXIT_TRANSIENT, TransientJobError
    from worker.runner import install_stop_signals, run_job

    install_stop_signals()
    try:
        run_job(args.job_id, worker_id=args.worker_id)
    except TransientJobError as exc:
        logging.getLogger("sagetrain.worker").warning("[%s] %s", args.job_id, exc)
        return EXIT_TRANSIENT  # the supervisor puts the job back in the queue
    return 0


if __name__ == "__main__":
    sys.exit(main())
