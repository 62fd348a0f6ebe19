"""A process dies with the one that started it: `die_with_parent(pid)` (Linux). A job's
process calls it with its supervisor's pid, and each training rank with its job process's.

A supervisor (a Celery worker, `sagetrain serve`) that is SIGKILLed cannot stop its jobs'
processes; left running, they would keep training on a GPU that the next worker on the
machine is about to use, for a job whose lease has moved elsewhere. PR_SET_PDEATHSIG has
the kernel send SIGKILL instead. The kernel sends it when the *thread* that started this
process ends, so `sage_core.supervision` starts it from the thread that watches it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger("sagetrain.lifeline")
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Be killed when the process `parent_pid` (our parent) dies; exit now if it already
    has. Elsewhere than Linux, only the second part applies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os._exit(1)
