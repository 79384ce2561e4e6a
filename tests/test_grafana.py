"""The Grafana dashboard against Grafana's own types (`@grafana/schema`'s Dashboard, `tsc --strict`),
and what its panels must show. TypeScript and the types are pinned in tests/grafana/package.json
and installed with npm on first use (skipped only where npm is missing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "bestsms-receiver.json"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "bestsms-receiver.yml"
TOOLS = ROOT / "tests" / "grafana"
TSC = TOOLS / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="session")
def tsc() -> Path:
    if not (TSC.exists() and (TOOLS / "node_modules" / "@grafana" / "schema").exists()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: TypeScript and @grafana/schema cannot be")
        done = subprocess.run([npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"TypeScript and @grafana/schema could not be installed: {done.stderr.strip()[-300:]}")
    return TSC


def type_errors(tsc: Path, dashboard: dict[str, Any]) -> str:
    """What `tsc --strict` says of the dashboard typed as @grafana/schema's Dashboard ('' when nothing)."""
    check = TOOLS / f"check-{uuid.uuid4().hex[:8]}.ts"
    check.write_text("import type { Dashboard } from '@grafana/schema';\n\n"
                     f"export const dashboard: Dashboard = {json.dumps(dashboard, indent=1)};\n")
    try:
        done = subprocess.run([str(tsc), "--strict", "--noEmit", "--skipLibCheck", "--module", "esnext",
                               "--moduleResolution", "bundler", "--target", "es2020", str(check)],
                              capture_output=True, text=True, timeout=120, cwd=TOOLS)
    finally:
        check.unlink()
    return done.stdout + done.stderr if done.returncode else ""


def test_the_dashboard_is_a_grafana_dashboard_and_a_broken_copy_is_not(tsc):
    dashboard = json.loads(DASHBOARD.read_text())
    assert type_errors(tsc, dashboard) == ""
    broken = {**dashboard, "schemaVersion": str(dashboard["schemaVersion"])}
    assert "not assignable" in type_errors(tsc, broken)


def test_the_delivery_rate_shows_one_bar_per_sub_account_as_a_percentage():
    [panel] = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == "bargauge"]
    assert panel["options"]["reduceOptions"]["values"] is True  # every row a bar, not one reduced value
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"  # delivery_rate is a fraction
    assert "GROUP BY sub_account" in panel["targets"][0]["rawSql"]


def test_the_datasource_takes_its_sslmode_from_the_environment():
    text = DATASOURCE.read_text()
    assert "sslmode: ${BESTSMS_DB_SSLMODE}" in text and "sslmode: require" not in text
