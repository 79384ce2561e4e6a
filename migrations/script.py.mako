"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from migrations.sql import run_sql_file

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    # Write the SQL in the .sql file of the same name (create it beside this one). Keep it
    # compatible with the code now running: `migrate` runs before the new code is deployed.
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
