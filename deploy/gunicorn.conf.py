"""gunicorn settings for the receiver (the Procfile's `web:` uses them).

Do not add `preload_app`: each worker must open its own database pool after the fork.
"""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "gthread"
# Each thread holds one pooled connection while it waits on PostgreSQL; DB_POOL_SIZE should match.
threads = int(os.environ.get("GUNICORN_THREADS", os.environ.get("DB_POOL_SIZE", "4")))
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app logs one JSON line per webhook
errorlog = "-"
# gunicorn's control socket defaults to one path per user: two instances on one host would share it.
control_socket_disable = os.environ.get("GUNICORN_CONTROL_SOCKET", "") == ""
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or None
