"""The database a local admin command opens (`keys`, `migrate`) and `serve` announces: the
server's, found the way `serve` finds it (SAGETRAIN_DATABASE_URL, else SQLite in the data
folder: --data-dir, SAGETRAIN_DATA_DIR, else ./sagetrain-data), and never a new, empty one
made by accident: run from another folder, `keys create` would otherwise write a key into a
fresh database that the server never reads."""

from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sage_core.settings import Settings

DATA_DIR_ENV = "SAGETRAIN_DATA_DIR"
DATABASE_URL_ENV = "SAGETRAIN_DATABASE_URL"


class DatabaseNotFound(Exception):
    """No sagetrain database where the settings point; the message says where it looked
    and how to point at the right one."""


def add_database_arguments(parser: argparse.ArgumentParser, *, init_help: str | None,
                           what: str = "the server's data folder, as `sagetrain serve` "
                                       "printed it") -> None:
    parser.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                        help=f"{what} (default: {DATA_DIR_ENV}, else ./sagetrain-data in the "
                        f"current folder); the database is SQLite in it unless "
                        f"{DATABASE_URL_ENV} is set")
    if init_help:
        parser.add_argument("--init", action="store_true", help=init_help)


def settings_from_args(args: argparse.Namespace, *, export: bool = False) -> Settings:
    """The settings with `--data-dir` applied. `export` also puts it in this process's
    environment, for the processes it starts (`serve`'s jobs) and anything that reads
    `get_settings()`."""
    from sage_core.settings import Settings, get_settings

    data_dir: Path | None = getattr(args, "data_dir", None)
    if data_dir is None:
        return get_settings()
    if export:
        os.environ[DATA_DIR_ENV] = str(data_dir.resolve())
        get_settings.cache_clear()
        return get_settings()
    return Settings(data_dir=data_dir.resolve())


def describe_database(url: str) -> str:
    """The database for a person to read: a SQLite file's absolute path, or the URL with
    its password hidden."""
    from sqlalchemy.engine import make_url

    path = sqlite_path(url)
    if path is not None:
        return f"{path} (SQLite)"
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for another backend or an in-memory database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def has_schema(url: str) -> bool:
    """Whether the database holds sagetrain's tables (Alembic's version table), without
    creating anything: a missing SQLite file stays missing."""
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            return False
        # read-only: sqlite3.connect would otherwise create the file
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'alembic_version'").fetchone()
        conn.close()
        return found is not None
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    from sage_core.db.session import make_engine

    engine = make_engine(url)
    try:
        return inspect(engine).has_table("alembic_version")
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseNotFound(f"cannot reach the database {describe_database(url)}: "
                               f"{reason}") from None
    finally:
        engine.dispose()


def require_database(settings: Settings, *, init: bool) -> str:
    """The URL of the server's database. Without `init`, DatabaseNotFound unless it already
    holds sagetrain's tables; with it, a missing database is created (by the migrations the
    caller runs next)."""
    url = settings.resolved_database_url
    if has_schema(url):
        return url
    if init:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return url
    raise DatabaseNotFound(_not_found_message(settings, url))


def _not_found_message(settings: Settings, url: str) -> str:
    path = sqlite_path(url)
    if settings.database_url:
        where = (f"no sagetrain database at {describe_database(url)} (from "
                 f"{DATABASE_URL_ENV}): no server has run on it")
    else:
        env = os.environ.get(DATA_DIR_ENV)
        here = settings.data_dir.resolve()
        source = (f"from {DATA_DIR_ENV}" if env and Path(env).resolve() == here
                  else "from --data-dir" if settings.data_dir.is_absolute()
                  else f"the default, ./{settings.data_dir} under {Path.cwd()}")
        exists = "there is no such file" if path and not path.exists() else \
            "it holds no sagetrain tables"
        where = (f"no sagetrain database at {path}: {exists} (data folder "
                 f"{here}, {source})")
    return (f"{where}. Point at the server's database: --data-dir DIR with the data folder "
            f"that `sagetrain serve` printed at start, or {DATA_DIR_ENV}=DIR, or "
            f"{DATABASE_URL_ENV}=URL for a database server. Or add --init to create a new, "
            "empty database there (a server started on another data folder will not see "
            "it).")
