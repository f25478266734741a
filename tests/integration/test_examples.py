"""Every code block of the README and the documentation site, run or checked as written.

- Python blocks run (sybil parses the pages), one namespace a page, top-level ``await`` allowed, with
  ``REDIS_URL`` at the tests' Redis and a real ``arq worker.Settings`` process answering through the
  simulator; a page's ``<!-- invisible-code-block: python -->`` comments give the context a block
  needs (a receiver's request, rows) and check what it did.
- Shell blocks are checked line by line against what they name: every variable assigned is a
  setting promptq reads (or the provider's, or a stand-in), ``promptq`` commands parse with the
  CLI's own parser, ``python -m sim`` flags with the simulator's, ``curl`` requests name a route and
  method of the OpenAPI schema, ``make`` targets, compose services and paths exist. They are not run:
  they start servers, reach other hosts (``kubectl``, ``docker``) or wait for a person.
- JSON blocks parse; a backends listing is read by the worker's own parser.
Blocks without a language (diagrams, traces as printed) are text.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

from devtools.stack import Simulator, Worker
from producer.cli.commands import parser as cli_parser
from promptq_core.settings import SETTINGS
from sim.__main__ import parse_args as sim_args
from tests.conftest import worker_env
from worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LOOP = "__example_loop__"


def _run_python(example: Example) -> None:
    """A block as a module's body; its top-level awaits run on the page's own event loop."""
    code = compile(example.parsed, str(example.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    namespace = example.namespace
    if LOOP not in namespace:
        namespace[LOOP] = asyncio.new_event_loop()
    loop = namespace[LOOP]
    result = eval(code, namespace)  # the project's own documentation
    if inspect.iscoroutine(result):
        loop.run_until_complete(result)


SETTING_NAMES = {s.name for s in SETTINGS}
PROVIDER_VARIABLES = {"OPENAI_KEY_EAST", "OPENAI_KEY_WEST", "AZURE_OPENAI_KEY", "KEY_EAST", "API_TOKEN", "TOKEN"}
"""Variables a block sets that are not promptq's: the keys a backends listing names, compose's own."""


class CliRefused(Exception):
    pass


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    def refuse(message: str) -> None:
        raise CliRefused(message)

    for p in [parser, *_subparsers(parser)]:
        p.error = refuse  # type: ignore[method-assign,assignment]
    parser.parse_args(argv)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def _commands(source: str) -> Iterator[list[str]]:
    """Each command of a shell block: continued lines (a trailing backslash, an open quote) joined,
    comments and a console's output dropped, pipelines and ``&&`` split."""
    lines = source.splitlines()
    console = any(line.startswith("$ ") for line in lines)
    buffer = ""
    for line in lines:
        if console:
            if not line.startswith("$ ") and not buffer:
                continue
            line = line.removeprefix("$ ")
        buffer = f"{buffer}\n{line}" if buffer else line
        if buffer.endswith("\\"):
            buffer = buffer[:-1]
            continue
        try:
            words = shlex.split(buffer, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        buffer = ""
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in {"&&", "|", "&", ";"}:
                if command:
                    yield command
                command = []
            else:
                command.append(word)
    assert not buffer, f"a command left unfinished: {buffer!r}"


def _check_shell(example: Example) -> None:
    for words in _commands(example.parsed):
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0], re.S):  # VAR=value before a command
            name, _, value = words.pop(0).partition("=")
            assert name in SETTING_NAMES | PROVIDER_VARIABLES, f"{name} is no setting promptq reads"
            if name == "PROMPTQ_BACKENDS":
                _check_backends(value)
        if words:
            _check_command(Path(words[0]).name, words[1:])


def _check_command(program: str, args: list[str]) -> None:
    if program == "promptq":
        _parses(cli_parser(), args)
    elif program == "make":
        makefile = (ROOT / "Makefile").read_text()
        assert all(re.search(rf"^{re.escape(t)}:", makefile, re.M) for t in args), args
    elif program in {"python", "python3"} and args[:2] == ["-m", "sim"]:
        sim_args(args[2:])
    elif program == "curl":
        _check_curl(args, json.loads((ROOT / "docs" / "openapi.json").read_text()))
    elif program == "arq":
        assert args == ["worker.Settings"]
    elif program == "uvicorn":
        assert args[0] == "producer.http:app"
    elif program == "kubectl":
        _check_kubectl(args)
    elif program == "docker":
        services = set(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"])
        assert args[0] == "compose" and ({w for w in args if w in services} or args[1] in {"up", "down"}), args
    elif program not in {"kill", "echo", "head", "openssl", "cat", "redis-server"}:
        raise AssertionError(f"{program}: a command this test does not know how to check")


def _check_kubectl(args: list[str]) -> None:
    if args[:2] == ["apply", "-k"]:
        assert (ROOT / args[2] / "kustomization.yaml").exists()
    for arg in args:  # a secret's keys become the pods' variables
        if arg.startswith("--from-literal="):
            name = arg.removeprefix("--from-literal=").split("=", 1)[0]
            assert name in SETTING_NAMES, f"{name} is no setting promptq reads"


def _check_curl(args: list[str], openapi: dict[str, Any]) -> None:
    method = "get"
    url = ""
    i = 0
    while i < len(args):
        if args[i] == "-X":
            method = args[i + 1].lower()
            i += 1
        elif args[i] in {"-H", "-d"}:
            method = "post" if args[i] == "-d" and method == "get" else method  # (as curl does)
            i += 1
        elif not args[i].startswith("-"):
            url = args[i]
        i += 1
    path = "/" + url.split("/", 1)[1].split("?")[0] if "/" in url else "/"
    for template, methods in openapi["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            assert method in methods, f"{method.upper()} {path}: not in the schema"
            return
    raise AssertionError(f"{path}: no such route in docs/openapi.json")


def _check_json(example: Example) -> None:
    data = json.loads(example.parsed)
    if isinstance(data, list) and data and "base_url" in data[0]:
        _check_backends(example.parsed)


def _check_backends(listing: str) -> None:
    """A backends listing, as the worker reads it at start-up (keys standing in for the real ones)."""
    env = {"PROMPTQ_BACKENDS": listing, **dict.fromkeys(PROVIDER_VARIABLES, "sk-example")}
    assert len(WorkerConfig.from_env(env).backends) == len(json.loads(listing))


SYBIL = Sybil(
    parsers=[
        CodeBlockParser("python", _run_python),
        CodeBlockParser("sh", _check_shell),
        CodeBlockParser("bash", _check_shell),
        CodeBlockParser("console", _check_shell),
        CodeBlockParser("json", _check_json),
    ],
)


@pytest.fixture(scope="module")
def example_worker(redis_server_url: str, sim_process: Simulator) -> Iterator[None]:
    with Worker(worker_env(redis_server_url, sim_process)):
        yield


HANDLED = {"python", "sh", "bash", "console", "json", ""}


def test_every_code_block_is_in_a_language_the_examples_run_or_check() -> None:
    """A block in another language would be passed over in silence: refuse it (plain text, such as
    a diagram or a trace as printed, has no language)."""
    for page in PAGES:
        fences = re.findall(r"^ *```(\S*)", page.read_text(), re.M)[::2]  # (each opening, not its close)
        assert set(fences) <= HANDLED, f"{page.name}: {sorted(set(fences) - HANDLED)}"


def test_the_checks_refuse_what_is_wrong(tmp_path: Path) -> None:
    """The checks can fail: a Python block that raises, a flag the CLI lacks, a route the API lacks,
    a variable nobody reads."""
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = await asyncio.sleep(0, 41)\nassert x == 42\n```\n\n```sh\nPROMPTQ_NOPE=1 make demo\n```\n"
    )
    document = SYBIL.parse(page)
    document.namespace["asyncio"] = asyncio
    python, shell = list(document)
    with pytest.raises(AssertionError):
        python.evaluate()
    _close(document.namespace[LOOP])
    with pytest.raises(AssertionError, match="PROMPTQ_NOPE is no setting"):
        shell.evaluate()
    with pytest.raises(CliRefused):
        _parses(cli_parser(), ["submit", "x.jsonl", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no such route"):
        _check_curl(["-s", "localhost:8080/v1/nothing"], json.loads((ROOT / "docs" / "openapi.json").read_text()))
    assert list(_commands("$ promptq status\nqueue: 1 waiting\n$ echo $?")) == [["promptq", "status"], ["echo", "$?"]]


@pytest.mark.process
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_example_of_the_page_runs(
    page: Path, example_worker: None, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    for name in ("PROMPTQ_QUEUE", "PROMPTQ_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    document = SYBIL.parse(page)
    try:
        for example in document:
            try:
                example.evaluate()
            except Exception as e:
                raise AssertionError(f"{page.name}, line {example.line}: {type(e).__name__}: {e}") from e
    finally:
        loop = document.namespace.get(LOOP)
        if loop is not None:
            _close(loop)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Let what the page's examples left running (a producer's background unsubscribes) end, then
    close the loop."""
    pending = asyncio.all_tasks(loop)
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=2))
    if left := asyncio.all_tasks(loop):
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.wait(left))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
