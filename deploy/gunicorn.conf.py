"""Moved: the gunicorn config is ./gunicorn.conf.py at the top of the repository, where gunicorn
looks by default, so `gunicorn wsgi:app` run there needs no --config. This file is kept for units
and scripts that still name it, and loads that one."""

import runpy
from pathlib import Path

globals().update(runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py")))
