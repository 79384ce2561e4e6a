"""PostgreSQL's CPU for each webhook the receiver records, by fixed work (by hand, not in CI):

    python tests/bench/merge_cpu.py [--sql variant.sql ...] [--rounds 4]

Rates on this shared 2-core machine drift 15-25 % between runs, more than most changes to the
merge are worth; the CPU a fixed amount of work costs drifts less. Each round runs the receiver's
own statement (store.RECORD_WEBHOOKS, 3 webhooks a statement as group commit batches them at the
peak, 3 recipients of one message as tests/bench/webhooks.lua sends them) through pgbench, 2
clients x --transactions each, on a database of its own migrated by this checkout, and divides
the CPU the server's processes used (those that exited included: the postmaster's children's
times) by the webhooks. With --sql, each round also measures a second database with those files
run after the migration (a variant of a function, an index dropped), interleaved with the first.
Counts every PostgreSQL process on the machine: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from receiver.migrator import migrate  # noqa: E402
from tests.bench.throughput import cpu_ticks, pgbench_script  # noqa: E402
from tests.support import create_database, drop_database  # noqa: E402


def us_per_webhook(url: str, transactions: int, batch: int) -> float:
    script = pgbench_script(batch, per_message=3)
    before = cpu_ticks()["postgres"]
    subprocess.run(["pgbench", "-n", "-M", "prepared", "-c2", "-j1", "-t", str(transactions), "-f", str(script),
                    url], capture_output=True, check=True)
    time.sleep(1.5)  # the backends exit, and the postmaster reaps them (their times join its own)
    return (cpu_ticks()["postgres"] - before) / os.sysconf("SC_CLK_TCK") / (2 * transactions * batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL",
                                                           "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--sql", action="append", default=[], help="files run after migrating, for the variant")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--transactions", type=int, default=1500, help="per client")
    parser.add_argument("--batch", type=int, default=3)
    args = parser.parse_args()
    variants = {"as migrated": []} | ({"with " + ", ".join(args.sql): args.sql} if args.sql else {})
    found: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, files in variants.items():
            name = f"bench_merge_{uuid.uuid4().hex[:8]}"
            url = create_database(args.server, name)
            try:
                migrate(url)
                with psycopg.connect(url, autocommit=True) as conn:
                    for file in files:
                        conn.execute(Path(file).read_text().encode())
                found[label].append(us_per_webhook(url, args.transactions, args.batch))
            finally:
                drop_database(args.server, name)
            print(f"{label}: {found[label][-1]:.0f} us a webhook", file=sys.stderr)
    for label, values in found.items():
        print(f"{label}: median {statistics.median(values):.0f} us of PostgreSQL CPU a webhook "
              f"({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
