"""`sagetrain keys create --name NAME` (prints the key as the last line), `keys list`,
`keys revoke ID`, in the server's database (see `sagetrain.commands.database`)."""

from __future__ import annotations

import argparse
import sys

from sagetrain.commands.database import add_database_arguments

WHERE = ("Works on the server's database, found as `sagetrain serve` finds it: "
         "SAGETRAIN_DATABASE_URL, else SQLite in the data folder (--data-dir, "
         "SAGETRAIN_DATA_DIR, else ./sagetrain-data in the current folder). Refuses a folder "
         "with no database unless --init is given.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Manage API keys. " + WHERE
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create an API key and print it (once)",
                            description="Create an API key and print it, once, as the last "
                            "line. " + WHERE)
    create.add_argument("--name", required=True, help="who or what the key is for")
    listing = sub.add_parser("list", help="list keys (never the keys themselves)",
                             description="List the keys: id, prefix, state, name. " + WHERE)
    revoke = sub.add_parser("revoke", help="revoke a key by its id",
                            description="Revoke a key by its id; the server refuses it from "
                            "the next request on. " + WHERE)
    revoke.add_argument("key_id")
    for action in (create, listing, revoke):
        add_database_arguments(action, init_help="create the database (a new, empty one) if "
                               "there is none where the settings point")


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from sage_core.db.keys import create_key
    from sage_core.db.migrate import upgrade
    from sage_core.db.models import ApiKey, utcnow
    from sage_core.db.session import make_engine, make_session_factory
    from sagetrain.commands.database import (
        DatabaseNotFound,
        require_database,
        settings_from_args,
    )

    try:
        url = require_database(settings_from_args(args), init=args.init)
    except DatabaseNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    upgrade(url)  # a database a server of an older version left works too
    engine = make_engine(url)
    try:
        with make_session_factory(engine).begin() as session:
            if args.keys_command == "create":
                row, key = create_key(session, args.name)
                print(f"Created API key {row.id} ({row.name}). It is shown only once:")
                print(key)
            elif args.keys_command == "list":
                for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                    state = "revoked" if row.revoked_at else "active"
                    print(f"{row.id}\t{row.prefix}…\t{state}\t{row.name}")
            else:
                found = session.get(ApiKey, args.key_id)
                if found is None:
                    print(f"no such key: {args.key_id}")
                    return 1
                found.revoked_at = found.revoked_at or utcnow()
                print(f"revoked {found.id}")
    finally:
        engine.dispose()
    return 0
