"""drop job_queue_counts: a new job's queue position is counted, as everywhere else

Migration 0006 kept the number of queued jobs in a sharded counter (a table and triggers on
jobs, PostgreSQL only) so that job creation could read a new job's queue position without
counting the queue. Creation now counts the queued jobs ahead of the job, as GET, lists and
the state changes always did (api/services/jobs.py), so the counter goes. This runs 0006's
own downgrade, and the downgrade runs its upgrade: the counter comes back seeded from the
jobs queued at that moment. Nothing to do on SQLite, which never had it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:50:00.000000
"""

from collections.abc import Sequence
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _queue_counts() -> ModuleType:
    """Migration 0006, loaded from its file (a revision file is no importable module)."""
    spec = spec_from_file_location("sagetrain_migration_0006",
                                   Path(__file__).with_name("0006_queue_counts.py"))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    _queue_counts().downgrade()


def downgrade() -> None:
    _queue_counts().upgrade()
