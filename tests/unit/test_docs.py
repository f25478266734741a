"""The README and the documentation site say what the code does: commands, settings, the result
document, parameters, errors; the site builds with no broken link."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptq_core.contract import STATUSES, JobResult
from promptq_core.settings import API, CLI, GROUPS, SETTINGS, WORKER, read_by
from promptq_core.validation import EMBEDDINGS_PARAMS, PASS_THROUGH_PARAMS, RESPONSES_PARAMS
from worker.llm import STATUS_CLASSES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def _table_first_column(text: str) -> list[str]:
    """The backticked names in the first column of the tables in ``text`` (after a row's anchor)."""
    return re.findall(r'^\| (?:<a id="[^"]+"></a>)?`([^`]+)` \|', text, re.M)


def test_the_readme_opens_with_the_two_commands() -> None:
    first_lines = README.splitlines()[:6]
    assert any(line.startswith("make demo") for line in first_lines)
    assert any(line.startswith("make test") for line in first_lines)


def test_the_readme_is_short_and_its_links_lead_somewhere() -> None:
    assert len(README.splitlines()) <= 200
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if not link.startswith("https://")]
    assert local and all((ROOT / link.partition("#")[0]).exists() for link in local), local


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    text = README + "".join(p.read_text() for p in DOCS.glob("*.md"))
    named = set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)\b", text, re.M))
    assert named and named <= targets, sorted(named - targets)


LITERAL = re.compile(r'"((?:PROMPTQ|OTEL|OPENAI)_[A-Z0-9_]+|REDIS_URL)"')


def _read_in(*folders: str) -> set[str]:
    """The variable names spelled in the sources under ``folders`` (the settings list itself left out)."""
    paths = [p for d in folders for p in (ROOT / d).rglob("*.py") if p != ROOT / "promptq_core" / "settings.py"]
    return {name for p in paths for name in LITERAL.findall(p.read_text())}


def test_the_settings_list_is_every_variable_the_code_reads() -> None:
    """promptq_core.settings, which the site's table is made of, names every variable the sources
    read, and nothing they do not; each process reads what the list says it does."""
    read = _read_in("promptq_core", "producer", "worker") | {"TRACEPARENT", "TRACESTATE"}  # (the CLI's,
    # spelled as tracing.TRACE_FIELDS upper-cased)
    listed = [s.name for s in SETTINGS]
    assert len(listed) == len(set(listed)), "a setting listed twice"
    assert set(listed) == read, f"not listed: {sorted(read - set(listed))}; not read: {sorted(set(listed) - read)}"
    for folder, reader in (("worker", WORKER), ("producer/http", API), ("producer/cli", CLI)):
        unlisted = _read_in(folder) - set(read_by(reader))
        assert not unlisted, f"{folder} reads {sorted(unlisted)}, which the list does not say it does"
    assert all(s.group in GROUPS and s.readers and s.meaning and s.default for s in SETTINGS)


def test_the_configuration_page_shows_every_setting_under_its_group() -> None:
    from devtools.docs_hooks import with_settings_table

    page = _page("configuration.md")
    assert page == with_settings_table(page), "the table is not the current one: python -m devtools.docs_hooks"
    for group in GROUPS:
        section = page.split(f"\n## {group}\n", 1)[1].split("\n## ", 1)[0]
        assert _table_first_column(section) == [s.name for s in SETTINGS if s.group == group]


def test_each_setting_has_an_anchor_named_after_it() -> None:
    """Each row of the settings table carries an id, the variable's name in lower case, so that
    ``configuration.md#promptq_max_jobs`` leads to its row (the build below finds them in the page)."""
    from devtools.docs_hooks import settings_table

    table = settings_table()
    for setting in SETTINGS:
        assert f'| <a id="{setting.name.lower()}"></a>`{setting.name}` |' in table, setting.name
    ids = re.findall(r'<a id="([^"]+)"></a>', table)
    assert len(ids) == len(set(ids)) == len(SETTINGS)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command the CLI parses, as the words that name it (``keys create``...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _commands(sub, (*path, name))


def test_the_command_line_page_names_every_command() -> None:
    from producer.cli.commands import parser

    page = _page("cli.md")
    commands = list(_commands(parser()))
    assert ("keys", "revoke") in commands
    missing = [" ".join(c) for c in commands if f"`promptq {' '.join(c)}" not in page]
    assert not missing, f"docs/cli.md does not name: {missing}"


@pytest.mark.timeout(180)  # (above the build's own 120 s, and the suite's 60 s)
def test_the_site_builds_with_no_warning(tmp_path: Path) -> None:
    """mkdocs --strict: a link to a page, file or anchor that does not exist, or a page left out of
    the nav, fails the build. (Links to other sites cannot be followed from here: no network.)"""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr
    config = (tmp_path / "site" / "configuration.html").read_text()
    assert all(s.name in config and f'id="{s.name.lower()}"' in config for s in SETTINGS)
    assert (tmp_path / "site" / "bench" / "peers.html").exists()
    import producer

    reference = (tmp_path / "site" / "reference.html").read_text()
    homes: dict[str, str] = producer._HOME
    assert all(f'id="{homes[name]}.{name}"' in reference for name in producer.__all__)
    assert 'id="producer.client.Producer.submit"' in reference
    http = (tmp_path / "site" / "http-api.html").read_text()
    schema = json.loads((DOCS / "openapi.json").read_text())
    assert all(f"{m.upper()} {path}" in http for path, ms in schema["paths"].items() for m in ms)
    assert (tmp_path / "site" / "deploy" / "k8s" / "kustomization.yaml").exists()


def test_the_result_document_table_matches_the_contract() -> None:
    fields = [f.name for f in dataclasses.fields(JobResult)]
    page = _page("results.md")
    assert _table_first_column(page) == fields
    for status in STATUSES:
        assert f"`{status}`" in page


def test_the_example_document_is_a_valid_result() -> None:
    example = re.search(r"```json\n(.*?)```", _page("results.md"), re.S)
    assert example is not None
    doc = json.loads(example.group(1))
    assert list(doc) == [f.name for f in dataclasses.fields(JobResult)]
    assert JobResult.from_doc(doc).ok


def test_every_pass_through_parameter_is_documented() -> None:
    names = [*PASS_THROUGH_PARAMS, *EMBEDDINGS_PARAMS, *RESPONSES_PARAMS]
    page = _page("python-api.md")
    missing = [name for name in names if f"`{name}`" not in page]
    assert not missing


def test_every_error_type_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "worker").glob("*.py"))
    types = set(re.findall(r'LLMError\(\s*"(\w+)"', source))
    types |= {name for name, _ in STATUS_CLASSES.values()} | {"insufficient_quota", "server_error", "client_error"}
    assert {"invalid_payload", "timeout", "connection_error"} <= types
    page = _page("results.md")
    missing = sorted(t for t in types if f"`{t}`" not in page)
    assert not missing


def test_every_public_name_and_method_of_the_producer_is_documented() -> None:
    import producer
    from producer import Producer, SyncProducer

    page = _page("python-api.md")
    missing = [name for name in producer.__all__ if f"`{name}`" not in page and name not in page]
    assert not missing

    def public(cls: type) -> set[str]:
        return {m for m in vars(cls) if not m.startswith("_") and callable(getattr(cls, m))}

    methods = public(Producer) - {"aclose"}
    assert methods == public(SyncProducer) - {"close"}, "both producers offer the same methods"
    undocumented = sorted(m for m in methods if f"{m}(" not in page)
    assert not undocumented


def test_the_guarantees_section_quotes_a_measured_table() -> None:
    page = _page("guarantees.md")
    assert "make faults" in page and "| scenario |" in page
    assert (ROOT / "docs" / "faults.md").exists()
