"""Cursor paging, newest first: `?after=<id>&limit=<n>` like OpenAI's lists.

Rows order by (created_at, id), both set at creation; `after` names the last row the
caller saw, and the next page starts with the row just older than it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from sage_core.errors import NotFoundError

R = TypeVar("R")


def page(session: Session, stmt: Select[R], *, created: InstrumentedAttribute[Any],
         ident: InstrumentedAttribute[Any], after: str | None, limit: int,
         ) -> tuple[list[R], bool]:
    """The next `limit` rows of `stmt` (already filtered to the caller) and whether more
    follow."""
    if after is not None:
        cursor = session.execute(
            stmt.with_only_columns(created, ident).where(ident == after)
        ).first()
        if cursor is None:
            raise NotFoundError(f"No such object to page after: '{after}'", param="after")
        stmt = stmt.where(or_(created < cursor[0], and_(created == cursor[0], ident < cursor[1])))
    rows = list(session.scalars(stmt.order_by(created.desc(), ident.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


__all__ = ["page", "select"]
