"""RSS of one gunicorn worker (8 threads) before and after a flood of anonymous ~1-MB bodies of one
shape. Run by hand (the suite's test_limits.py floods all six shapes at once, 40 each):

    python tests/bench/flood_memory.py SHAPE [COUNT]     # SHAPE: form, xml, xmldeep, json, long

It makes a database of its own on the server in TEST_DATABASE_URL (default: the local one).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from receiver.migrator import migrate
from tests.support import create_database, drop_database, start_gunicorn, stop

SHAPES = {
    "form": ("application/x-www-form-urlencoded", lambda: "&".join(f"f{i}=v{i}" for i in range(90000)).encode()),
    "xml": ("application/xml", lambda: ("<W>" + "".join(f"<f{i}>v</f{i}>" for i in range(45000)) + "</W>").encode()),
    "xmldeep": ("application/xml", lambda: b"<a>" * 60000 + b"</a>" * 60000),
    "json": ("application/json", lambda: json.dumps({f"f{i}": f"v{i}" for i in range(60000)}).encode()),
    "long": ("application/json", lambda: json.dumps({"MessageText": "x" * 1000000}).encode()),
}


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def main() -> None:
    shape, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200
    content_type, make = SHAPES[shape]
    body = make()[: 1024 * 1024 - 10]
    server = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"flood_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    migrate(url)
    proc, base = start_gunicorn(url, workers=1)
    try:
        worker = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        small = json.dumps({"MessageID": "anon", "APIKey": "no"}).encode()
        with ThreadPoolExecutor(8) as pool:  # every thread has served an anonymous webhook
            list(pool.map(lambda _: httpx.post(f"{base}/webhooks/bestsms", content=small,
                                               headers={"Content-Type": "application/json"}), range(200)))
        before = rss_mb(worker)
        started = time.time()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{base}/webhooks/bestsms", content=body, timeout=120,
                                                       headers={"Content-Type": content_type}).status_code,
                                  range(count)))
        took = time.time() - started
        time.sleep(7)  # the kept-alive connections closed
        print(f"{shape}: {len(body):,} bytes x {count}: answers {sorted(set(codes))} in {took:.1f} s; "
              f"worker RSS {before:.0f} -> {rss_mb(worker):.0f} MB")
    finally:
        stop(proc)
        drop_database(server, name)


if __name__ == "__main__":
    main()
