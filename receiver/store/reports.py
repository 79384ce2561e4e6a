"""The reports `python -m receiver report` writes as CSV, from the views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from psycopg import Connection

from .base import rows

# -- reporting and housekeeping ---------------------------------------------------------------------

# Prices in CSV with four decimals in every row (BestSMS prices go below a cent: 0.045).
_PRICE = "round({0}, 4) AS {0}"
REPORTS = {
    "rebilling": f"""
SELECT month, sub_account, department, messages, recipients, sms_parts, {_PRICE.format("outbound_price")},
       replies, {_PRICE.format("inbound_price")}, {_PRICE.format("total_price")}
FROM rebilling_monthly
WHERE month = %(month)s::date AND (%(sub_account)s::text IS NULL OR sub_account = %(sub_account)s::text)
ORDER BY sub_account NULLS FIRST, department NULLS FIRST""",
    "delivery": f"""
SELECT day, sub_account, department, messages, recipients, delivered, failed, pending, delivery_rate, sms_parts,
       {_PRICE.format("price")}
FROM delivery_daily
WHERE day BETWEEN %(from)s::date AND %(to)s::date
  AND (%(sub_account)s::text IS NULL OR sub_account = %(sub_account)s::text)
ORDER BY day, sub_account NULLS FIRST, department NULLS FIRST""",
    "rebilling-by-sub-account": """
SELECT month, sub_account, sum(messages) AS messages, sum(recipients) AS recipients, sum(sms_parts) AS sms_parts,
       round(sum(outbound_price), 4) AS outbound_price, sum(replies) AS replies,
       round(sum(inbound_price), 4) AS inbound_price, round(sum(total_price), 4) AS total_price
FROM rebilling_monthly
WHERE month = %(month)s::date AND (%(sub_account)s::text IS NULL OR sub_account = %(sub_account)s::text)
GROUP BY month, sub_account
ORDER BY sub_account NULLS FIRST""",
    # The numbers opted out now: of the sub account given (its own keywords and replies), else of
    # any (each number's latest keyword, whatever the sub account).
    "opt-outs": """
SELECT sub_account, from_number, keyword, changed_at, received_id, message_id
FROM opt_outs_by_sub_account
WHERE opted_out AND %(sub_account)s::text IS NOT NULL AND sub_account = %(sub_account)s::text
UNION ALL
SELECT sub_account, from_number, keyword, changed_at, received_id, message_id
FROM opt_outs
WHERE opted_out AND %(sub_account)s::text IS NULL
ORDER BY from_number""",
}

def report_csv(conn: Connection[Any], report: str, params: Mapping[str, Any], out: IO[bytes]) -> int:
    """A report's rows (`REPORTS[report]`) as CSV, a header row first, streamed by COPY into `out`;
    returns how many rows."""
    with conn.cursor() as cur:
        with cur.copy(f"COPY ({REPORTS[report]}) TO STDOUT WITH (FORMAT csv, HEADER)", params) as copy:
            for chunk in copy:
                out.write(chunk)
        return max(cur.rowcount, 0)


SUB_ACCOUNTS = "SELECT DISTINCT sub_account FROM messages WHERE sub_account IS NOT NULL ORDER BY 1"


def sub_accounts(conn: Connection[Any]) -> list[str]:
    """The sub accounts messages were sent from."""
    return [row["sub_account"] for row in rows(conn, SUB_ACCOUNTS, {})]
