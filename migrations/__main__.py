"""`python -m migrations`: write the files of migrations/replaceable/ into schema.sql (between its
`generated` markers); `--check`: exit 1, saying so, when schema.sql is not what that would write."""

from __future__ import annotations

import argparse
import sys

from migrations.replaceable import SCHEMA_SQL, schema_sql


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrations", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that schema.sql is up to date")
    args = parser.parse_args(argv)
    want = schema_sql()
    if SCHEMA_SQL.read_text(encoding="utf-8") == want:
        return 0
    if args.check:
        print(f"{SCHEMA_SQL.name} is not what migrations/replaceable/ makes: run `python -m migrations`",
              file=sys.stderr)
        return 1
    SCHEMA_SQL.write_text(want, encoding="utf-8")
    print(f"{SCHEMA_SQL.name}: written from migrations/replaceable/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
