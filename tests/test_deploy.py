"""The deployment as written down: systemd units that systemd-analyze accepts, a Procfile with the
release step. (The nginx site is tested in test_nginx.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

UNITS = ROOT / "deploy" / "systemd"


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    # The units name /srv/bestsms-receiver and a `bestsms` user: point them at this checkout and
    # at executables that exist here, so that verify checks everything else.
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
    for unit in sorted(UNITS.glob("bestsms-receiver-*")):
        text = (unit.read_text()
                .replace("/srv/bestsms-receiver/.venv/bin/python", sys.executable)
                .replace("/srv/bestsms-receiver/.venv/bin/gunicorn", gunicorn)
                .replace("/srv/bestsms-receiver", str(ROOT))
                .replace("/etc/bestsms-receiver/env", str(UNITS / "env.example"))
                .replace("User=bestsms", "User=root").replace("Group=bestsms", "Group=root"))
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    assert len(units) == 5
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_units_run_the_documented_commands() -> None:
    web = (UNITS / "bestsms-receiver-web.service").read_text()
    assert "gunicorn wsgi:app" in web and "HOST=127.0.0.1" in web
    assert "python -m receiver migrate" in (UNITS / "bestsms-receiver-migrate.service").read_text()
    assert "python -m receiver poll" in (UNITS / "bestsms-receiver-poller.service").read_text()
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert procfile[0] == "release: python -m receiver migrate"
