"""What bounds a stop of `sagetrain serve` and `sagetrain worker`: both exit within
SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS of the first SIGTERM (or Ctrl-C), whatever they are doing,
and at once on a second one.

A running job is sent SIGTERM at once (it saves a checkpoint and goes back to the queue) and
has `stop_grace(deadline)` seconds for it; then its process group is terminated and, after
`KILL_AFTER_TERM_SECONDS`, killed (`sage_core.supervision`), still inside the deadline. What
still holds the process `EXIT_SLACK_SECONDS` after the deadline (a thread blocked in a
database call, say) is given up on: `hard_exit`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from sage_core.supervision import KILL_AFTER_TERM_SECONDS

EXIT_SLACK_SECONDS = 3.0
SETTLE_SECONDS = 2.0  # to see the job's process gone and put its job back in the queue


def stop_grace(deadline: float) -> float:
    """Seconds a running job has to checkpoint and hand itself back in a stop that must end
    within `deadline` seconds."""
    return max(1.0, deadline - KILL_AFTER_TERM_SECONDS - SETTLE_SECONDS)


def hard_exit(status: int) -> None:
    """Exit now, whatever threads are still running, with the logs flushed."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
