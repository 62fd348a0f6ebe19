"""`sagetrain keys create --name NAME` (prints the key as the last line), `keys list`,
`keys revoke ID`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create an API key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from sage_core.db.keys import create_key
    from sage_core.db.migrate import upgrade
    from sage_core.db.models import ApiKey, utcnow
    from sage_core.db.session import make_engine, make_session_factory
    from sage_core.settings import get_settings

    settings = get_settings()
    url = settings.resolved_database_url
    upgrade(url)  # a fresh data folder works without a separate `migrate`
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
