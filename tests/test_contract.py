"""The poller against the vendor's own description of its API, not our picture of it.

TNZ's OpenAPI file (tests/contract/, MIT, source noted there) is served by Prism, the stoplight
mock server (pinned in tests/contract/package.json, installed with npm on first use): once with the file's own
examples, and once with `--dynamic` answers generated from its schemas. The v3 file's SMS poll
operations are served under the v2.04 paths the facts sheet gives; its bearer scheme becomes a
plain Authorization header (BestSMS takes `Basic <token>`, which Prism's basic scheme would read
as user:password). Everything else is the vendor's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import ROOT, fetch, free_port

CONTRACT = ROOT / "tests" / "contract"
SPEC = CONTRACT / "tnz-rest-api-v3.00.yaml"
PRISM = CONTRACT / "node_modules" / ".bin" / "prism"
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
EXAMPLE_ID = "a1b2c3d4-e5f6-7890-1234-567890abcdee"  # the spec's MessageID example, in its answers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def prism_bin() -> Path:
    """Prism, as pinned in tests/contract/package.json: installed with npm on first use."""
    if not PRISM.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: Prism cannot be")
        done = subprocess.run([npm, "ci", "--prefix", str(CONTRACT), "--no-audit", "--no-fund"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not PRISM.exists():
            pytest.skip(f"Prism could not be installed: {done.stderr.strip()[-300:]}")
    return PRISM


def v204_spec(directory: Path) -> Path:
    """The vendor's file with its SMS poll operations under the v2.04 paths."""
    spec = yaml.safe_load(SPEC.read_text().replace("\t", " "))  # one example ends in a tab
    status, received = spec["paths"]["/sms/{MessageID}"], spec["paths"]["/sms/received"]
    spec["paths"] = {"/get/status/{MessageID}": status, "/get/sms/reply/{MessageID}": status,
                     "/get/sms/received": received}
    spec["components"]["securitySchemes"] = {"bearerAuth": {"type": "apiKey", "in": "header", "name": "Authorization"}}
    path = directory / "tnz-v2.04.json"
    path.write_text(json.dumps(spec, default=str))
    return path


@pytest.fixture(scope="module", params=["examples", "dynamic"])
def prism(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          prism_bin: Path) -> Iterator[tuple[str, str]]:
    """(mode, base URL) of a Prism serving the vendor's file."""
    directory = tmp_path_factory.mktemp("prism")
    port = free_port()
    args = [str(prism_bin), "mock", "--host", "127.0.0.1", "--port", str(port), str(v204_spec(directory))]
    if request.param == "dynamic":
        args.insert(2, "--dynamic")
    log = open(directory / "prism.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/get/sms/received", timeout=2)
            break
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, (directory / "prism.log").read_text()[-2000:]
            time.sleep(0.2)
    yield request.param, base
    proc.terminate()
    proc.wait(10)
    log.close()


def poll_once(database_url: str, base: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "BESTSMS_API_URL": base, "BESTSMS_AUTH_TOKEN": "contract-token",
           "POLL_AFTER_SECONDS": "0", "POLL_RATE_PER_SECOND": "50", "RECEIVED_SWEEP_SECONDS": "0",
           "POLL_TIMEOUT_SECONDS": "10", "LOG_LEVEL": "INFO"}
    return subprocess.run([sys.executable, "-m", "receiver", "poll", "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def stored(db: Any) -> dict[str, list[dict[str, Any]]]:
    return {"recipients": fetch(db, "SELECT * FROM recipients ORDER BY id"),
            "replies": fetch(db, "SELECT * FROM replies ORDER BY received_id"),
            "messages": fetch(db, "SELECT * FROM messages ORDER BY message_id")}


def test_poll_once_against_the_vendors_description(database_url, db, prism):
    mode, base = prism
    db.execute("INSERT INTO messages (message_id) VALUES (%s), ('ID1234567890'), ('contract-3')", (EXAMPLE_ID,))
    runs = 3 if mode == "dynamic" else 1
    answered = 0
    for _ in range(runs):
        db.execute("UPDATE messages SET next_poll_at = NULL, last_polled_at = NULL, poll_state = 'active'")
        done = poll_once(database_url, base)
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: no poll succeeded (dynamic answers)
        outcomes = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcomes.pop("polls") >= 3 and set(outcomes) <= {"polled", "error", "not_found", "retry"}, outcomes
        answered += outcomes.get("polled", 0)
    rows = stored(db)
    # Nothing invalid stored, whatever was generated: numbers E.164 (or an email address), times plausible.
    for r in rows["recipients"]:
        assert re.fullmatch(r"\+[0-9]{3,15}", r["destination"]) or "@" in r["destination"], r
        assert r["status"] in ("Success", "Failed", "Pending")
        assert r["sent_at"] is None or EARLIEST <= r["sent_at"] < LATEST
    for r in rows["replies"]:
        assert re.fullmatch(r"\+[0-9]{3,15}", r["from_number"]), r
    if mode == "dynamic":
        print(f"\n{runs} runs of poll --once against Prism --dynamic, {3 * runs} polls: {answered} applied, "
              f"{len(rows['recipients'])} recipients and {len(rows['replies'])} replies stored")
        return

    # The file's own examples: the message, its recipient and the reply listed under it.
    assert answered == 1  # the example answers are about EXAMPLE_ID; the others are malformed for it
    [message] = [m for m in rows["messages"] if m["message_id"] == EXAMPLE_ID]
    assert (message["job_status"], message["recipient_count"], message["poll_state"]) == ("Pending", 1, "complete")
    assert message["created_at"] == datetime(2025, 5, 29, 17, 11, 3, tzinfo=UTC)
    [recipient] = rows["recipients"]
    assert (recipient["dest_seq"], recipient["destination"], recipient["status"], recipient["result"]) == \
        ("00000001", "+64212223333", "Success", "Delivered")
    assert recipient["contact_id"] == "123e4567-e89b-12d3-a456-426614174000"
    assert recipient["sent_at"] == datetime(2025, 6, 12, 20, 44, 16, tzinfo=UTC)
    reply = next(r for r in rows["replies"] if r["message_id"] == EXAMPLE_ID or r["dest_seq"] == "00000001")
    assert (reply["from_number"], reply["received_at"]) == ("+6421000001", datetime(2025, 9, 1, 2, 2, 3, tzinfo=UTC))
    others = [m for m in rows["messages"] if m["message_id"] == "ID1234567890"]
    assert "not the one asked for" in others[0]["last_poll_error"]
