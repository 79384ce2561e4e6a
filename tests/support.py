"""Helpers shared by the tests: BestSMS's four callback encodings, the samples, row checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
