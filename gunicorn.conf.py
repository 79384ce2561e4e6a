"""gunicorn settings for the receiver, read from the environment by receiver/config.py like every
other setting. gunicorn reads this file by default when started here (`gunicorn wsgi:app`);
from elsewhere, give it with --config. wsgi.py refuses to serve without it: the token filter on
gunicorn's own lines and the metrics shared by the workers are set up here.

Do not add `preload_app`: each worker must open its own database pool after the fork.
"""

import ctypes
import logging
import os
import platform
import shutil
import sys
import tempfile

import gunicorn.util
from gunicorn.glogging import Logger

# Started from another directory (`gunicorn --config /srv/receiver/gunicorn.conf.py wsgi:app`): the
# receiver package and wsgi.py are beside this file, so it is imported from and served from here.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
chdir = _HERE

# Prometheus multiprocess mode: the workers share counts through files in this directory. It is
# set first, before anything imports prometheus_client or receiver.metrics (which choose where
# counts go when imported, from the environment), so that no import order can leave a worker
# counting in memory of its own. An empty value is unset, as receiver/config.py reads it.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="receiver-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

from receiver import log  # noqa: E402 - after the path above
from receiver.config import Settings  # noqa: E402
from receiver.errors import Fatal  # noqa: E402

try:
    settings = Settings.from_env()
except Fatal as exc:  # one line, and gunicorn stops, no traceback
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None

bind = f"{settings.host}:{settings.port}"
# One worker per core: measured on 2 cores (tests/bench/RESULTS.md), 2 workers x 4 threads served as
# many webhooks as 4 x 4 or 8 x 2 (about 1,600/s), with a lower p99 and half the memory; the
# workers wait on PostgreSQL, not on each other.
workers = settings.web_concurrency
worker_class = "gthread"
# Threads no longer hold a connection each: a worker's concurrent webhooks are written together
# (group commit, receiver/batch.py) on WEBHOOK_WRITERS connections (1). More threads make bigger batches;
# measured on 2 cores (tests/bench/RESULTS.md), 8 served more webhooks/s than 4 or 16.
threads = settings.gunicorn_threads
timeout = 30
graceful_timeout = 30
keepalive = 5
# A GET webhook carries its fields in the request line: one that fits MAX_BODY_BYTES as a POST
# fits as a GET too. gunicorn allows at most 8,190 bytes or no limit (0): no limit here, and the
# app refuses a query string over MAX_BODY_BYTES (414, kept as a rejected event when
# authenticated). Exposed without the nginx site in front, a client can send gunicorn a request
# line as long as it likes; the site bounds it (large_client_header_buffers).
limit_request_line = 0
accesslog = None  # the app logs one JSON line per webhook
errorlog = "-"
# gunicorn's control socket defaults to one path per user: two instances on one host would share it.
control_socket_disable = settings.gunicorn_control_socket is None
control_socket = settings.gunicorn_control_socket

# A request's memory goes back to the system when it is done. glibc gives an allocation of 128 KB
# or more (a body, its text) a mapping of its own, returned when freed; but it raises that
# threshold to the size of each one freed, so from the second 1-MB body on, bodies come from the
# heap, whose holes it keeps: 200 refused 1-MB bodies left a worker 15-30 MB bigger for good. A
# fixed threshold turns that off (set here in the master, inherited by every worker; glibc only).
if platform.libc_ver()[0] == "glibc":
    ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD

# What wsgi.py checks: the workers were started with this config.
os.environ["RECEIVER_GUNICORN_CONFIG"] = __file__

# gunicorn's own lines quote request lines ("Invalid HTTP request line: 'GET /...?token=...'"):
# credentials are taken out of them, in the master and (inherited) in every worker.
logging.getLogger("gunicorn.error").addFilter(log.SecretFilter(settings.webhook_tokens))


class JSONLogger(Logger):
    """gunicorn's own lines rendered like the app's (JSON in production): what a request line
    quotes is a string in a record, never a line of its own."""

    def setup(self, cfg):
        super().setup(cfg)
        for i, handler in enumerate(self.error_log.handlers):
            if type(handler) is logging.StreamHandler:  # errorlog "-": one write() a line, like the app's
                line_handler = log.handler()
                line_handler._gunicorn = True  # replaced, like gunicorn's own, when it sets up again (HUP)
                self.error_log.handlers[i] = line_handler
            else:
                handler.setFormatter(log.formatter())


logger_class = JSONLogger


def _json_error(sock, status_int, reason, mesg):
    """What gunicorn refuses before the app sees it (a malformed request line, a header over
    limit_request_field_size, a broken chunk), answered in JSON like every other answer, and
    counted; gunicorn logs why ("Invalid request from ip=..."). `mesg` may quote the request
    line, query string and all: not echoed."""
    import json

    from receiver import metrics  # in the worker (this runs there), after the fork

    metrics.SERVER_REFUSED.labels(str(status_int)).inc()
    body = json.dumps({"error": f"{reason.lower()} (refused by the server before it was read)"}) + "\n"
    gunicorn.util.write_nonblock(sock, (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}").encode("latin-1"))


# gunicorn's workers answer through gunicorn.util.write_error (gunicorn/workers/base.py:
# handle_error): replaced, not patched per worker, since it is looked up at each call.
gunicorn.util.write_error = _json_error


def on_starting(server):
    """Start from empty counts: the directory must not hold a previous run's files."""
    for name in os.listdir(metrics_dir):
        os.remove(os.path.join(metrics_dir, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, metrics_dir)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
