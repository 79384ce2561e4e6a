"""The examples in docs/first-steps.md, run as written against a real gunicorn (the local trial:
no token), in order: each curl answers what its comment says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.support import ROOT, start_gunicorn, stop

FIRST_STEPS = ROOT / "docs" / "first-steps.md"


def examples() -> list[tuple[str, dict[str, object]]]:
    """(the curl command, the answer its comment gives), in the document's order."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", FIRST_STEPS.read_text(), re.DOTALL):
        command: list[str] = []
        for line in block.splitlines():
            if line.startswith("# {"):
                found.append((" ".join(command), json.loads(line[2:])))
                command = []
            elif line.startswith("curl") or command:
                command.append(line.rstrip("\\").strip())
    return found


@pytest.fixture
def trial(own_database: tuple[str, str]) -> Iterator[str]:
    _, url = own_database
    trial_env = {"WEBHOOK_TOKEN": "", "ALLOW_UNAUTHENTICATED_WEBHOOKS": "yes"}
    proc, base = start_gunicorn(url, workers=1, extra_env=trial_env)
    yield base
    stop(proc)


def test_every_example_answers_what_the_document_says(trial: str) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    found = examples()
    assert len(found) >= 9
    for command, said in found:
        assert "localhost:8000" in command
        done = subprocess.run(["bash", "-c", command.replace("localhost:8000", trial.removeprefix("http://"))],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == said, command
