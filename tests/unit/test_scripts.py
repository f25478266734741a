"""The Lua scripts' home: every script is listed, has a header naming its KEYS and ARGV, and a call
binds exactly those names."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from promptq_core.contract import queue_keys
from promptq_core.scripts import FIXED_KEYS, FLEET_KEYS, QUEUE_KEYS, QUEUE_PREFIXES, SCRIPT_HOMES, SCRIPT_NAMES, script


def test_every_script_file_is_listed_and_loads() -> None:
    files = {
        p.name.removesuffix(".lua"): home
        for home in ("promptq_core", "producer", "worker")
        for p in resources.files(home).joinpath("lua").iterdir()
        if p.name.endswith(".lua")
    }
    assert files == SCRIPT_HOMES  # each script in the one home the loader looks in
    for name in SCRIPT_NAMES:
        loaded = script(name)
        assert loaded.source.count("--!include") == 0
        assert "Returns" in loaded.source, f"{name}.lua says what it returns"
        assert len(set(loaded.keys + loaded.args)) == len(loaded.keys) + len(loaded.args)


def test_no_script_spells_a_key() -> None:
    for name in SCRIPT_NAMES:
        raw = resources.files(SCRIPT_HOMES[name]).joinpath(f"lua/{name}.lua").read_text()
        assert "promptq:" not in raw and "arq:" not in raw, name
    assert all(script(n).source for n in SCRIPT_NAMES) and "READY_PREFIX" in QUEUE_PREFIXES


def test_a_call_binds_exactly_the_names_of_the_header() -> None:
    submit = script("submit")
    fixed = ("LEVELS", "LEASES", "DELAYED", "ROUTES", "SEQUENCE", "PARKED")
    assert submit.keys == ("doc", "record", *fixed) and submit.queued
    gpu = queue_keys("gpu")
    names: dict[str, Any] = dict(
        doc=gpu.result("j"),
        record=gpu.record("j"),
        job_id="j",
        record_json="{}",
        doc_json="{}",
        ttl_ms=1,
        priority="5",
        fairness_key="k",
        request="d1",
    )
    keys, args = submit.bind(gpu, **names)
    assert keys == [gpu.result("j"), gpu.record("j"), *(gpu.key(QUEUE_KEYS[k]) for k in fixed)]
    assert args == ["j", "{}", "{}", 1, "5", "k", "d1"]
    assert all(k.startswith(("promptq:{gpu}:", "arq:job:{gpu}")) for k in keys)  # one slot: the queue's
    with pytest.raises(TypeError, match=r"missing \['ttl_ms'\]"):
        submit.bind(gpu, **{k: v for k, v in names.items() if k != "ttl_ms"})
    with pytest.raises(TypeError, match=r"unknown \['extra'\]"):
        submit.bind(gpu, **names, extra=1)
    with pytest.raises(TypeError, match="needs a queue"):
        submit.bind(**names)
    with pytest.raises(ValueError, match="first key is not one of queue 'default'"):
        submit.bind(queue_keys(), **names)  # the gpu queue's keys, bound to the default queue
    claim = script("claim")
    assert claim.rest == "weights"
    bound = claim.bind(
        queue_keys(),
        lease_ms=1,
        want=2,
        want_ordinary=1,
        step=3,
        model_json='"m"',
        handoff_id="w",
        park_ms=0,
        parked_free=0,
        heard=0,
        weights=["a", "2"],
    )
    assert bound == ([queue_keys().key(QUEUE_KEYS[k]) for k in claim.keys], [1, 2, 1, 3, '"m"', "w", 0, 0, 0, "a", "2"])
    beat = script("beat")
    assert not beat.queued and beat.bind(worker_id="w", entry_json="{}", forget_ms=1)[0] == [
        FLEET_KEYS["WORKERS"],
        FLEET_KEYS["WORKERS_SEEN"],
    ]


def test_a_queue_script_finds_its_queue_in_its_first_key() -> None:
    """The keys a script builds from ids carry the tag of its first key: one script serves every
    queue, and never reaches outside the slot of the keys it declares."""
    source = script("claim").source
    assert "local TAG = string.match(KEYS[1], '{[^}]*}')" in source
    assert "local READY_PREFIX = 'promptq:' .. TAG .. ':ready:'" in source
    assert "local RECORD_PREFIX = 'arq:job:' .. TAG .." in source
    assert "TAG" not in script("route").source  # the backends' script belongs to no queue


def test_no_module_but_the_contract_spells_a_key() -> None:
    root = Path(__file__).resolve().parents[2]
    spelled = re.compile(r"""["']promptq:[a-z]""")
    offenders = [
        str(path.relative_to(root))
        for folder in ("promptq_core", "producer", "worker")
        for path in (root / folder).rglob("*.py")
        if path.name != "contract.py" and spelled.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_a_script_declares_every_fixed_key_it_touches_and_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis (and a Cluster, which refuses a key outside the slot of those declared) is told every
    fixed key: one used but not declared, or declared but not used, is refused at load."""
    from promptq_core import scripts

    for name in SCRIPT_NAMES:
        loaded = script(name)
        for key in (k for k in loaded.keys if k in FIXED_KEYS):
            assert f"local {key} = KEYS[{loaded.keys.index(key) + 1}]" in loaded.source
    sources = {
        "undeclared": "-- undeclared: reads LEASES\n-- Returns it.\nreturn redis.call('ZCARD', LEASES)",
        "unused": "-- unused\n-- KEYS[1] LEASES: the lease set\n-- Returns 1.\nreturn 1",
        "mixed": "-- KEYS[1] LEASES: a queue's\n-- KEYS[2] WORKERS: the fleet's\n"
        "-- Returns 1.\nreturn {LEASES, WORKERS}",
    }
    monkeypatch.setattr(scripts, "_read", lambda name: sources[name])
    with pytest.raises(ValueError, match=r"not in KEYS \['LEASES'\]"):
        scripts.script.__wrapped__("undeclared")
    with pytest.raises(ValueError, match=r"in KEYS, unused \['LEASES'\]"):
        scripts.script.__wrapped__("unused")
    with pytest.raises(ValueError, match="two slots on a Cluster"):
        scripts.script.__wrapped__("mixed")
