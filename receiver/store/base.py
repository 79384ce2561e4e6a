"""Running a statement: the helpers every part of the store shares."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row


def rows(conn: Connection[Any], query: str, params: Mapping[str, Any], *, jit: bool = True) -> list[dict[str, Any]]:
    """Every row `query` returns, as dictionaries. `jit=False`: without PostgreSQL's JIT compiler,
    for a scan whose cost estimate triggers a compile that costs more than it saves (SET LOCAL: in
    a transaction of its own, or until the caller's ends; safe through a transaction pooler)."""
    with conn.cursor(row_factory=dict_row) as cur, nullcontext() if jit else conn.transaction():
        if not jit:
            cur.execute("SET LOCAL jit = off")
        cur.execute(query, params)
        return cur.fetchall()


def one(conn: Connection[Any], query: str, params: Mapping[str, Any], *, jit: bool = True) -> dict[str, Any]:
    """The one row `query` returns (a statement that returns none here is a bug)."""
    found = rows(conn, query, params, jit=jit)
    if len(found) != 1:
        raise RuntimeError(f"expected one row, got {len(found)}: {query.split()[:4]}")
    return found[0]
