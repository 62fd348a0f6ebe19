"""A web server in a child process, started and waited for: `make demo`, the API benchmark
and the tests each run `sagetrain serve` (or another app) on a free port this way.

    with started_server(argv, env=env, url=f"http://127.0.0.1:{port}",
                        log_path=data_dir / "server.log") as proc:
        ...  # GET url/readyz has answered 200

The server's output (stdout and stderr) is appended to `log_path`. Leaving the block sends
it SIGINT, as Ctrl-C would (`sagetrain serve` then stops its jobs cleanly), and kills it if
it has not exited `stop_timeout` seconds later.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

LOG_TAIL_CHARS = 4000


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def started_server(argv: Sequence[str], *, env: Mapping[str, str], url: str, log_path: Path,
                   ready_path: str = "/readyz", start_timeout: float = 60.0,
                   stop_timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv`, wait until GET `url + ready_path` answers 200, and yield the process;
    raise ServerDidNotStart if it exits first or `start_timeout` seconds pass."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(argv), env=dict(env), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_until_ready(proc, url + ready_path, log_path, start_timeout)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_ready(proc: subprocess.Popen[bytes], ready_url: str, log_path: Path,
                      timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerDidNotStart(f"the server exited with {proc.returncode}; "
                                    f"{_log_tail(log_path)}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerDidNotStart(f"the server did not answer {ready_url} in {timeout:.0f} s; "
                                    f"{_log_tail(log_path)}")
        time.sleep(0.2)


def _log_tail(log_path: Path) -> str:
    text = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    return f"see {log_path}, which ends:\n{text}"
