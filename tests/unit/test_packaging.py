"""What the package promises about itself: pyproject declares what the code imports, and the
producer loads neither openai nor the worker (nor, for the contract alone, redis-py)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = {"promptq_core", "producer", "worker", "sim", "devtools", "bench", "tests"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = {_name(r) for r in project["dependencies"] + extras["http"] + extras["otel"]}
    dev = {_name(r) for r in extras["dev"] + extras["docs"]}  # dev takes in docs too
    assert "promptq[http,otel,docs]" in extras["dev"]
    return runtime, runtime | dev


PEERS = ROOT / "bench" / "peers"
"""``make bench-peers``'s other queues, each side run in a virtualenv of its own, from the pins of
``bench/peers/requirements*.txt``."""


def _imports(folder: str, peers: bool = False) -> dict[str, str]:
    """Top-level modules imported by the folder's code (not the standard library's, not ours): one
    file each; the peers' sides of ``make bench-peers`` only with ``peers`` (and then only those)."""
    found: dict[str, str] = {}
    for path in (ROOT / folder).rglob("*.py"):
        if peers != (path.parent == PEERS and path.name.endswith("_side.py") and path.name != "promptq_side.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_pyproject_declares_every_package_the_code_imports() -> None:
    runtime, everything = _declared()
    distributions = packages_distributions()
    missing = []
    for folders, declared in (
        (("promptq_core", "producer", "worker", "sim"), runtime),
        (("tests", "devtools", "bench"), everything),
    ):
        for folder in folders:
            for module, where in _imports(folder).items():
                names = {_name(d) for d in distributions.get(module, [module])}
                if not names & declared:
                    missing.append(f"{module} ({where}; from {sorted(names)})")
    assert missing == []


def test_the_peers_benchmark_pins_every_package_its_peers_import() -> None:
    pinned = {_name(line) for f in PEERS.glob("requirements*.txt") for line in f.read_text().split() if "==" in line}
    assert {"arq", "saq", "celery", "openai"} <= pinned
    assert set(_imports("bench", peers=True)) <= pinned


def _own_imports(folder: str) -> dict[str, set[str]]:
    """Each file of the folder, and the packages of ours it imports."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        tops = found.setdefault(str(path.relative_to(ROOT)), set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    return {f: tops & OWN for f, tops in found.items()}


def test_the_core_imports_neither_side_and_the_worker_nothing_of_the_client() -> None:
    allowed = {
        "promptq_core": {"promptq_core"},
        "worker": {"promptq_core", "worker"},
        "producer": {"promptq_core", "producer"},
    }
    crossing = [
        f"{path} imports {sorted(tops - ours)}"
        for folder, ours in allowed.items()
        for path, tops in _own_imports(folder).items()
        if tops - ours
    ]
    assert crossing == []


def test_the_producer_loads_neither_openai_nor_the_worker_and_the_contract_not_even_redis() -> None:
    code = (
        "import sys\n"
        "import promptq_core.contract\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'openai', 'worker'})))\n"
        "from producer import Producer, SyncProducer, JobResult\n"
        "bad = {'openai', 'worker', 'arq', 'structlog', 'httpx', 'httpx2'}\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & bad)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["", ""]


def test_with_traces_off_nothing_of_opentelemetry_is_imported() -> None:
    """(FastAPI imports it by itself where it is installed, so the HTTP API is left out.)"""
    code = (
        "import sys\n"
        "from producer.writes import Writes\n"
        "from producer.types import ProducerConfig\n"
        "job = Writes(ProducerConfig()).build('hello')\n"
        "assert job.trace is None\n"
        "import producer.cli.commands, worker.settings, worker.jobs\n"
        "from worker.tracing import Tracing\n"
        "assert not Tracing().on\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMPTQ_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_of_the_producer_loads() -> None:
    import producer

    assert sorted(producer.__all__) == sorted(producer._HOME)
    for name in producer.__all__:
        assert getattr(producer, name).__name__ == name


def test_constraints_pin_every_declared_package() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[_name(name)] = version
    _, everything = _declared()
    assert not sorted(everything - set(pins) - {"promptq"}), "make lock: constraints.txt misses declared packages"
