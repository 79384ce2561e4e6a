"""Running a statement: the helpers every part of the store shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row


def rows(conn: Connection[Any], query: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every row `query` returns, as dictionaries."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def one(conn: Connection[Any], query: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The one row `query` returns (a statement that returns none here is a bug)."""
    found = rows(conn, query, params)
    if len(found) != 1:
        raise RuntimeError(f"expected one row, got {len(found)}: {query.split()[:4]}")
    return found[0]
