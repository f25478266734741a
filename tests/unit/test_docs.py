"""The README says what the code does: commands, variables, the result document, parameters, errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from promptq_core.contract import STATUSES, JobResult
from promptq_core.validation import EMBEDDINGS_PARAMS, PASS_THROUGH_PARAMS, RESPONSES_PARAMS
from worker.config import ENV_NAMES
from worker.llm import STATUS_CLASSES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _table_first_column(heading: str) -> list[str]:
    """The backticked names in the first column of the first table after ``heading``."""
    section = README[README.index(heading) :]
    rows = re.findall(r"^\| `([^`]+)` \|", section.split("\n## ", 1)[0], re.M)
    return rows


def test_the_readme_opens_with_the_two_commands() -> None:
    first_lines = README.splitlines()[:6]
    assert any(line.startswith("make demo") for line in first_lines)
    assert any(line.startswith("make test") for line in first_lines)


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, re.M))
    named = set(re.findall(r"(?:^|`)make ([a-z]+)\b", README, re.M))
    assert named and named <= targets


def test_the_environment_table_lists_exactly_what_the_worker_reads() -> None:
    assert sorted(_table_first_column("## The worker")) == sorted(ENV_NAMES)


def test_the_result_document_table_matches_the_contract() -> None:
    fields = [f.name for f in dataclasses.fields(JobResult)]
    assert _table_first_column("## The result document") == fields
    for status in STATUSES:
        assert f"`{status}`" in README


def test_the_example_document_is_a_valid_result() -> None:
    section = README[README.index("## The result document") :]
    example = re.search(r"```json\n(.*?)```", section, re.S)
    assert example is not None
    doc = json.loads(example.group(1))
    assert list(doc) == [f.name for f in dataclasses.fields(JobResult)]
    assert JobResult.from_doc(doc).ok


def test_every_pass_through_parameter_is_documented() -> None:
    names = [*PASS_THROUGH_PARAMS, *EMBEDDINGS_PARAMS, *RESPONSES_PARAMS]
    missing = [name for name in names if f"`{name}`" not in README]
    assert not missing


def test_every_error_type_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "worker").glob("*.py"))
    types = set(re.findall(r'LLMError\(\s*"(\w+)"', source))
    types |= {name for name, _ in STATUS_CLASSES.values()} | {"insufficient_quota", "server_error", "client_error"}
    assert {"invalid_payload", "timeout", "connection_error"} <= types
    missing = sorted(t for t in types if f"`{t}`" not in README)
    assert not missing


def test_every_public_name_and_method_of_the_producer_is_documented() -> None:
    import producer
    from producer import Producer, SyncProducer

    missing = [name for name in producer.__all__ if f"`{name}`" not in README and name not in README]
    assert not missing

    def public(cls: type) -> set[str]:
        return {m for m in vars(cls) if not m.startswith("_") and callable(getattr(cls, m))}

    methods = public(Producer) - {"aclose"}
    assert methods == public(SyncProducer) - {"close"}, "both producers offer the same methods"
    undocumented = sorted(m for m in methods if f"{m}(" not in README)
    assert not undocumented


def test_the_guarantees_section_quotes_a_measured_table() -> None:
    section = README[README.index("## Guarantees") :].split("\n## ", 1)[0]
    assert "make faults" in section and "| scenario |" in section
    assert (ROOT / "docs" / "faults.md").exists()
