"""The WSGI entry point for production: `gunicorn wsgi:app`, run from this directory (gunicorn then
reads ./gunicorn.conf.py by itself) or with `--config /path/to/gunicorn.conf.py`."""

import os
import sys

from receiver import create_app
from receiver.errors import Fatal

if "gunicorn.arbiter" in sys.modules and "RECEIVER_GUNICORN_CONFIG" not in os.environ:
    # Without the config, gunicorn's own lines would carry tokens in clear and each worker would
    # count its own metrics: refuse, in one line (gunicorn stops: exit 4, the app cannot load).
    print("error: gunicorn was started without the receiver's gunicorn.conf.py: run `gunicorn wsgi:app` "
          "from the receiver's directory, or give --config /path/to/receiver/gunicorn.conf.py",
          file=sys.stderr, flush=True)
    raise SystemExit(4)

try:
    app = create_app()
except Fatal as exc:  # one line, and gunicorn stops (exit 4: the app cannot load), no traceback
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
