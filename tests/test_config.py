"""Settings from the environment: defaults, and a clear error for a value the service cannot use."""

import pytest

from receiver.config import ConfigError, Settings
from receiver.web import services


def test_defaults():
    s = Settings.from_env({})
    assert (s.database_url, s.webhook_tokens, s.default_region, s.poll_rate_per_second) == (None, (), "AU", 1.0)
    assert (s.poll_after_seconds, s.poll_max_interval_seconds, s.poll_give_up_seconds) == (600, 3600, 21600)


def test_tokens_are_comma_separated_for_rotation_and_never_in_repr():
    s = Settings.from_env({"WEBHOOK_TOKEN": " old-token-2026 , new-token-2027 ,", "BESTSMS_AUTH_TOKEN": "api-secret"})
    assert s.webhook_tokens == ("old-token-2026", "new-token-2027")
    assert "token-202" not in repr(s) and "api-secret" not in repr(s)


@pytest.mark.parametrize(("env", "message"), [
    ({"DB_POOL_SIZE": "x"}, "DB_POOL_SIZE must be a whole number"),
    ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE must be at least 1"),
    ({"POLL_RATE_PER_SECOND": "nan"}, "POLL_RATE_PER_SECOND must be at least"),
    ({"DEFAULT_REGION": "ZZ"}, "DEFAULT_REGION 'ZZ' is not a known region code"),
    ({"BESTSMS_TIMEZONE": "Mars/Olympus"}, "BESTSMS_TIMEZONE 'Mars/Olympus' is not a known time zone"),
    ({"WEBHOOK_TOKEN": "long-enough-token,x"}, "1 token\\(s\\) shorter than 12 characters"),
])
def test_bad_values_fail_fast_naming_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_app_refuses_to_start_without_a_token_unless_told_by_name(database_url):
    from receiver import create_app

    with pytest.raises(ConfigError, match="WEBHOOK_TOKEN is not set"):
        create_app(Settings(database_url=database_url))
    app = create_app(Settings(database_url=database_url, allow_unauthenticated=True))
    services(app).database.close()


def test_gunicorn_stops_with_one_line_when_the_app_cannot_load(database_url):
    import os
    import subprocess
    import sys

    from tests.support import ROOT, free_port

    env = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_TOKEN", "ALLOW_UNAUTHENTICATED_WEBHOOKS")}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
                           "--bind", f"127.0.0.1:{free_port()}", "--workers", "1", "wsgi:app"],
                          cwd=ROOT, env={**env, "DATABASE_URL": database_url}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "error: WEBHOOK_TOKEN is not set" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_gunicorn_without_the_receivers_config_refuses_in_one_line(database_url, tmp_path):
    """Started elsewhere than the repository (so without ./gunicorn.conf.py), gunicorn would log
    tokens and count metrics per worker: wsgi.py refuses, and gunicorn stops."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT, TOKEN, free_port

    done = subprocess.run([sys.executable, "-m", "gunicorn", "--chdir", str(ROOT),
                           "--bind", f"127.0.0.1:{free_port()}", "--workers", "1", "wsgi:app"],
                          cwd=tmp_path, env={**os.environ, "DATABASE_URL": database_url, "WEBHOOK_TOKEN": TOKEN},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "error: gunicorn was started without the receiver's gunicorn.conf.py" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_gunicorn_from_another_directory_with_the_config_serves(database_url, tmp_path):
    """`gunicorn --config /path/gunicorn.conf.py wsgi:app`, as docs/operations.md says, from elsewhere: it
    failed with "No module named 'receiver'" from the config."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from tests.support import ROOT, TOKEN, free_port, stop

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
                             "--bind", f"127.0.0.1:{port}", "--workers", "1", "wsgi:app"],
                            cwd=tmp_path, env={**os.environ, "DATABASE_URL": database_url, "WEBHOOK_TOKEN": TOKEN,
                                               "PYTHONPATH": ""},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        stop(proc)
