"""The WSGI entry point for production: `gunicorn wsgi:app`."""

import sys

from receiver import create_app
from receiver.errors import Fatal

try:
    app = create_app()
except Fatal as exc:  # one line, and gunicorn stops (exit 4: the app cannot load), no traceback
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
