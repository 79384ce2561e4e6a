"""Replaceable database objects: each function and view in one file of `migrations/replaceable/`,
applied by `migrate` whenever its text changes (Flyway's repeatable `R__` scripts, alembic_utils'
replaceable entities).

A versioned migration (`migrations/versions/`) holds only what changes tables and data; the merge
rule, the partition upkeep and the reporting views are each written once, in their file, as a
`CREATE OR REPLACE`. After the versioned migrations, in the same transaction, `migrate` runs each
file whose SHA-256 differs from the one `schema_replaceables` recorded, in the files' name order
(the number in front orders dependants after what they use), and records it.

What a file may not do, because `CREATE OR REPLACE` cannot: change a view's columns other than by
adding at the end, change a function's arguments or result type (that would make a second
function beside the first), or change a function an index or a constraint uses (its entries would
no longer match it: refused here, see `_check_replaceable`). Those take a versioned migration that
drops the object (or rebuilds the index) first; the file then makes it again.

`python -m migrations` writes these files into schema.sql, between its two `generated` markers;
a test checks that schema.sql is what that writes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from receiver.errors import Fatal

DIRECTORY = Path(__file__).resolve().parent / "replaceable"
SCHEMA_SQL = Path(__file__).resolve().parent.parent / "schema.sql"
BEGIN = "-- BEGIN generated from migrations/replaceable/ by `python -m migrations`: edit those files, not this part"
END = "-- END generated"

_CREATES = re.compile(r"^CREATE OR REPLACE (FUNCTION|VIEW) (\w+)\b", re.MULTILINE)


@dataclass(frozen=True)
class Replaceable:
    """One file: `NN_name.sql`, making the function or view `name`."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.stem

    @cached_property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @cached_property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @cached_property
    def makes(self) -> tuple[str, str]:
        """(FUNCTION or VIEW, its name): the one object the file makes, named as the file is."""
        found = _CREATES.findall(self.sql)
        if len(found) != 1 or not self.name.endswith("_" + found[0][1]):
            raise ValueError(f"{self.path}: a replaceable file makes one function or view, named as the file "
                             f"(NN_name.sql, CREATE OR REPLACE FUNCTION|VIEW name); it makes {found}")
        kind, name = found[0]
        return str(kind), str(name)


def shipped(directory: Path = DIRECTORY) -> list[Replaceable]:
    """The files, in the order they are applied."""
    return [Replaceable(path) for path in sorted(directory.glob("*.sql"))]


def generated(directory: Path = DIRECTORY) -> str:
    """The part of schema.sql between its markers (the markers included)."""
    return "\n\n".join([BEGIN, *(r.sql.strip("\n") for r in shipped(directory)), END])


def schema_sql(directory: Path = DIRECTORY) -> str:
    """schema.sql with its generated part made from the files."""
    text = SCHEMA_SQL.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + generated(directory) + text[end:]


# The schema's own search path while the files run, as schema.sql sets it: a SECURITY DEFINER
# function's `SET search_path FROM CURRENT` takes it.
SEARCH_PATH = "SELECT set_config('search_path', format('%I, pg_temp', current_schema()), true)"
RECORDED = "SELECT name, checksum FROM schema_replaceables"
RECORD = """
INSERT INTO schema_replaceables (name, checksum) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()"""
# What uses a function and would not follow a new body: an index's or a constraint's expression.
USED_BY = """
SELECT DISTINCT coalesce(i.indexrelid::regclass::text, c.conname) AS user
FROM pg_proc p JOIN pg_depend d ON d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid
LEFT JOIN pg_index i ON d.classid = 'pg_class'::regclass AND i.indexrelid = d.objid
LEFT JOIN pg_constraint c ON d.classid = 'pg_constraint'::regclass AND c.oid = d.objid
WHERE p.proname = %s AND p.pronamespace = quote_ident(current_schema())::regnamespace  -- "Receiver" too
  AND (i.indexrelid IS NOT NULL OR c.oid IS NOT NULL)"""


def apply(conn: Any, directory: Path = DIRECTORY) -> list[str]:
    """Run every file whose text is not the one recorded, in order, and record it (`conn`: a
    psycopg connection in the migration's transaction); the names of those run."""
    conn.execute(SEARCH_PATH)
    recorded = dict(conn.execute(RECORDED).fetchall())
    ran = []
    for replaceable in shipped(directory):
        if recorded.get(replaceable.name) == replaceable.checksum:
            continue
        _check_replaceable(conn, replaceable)
        conn.execute(replaceable.sql.encode())  # simple protocol: `%` in the SQL is left alone
        conn.execute(RECORD, (replaceable.name, replaceable.checksum))
        ran.append(replaceable.name)
    return ran


def _check_replaceable(conn: Any, replaceable: Replaceable) -> None:
    kind, name = replaceable.makes
    if kind == "FUNCTION" and (users := [user for user, in conn.execute(USED_BY, (name,))]):
        raise Fatal(f"{replaceable.path.name}: {name}() is used by {', '.join(sorted(users))}, which would not "
                         "follow a new body: change it in a versioned migration that rebuilds them")
