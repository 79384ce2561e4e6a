"""The documents: every link and anchor leads somewhere; the settings tables are `Settings`; the
examples in docs/first-steps.md, run as written against a real gunicorn (the local trial: no
token), in order, each answer what its comment says."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.config import Settings
from tests.support import ROOT, start_gunicorn, stop

FIRST_STEPS = ROOT / "docs" / "first-steps.md"
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "migrations" / "README.md", ROOT / "tests" / "bench" / "RESULTS.md",
                    *(ROOT / "docs").glob("*.md")])
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(document: Path) -> set[str]:
    """The anchors GitHub gives the headings of `document` (a repeated one gets -1, -2...)."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _FENCE.sub("", document.read_text()), re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n, unique = 0, anchor
        while unique in found:
            n += 1
            unique = f"{anchor}-{n}"
        found.add(unique)
    return found


def links(document: Path) -> list[str]:
    """The links of `document` to this repository's files (outside code blocks)."""
    return [target for target in _LINK.findall(_FENCE.sub("", document.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_every_link_and_anchor_in_the_documents_leads_somewhere() -> None:
    broken = []
    for document in DOCUMENTS:
        for target in links(document):
            path, _, anchor = target.partition("#")
            file = (document.parent / path).resolve() if path else document
            if not file.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []
    assert sum(len(links(d)) for d in DOCUMENTS) > 20  # the checker found the links


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    document = tmp_path / "a.md"
    document.write_text("# A title\n\n## Same\n\n## Same\n\n[x](b.md) [y](#a-title) [z](#same-1)\n"
                        "```sh\n# not a heading\n[not](a-link.md)\n```\n")
    assert anchors(document) == {"a-title", "same", "same-1"}
    assert links(document) == ["b.md", "#a-title", "#same-1"]


def test_the_readme_is_what_a_newcomer_needs_first() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for document in (ROOT / "docs").glob("*.md"):  # every document is reachable from it
        assert f"](docs/{document.name})" in readme, document.name


def _settings_tables() -> dict[str, str]:
    """Each variable of docs/settings.md's tables, with its default as written."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", (ROOT / "docs" / "settings.md").read_text(), re.MULTILINE)
    assert len(rows) == len({name for name, _ in rows}), "a variable in two rows"
    return {name: default.strip() for name, default in rows}


def test_the_settings_tables_are_the_settings_with_their_defaults() -> None:
    documented = _settings_tables()
    fields = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
    assert documented.keys() == fields.keys()
    for name, field in fields.items():
        written = documented[name]
        if field.default is dataclasses.MISSING or field.default in (None, ()):
            # made for each Settings (cores, a temporary directory), or none: said in words
            assert not written.startswith("`") or field.default_factory is not dataclasses.MISSING, name
            continue
        value = written.strip("`")
        if isinstance(field.default, bool | str):
            assert value == str(field.default) if isinstance(field.default, str) else written == "unset", name
        else:
            assert float(value) == field.default, f"{name}: the table says {written}, Settings {field.default}"


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
