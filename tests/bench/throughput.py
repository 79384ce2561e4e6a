"""Webhook throughput on this machine, in one run (by hand, not in CI):

    python tests/bench/throughput.py            # needs wrk and pgbench: apt-get install wrk postgresql-client

It starts the receiver with the production config (gunicorn.conf.py) against a database of
its own on a local PostgreSQL (synchronous_commit on: every 2xx is durable), drives it with wrk
(tests/bench/webhooks.lua: many MessageIDs, 1-5 recipients each, 15 % Pending, 5 % duplicates),
runs the same load against the afternoon version (tests/bench/afternoon_app.py: the same job as a
user writes it in an afternoon, marshmallow, E.164 and a per-recipient upsert, one transaction a
webhook), the naive durable peer (tests/bench/peer_app.py: Flask, a pool, one INSERT of the raw
JSON per webhook) and a bare Flask app that only parses the JSON (the ceiling), each under two
gunicorn configurations (the best counts), in interleaved rounds; runs pgbench with the receiver's
own per-webhook statement, and prints: webhooks/s and p50/p99 and each program's CPU per webhook
(workers, PostgreSQL), receiver/afternoon, receiver/naive and receiver/ceiling (each round's and
the medians'), worker RSS, p99 at half the peak rate, the rate with 5,000,000 recipients stored,
RSS growth over 100,000 webhooks and a 100-recipient poll page's merge time. Paste its table into
tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"
sys.path.insert(0, str(ROOT))

from receiver import store  # noqa: E402
from receiver.bestsms.events import result_event  # noqa: E402
from receiver.migrator import migrate  # noqa: E402
from tests.support import free_port  # noqa: E402

TOKEN = "benchmark-token-2026"


# The gunicorn configurations the peer and bare Flask are measured with (the best one counts):
# the production config as it is, and 4 workers x 4 threads.
CONFIGS = {"production": [], "4x4": ["--workers", "4", "--threads", "4"]}


def gunicorn(app: str, env: dict[str, str], cwd: Path,
             extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
                             "--bind", f"127.0.0.1:{port}", *(extra or []), app], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{app} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def wrk(base: str, seconds: float, connections: int = 16, delay_ms: float = 0) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(int(seconds), 1)}s", "--latency",
                          "-s", str(BENCH / "webhooks.lua"), base],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "BENCH_TOKEN": TOKEN, "BENCH_DELAY_MS": str(delay_ms)}).stdout
    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
            "requests": int(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
            "non_2xx": int(non2xx[1]) if non2xx else 0, "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def proc_stat(pid: str) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 on: state, ppid, ... utime at 11)."""
    return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_ticks() -> dict[str, int]:
    """CPU time (clock ticks: user and system, with the exited children's) used so far by the
    gunicorn and the PostgreSQL processes. A PostgreSQL backend that exits (pgbench's) leaves its
    time in the postmaster's children's; a client such as pgbench or psql is not PostgreSQL."""
    ticks: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            stat = proc_stat(entry.name)
        except OSError:
            continue
        program = command.split(b"\0")[0]
        if program.endswith(b"/postgres") or program.startswith(b"postgres"):
            group = "postgres"
        elif b"gunicorn" in command:
            group = "gunicorn"
        else:
            continue
        ticks[group] = ticks.get(group, 0) + sum(int(field) for field in stat[11:15])  # utime stime cutime cstime
    return ticks


def process_ticks(pids: list[str]) -> list[int]:
    """CPU time (clock ticks, user and system) of each of `pids` so far (0 for one that has gone)."""
    found = []
    for pid in pids:
        try:
            found.append(sum(int(f) for f in proc_stat(pid)[11:13]))
        except OSError:
            found.append(0)
    return found


def cpu_split(before: dict[str, int], after: dict[str, int], seconds: float, webhooks: float) -> dict[str, float]:
    """Cores used by each process group over a run, and its CPU time per webhook (us)."""
    hz = os.sysconf("SC_CLK_TCK")
    split: dict[str, float] = {}
    for group in after:
        used = (after[group] - before.get(group, 0)) / hz
        split[f"{group}_cores"] = round(used / seconds, 2)
        split[f"{group}_us_per_webhook"] = round(used / webhooks * 1e6)
    return split


def batch_size_mean(base: str) -> float | None:
    """The mean group commit batch size so far, from the receiver's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = {m[1]: float(m[2]) for m in re.finditer(r"^bestsms_webhook_batch_size_(sum|count) ([\d.e+]+)$", text, re.M)}
    return round(found["sum"] / found["count"], 2) if found.get("count") else None


def workers_rss_mb(master: int) -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(proc_stat(entry.name)[1]) != master:
                    continue
                total += int(re.search(r"VmRSS:\s+(\d+) kB", (entry / "status").read_text())[1])  # type: ignore[index]
            except (OSError, TypeError):
                continue
    return total / 1024


def pgbench(url: str, seconds: float, batch: int = 1) -> float:
    """Webhooks/s of pgbench running the receiver's own statement (store.RECORD_WEBHOOKS), `batch`
    webhooks a statement as group commit writes them, every statement prepared once per
    connection (`-M prepared`), as the receiver runs it."""
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c16", "-j2", f"-T{int(seconds)}", "-f",
                          str(pgbench_script(batch)), url], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"tps = ([\d.]+)", out)[1]) * batch  # type: ignore[index]


def pgbench_script(batch: int, per_message: int = 1) -> Path:
    """A pgbench script: the receiver's statement with `batch` new webhooks (random MessageIDs,
    15 % Pending), built in SQL as group commit's JSON array. `per_message` webhooks in a row name
    one message (its recipients 1, 2, ...); with 1, each names its own and 1 of 5 DestSeqs."""
    def webhook(n: int) -> str:
        m = f"(:m + {n // per_message})"
        seq = f"(:s + {n}) % 5 + 1" if per_message == 1 else str(n % per_message + 1)
        values = {
            "i": str(n + 1), "kind": "'result'", "valid": "true", "message_id": f"'pg-' || {m}",
            "dest_seq": f"lpad(({seq})::text, 8, '0')",
            "destination": f"'+6141' || lpad((({m} * 5 + {n % per_message}) % 10000000)::text, 7, '0')",
            "type": "'SMS'",
            "status": "CASE WHEN :p < 15 THEN 'Pending' ELSE 'Success' END", "result": "'delivered'",
            "sent_at": "now()", "price": "0.10", "sms_parts": "1", "sub_account": "'Clinic'",
            "department": "'Reminders'", "job_number": "'10AB20CE'", "detail": "'SMSParts:1'", "source": "'webhook'",
            "ev_method": "'POST'", "ev_format": "'json'", "ev_content_type": "'application/json'",
            "ev_headers": "json_build_object('host', 'x', 'content-type', 'application/json')",
            "ev_body": "repeat('x', 520)", "ev_message_id": f"'pg-' || {m}",
        }
        return "json_build_object(" + ", ".join(f"'{k}', {v}" for k, v in values.items()) + ")"
    batch_json = "json_build_array(" + ", ".join(webhook(n) for n in range(batch)) + ")"
    statement = store.RECORD_WEBHOOKS.replace("%(events)s", f"({batch_json})")
    script = Path(tempfile.mkdtemp()) / "webhook.sql"
    script.write_text("\\set m random(1, 10000000)\n\\set s random(1, 5)\n\\set p random(0, 99)\n"
                      + " ".join(statement.split()) + ";\n")
    return script


FILL = """
INSERT INTO messages (message_id, sub_account, department, first_seen_at)
SELECT 'fill-' || i, 'Clinic-' || (i % 7), 'Reminders', now() - interval '30 days' + i * interval '1 second'
FROM generate_series(1, %(messages)s) AS i;
INSERT INTO recipients (message_id, dest_seq, destination, type, status, result, sent_at, price, sms_parts,
                        sub_account, department, source, first_seen_at, final_at)
SELECT 'fill-' || i, lpad(n::text, 8, '0'), '+6142' || lpad(((i * 5 + n) % 10000000)::text, 7, '0'), 'SMS',
       'Success', 'delivered', now() - interval '30 days' + i * interval '1 second', 0.10, 1, 'Clinic-' || (i % 7),
       'Reminders', 'webhook', now() - interval '30 days' + i * interval '1 second', now()
FROM generate_series(1, %(messages)s) AS i CROSS JOIN generate_series(1, 5) AS n;
"""
# After the bulk load: statistics, visibility map and a checkpoint, so that the run after it
# measures the steady state with the rows stored, not the load's write-back.
SETTLE = ["VACUUM (ANALYZE) messages", "VACUUM (ANALYZE) recipients", "CHECKPOINT"]


def merge_ms(url: str) -> dict[str, float]:
    """A 100-recipient poll page through store.apply_many: new rows, then the same page again."""
    new, again = [], []
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        for n in range(21):
            page = [result_event({"message_id": f"page-{n}", "dest_seq": f"{i:08d}", "destination": f"+6143{i:07d}",
                                  "status": "Success", "result": "delivered", "price": "0.10", "type": "Text"}, "AU")
                    for i in range(100)]
            for times in (new, again):
                started = time.perf_counter()
                with conn.transaction():
                    store.apply_many(conn, "result", page, "poll")
                times.append((time.perf_counter() - started) * 1000)
    return {"new_ms": statistics.median(new[1:]), "again_ms": statistics.median(again[1:])}


def receiver_peak(url: str, env: dict[str, str], seconds: float) -> dict[str, Any]:
    """The receiver's peak in a gunicorn of its own (production config): a warm-up, then the run,
    with the CPU split (workers, PostgreSQL) per webhook, each worker's cores (one near 0: the
    keep-alive connections all landed on the other, see RESULTS.md) and the mean batch size."""
    proc, base = gunicorn("wsgi:app", env, ROOT)
    try:
        wrk(base, 5)  # warm up: connections, prepared statements
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        before, each, started = cpu_ticks(), process_ticks(workers), time.monotonic()
        peak: dict[str, Any] = dict(wrk(base, seconds))
        took = time.monotonic() - started
        peak["cpu"] = cpu_split(before, cpu_ticks(), took, peak["requests"])
        peak["cpu"]["cores_by_worker"] = [round((after - was) / os.sysconf("SC_CLK_TCK") / took, 2)
                                          for was, after in zip(each, process_ticks(workers), strict=True)]
        peak["batch_size_mean"] = batch_size_mean(base)
        peak["worker_rss_mb"] = round(workers_rss_mb(proc.pid), 1)
    finally:
        stop(proc)
    return peak


def measure_receiver(proc: subprocess.Popen[bytes], base: str, url: str, args: argparse.Namespace,
                     peak_rate: float, figures: dict[str, Any]) -> None:
    """The receiver's figures beyond its peak: half the peak, RSS growth, and the peak again with
    --fill recipients stored."""
    wrk(base, 5)
    half = wrk(base, args.seconds, delay_ms=16 * 1000 / (peak_rate / 2))
    figures["half_peak"] = half
    rss_before = workers_rss_mb(proc.pid)
    rss_run = wrk(base, args.rss_webhooks / peak_rate * 1.1)
    figures["rss_growth_mb"] = {"webhooks": rss_run["requests"],
                                "growth": round(workers_rss_mb(proc.pid) - rss_before, 1)}
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        conn.execute(FILL.replace("%(messages)s", str(int(args.fill // 5))).encode())
        for statement in SETTLE:
            conn.execute(statement)
        figures["fill_seconds"] = round(time.monotonic() - started)
        figures["recipients_stored"] = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]  # type: ignore[index]
    wrk(base, 5)
    figures["receiver_with_rows"] = wrk(base, args.seconds)


def best_of_configs(app: str, env: dict[str, str], seconds: float) -> dict[str, Any]:
    """`app` under each of CONFIGS (a warm-up, then the measured run, with its CPU split); the
    fastest, with its name."""
    runs: dict[str, dict[str, Any]] = {}
    for label, extra in CONFIGS.items():
        threads = "4" if label == "4x4" else env.get("GUNICORN_THREADS", "8")
        proc, base = gunicorn(app, {**env, "PEER_POOL_SIZE": threads}, BENCH, extra)
        try:
            wrk(base, 3)
            before, started = cpu_ticks(), time.monotonic()
            runs[label] = dict(wrk(base, seconds))
            runs[label]["cpu"] = cpu_split(before, cpu_ticks(), time.monotonic() - started, runs[label]["requests"])
        finally:
            stop(proc)
    best = max(runs, key=lambda label: runs[label]["rate"])
    return {**runs[best], "config": best, "rates": {label: run["rate"] for label, run in runs.items()}}


# The programs the receiver is compared with (tests/bench/*_app.py), and their tables.
PEERS = {"afternoon": "afternoon_app:app", "naive": "peer_app:app", "ceiling": "bare_app:app"}
PEER_TABLES = """
CREATE TABLE peer_webhooks (id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(),
                            body jsonb NOT NULL);
CREATE TABLE afternoon_raw (id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(),
                            body text NOT NULL);
CREATE TABLE afternoon_messages (message_id text PRIMARY KEY, sub_account text, department text,
                                 job_number text, first_seen_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE afternoon_recipients (
    message_id text NOT NULL REFERENCES afternoon_messages, destination text NOT NULL, dest_seq text,
    type text, status text NOT NULL, rank smallint NOT NULL, result text, sent_at timestamptz,
    price numeric, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (message_id, destination));
"""
# Where each durable program keeps every webhook it answered 2xx (warm-ups included: at least).
STORED = {"receiver": "webhook_events", "afternoon": "afternoon_raw", "naive": "peer_webhooks"}


def durable(url: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each durable program's 2xx answers against its stored rows; exits when a 2xx was lost."""
    found = {}
    with psycopg.connect(url) as conn:
        for label, table_name in STORED.items():
            stored = conn.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]  # type: ignore[index]
            answered = sum(r["requests"] - r["non_2xx"] for r in runs[label])
            found[label] = {"answered_2xx": answered, "stored": stored}
            if stored < answered:
                raise SystemExit(f"{label}: only {stored} {table_name} rows for {answered} 2xx answers")
    return found


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The rounds as a Markdown table: each program's rate and CPU per webhook, and the ratios."""
    def cpu(run: dict[str, Any]) -> str:
        return f"{run['cpu'].get('gunicorn_us_per_webhook', 0):,} / {run['cpu'].get('postgres_us_per_webhook', 0):,}"
    lines = ["| round | receiver /s (p99) | afternoon /s | naive /s | ceiling /s | receiver/afternoon | "
             "receiver/naive | receiver/ceiling | workers / PostgreSQL us a webhook: receiver, afternoon, naive |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, rec in enumerate(runs["receiver"]):
        peers = {label: runs[label][n] for label in PEERS}
        lines.append(f"| {n + 1} | {rec['rate']:,.0f} ({rec['p99_ms']} ms; workers' cores "
                     f"{' + '.join(map(str, rec['cpu'].get('cores_by_worker', [])))}) | "
                     + " | ".join(f"{p['rate']:,.0f}" for p in peers.values()) + " | "
                     + " | ".join(f"{rec['rate'] / p['rate']:.2f}" for p in peers.values()) + " | "
                     + "; ".join(cpu(r) for r in (rec, peers["afternoon"], peers["naive"])) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL",
                                                           "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fill", type=int, default=5_000_000, help="recipients stored before the second run")
    parser.add_argument("--rss-webhooks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of receiver, peer, bare Flask")
    parser.add_argument("--quick", action="store_true",
                        help="only the interleaved peaks (receiver, peer, bare Flask): about 4 minutes at --seconds 10")
    args = parser.parse_args()
    for tool in ("wrk", "pgbench"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: apt-get install wrk postgresql-client")
    name = f"bench_throughput_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        synchronous_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    url = make_conninfo(args.server, dbname=name)
    figures: dict[str, Any] = {"synchronous_commit": synchronous_commit, "cores": os.cpu_count()}
    try:
        migrate(url)
        env = {**os.environ, "DATABASE_URL": url, "WEBHOOK_TOKEN": TOKEN, "LOG_LEVEL": "INFO"}  # production's
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(PEER_TABLES)
        # Interleaved rounds: the machine's speed drifts 15-25 % between runs; each round measures
        # the four side by side, and the medians (and each round's own ratios) are compared.
        runs: dict[str, list[dict[str, Any]]] = {"receiver": [], **{label: [] for label in PEERS}}
        for n in range(args.rounds):
            runs["receiver"].append(receiver_peak(url, env, args.seconds))
            for label, app in PEERS.items():
                runs[label].append(best_of_configs(app, {**env, "PYTHONPATH": str(ROOT)}, args.seconds))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]['rate']:.0f}/s" for k, v in runs.items()),
                  file=sys.stderr)
        for label, found in runs.items():
            figures[label] = {"median_rate": statistics.median(r["rate"] for r in found), "runs": found}
        figures["durable"] = durable(url, runs)
        if not args.quick:
            proc, base = gunicorn("wsgi:app", env, ROOT)
            try:
                measure_receiver(proc, base, url, args, figures["receiver"]["median_rate"], figures)
            finally:
                stop(proc)
            figures["pgbench_tps"] = pgbench(url, args.seconds)
            figures["pgbench_batch_4_webhooks_per_s"] = pgbench(url, args.seconds, batch=4)
            figures["poll_page_merge"] = merge_ms(url)
    finally:
        with psycopg.connect(args.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    r, b = figures["receiver"]["median_rate"], figures["ceiling"]["median_rate"]
    for label in PEERS:
        figures[f"receiver/{label}"] = {
            "median": round(r / figures[label]["median_rate"], 3),
            "rounds": [round(x["rate"] / y["rate"], 3) for x, y in zip(runs["receiver"], runs[label], strict=True)]}
    print(table(runs), file=sys.stderr)
    if not args.quick:
        figures["ratio_to_min_of_flask_and_pgbench"] = round(r / min(b, figures["pgbench_tps"]), 3)
        figures["ratio_rate_with_rows"] = round(figures["receiver_with_rows"]["rate"] / r, 3)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    figures["commit"] = commit
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
