"""Initial schema: schema.sql as it stood when migrations began; adopts a database an earlier one made.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from migrations.sql import run_sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("the first migration has no downgrade: restore a backup instead")
