"""`sagetrain keys` and `migrate` open the server's database, found as `serve` finds it, and
never make a new, empty one unless `--init` says so; `serve`'s start message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sage_core.settings import Settings, get_settings
from sagetrain.cli import main
from sagetrain.commands.serve import start_message


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current folder is a fresh one, with no SAGETRAIN_ setting in the environment."""
    for name in list(os.environ):
        if name.startswith("SAGETRAIN_"):
            monkeypatch.delenv(name)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("argv", [["keys", "create", "--name", "me"], ["keys", "list"],
                                  ["keys", "revoke", "key-x"], ["migrate"]])
def test_no_database_here_is_an_error_and_creates_nothing(
        elsewhere: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.startswith(f"error: no sagetrain database at {elsewhere}/sagetrain-data/"
                          "sagetrain.db: there is no such file")
    assert f"the default, ./sagetrain-data under {elsewhere}" in err
    assert "--data-dir DIR" in err and "SAGETRAIN_DATA_DIR=DIR" in err and "--init" in err
    assert _files(elsewhere) == []


def test_init_creates_it_and_the_data_folder_finds_it_from_anywhere(
        elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", "first", "--init"]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert key.startswith("sk-") and (elsewhere / "sagetrain-data" / "sagetrain.db").is_file()

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    data_dir = elsewhere / "sagetrain-data"
    assert main(["keys", "create", "--name", "second", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--data-dir", str(data_dir)]) == 0
    listed = capsys.readouterr().out
    assert "\tfirst" in listed and "\tsecond" in listed and key[:10] in listed
    monkeypatch.setenv("SAGETRAIN_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    assert main(["keys", "list"]) == 0
    assert capsys.readouterr().out == listed
    assert main(["migrate"]) == 0
    assert f"{data_dir}/sagetrain.db (SQLite)" in capsys.readouterr().out
    assert _files(other) == []


def test_a_data_dir_named_in_the_environment_is_named_in_the_error(
        elsewhere: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAGETRAIN_DATA_DIR", "typo")
    get_settings.cache_clear()
    assert main(["keys", "create", "--name", "me"]) == 1
    assert f"(data folder {elsewhere}/typo, from SAGETRAIN_DATA_DIR)" in capsys.readouterr().err
    assert main(["keys", "create", "--name", "me", "--data-dir", "/nowhere/x"]) == 1
    assert "(data folder /nowhere/x, from --data-dir)" in capsys.readouterr().err
    assert _files(elsewhere) == []


def test_a_file_without_sagetrain_tables_is_not_taken_for_the_database(
        elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = elsewhere / "sagetrain-data" / "sagetrain.db"
    path.parent.mkdir()
    path.write_bytes(b"")
    assert main(["keys", "create", "--name", "me"]) == 1
    assert "it holds no sagetrain tables" in capsys.readouterr().err
    assert path.read_bytes() == b""
    assert main(["migrate", "--init"]) == 0
    assert main(["keys", "create", "--name", "me"]) == 0


def test_a_database_server_without_the_schema(
        elsewhere: Path, unmigrated_postgres_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """keys refuse a database no server has migrated; `migrate` is how its schema is made."""
    from sqlalchemy.engine import make_url

    url = make_url(unmigrated_postgres_url).set(password="s3cret")
    monkeypatch.setenv("SAGETRAIN_DATABASE_URL", url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    if make_url(unmigrated_postgres_url).password is None:  # trust auth ignores a password
        assert main(["keys", "create", "--name", "me"]) == 1
        err = capsys.readouterr().err
        assert "no server has run on it" in err and "SAGETRAIN_DATABASE_URL" in err
        assert "s3cret" not in err and "***" in err
    monkeypatch.setenv("SAGETRAIN_DATABASE_URL", unmigrated_postgres_url)
    get_settings.cache_clear()
    assert main(["migrate"]) == 0
    assert main(["keys", "create", "--name", "me"]) == 0
    assert _files(elsewhere) == []


def test_an_unreachable_database_server_is_an_error_not_a_traceback(
        elsewhere: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sagetrain.server_process import free_port

    monkeypatch.setenv("SAGETRAIN_DATABASE_URL",
                       f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/nothing")
    get_settings.cache_clear()
    assert main(["keys", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the database postgresql+psycopg://app:***@")
    assert "s3cret" not in err and "Traceback" not in err


def test_from_the_shell_no_file_is_created(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGETRAIN_")}
    done = subprocess.run([sys.executable, "-m", "sagetrain.cli", "keys", "create", "--name",
                           "me"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: no sagetrain database at ")
    assert list(tmp_path.iterdir()) == []


def test_start_message_sqlite(tmp_path: Path) -> None:
    text = start_message("127.0.0.1", 8123, Settings(data_dir=tmp_path / "d"))
    assert "  dashboard:  http://127.0.0.1:8123/\n" in text
    assert "  API docs:   http://127.0.0.1:8123/docs\n" in text
    assert f"  data:       {tmp_path}/d\n" in text
    assert f"  database:   {tmp_path}/d/sagetrain.db (SQLite)\n" in text
    assert f"sagetrain keys create --name NAME --data-dir {tmp_path}/d" in text


def test_start_message_database_server_and_every_address(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path,
                        database_url="postgresql+psycopg://app:s3cret@db:5432/sagetrain")
    text = start_message("0.0.0.0", 8000, settings)
    assert "every address" in text.splitlines()[0]
    assert "  dashboard:  http://127.0.0.1:8000/\n" in text
    assert "  database:   postgresql+psycopg://app:***@db:5432/sagetrain\n" in text
    assert "s3cret" not in text
    assert "[::1]:8000" in start_message("::1", 8000, settings)


def test_keys_create_with_quotas(elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import select

    from sage_core.db.models import ApiKey
    from sage_core.db.session import make_engine, make_session_factory

    assert main(["keys", "create", "--name", "team", "--init", "--max-running-jobs", "3",
                 "--max-storage", "10G"]) == 0
    out = capsys.readouterr().out
    assert "(team, max-running-jobs=3 max-storage=10G)" in out
    assert main(["keys", "create", "--name", "plain"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].endswith("\tteam\tmax-running-jobs=3 max-storage=10G")
    assert listed[1].endswith("\tplain\tdefault limits")
    engine = make_engine(Settings().resolved_database_url)
    with make_session_factory(engine)() as s:
        quotas = {k.name: (k.max_running_jobs, k.max_storage_bytes)
                  for k in s.scalars(select(ApiKey))}
    engine.dispose()
    assert quotas == {"team": (3, 10 * 1024**3), "plain": (None, None)}


@pytest.mark.parametrize(("option", "value"), [("--max-running-jobs", "0"),
                                               ("--max-running-jobs", "many"),
                                               ("--max-storage", "10X"),
                                               ("--max-storage", "-1G")])
def test_keys_create_refuses_a_bad_quota(elsewhere: Path, option: str, value: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--name", "x", "--init", f"{option}={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Invalid" in err and "Traceback" not in err
    assert _files(elsewhere) == []
