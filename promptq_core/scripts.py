"""Every Lua script promptq runs on Redis, loaded from the ``lua/`` folder of its home (standard
library only): the client's in ``producer/lua``, the worker's in ``worker/lua``, the shared helpers
and the scripts both run in ``promptq_core/lua`` (``SCRIPT_HOMES`` says which is where; loading a
script reads its file, and imports nothing of the other side).

Each file opens with a header naming its ``KEYS`` and ``ARGV`` (``-- KEYS[1] doc: ...``, ``-- ARGV[2]
ttl_ms: ...``; a last ``ARGV[n..]`` takes a list) and what it returns, after a ``#!lua flags=...``
line where it declares flags: the worker's scripts ``allow-oom`` (a full Redis must still let jobs
finish, which frees memory; their writes are small), the read-only ones ``no-writes``. Scripts
without flags (the producer's submits) are refused whole by a full Redis before they write anything.
:meth:`LuaScript.bind` builds a call's ``keys`` and ``args`` from those names, so an argument cannot
land in the wrong position.
``--!include NAME`` pulls in ``promptq_core/lua/include/NAME.lua`` (shared helpers, written once).
Key names and limits come from :mod:`promptq_core.contract`: the loader defines, at the top of each script, the
constants it uses (``READY_PREFIX``, ``LEASES``, ...), so no script spells a key.

Both sides use these scripts: the producer's (``submit``, ``cancel``...) and the worker's
(``claim``, ``finish``...), registered once per Redis client.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from promptq_core import contract as c

__all__ = [
    "CONSTANTS",
    "FIXED_KEYS",
    "FLEET_KEYS",
    "QUEUE_KEYS",
    "QUEUE_PREFIXES",
    "SCRIPT_HOMES",
    "SCRIPT_NAMES",
    "LuaScript",
    "Value",
    "script",
]

SCRIPT_HOMES: Final[dict[str, str]] = {
    **dict.fromkeys(("submit", "submit_many", "cancel", "retry", "open_batch", "overview", "fleet"), "producer"),
    **dict.fromkeys(
        (
            "claim",
            "renew",
            "finish",
            "defer",
            "ack",
            "unclaim",
            "pending",
            "beat",
            "roll_up",
            "stream_begin",
            "route",
            "health",
            "circuit",
            "limit_settle",
            "limit_cool_down",
            "wait_over",
            "upgrade",
            "atomic",
            "collect",
            "seal",
            "batch_step",
            "batch_settle",
            "lead",
            "webhook_take",
        ),
        "worker",
    ),
    "depths": "promptq_core",
}
"""Each script and the package whose ``lua/`` folder holds it."""
SCRIPT_NAMES: Final = tuple(SCRIPT_HOMES)

QUEUE_KEYS: Final[dict[str, str]] = {
    "LEVELS": c.LEVELS,
    "LEASES": c.LEASES,
    "DELAYED": c.DELAYED,
    "ROUTES": c.ROUTES,
    "SEQUENCE": c.SEQUENCE,
    "FAILED": c.FAILED,
    "BATCHES": c.BATCHES,
    "BACKEND_WAITS": c.BACKEND_WAITS,
    "RECOVERIES": c.RECOVERIES,
    "COLLECTING": c.COLLECTING,
    "PROVIDER_BATCHES": c.PROVIDER_BATCHES,
    "PROVIDER_BATCHES_ENDED": c.PROVIDER_BATCHES_ENDED,
    "RUN_LIVE": c.RUN_LIVE,
    "BATCHER": c.BATCHER,
    "WEBHOOKS": c.WEBHOOKS,
    "PARKED": c.PARKED,
}
"""The fixed keys of a queue (``promptq:{queue}:`` and the contract's name), by the name a script
uses for each."""
FLEET_KEYS: Final[dict[str, str]] = {
    "WORKERS": c.WORKERS_KEY,
    "WORKERS_SEEN": c.WORKERS_SEEN_KEY,
    "BACKEND_RECOVERIES": c.BACKEND_RECOVERIES_KEY,
}
"""The fixed keys that belong to no queue (each script's in one slot: ``{fleet}`` or ``{backends}``)."""
FIXED_KEYS: Final = frozenset(QUEUE_KEYS) | frozenset(FLEET_KEYS)
"""A script that touches a fixed key declares it in its header's ``KEYS`` by its name (``-- KEYS[4]
LEASES: ...``): :meth:`LuaScript.bind` passes it (a queue's from the queue it is given), and the
script reads it as ``KEYS[4]``, so Redis (and a Cluster) is told every fixed key a script touches.
The loader refuses a script that uses one it does not declare, or declares one it does not use."""

QUEUE_PREFIXES: Final[dict[str, str]] = {
    "READY_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.READY,
    "ACTIVE_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.ACTIVE,
    "RESULT_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.RESULT,
    "STATS_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.STATS,
    "BATCH_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.BATCH,
    "BATCH_TALLY_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.BATCH_TALLY,
    "DONE_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.DONE,
    "WAKE": c.QUEUE_KEY_PREFIX + "{q}:" + c.WAKE,
    "HANDOFF": c.QUEUE_KEY_PREFIX + "{q}:" + c.HANDOFF,
    "CANCEL": c.QUEUE_KEY_PREFIX + "{q}:" + c.CANCEL,
    "STREAM_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.STREAM,
    "FAILED_JOB_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.FAILED_JOB,
    "COLLECT_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.COLLECT,
    "WEBHOOK_PREFIX": c.QUEUE_KEY_PREFIX + "{q}:" + c.WEBHOOK,
    "RECORD_PREFIX": c.ARQ_JOB_KEY_PREFIX + "{q}",
    "TRIES_PREFIX": c.ARQ_RETRY_KEY_PREFIX + "{q}",
    "IN_PROGRESS_PREFIX": c.ARQ_IN_PROGRESS_KEY_PREFIX + "{q}",
}
"""The names a script builds a queue's keys (and channels) from, ``{q}`` standing for the queue's
hash tag: the script finds the tag in its ``KEYS[1]``, which is always a key of the queue, so one
script serves every queue and builds no key outside the slot of the keys it declares."""

CONSTANTS: Final[dict[str, str | int]] = {
    "FAILED_MAX": c.FAILED_SET_MAX,
    "STREAM_MAXLEN": c.STREAM_MAXLEN,
    "DEFAULT_PRIORITY": str(c.DEFAULT_PRIORITY),
    "DEFAULT_FAIRNESS_KEY": c.DEFAULT_FAIRNESS_KEY,
    "LOWEST_PRIORITY": max(c.PRIORITIES),
    "SUBMIT_MEMORY_PERCENT": c.SUBMIT_MEMORY_PERCENT,
    "STATS_KEEP_S": c.STATS_KEEP_S,
    "STATS_FIELDS_MAX": c.STATS_FIELDS_MAX,
    "STATS_OTHER": c.STATS_OTHER_MODEL,
    "BATCHES_MAX": c.BATCHES_MAX,
    "BACKENDS": c.BACKENDS_CHANNEL,
    "LEGACY_PLACE_OFFSET": c.LEGACY_PLACE_OFFSET,
    "IN_FLIGHT_RETRY_MS": c.IN_FLIGHT_RETRY_MS,
    "PROVIDER_BATCHES_KEPT": c.PROVIDER_BATCHES_KEPT,
    "WEBHOOK_KEEP_MS": c.WEBHOOK_KEEP_MS,
    "TRIES_TTL_S": c.ARQ_TRIES_TTL_S,
    **{f"OLD_{name}_PREFIX": c.OLD_KEY_PREFIX + suffix for name, suffix in c.OLD_PREFIXES.items()},
    "OLD_RECORD_PREFIX": c.ARQ_JOB_KEY_PREFIX,
    "OLD_TRIES_PREFIX": c.ARQ_RETRY_KEY_PREFIX,
    "OLD_IN_PROGRESS_PREFIX": c.ARQ_IN_PROGRESS_KEY_PREFIX,
    **c.Reply.names(),
}
"""The other names a script may use: channels and limits (defined as Lua locals when used)."""

KEY_PREFIXES: Final = frozenset(n for n in QUEUE_PREFIXES if n.endswith("_PREFIX") and n != "DONE_PREFIX")
"""The prefixes of keys a script builds from ids (not channels): each script names those it uses in
its header ("Keys it builds from the ids it is given or finds: ..."), the keys a Cluster must find
in the slot of its ``KEYS``."""

_HEADER_RE = re.compile(r"^--\s+(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+)\b", re.M)
_INCLUDE_RE = re.compile(r"^--!include (\w+)\s*$", re.M)
_COMMENT_RE = re.compile(r"--[^\n]*")
Value = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class LuaScript:
    """One script: its source (includes and constants resolved) and the names of its keys and arguments."""

    name: str
    source: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None = None
    """The name of the last argument when it takes a list (``ARGV[n..]``)."""
    key_rest: str | None = None
    """The name of the last key when it takes a list (``KEYS[n..]``)."""

    queued: bool = False
    """The script belongs to a queue (it uses a queue's keys): ``bind`` needs the queue."""

    def bind(self, queue: c.QueueKeys | None = None, **values: Any) -> tuple[list[str], list[Value]]:
        """``keys`` and ``args`` for a call, from every name the header declares (no more, no less);
        the fixed keys it declares are filled in from the contract (a queue's, from ``queue``)."""
        wanted = {
            *(k for k in self.keys if k not in FIXED_KEYS),
            *self.args,
            *(name for name in (self.rest, self.key_rest) if name),
        }
        if values.keys() != wanted:
            missing, unknown = sorted(wanted - values.keys()), sorted(values.keys() - wanted)
            raise TypeError(f"script {self.name}: missing {missing}, unknown {unknown}")
        if self.queued != (queue is not None):
            raise TypeError(f"script {self.name}: {'needs a queue' if self.queued else 'belongs to no queue'}")
        args = [values[name] for name in self.args]
        if self.rest is not None:
            args.extend(values[self.rest])
        keys = [_fixed(name, queue) if name in FIXED_KEYS else str(values[name]) for name in self.keys]
        if self.key_rest is not None:
            keys.extend(values[self.key_rest])
        if queue is not None and (not keys or queue.tag not in keys[0]):
            raise ValueError(f"script {self.name}: its first key is not one of queue {queue.name!r}'s")
        return keys, args


def _fixed(name: str, queue: c.QueueKeys | None) -> str:
    if name in FLEET_KEYS:
        return FLEET_KEYS[name]
    assert queue is not None
    return queue.key(QUEUE_KEYS[name])


@functools.cache
def script(name: str) -> LuaScript:
    """The script ``{home}/lua/{name}.lua``, read and checked once."""
    raw = _read(name)
    shebang, _, text = raw.partition("\n") if raw.startswith("#!lua") else ("", "", raw)
    body = _INCLUDE_RE.sub(lambda m: _read(f"include/{m.group(1)}"), text)
    code = _COMMENT_RE.sub("", body)
    used = [n for n in CONSTANTS if re.search(rf"\b{n}\b", code)]
    prefixes = [n for n in QUEUE_PREFIXES if re.search(rf"\b{n}\b", code)]
    keys: dict[int, str] = {}
    args: dict[int, str] = {}
    rests: dict[str, tuple[str, int]] = {}
    for kind, index, dots, ident in _HEADER_RE.findall(raw):
        if dots:
            if kind in rests:
                raise ValueError(f"{name}.lua: only the last {kind} may take a list")
            rests[kind] = (ident, int(index))
        else:
            (keys if kind == "KEYS" else args)[int(index)] = ident
    for table, kind in ((keys, "KEYS"), (args, "ARGV")):
        if sorted(table) != list(range(1, len(table) + 1)):
            raise ValueError(f"{name}.lua: {kind} must be numbered 1 to n in its header")
    for kind, table in (("KEYS", keys), ("ARGV", args)):
        if kind in rests and rests[kind][1] != len(table) + 1:
            raise ValueError(f"{name}.lua: {kind}[{rests[kind][1]}..] must follow the last {kind}")
    rest, key_rest = rests.get("ARGV", (None, 0))[0], rests.get("KEYS", (None, 0))[0]
    fixed = {ident: index for index, ident in keys.items() if ident.isupper()}
    touched = {n for n in FIXED_KEYS if re.search(rf"\b{n}\b", code)}
    if unknown := sorted(fixed.keys() - FIXED_KEYS):
        raise ValueError(f"{name}.lua: KEYS {unknown} are not fixed keys of the contract (FIXED_KEYS)")
    if touched != fixed.keys():
        undeclared, unused = sorted(touched - fixed.keys()), sorted(fixed.keys() - touched)
        raise ValueError(f"{name}.lua: fixed keys used, not in KEYS {undeclared}; in KEYS, unused {unused}")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("--"))
    if unsaid := [n for n in prefixes if n in KEY_PREFIXES and not re.search(rf"\b{n}\b", header)]:
        raise ValueError(f"{name}.lua: builds keys from {unsaid} without saying so in its header")
    queued = bool(prefixes) or any(n in QUEUE_KEYS for n in fixed)
    if queued and fixed.keys() & FLEET_KEYS.keys():
        raise ValueError(f"{name}.lua: a queue's keys and the fleet's in one script (two slots on a Cluster)")
    tag = ["local TAG = string.match(KEYS[1], '{[^}]*}')\n"] if prefixes else []
    preamble = (shebang + "\n" if shebang else "") + "".join(
        [f"local {n} = KEYS[{i}]\n" for n, i in sorted(fixed.items(), key=lambda item: item[1])]
        + tag
        + [f"local {n} = {_queue_prefix(QUEUE_PREFIXES[n])}\n" for n in prefixes]
        + [f"local {n} = {_lua(CONSTANTS[n])}\n" for n in used]
    )
    return LuaScript(
        name=name,
        source=preamble + body,
        keys=tuple(keys[i] for i in sorted(keys)),
        args=tuple(args[i] for i in sorted(args)),
        rest=rest,
        key_rest=key_rest,
        queued=queued,
    )


def _queue_prefix(template: str) -> str:
    """A queue's prefix in Lua, its tag (``TAG``) in place of ``{q}``."""
    before, _, after = template.partition("{q}")
    return f"{_lua(before)} .. TAG .. {_lua(after)}"


def _read(name: str) -> str:
    home = "promptq_core" if name.startswith("include/") else SCRIPT_HOMES[name]
    return resources.files(home).joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


def _lua(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
