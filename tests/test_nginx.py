"""The documented production front: deploy/nginx/bestsms-receiver.conf, run by a real nginx.

`nginx -t` accepts the site; through it, 50 clients sending a byte a second do not delay a
legitimate webhook (without it, they held every gunicorn thread). Skipped where nginx is not
installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import PATH, ROOT, TOKEN, free_port, start_gunicorn, stop

pytestmark = pytest.mark.slow
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SITE = ROOT / "deploy" / "nginx" / "bestsms-receiver.conf"


def render(tmp: Path, upstream_port: int, http_port: int, https_port: int) -> Path:
    """The site as shipped, with this test's ports, certificate and directories; and a main config."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True)
    site = SITE.read_text()
    for old, new in [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"), ("listen [::]:80;", ""),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"), ("listen [::]:443 ssl http2;", ""),
        ("/etc/letsencrypt/live/receiver.example.com/fullchain.pem", str(tmp / "cert.pem")),
        ("/etc/letsencrypt/live/receiver.example.com/privkey.pem", str(tmp / "key.pem")),
        ("/var/log/nginx/", f"{tmp}/"),
    ]:
        assert old in site, f"{old!r} is no longer in {SITE.name}: update this test's rendering"
        site = site.replace(old, new)
    (tmp / "site.conf").write_text(site)
    main = tmp / "nginx.conf"
    main.write_text(f"""
user root;
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
""")
    return main


@pytest.fixture
def nginx_conf(tmp_path: Path) -> Iterator[tuple[Path, int, int, int]]:
    if not NGINX or not shutil.which("openssl"):
        pytest.skip("nginx (Debian's nginx-light) or openssl is not installed")
    ports = free_port(), free_port(), free_port()
    yield render(tmp_path, *ports), *ports


def test_the_site_config_is_valid(nginx_conf, tmp_path):
    conf, *_ = nginx_conf
    done = subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


def _wait_for(base: str) -> None:
    """Until nginx passes /healthz on to the receiver (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", verify=False, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "nginx did not come up"
        time.sleep(0.1)


def test_slow_clients_do_not_delay_webhooks_through_nginx(nginx_conf, database_url, tmp_path):
    conf, upstream, http_port, https_port = nginx_conf
    proc, _ = start_gunicorn(database_url, workers=1, port=upstream, log_path=tmp_path / "gunicorn.log",
                             extra_env={"GUNICORN_THREADS": "2", "DB_POOL_SIZE": "2", "PROXY_HOPS": "1"})
    server = subprocess.Popen([NGINX, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop_slow = threading.Event()
    slow: list[socket.socket] = []
    try:
        base = f"https://127.0.0.1:{https_port}"
        _wait_for(base)

        def trickle() -> None:
            """A client sending its request a byte a second (it never finishes within the test)."""
            sock = socket.create_connection(("127.0.0.1", http_port))
            slow.append(sock)
            for byte in b"POST /webhooks/bestsms HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
                if stop_slow.wait(1):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        trickles = [threading.Thread(target=trickle, daemon=True) for _ in range(50)]
        for thread in trickles:
            thread.start()
        time.sleep(1)
        latencies, request_ids = [], []
        with httpx.Client(verify=False, timeout=30) as client:
            for i in range(40):
                started = time.monotonic()
                response = client.post(f"{base}{PATH}", json={
                    "APIKey": TOKEN, "MessageID": f"nginx-{i}", "Destination": "+61410010001", "Status": "Success"})
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
                request_ids.append(response.headers["X-Request-ID"])
                time.sleep(0.1)
    finally:
        stop_slow.set()
        for sock in slow:
            sock.close()
        server.terminate()
        server.wait(15)
        stop(proc)
    print(f"\nthrough nginx, 50 slow clients: webhook latency max {max(latencies) * 1000:.0f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms")
    assert max(latencies) < 1.0
    log = (tmp_path / "bestsms-receiver.access.log").read_text()
    assert "POST /webhooks/bestsms" in log and TOKEN not in log
    # nginx's request id is the receiver's: one id finds a request in both logs.
    receiver_log = [json.loads(line) for line in (tmp_path / "gunicorn.log").read_text().splitlines()
                    if line.startswith("{")]
    webhooks = {line["request_id"]: line for line in receiver_log if line.get("event") == "webhook"}
    assert len(set(request_ids)) == 40 and all(re.fullmatch(r"[0-9a-f]{32}", r) for r in request_ids)
    for request_id in request_ids:
        assert request_id in log and webhooks[request_id]["message_id"].startswith("nginx-")


def test_nginx_answers_its_own_errors_in_json_and_logs_no_token(nginx_conf, database_url, tmp_path):
    """A body over the limit (413), a broken chunked body (400) and the receiver down (502), each
    with the token in the query: JSON answers like the receiver's, and no log of nginx's holds it."""
    conf, upstream, _, https_port = nginx_conf
    proc, _ = start_gunicorn(database_url, workers=1, port=upstream, extra_env={"PROXY_HOPS": "1"})
    server = subprocess.Popen([NGINX, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"https://127.0.0.1:{https_port}"
    query = f"{PATH}?token={TOKEN}&APIKey={TOKEN}"
    answers = {}
    try:
        _wait_for(base)
        with httpx.Client(verify=False, timeout=30) as client:
            answers["413"] = client.post(f"{base}{query}", content=b"x" * (2 * 1024 * 1024))
            answers["404"] = client.get(f"{base}/no/such/page?token={TOKEN}")  # the receiver's own
        answers["400"] = _raw_tls(https_port, (f"POST {query} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                               "Connection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").encode())
        stop(proc)
        with httpx.Client(verify=False, timeout=30) as client:
            answers["502"] = client.get(f"{base}{query}&MessageID=down")
    finally:
        server.terminate()
        server.wait(15)
        if proc.poll() is None:
            stop(proc)
    for status, answer in answers.items():
        assert answer.status_code == int(status), (status, answer.text)
        assert answer.headers["content-type"].startswith("application/json"), (status, answer.headers)
        assert "error" in answer.json(), (status, answer.text)
    assert answers["502"].headers["Retry-After"]
    assert "X-Request-ID" in answers["404"].headers  # the receiver's own error, passed on untouched
    for log in tmp_path.glob("*.log"):
        assert TOKEN not in log.read_text(), f"{log.name} holds the token"


def _raw_tls(port: int, data: bytes) -> httpx.Response:
    """Raw bytes over TLS (a request httpx would not send), the answer parsed."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as plain, \
            context.wrap_socket(plain, server_hostname="localhost") as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    if headers.get("Transfer-Encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)
