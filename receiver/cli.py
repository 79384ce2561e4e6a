"""Command line: `python -m receiver serve | migrate | reprocess | poll | track | report | prune | psql`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import cli_values as values
from . import db, log, migrator, store
from .bestsms.events import Parser
from .config import Settings, without_passwords
from .errors import Fatal, Unavailable, first_line

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"


def _database_url(settings: Settings, *, report: bool = False) -> str:
    """DATABASE_URL, else an embedded PostgreSQL under RECEIVER_DATA_DIR, migrated (a local trial;
    `report`: say what the migration applied)."""
    url = settings.database_url
    if not url:
        url = db.start_embedded(settings.data_dir)
        os.environ["DATABASE_URL"] = url  # for the gunicorn workers
        applied = _migrate(url, settings)
        if report:
            _report(applied)
    return url


def _current_database(settings: Settings) -> str:
    """The database's URL, once it answers and its schema is current: commands never change the schema."""
    url = _database_url(settings)
    with db.connect(settings, url) as conn:
        reason = migrator.behind(conn)
    if reason:
        raise Fatal(reason)
    return url


def _migrate(url: str, settings: Settings) -> list[str]:
    """Migrate the database at `url`, or at DIRECT_DATABASE_URL (the same one, past the pooler)."""
    if settings.direct_database_url:
        url = settings.direct_database_url
    elif settings.db_pooler == "transaction":
        raise Fatal("migrate needs a direct connection: with DB_POOLER=transaction, DATABASE_URL goes through a "
                    "transaction-mode pooler, where its lock and its DDL do not hold; set DIRECT_DATABASE_URL "
                    "to the same database without the pooler")
    try:
        return migrator.migrate(url, settings.bestsms_timezone, connect_timeout=settings.db_timeout_seconds)
    except Exception as exc:  # alembic and SQLAlchemy wrap the database's error: report the original
        raise Fatal(f"migrate failed: {_described(getattr(exc, 'orig', None) or exc)}") from exc


def _described(exc: BaseException) -> str:
    """An unexpected exception in one line, its type first."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.wsgiapp import WSGIApplication  # type: ignore[import-untyped]

    _check_free(args.bind or f"{settings.host}:{settings.port}")
    url = _database_url(settings, report=True)
    if settings.database_url:  # the embedded database was migrated as it started
        _report(_migrate(url, settings))
    if not settings.webhook_tokens:  # a local trial may run without a token; create_app warns
        os.environ["ALLOW_UNAUTHENTICATED_WEBHOOKS"] = "yes"
    argv = ["gunicorn", "--config", str(GUNICORN_CONF), "--chdir", str(ROOT)]
    if args.bind:
        argv += ["--bind", args.bind]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    sys.argv = [*argv, "wsgi:app"]
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
    return 0


def _check_free(bind: str) -> None:
    """Fatal, in one line naming it, when the address `serve` would listen on is taken (gunicorn
    tried for 5 s, logging each try, then said "Can't connect")."""
    if bind.startswith(("unix:", "fd://")):
        return
    host, _, port = bind.rpartition(":") if ":" in bind else ("0.0.0.0", "", bind)  # noqa: S104 - gunicorn's own
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return  # gunicorn says what is wrong with it
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise Fatal(f"cannot listen on {bind}: {exc.strerror} (another serve or server on port {port}?): "
                        "stop it, or listen elsewhere with --bind HOST:PORT (or PORT=...)") from None


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply the pending schema migrations (safe to run twice at once: the second waits, then finds none)."""
    url = settings.database_url
    if not url:
        url = db.start_embedded(settings.data_dir)
    _report(_migrate(url, settings))
    return 0


def _report(applied: list[str]) -> None:
    for revision in applied:
        print(f"applied {revision}")
    print(f"schema is at revision {migrator.head()}" + ("" if applied else " (nothing to apply)"))


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    """Re-apply stored webhook events through today's parser and merge rule."""
    url = _current_database(settings)
    parser = Parser(settings.tz, settings.default_region)
    rejected_only = args.rejected or (args.since is None and args.until is None)
    counts: Counter[str] = Counter()
    last_id = 0
    with db.connect(settings, url) as conn:
        while batch := store.events_to_reprocess(conn, rejected=rejected_only, since=args.since,
                                                 until=args.until, after_id=last_id):
            for row in batch:
                last_id = row["id"]
                counts[reprocess_one(conn, parser, row)] += 1
    print(json.dumps({"reprocessed": sum(counts.values()), **counts}))
    return 0


def reprocess_one(conn: psycopg.Connection[Any], parser: Parser, row: dict[str, Any]) -> str:
    """Parse a stored webhook request again, the way the endpoint does, and apply its event (or
    record why it is still refused); returns its new outcome."""
    parsed = parser.webhook(row["method"], row["content_type"], row["body"] or "", row["query_string"] or "")
    if parsed.refused is not None or parsed.kind is None or parsed.event is None:
        error = parsed.refused.message if parsed.refused else "not a webhook"
        store.rereject_event(conn, row["id"], error, parsed.message_id)
        return "rejected"
    try:
        return str(store.reapply_event(conn, row["id"], parsed.kind, parsed.event, row["received_at"])["outcome"])
    except db.VALUE_REFUSED as exc:  # as the webhook does: kept as rejected with the reason, the run goes on
        store.rereject_event(conn, row["id"], db.refused_value(exc), parsed.message_id)
        return "rejected"


def cmd_poll(args: argparse.Namespace, settings: Settings) -> int:
    """Poll BestSMS for what webhooks missed: until SIGTERM, or (--once) everything due now."""
    import signal

    from .poller import Poller

    settings.check_poller()
    url = _database_url(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if settings.poll_metrics_port and not args.once:
        from prometheus_client import start_http_server

        from .metrics import POLLER

        start_http_server(settings.poll_metrics_port, registry=POLLER)
    poller = Poller(settings, url, stop=stop)
    try:
        if args.once:
            outcomes = poller.run_once()
            print(json.dumps({"polls": sum(outcomes.values()), **outcomes}))  # and how many of each outcome
            if outcomes and not outcomes["polled"] + outcomes["not_found"] and not poller.unauthorized:
                print("error: no poll succeeded (see the log for why)", file=sys.stderr)
                return 1
        else:
            log_ = structlog.get_logger(__name__)
            log_.info("poller started", api=settings.bestsms_api_url, rate=settings.poll_rate_per_second)
            poller.run_forever()
            log_.info("poller stopped")
    finally:
        poller.close()
    return 2 if poller.unauthorized else 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """A reporting view as CSV: rebilling for a month, delivery for a range of days, or opt-outs."""
    url = _current_database(settings)
    params = {"sub_account": args.sub_account, "month": getattr(args, "month", None),
              "from": getattr(args, "date_from", None), "to": getattr(args, "date_to", None)}
    with db.connect(settings, url) as conn:
        if args.output:
            with open(args.output, "wb") as out:
                found = store.report_csv(conn, args.report, params, out)
        else:
            found = store.report_csv(conn, args.report, params, sys.stdout.buffer)
            sys.stdout.flush()
        if not found and args.sub_account:
            known = store.sub_accounts(conn)
            print(f"no rows for sub account {args.sub_account!r} (names are case-sensitive); "
                  f"known: {', '.join(known) or 'none yet'}", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Drop webhook_events' days older than the given age, and delete what is left of them in the
    day the cutoff falls in, in batches (recipients and replies stay); make the days ahead."""
    if args.events_older_than < 86400 and not args.under_a_day:
        raise Fatal(f"--events-older-than {args.events_older_than:g} s is under a day: it would drop requests "
                    "received today, which `reprocess` may still need; give --under-a-day if that is meant")
    cutoff = datetime.now(UTC) - timedelta(seconds=args.events_older_than)
    url = _current_database(settings)
    with db.connect(settings, url) as conn:
        made = store.ensure_event_partitions(conn)
        dropped = store.drop_old_event_partitions(conn, args.events_older_than)
        deleted = store.prune_events(conn, args.events_older_than)
    print(json.dumps({"received_before": cutoff.isoformat(timespec="seconds"), "dropped_days": dropped,
                      "deleted_events": deleted, "days_made": made}))
    return 0


def cmd_psql(args: argparse.Namespace, settings: Settings) -> int:
    """psql on the service's database: DATABASE_URL, or the embedded one (with the psql of its version)."""
    url = _database_url(settings)
    psql = str(db.embedded_psql()) if not settings.database_url else (shutil.which("psql") or "")
    if not psql:
        raise Fatal("psql is not installed (Debian: apt-get install postgresql-client)")
    url, rest = _psql_connection(url, args.psql_args)
    sys.stdout.flush()
    done = subprocess.run([psql, url, *rest], check=False)  # noqa: S603 - the operator's own command
    return done.returncode


# psql's own connection options: given to `psql` here, they change the connection string (psql lets
# a connection string given as its database override them: `-U billing` connected as the URL's user).
_PSQL_OPTIONS = {"-U": "user", "--username": "user", "-h": "host", "--host": "host", "-p": "port", "--port": "port",
                 "-d": "dbname", "--dbname": "dbname"}


def _psql_connection(url: str, argv: list[str]) -> tuple[str, list[str]]:
    """(the connection string with psql's -U, -h, -p and -d applied, the other arguments)."""
    given: dict[str, str] = {}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name, equals, value = arg.partition("=")
        if arg in _PSQL_OPTIONS:
            value = next(args, "")
            given[_PSQL_OPTIONS[arg]] = value
        elif equals and name.startswith("--") and name in _PSQL_OPTIONS:
            given[_PSQL_OPTIONS[name]] = value
        elif len(arg) > 2 and arg[:2] in _PSQL_OPTIONS and not arg.startswith("--"):  # -Ubilling
            given[_PSQL_OPTIONS[arg[:2]]] = arg[2:]
        else:
            rest.append(arg)
    if not given:
        return url, rest
    params = {**conninfo_to_dict(url), **given}
    if "user" in given:  # another role: not the URL's password
        params.pop("password", None)
    return make_conninfo("", **params), rest


def cmd_track(args: argparse.Namespace, settings: Settings) -> int:
    """Track messages (so the poller fetches their results) by MessageID."""
    url = _current_database(settings)
    with db.connect(settings, url) as conn:
        for message_id in args.message_ids:
            created = store.track(conn, {"message_id": message_id, "sub_account": args.sub_account,
                                         "department": args.department, "recipient_count": args.recipients,
                                         "send_at": args.send_time, "reference": args.reference})
            given = any(v is not None for v in (args.sub_account, args.department, args.recipients, args.send_time,
                                                 args.reference))
            print(f"{message_id}: " + ("tracked" if created else "already tracked, updated with what was given"
                                       if given else "already tracked"))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, like every other error of the command line."""
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_report(sub: Any) -> Any:
    """`report` and its one subcommand per view; returns the subcommands."""
    report = sub.add_parser("report", help="a reporting view as CSV (a header row, then one row per line)")
    reports = report.add_subparsers(dest="report", required=True)
    rebilling = reports.add_parser("rebilling", help="rebilling_monthly for one month, per sub account and department")
    by_sub_account = reports.add_parser("rebilling-by-sub-account",
                                        help="rebilling_monthly for one month, one line per sub account")
    for each in (rebilling, by_sub_account):
        each.add_argument("--month", type=values.month, required=True, help="YYYY-MM (the account's time zone)")
    delivery = reports.add_parser("delivery", help="delivery_daily for a range of days")
    delivery.add_argument("--from", dest="date_from", type=values.day, required=True, help="first day, YYYY-MM-DD")
    delivery.add_argument("--to", dest="date_to", type=values.day, required=True,
                          help="last day, YYYY-MM-DD (included)")
    reports.add_parser("opt-outs", help="the numbers opted out now (with --sub-account: of that sub account, by "
                                        "its replies and keywords; without: each number's latest keyword)")
    for each in reports.choices.values():
        each.add_argument("--sub-account", help="only this sub account")
        each.add_argument("--output", help="write the CSV to this file (default: standard output)")
        each.set_defaults(func=cmd_report)
    return reports


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m receiver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook receiver under gunicorn "
                                         "(embedded PostgreSQL when DATABASE_URL is unset)")
    serve.add_argument("--bind", help="host:port to listen on (default 0.0.0.0:$PORT or 8000)")
    serve.add_argument("--workers", type=int, help="gunicorn worker processes")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", aliases=["init-db"],
                             help="apply pending schema migrations (the release step; nothing else changes the schema)")
    migrate.set_defaults(func=cmd_migrate)

    reprocess = sub.add_parser("reprocess", help="re-apply stored webhook events with today's code "
                                                 "(default: every rejected event)")
    reprocess.add_argument("--since", type=values.when, metavar="TIME",
                           help="events received at or after TIME: ISO 8601, e.g. 2026-11-01 or "
                                "2026-11-01T09:30+10:00 (UTC when no offset is given)")
    reprocess.add_argument("--until", type=values.when, metavar="TIME", help="events received before TIME (ISO 8601)")
    reprocess.add_argument("--rejected", action="store_true", help="only rejected events in the time range")
    reprocess.set_defaults(func=cmd_reprocess)

    poll = sub.add_parser("poll", help="poll BestSMS for results and replies webhooks missed")
    poll.add_argument("--once", action="store_true", help="poll everything due now once, then exit")
    poll.set_defaults(func=cmd_poll)

    reports = _add_report(sub)

    about = ("drop archived requests (webhook_events) received more than AGE ago: whole days dropped, the rest "
             "of the day the cutoff falls in deleted; results and replies stay; prints the cutoff and what went")
    prune = sub.add_parser("prune", help=about, description=about)
    prune.add_argument("--events-older-than", type=values.age, required=True, metavar="AGE",
                       help="e.g. 90d (days), 12h, 30m; under a day only with --under-a-day")
    prune.add_argument("--under-a-day", action="store_true", help="allow an AGE under a day (drops today's requests)")
    prune.set_defaults(func=cmd_prune)

    psql = sub.add_parser("psql", help="open psql on the database (the embedded one when DATABASE_URL is unset)")
    psql.epilog = "Every argument after `psql` is psql's own, e.g. `python -m receiver psql -c 'SELECT 1'`."
    psql.set_defaults(func=cmd_psql)

    track = sub.add_parser("track", help="track messages by MessageID so that the poller fetches them")
    track.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID", type=values.message_id)
    track.add_argument("--sub-account")
    track.add_argument("--department")
    track.add_argument("--recipients", type=int, help="how many recipients the message has")
    track.add_argument("--reference", help="the sender's own reference for the message")
    track.add_argument("--send-time", type=values.when, metavar="TIME",
                       help="a scheduled message's send time (ISO 8601, UTC unless it says): not polled before it, "
                            "and given up POLL_GIVE_UP_SECONDS after it")
    track.set_defaults(func=cmd_track)
    # -v before or after the command: the command's INFO lines too (quiet by default, but for the
    # long-running serve and poll, which log as LOG_LEVEL says).
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the command does (INFO lines)")
    for command in {id(p): p for p in [*sub.choices.values(), *reports.choices.values()]}.values():  # aliases once
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log what the command does (INFO lines)")
    return parser


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """serve and poll (without --once) log as LOG_LEVEL says; a one-shot command only its warnings,
    unless -v or LOG_LEVEL asks for more."""
    long_running = args.command == "serve" or (args.command == "poll" and not args.once)
    if long_running or "LOG_LEVEL" in os.environ:
        return settings.log_level
    return "INFO" if args.verbose else "WARNING"


def main(argv: list[str] | None = None) -> int:
    # The embedded PostgreSQL's platformdirs warns on every command where XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    argv = sys.argv[1:] if argv is None else argv
    # "--events-older-than -5d": argparse takes -5d for an option; given as one argument, values.age answers it.
    argv = values.joined(argv, "--events-older-than")
    if argv[:1] == ["psql"] and not {"-h", "--help"} & set(argv[1:2]):  # the rest is psql's own
        args = build_parser().parse_args(["psql"])
        args.psql_args = argv[1:]
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "date_from", None) and args.date_from > args.date_to:
            parser.error(f"--from {args.date_from} is after --to {args.date_to}")
    try:
        settings = Settings.from_env()
    except Fatal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.configure(_log_level(args, settings))
    structlog.get_logger(__name__).debug("command", command=args.command)
    try:
        return int(args.func(args, settings))
    except Exception as exc:  # one line for people and cron; the stack with LOG_LEVEL=DEBUG
        if settings.log_level == "DEBUG":
            raise
        known = isinstance(exc, (Fatal, Unavailable))
        line = str(exc) if known else _described(exc)
        print(f"error: {without_passwords(line, settings.database_url, settings.direct_database_url)}",
              file=sys.stderr)
        return 1
