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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.runner import install_stop_signals, run_job

    install_stop_signals()
    run_job(args.job_id, worker_id=args.worker_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
