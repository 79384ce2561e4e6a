"""Opt-outs by the whole message: "Cancel my appointment please" no longer opts a number out.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

A reply opts its number out (or back in) when its whole text, case, whitespace and punctuation
aside, is a keyword: "STOP", "stop!", " Opt-out " do; "STOP please" and "Cancel my appointment"
do not (Twilio's and the carriers' rule: only a message of the keyword alone). Keywords may be
set per sub account (a clinic that asks patients to reply CANCEL to cancel a visit turns CANCEL
off for its sub account). First, outside the transaction and without stopping writes:
opt_out_text() and an index on it built concurrently (an invalid one left by an interrupted run
dropped first); then 0011_whole_message_opt_outs.sql swaps it in and makes the views again.
"""

from migrations.sql import build_concurrently, run_sql_file

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OPT_OUT_TEXT = r"""
CREATE OR REPLACE FUNCTION opt_out_text(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (SELECT CASE WHEN length(w) BETWEEN 1 AND 64 THEN w END
            FROM (SELECT upper(btrim(regexp_replace(regexp_replace(t, '[^[:alnum:][:space:]]', '', 'g'),
                                                    '[[:space:]]+', ' ', 'g'))) AS w) letters)"""


def upgrade() -> None:
    build_concurrently(OPT_OUT_TEXT, "replies_opt_out_text_idx", "replies (opt_out_text(message_text))")
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
