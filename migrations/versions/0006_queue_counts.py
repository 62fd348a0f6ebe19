"""job_queue_counts: the number of queued jobs, kept by the database (PostgreSQL only)

A new job's queue position (api/services/jobs.py) is one plus the queued jobs ahead of it.
Counting them costs O(queue depth) per POST; this sharded counter, maintained by a trigger
on jobs, makes it O(1). SQLite (single user, shallow queues) keeps counting: nothing here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 12:50:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARDS = 32

# Only sum(queued) means anything. A change lands on the shard of the backend making it,
# not of the job: a transaction then holds at most one counter row lock (until it commits),
# so transactions that move several jobs (the reaper, a sweep's children) cannot deadlock
# on counter rows taken in different orders. A job's +1 and -1 may land on different
# shards, so a shard alone can go negative. An upsert, not an UPDATE: works on an empty table.
TRACK = f"""
CREATE FUNCTION job_queue_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta integer := 0;
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.status = 'queued' THEN
        delta := delta + 1;
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.status = 'queued' THEN
        delta := delta - 1;
    END IF;
    IF delta <> 0 THEN
        INSERT INTO job_queue_counts AS c (shard, queued)
        VALUES (pg_backend_pid() % {SHARDS}, delta)
        ON CONFLICT (shard) DO UPDATE SET queued = c.queued + EXCLUDED.queued;
    END IF;
    RETURN NULL;
END
$$
"""

CLEAR = """
CREATE FUNCTION job_queue_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_queue_counts;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('CREATE TABLE job_queue_counts '
               '(shard smallint PRIMARY KEY, queued bigint NOT NULL)')
    op.execute(TRACK)
    op.execute(CLEAR)
    op.execute('CREATE TRIGGER job_queue_counts_track '
               'AFTER INSERT OR DELETE OR UPDATE OF status ON jobs '
               'FOR EACH ROW EXECUTE FUNCTION job_queue_counts_track()')
    op.execute('CREATE TRIGGER job_queue_counts_clear AFTER TRUNCATE ON jobs '
               'FOR EACH STATEMENT EXECUTE FUNCTION job_queue_counts_clear()')
    # After CREATE TRIGGER, whose lock on jobs holds writers off until this migration
    # commits: every queued job is either counted here or by the trigger, never both.
    op.execute("INSERT INTO job_queue_counts (shard, queued) "
               "SELECT 0, count(*) FROM jobs WHERE status = 'queued'")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('DROP TRIGGER job_queue_counts_clear ON jobs')
    op.execute('DROP TRIGGER job_queue_counts_track ON jobs')
    op.execute('DROP FUNCTION job_queue_counts_clear()')
    op.execute('DROP FUNCTION job_queue_counts_track()')
    op.execute('DROP TABLE job_queue_counts')
