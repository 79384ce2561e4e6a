"""receiver/log.py: JSON lines, the request's context on each, and no secret in any line.

Each case runs in a process of its own: structlog caches its loggers on first use, so a test in
this process could not see what a fresh configuration writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.support import ROOT


def log_lines(program: str) -> list[dict[str, Any]]:
    """The JSON lines `program` (after `from receiver import log; log.configure(json=True)`) writes."""
    done = subprocess.run([sys.executable, "-c", f"from receiver import log; log.configure(json=True)\n{program}"],
                          cwd=ROOT, env=os.environ, capture_output=True, text=True, check=True, timeout=60)
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_every_line_is_json_with_time_level_and_the_bound_request():
    lines = log_lines(
        "import logging, structlog\n"
        "structlog.contextvars.bind_contextvars(request_id='r-1', message_id='m-1')\n"
        "structlog.get_logger('receiver').info('webhook', status=200)\n"
        "logging.getLogger('psycopg').warning('from the standard library')\n"
        "structlog.contextvars.clear_contextvars()\n"
        "structlog.get_logger('receiver').info('after the request')\n")
    first, second, third = lines
    assert (first["event"], first["status"], first["level"]) == ("webhook", 200, "info")
    assert (first["request_id"], first["message_id"]) == ("r-1", "m-1") and first["timestamp"].endswith("Z")
    assert (second["event"], second["logger"], second["request_id"]) == ("from the standard library", "psycopg", "r-1")
    assert "request_id" not in third


def test_an_explicit_field_wins_over_the_bound_one():
    [line] = log_lines("import structlog\n"
                       "structlog.contextvars.bind_contextvars(message_id='bound')\n"
                       "structlog.get_logger().info('poll', message_id='given')\n")
    assert line["message_id"] == "given"


def test_the_level_filters_lines():
    lines = log_lines("import structlog\n"
                      "log.configure('WARNING', json=True)\n"
                      "structlog.get_logger().info('hidden'); structlog.get_logger().warning('shown')\n")
    assert [line["event"] for line in lines] == ["shown"]


def test_secrets_are_taken_out_of_quoted_request_lines():
    """gunicorn's own lines quote request lines: token= values and the configured tokens go."""
    lines = log_lines(
        "import logging\n"
        "error = logging.getLogger('gunicorn.error')\n"
        "error.addFilter(log.SecretFilter(['configured-secret-1']))\n"
        "error.warning('Invalid request line: %r', 'GET /webhooks/bestsms?token=abc123&MessageID=m HTTP/1.1')\n"
        "error.warning('Invalid request line: %r', 'GET /webhooks/bestsms?%74oken=def456 HTTP/1.1')\n"
        "error.warning('header X: configured-secret-1')\n")
    text = json.dumps(lines)
    assert "abc123" not in text and "def456" not in text and "configured-secret-1" not in text
    assert [line["event"].count("[REDACTED]") for line in lines] == [1, 1, 1]
    assert "MessageID=m" in lines[0]["event"]


def test_the_filter_only_removes_it_never_decodes():
    """A request line with `%0a{...}%0a` in it stays one line: escaped bytes stay escaped, and the
    line is a JSON string, not a record of its own."""
    lines = log_lines(
        "import logging\n"
        "error = logging.getLogger('gunicorn.error')\n"
        "error.addFilter(log.SecretFilter(['configured-secret-1']))\n"
        "error.warning('Invalid request line: %r', 'GET /webhooks/bestsms?token=x&a=%0a{\"message_id\": "
        "\"FORGED-LOG\"}%0a\\x01 HTTP/1.1')\n")
    [line] = lines
    assert "%0a{" in line["event"] and "\n" not in line["event"] and "token=[REDACTED]" in line["event"]


def test_processes_sharing_standard_error_never_splice_two_records_into_a_line():
    """Like gunicorn's workers: four processes log at once into one pipe, through structlog and the
    standard library (gunicorn's own lines), lines long enough to span buffers. Every line read is
    one JSON record, and every record is there."""
    program = ("from receiver import log; log.configure(json=True)\n"
               "import logging, structlog\n"
               "for i in range(2000):\n"
               "    structlog.get_logger().info('webhook', n=i, pad='p' * (i % 7) * 700)\n"
               "    logging.getLogger('gunicorn.error').warning('worker line %s', i)\n")
    read_end, write_end = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, stderr=write_end) for _ in range(4)]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    lines = text.splitlines()
    spliced = [line[:120] for line in lines if not _one_record(line)]
    assert spliced == []
    assert len(lines) == 4 * 2 * 2000


def _one_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
