"""Functions and views as replaceable files: the table that records which text of each was applied.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

From here on each database function and view is one file of migrations/replaceable/, which
`migrate` runs (after the versioned migrations, in the same transaction) whenever its text differs
from what `schema_replaceables` recorded. This revision only makes that table: on the first
`migrate` after it, every file runs once, making again what 0001-0011 made, with the same text.
"""

from migrations.sql import run_sql_file

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
