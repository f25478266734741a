"""Every code block of the README and the documentation site, run or checked as written.

- Python blocks run (sybil parses the pages), one namespace a page, top-level ``await`` allowed, with
  ``REDIS_URL`` at the tests' Redis and a real ``arq worker.Settings`` process answering through the
  simulator; a page's ``<!-- invisible-code-block: python -->`` comments give the context a block
  needs (a receiver's request, the files a command reads, the API's ``$TOKEN``) and check what it did.
- Shell blocks are checked line by line against what they name: every variable assigned is a
  setting promptq reads (or the provider's, or a stand-in), ``promptq`` commands parse with the
  CLI's own parser, ``python -m sim`` flags with the simulator's, ``curl`` requests name a route and
  method of the OpenAPI schema, ``make`` targets, compose services and paths exist.
- Then the commands that can run here run, in order with the page's Python blocks and in the page's
  own temporary directory: ``promptq`` (its ``main``, in-process), ``curl`` (the same method, path,
  headers and body, sent to a real ``uvicorn producer.http:app`` process that has the operator's
  token), ``head``, ``cat`` and ``echo`` (``echo $?``: the last command's status). Each must end as
  the page says: exit status 0, or the one a following ``echo $?`` shows; an answer in 2xx, or with a
  status the request's own comment names. Where a console block shows the output, this run's must
  have its shape (each line's first two words, numbers aside; a JSON object's keys), not its ids or
  timings. An id the page shows as a placeholder (``9f1c...``, the key id ``3f9a0c1e``) stands for
  the one this run made (``SHOWN_IDS``).
- Only checked, never run: ``make`` (it would run this suite, or start servers), ``arq
  worker.Settings``, ``uvicorn``, ``redis-server`` and ``python -m sim`` (servers: the test has its
  own), ``docker`` and ``kubectl`` (other hosts), ``kill`` and ``openssl``; and a command with a
  ``VAR=value`` before it, in a pipeline or sent to the background (on the pages, each of those
  starts a server or reaches another host). None of the commands that run needs the network or a
  provider's Batch API: the tiers page's batch-tier jobs run live here, as they do wherever no
  backend offers the Batch API (the test's worker has no ``PROMPTQ_BATCH_API``).
- JSON blocks parse; a backends listing is read by the worker's own parser.
Blocks without a language (diagrams, traces as printed) are text.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import inspect
import io
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import yaml
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

from devtools.stack import Api, Simulator, Worker
from producer.cli import main as cli_main
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


@dataclasses.dataclass
class Command:
    """One command of a shell block, with what the page says around it."""

    words: list[str]
    comment: str = ""
    """Its own comment, at the end of its line (``# a failed job again: 202, or 409``)."""
    console: bool = False
    piped: bool = False
    """In a pipeline, or sent to the background (``&``)."""
    shown: list[str] = dataclasses.field(default_factory=list)
    """The output the page shows: a console's lines below the command; in other blocks, the comment
    lines right below it."""


def _commands(source: str) -> list[Command]:
    """Each command of a shell block: continued lines (a trailing backslash, an open quote) joined,
    comments and a console's output set aside, pipelines and ``&&`` split."""
    lines = source.splitlines()
    console = any(line.startswith("$ ") for line in lines)
    commands: list[Command] = []
    last: Command | None = None  # the command whose output the next lines show
    buffer = ""
    for line in lines:
        if not buffer:
            shown = not line.startswith("$ ") if console else line.lstrip().startswith("#")
            if shown:
                if last is not None:
                    last.shown.append(line if console else line.lstrip().removeprefix("#").strip())
                continue
            if not line.strip():
                last = None
                continue
        if console:
            line = line.removeprefix("$ ")
        buffer = f"{buffer}\n{line}" if buffer else line
        if buffer.endswith("\\"):
            buffer = buffer[:-1]
            continue
        try:
            words = shlex.split(buffer, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        parts = _split(words, _comment(buffer), console)
        commands += parts
        last = parts[-1] if parts else last
        buffer = ""
    assert not buffer, f"a command left unfinished: {buffer!r}"
    return commands


def _split(words: list[str], comment: str, console: bool) -> list[Command]:
    """A line's commands, split at ``&&``, ``;``, ``|`` and ``&``."""
    commands: list[Command] = []
    command: list[str] = []
    before = ""  # the separator before this command
    for word in [*words, "&&"]:
        if word not in {"&&", "|", "&", ";"}:
            command.append(word)
            continue
        if command:
            commands.append(Command(command, comment, console, piped=word in {"|", "&"} or before == "|"))
        command, before = [], word
    return commands


def _comment(command: str) -> str:
    """A command's comment: from an unquoted ``#`` that starts a word to the end of its line."""
    quote, found, i = "", [], 0
    while i < len(command):
        c = command[i]
        if c == "\\" and quote != "'":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or command[i - 1].isspace()):
            end = command.find("\n", i)
            end = len(command) if end < 0 else end
            found.append(command[i + 1 : end].strip())
            i = end
        i += 1
    return " ".join(found)


def _check_shell(example: Example) -> None:
    """Every command checked; then, on a page with a session, those that can run here run."""
    session: Session | None = example.namespace.get(SESSION)
    commands = _commands(example.parsed)
    for i, command in enumerate(commands):
        words = list(command.words)
        assigned = False
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0], re.S):  # VAR=value before a command
            name, _, value = words.pop(0).partition("=")
            assert name in SETTING_NAMES | PROVIDER_VARIABLES, f"{name} is no setting promptq reads"
            if name == "PROMPTQ_BACKENDS":
                _check_backends(value)
            assigned = True
        if not words:
            continue
        program = Path(words[0]).name
        _check_command(program, words[1:])
        if session is None or assigned or command.piped or program not in RUNS:
            continue
        then = commands[i + 1] if i + 1 < len(commands) else None
        said = then.shown if then is not None and then.words == ["echo", "$?"] else []  # its exit status
        session.run(command, words, int(said[0]) if said else 0, example.namespace)


SESSION = "__example_session__"
SHOWN_IDS = (r'"job_id":\s*"([^"]+)"', r"^key (\S+) for tenant")
"""Where an output names an id a later command uses: the page's output shows a placeholder there."""


@dataclasses.dataclass
class Session:
    """What a page's commands share: the API they call, the last exit status (``$?``), and each id
    the page shows as a placeholder with the one this run made."""

    api_url: str
    status: int = 0
    ids: dict[str, str] = dataclasses.field(default_factory=dict)

    def run(self, command: Command, words: list[str], expected: int, namespace: dict[str, Any]) -> None:
        words = [self._expand(word, namespace) for word in words]
        status, output = RUNS[Path(words[0]).name](self, words, command.comment)
        line = shlex.join(words)
        assert status == expected, f"{line}: exit status {status}, the page says {expected}:\n{output}"
        self.status = status
        for pattern in SHOWN_IDS:
            shown = re.search(pattern, "\n".join(command.shown), re.M)
            made = re.search(pattern, output, re.M)
            if shown and made:
                self.ids[shown[1]] = made[1]
        if command.console and command.shown:
            _same_shape(command.shown, output, line)

    def _expand(self, word: str, namespace: dict[str, Any]) -> str:
        """A word with the ids this run made for the page's placeholders, and its ``$VARIABLES``
        (from the page's hidden blocks, else the environment)."""
        for shown, made in self.ids.items():
            word = word.replace(shown, made)

        def value(match: re.Match[str]) -> str:
            found = namespace.get(match[1], os.environ.get(match[1]))
            assert isinstance(found, str), f"${match[1]}: no block of the page sets it"
            return found

        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", value, word)


def _run_promptq(session: Session, words: list[str], comment: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli_main(words[1:], out=out, err=err)
    return status, err.getvalue() + out.getvalue()  # (progress and bad lines go to stderr, first)


def _run_curl(session: Session, words: list[str], comment: str) -> tuple[int, str]:
    """The request, sent to the test's API; a 2xx answer, or one its comment names (``202, or 409``)."""
    method, url, headers, body = _curl_request(words[1:])
    request = Request(
        session.api_url + _path(url), data=None if body is None else body.encode(), method=method, headers=headers
    )
    try:
        with urlopen(request, timeout=30) as response:  # (an events stream ends with its job)
            status, text = response.status, response.read().decode()
    except HTTPError as e:
        status, text = e.code, e.read().decode()
    named = {int(n) for n in re.findall(r"\b[1-5]\d\d\b", comment)}
    assert 200 <= status < 300 or status in named, f"{method} {_path(url)}: {status} {text}"
    return 0, text  # (curl -s: an answer is a success, whatever its status)


def _run_echo(session: Session, words: list[str], comment: str) -> tuple[int, str]:
    return 0, " ".join(str(session.status) if w == "$?" else w for w in words[1:]) + "\n"


def _run_program(session: Session, words: list[str], comment: str) -> tuple[int, str]:
    done = subprocess.run(words, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stderr + done.stdout


RUNS = {"promptq": _run_promptq, "curl": _run_curl, "echo": _run_echo, "head": _run_program, "cat": _run_program}
"""The commands that run here, each to ``(exit status, what it printed)``."""


def _shape(line: str) -> str:
    """What a line of output keeps from run to run: a JSON object's keys, else its first two words
    with numbers as ``#``."""
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return "{" + ", ".join(data) + "}"
    return re.sub(r"\d+", "#", " ".join(line.split()[:2]))


def _same_shape(shown: list[str], output: str, line: str) -> None:
    """The output begins as the page's does, and has no line of a shape the page does not show
    (lines may be fewer: a faster run shows less progress, an emptier queue fewer priorities)."""
    expected = [_shape(s) for s in shown if s.strip()]
    got = [_shape(s) for s in output.splitlines() if s.strip()]
    assert got and got[0] == expected[0] and set(got) <= set(expected), (
        f"{line} printed:\n{output}which is not shaped as the page shows:\n" + "\n".join(shown)
    )


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


def _curl_request(args: list[str]) -> tuple[str, str, dict[str, str], str | None]:
    """The method, address, headers and body of a ``curl`` command, as curl sends them (the options
    the pages use: ``-X``, ``-H``, ``-d``, ``-s``, ``-N``)."""
    method, url, headers, body = "", "", {}, None
    i = 0
    while i < len(args):
        if args[i] in {"-X", "-H", "-d"}:
            option, value = args[i : i + 2]
            if option == "-X":
                method = value.upper()
            elif option == "-H":
                name, _, text = value.partition(":")
                headers[name.strip()] = text.strip()
            else:
                body = value
            i += 2
            continue
        if args[i].startswith("-"):
            assert set(args[i][1:]) <= {"s", "N"}, f"curl {args[i]}: an option this test does not know"
        else:
            url = args[i]
        i += 1
    return method or ("POST" if body is not None else "GET"), url, headers, body


def _path(url: str) -> str:
    """``localhost:8080/v1/jobs?x=1`` -> ``/v1/jobs?x=1``."""
    return "/" + url.split("/", 1)[1] if "/" in url else "/"


def _check_curl(args: list[str], openapi: dict[str, Any]) -> None:
    method, url, _, _ = _curl_request(args)
    path = _path(url).split("?")[0]
    for template, methods in openapi["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            assert method.lower() in methods, f"{method} {path}: not in the schema"
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


API_TOKEN = "examples-operator-token-0123"
"""The operator's token of the API the pages' ``curl`` requests reach (``PROMPTQ_API_TOKEN``)."""


@pytest.fixture(scope="module")
def example_api(redis_server_url: str) -> Iterator[Api]:
    with Api({"REDIS_URL": redis_server_url, "PROMPTQ_API_TOKEN": API_TOKEN}) as api:
        yield api


HANDLED = {"python", "sh", "bash", "console", "json", ""}


def test_every_code_block_is_in_a_language_the_examples_run_or_check() -> None:
    """A block in another language would be passed over in silence: refuse it (plain text, such as
    a diagram or a trace as printed, has no language)."""
    for page in PAGES:
        fences = re.findall(r"^ *```(\S*)", page.read_text(), re.M)[::2]  # (each opening, not its close)
        assert set(fences) <= HANDLED, f"{page.name}: {sorted(set(fences) - HANDLED)}"


def test_the_checks_refuse_what_is_wrong(tmp_path: Path) -> None:
    """The checks can fail: a Python block that raises, a flag the CLI lacks, a route the API lacks,
    a variable nobody reads, an output of another shape."""
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
    status, echo = _commands("$ promptq status\nqueue: 1 waiting\n$ echo $?")
    assert (status.words, status.shown, echo.words) == (["promptq", "status"], ["queue: 1 waiting"], ["echo", "$?"])
    with pytest.raises(AssertionError, match="not shaped as the page shows"):
        _same_shape(["queue: 1 waiting"], "queue default: 3 waiting\n", "promptq status")
    _same_shape(
        ["batch=a done=1/9 failed=0", "batch a: 9 job(s)"], "batch=a done=9/9 failed=0\nbatch a: 9 job(s)\n", ""
    )
    (post,) = _commands(
        'curl -s -X POST localhost:8080/v1/jobs/x/retry -d \'{}\'  # 202, or 409\n# {"job_id":"9f1c..."}'
    )
    assert (post.comment, post.shown) == ("202, or 409", ['{"job_id":"9f1c..."}'])
    assert _curl_request(post.words[1:]) == ("POST", "localhost:8080/v1/jobs/x/retry", {}, "{}")


@pytest.mark.process
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_example_of_the_page_runs(
    page: Path,
    example_worker: None,
    example_api: Api,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("PROMPTQ_API_TOKEN", API_TOKEN)  # (a page's hidden block takes its $TOKEN from there)
    monkeypatch.delenv("PROMPTQ_QUEUE", raising=False)
    monkeypatch.chdir(tmp_path)  # the files the page's commands read and write
    document = SYBIL.parse(page)
    document.namespace[SESSION] = Session(example_api.url)
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
