"""gunicorn settings for the receiver (the Procfile's `web:` uses them).

Do not add `preload_app`: each worker must open its own database pool after the fork.
"""

import logging
import multiprocessing
import os
import shutil
import tempfile

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
# One worker per core: measured on 2 cores (tests/bench/RESULTS.md), 2 workers x 4 threads served as
# many webhooks as 4 x 4 or 8 x 2 (about 1,600/s), with a lower p99 and half the memory; the
# workers wait on PostgreSQL, not on each other.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
# Threads no longer hold a connection each: a worker's concurrent webhooks are written together
# (group commit, receiver/batch.py) on WEBHOOK_WRITERS connections (1). More threads make bigger batches;
# measured on 2 cores (tests/bench/RESULTS.md), 8 served more webhooks/s than 4 or 16.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app logs one JSON line per webhook
errorlog = "-"
# gunicorn's control socket defaults to one path per user: two instances on one host would share it.
control_socket_disable = os.environ.get("GUNICORN_CONTROL_SOCKET", "") == ""
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or None

# Prometheus multiprocess mode: the workers share counts through files in this directory. It is
# set here, in the master, before any worker imports prometheus_client (see receiver/metrics.py).
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="receiver-metrics-")


# gunicorn's own lines quote request lines ("Invalid HTTP request line: 'GET /...?token=...'"):
# credentials are taken out of them, in the master and (inherited) in every worker.
from receiver.log import SecretFilter  # noqa: E402 - after PROMETHEUS_MULTIPROC_DIR is set

logging.getLogger("gunicorn.error").addFilter(
    SecretFilter(t.strip() for t in os.environ.get("WEBHOOK_TOKEN", "").split(",")))


def on_starting(server):
    """Start from empty counts: the directory must not hold a previous run's files."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
