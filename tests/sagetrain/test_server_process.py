"""Starting a server and waiting for it (sagetrain/server_process.py), as the demo, the
benchmark and the tests do: it is up when it answers, it is stopped afterwards, and one
that exits first is reported with its log."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from sagetrain.server_process import ServerDidNotStart, free_port, started_server


def test_a_server_is_ready_then_stopped(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with started_server(argv, env=os.environ, url=url, log_path=tmp_path / "s.log",
                        ready_path="/", stop_timeout=10) as proc:
        assert httpx.get(url).status_code == 200
    assert proc.returncode is not None


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('no database'); sys.exit(3)"]
    with pytest.raises(ServerDidNotStart, match=r"(?s)exited with 3.*no database"), \
            started_server(argv, env=os.environ, url=f"http://127.0.0.1:{free_port()}",
                           log_path=tmp_path / "s.log"):
        pass
