"""Partitioned archive: webhook_events by day (received_at, UTC), the old table its first partition; prune drops days.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

First, outside the migration's transaction and without stopping writes: a unique index on
(id, received_at), built concurrently (the partitioned table's key must hold its partition key),
and a CHECK constraint bounding received_at to before the next UTC day, added NOT VALID and then
validated (a scan that takes no lock stopping writes). Then 0007_partitioned_events.sql, in the
transaction: the table renamed to its first partition, the partitioned table made and the old one
attached (no scan, its indexes reused), partitions made for the days ahead. Every step is safe to
run again after an interruption.
"""

from alembic import op

from migrations.sql import run_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PREPARE = (
    # an index a killed CREATE INDEX CONCURRENTLY left invalid is made again
    """DO $$ BEGIN
        IF EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass('webhook_events_id_received_at_key')
                   AND NOT indisvalid) THEN
            DROP INDEX webhook_events_id_received_at_key;
        END IF;
    END $$""",
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_id_received_at_key "
    "ON webhook_events (id, received_at)",
    "ALTER TABLE webhook_events DROP CONSTRAINT IF EXISTS webhook_events_partition_bound",
    """DO $$ BEGIN
        EXECUTE format('ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_partition_bound '
                       'CHECK (received_at < %L) NOT VALID',
                       (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC');
    END $$""",
    "ALTER TABLE webhook_events VALIDATE CONSTRAINT webhook_events_partition_bound",
)


def upgrade() -> None:
    connection = op.get_bind().connection.driver_connection
    with op.get_context().autocommit_block():
        connection.execute("SET lock_timeout = '2s'")  # type: ignore[union-attr]
        for statement in PREPARE:
            connection.execute(statement)  # type: ignore[union-attr]
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
