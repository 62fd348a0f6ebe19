"""Against a real `sagetrain serve`: its start message names URLs that answer and the data
folder and database it uses; `sagetrain keys` run from another folder finds that database
with `--data-dir` (the key it makes works, a revoked one stops working), and without it
refuses instead of making a database the server never reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from api_helpers import LiveServer

pytestmark = pytest.mark.slow


def _sagetrain(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGETRAIN_")}
    return subprocess.run([sys.executable, "-m", "sagetrain.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _start_message(server: LiveServer) -> dict[str, str]:
    lines = server.log_text().splitlines()
    first = lines.index("sagetrain serve")
    return dict(line.strip().split(":  ", 1) for line in lines[first + 1:first + 6])


def test_serve_prints_its_urls_data_folder_and_database(live_server: LiveServer) -> None:
    shown = {k: v.strip() for k, v in _start_message(live_server).items()}
    data_dir = (live_server.root / "data").resolve()
    assert shown["dashboard"] == f"{live_server.url}/"
    assert shown["API docs"] == f"{live_server.url}/docs"
    assert shown["data"] == str(data_dir)
    assert shown["database"] == f"{data_dir / 'sagetrain.db'} (SQLite)"
    assert shown["API keys"] == f"sagetrain keys create --name NAME --data-dir {data_dir}"
    assert httpx.get(shown["dashboard"], timeout=30).status_code == 200
    docs = httpx.get(shown["API docs"], timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_keys_from_another_folder(live_server: LiveServer, tmp_path: Path) -> None:
    data_dir = str((live_server.root / "data").resolve())
    refused = _sagetrain("keys", "create", "--name", "lost", cwd=tmp_path)
    assert refused.returncode == 1 and "--data-dir" in refused.stderr, refused.stderr
    assert list(tmp_path.iterdir()) == []  # no second, empty database

    made = _sagetrain("keys", "create", "--name", "elsewhere", "--data-dir", data_dir,
                      cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {key}"}
    models = httpx.get(f"{live_server.url}/v1/models", headers=auth, timeout=30)
    assert models.status_code == 200, models.text
    assert list(tmp_path.iterdir()) == []

    key_id = made.stdout.split("Created API key ")[1].split()[0]
    revoked = _sagetrain("keys", "revoke", key_id, "--data-dir", data_dir, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{live_server.url}/v1/models", headers=auth, timeout=30).status_code == 401


def test_serve_with_a_data_dir_option(tmp_path: Path, models_dir: Path) -> None:
    from sagetrain.server_process import free_port, started_server

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGETRAIN_")}
    env.update(SAGETRAIN_MODELS_DIR=str(models_dir), SAGETRAIN_DEVICE="cpu")
    data_dir, cwd = tmp_path / "served", tmp_path / "cwd"
    cwd.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "sagetrain.cli", "serve", "--port", str(port),
            "--executor", "none", "--data-dir", str(data_dir), "--no-access-log"]
    log = tmp_path / "server.log"
    with started_server(argv, env=env, url=url, log_path=log):
        made = _sagetrain("keys", "create", "--name", "d", "--data-dir", str(data_dir), cwd=cwd)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
    text = log.read_text()
    assert f"  data:       {data_dir}\n" in text
    assert f"  database:   {data_dir / 'sagetrain.db'} (SQLite)\n" in text
    assert list(cwd.iterdir()) == []
