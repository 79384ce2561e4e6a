"""The WSGI entry point for production: `gunicorn wsgi:app`."""

from receiver import create_app

app = create_app()
