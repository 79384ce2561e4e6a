"""DestSeq in one form: existing rows' shorter spellings zero-padded to 8, twins folded into one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

A poll answer that typed DestSeq as a number (tnzapi-ts RecipientDTO) stored "1" beside the
webhook's "00000001": two rows for one recipient. The code now pads every DestSeq to 8
characters; this revision does the same to what is stored. A recipient whose padded DestSeq
already has a row is folded into it by the merge rule (merge_recipient; the sender's references
filled in, never blanked), and its replies follow. No row's facts are lost: the folded row's
report is merged, not dropped.
"""

from migrations.sql import run_sql_file

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
