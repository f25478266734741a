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

__all__ = ["CONSTANTS", "FIXED_KEYS", "SCRIPT_HOMES", "SCRIPT_NAMES", "LuaScript", "Value", "script"]

SCRIPT_HOMES: Final[dict[str, str]] = {
    **dict.fromkeys(("submit", "submit_many", "cancel", "retry", "open_batch", "overview"), "producer"),
    **dict.fromkeys(
        (
            "claim",
            "renew",
            "finish",
            "defer",
            "ack",
            "pending",
            "beat",
            "roll_up",
            "stream_begin",
            "route",
            "circuit",
            "limit_settle",
            "limit_cool_down",
        ),
        "worker",
    ),
    "depths": "promptq_core",
}
"""Each script and the package whose ``lua/`` folder holds it."""
SCRIPT_NAMES: Final = tuple(SCRIPT_HOMES)

FIXED_KEYS: Final[dict[str, str]] = {
    "LEVELS": c.LEVELS_KEY,
    "LEASES": c.LEASE_SET,
    "DELAYED": c.DELAYED_SET,
    "ROUTES": c.ROUTES_KEY,
    "SEQUENCE": c.SEQUENCE_KEY,
    "LEGACY_QUEUE": c.LEGACY_QUEUE,
    "FAILED": c.FAILED_SET,
    "BATCHES": c.BATCHES_KEY,
    "WORKERS": c.WORKERS_KEY,
    "WORKERS_SEEN": c.WORKERS_SEEN_KEY,
    "BACKEND_WAITS": c.BACKEND_WAITS_KEY,
    "RECOVERIES": c.RECOVERIES_KEY,
}
"""The contract's fixed keys, by the name a script uses for each. A script that touches one declares
it in its header's ``KEYS`` by that name (``-- KEYS[4] LEASES: ...``): :meth:`LuaScript.bind` passes
it, and the script reads it as ``KEYS[4]``, so Redis (and a Cluster) is told every fixed key a
script touches. The loader refuses a script that uses one it does not declare, or declares one it
does not use."""

CONSTANTS: Final[dict[str, str | int]] = {
    "READY_PREFIX": c.READY_KEY_PREFIX,
    "ACTIVE_PREFIX": c.ACTIVE_KEY_PREFIX,
    "LEGACY_PLACE_OFFSET": c.LEGACY_PLACE_OFFSET,
    "RECORD_PREFIX": c.ARQ_JOB_KEY_PREFIX,
    "TRIES_PREFIX": c.ARQ_RETRY_KEY_PREFIX,
    "IN_PROGRESS_PREFIX": c.ARQ_IN_PROGRESS_KEY_PREFIX,
    "RESULT_PREFIX": c.RESULT_KEY_PREFIX,
    "FAILED_MAX": c.FAILED_SET_MAX,
    "DONE_PREFIX": c.DONE_CHANNEL_PREFIX,
    "WAKE": c.WAKE_CHANNEL,
    "CANCEL": c.CANCEL_CHANNEL,
    "STREAM_MAXLEN": c.STREAM_MAXLEN,
    "DEFAULT_PRIORITY": str(c.DEFAULT_PRIORITY),
    "DEFAULT_FAIRNESS_KEY": c.DEFAULT_FAIRNESS_KEY,
    "LOWEST_PRIORITY": max(c.PRIORITIES),
    "SUBMIT_MEMORY_PERCENT": c.SUBMIT_MEMORY_PERCENT,
    "STATS_PREFIX": c.STATS_KEY_PREFIX,
    "STATS_KEEP_S": c.STATS_KEEP_S,
    "STATS_FIELDS_MAX": c.STATS_FIELDS_MAX,
    "STATS_OTHER": c.STATS_OTHER_MODEL,
    "BATCH_PREFIX": c.BATCH_KEY_PREFIX,
    "BATCH_TALLY_PREFIX": c.BATCH_TALLY_KEY_PREFIX,
    "BATCHES_MAX": c.BATCHES_MAX,
    "CIRCUIT_PREFIX": c.CIRCUIT_KEY_PREFIX,
    **c.Reply.names(),
}
"""The other names a script may use: the prefixes of the keys it builds from the ids it is given or
finds (a job's document, record and try counter, a priority's ready sets...), channels and limits
(defined as Lua locals when used)."""

KEY_PREFIXES: Final = frozenset(n for n in CONSTANTS if n.endswith("_PREFIX") and n != "DONE_PREFIX")
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

    def bind(self, **values: Any) -> tuple[list[str], list[Value]]:
        """``keys`` and ``args`` for a call, from every name the header declares (no more, no less);
        the fixed keys it declares are filled in from the contract."""
        wanted = {
            *(k for k in self.keys if k not in FIXED_KEYS),
            *self.args,
            *(name for name in (self.rest, self.key_rest) if name),
        }
        if values.keys() != wanted:
            missing, unknown = sorted(wanted - values.keys()), sorted(values.keys() - wanted)
            raise TypeError(f"script {self.name}: missing {missing}, unknown {unknown}")
        args = [values[name] for name in self.args]
        if self.rest is not None:
            args.extend(values[self.rest])
        keys = [FIXED_KEYS[name] if name in FIXED_KEYS else str(values[name]) for name in self.keys]
        if self.key_rest is not None:
            keys.extend(values[self.key_rest])
        return keys, args


@functools.cache
def script(name: str) -> LuaScript:
    """The script ``{home}/lua/{name}.lua``, read and checked once."""
    raw = _read(name)
    shebang, _, text = raw.partition("\n") if raw.startswith("#!lua") else ("", "", raw)
    body = _INCLUDE_RE.sub(lambda m: _read(f"include/{m.group(1)}"), text)
    code = _COMMENT_RE.sub("", body)
    used = [n for n in CONSTANTS if re.search(rf"\b{n}\b", code)]
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
    if unknown := sorted(fixed.keys() - FIXED_KEYS.keys()):
        raise ValueError(f"{name}.lua: KEYS {unknown} are not fixed keys of the contract (FIXED_KEYS)")
    if touched != fixed.keys():
        undeclared, unused = sorted(touched - fixed.keys()), sorted(fixed.keys() - touched)
        raise ValueError(f"{name}.lua: fixed keys used, not in KEYS {undeclared}; in KEYS, unused {unused}")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("--"))
    if unsaid := [n for n in used if n in KEY_PREFIXES and not re.search(rf"\b{n}\b", header)]:
        raise ValueError(f"{name}.lua: builds keys from {unsaid} without saying so in its header")
    preamble = (shebang + "\n" if shebang else "") + "".join(
        [f"local {n} = KEYS[{i}]\n" for n, i in sorted(fixed.items(), key=lambda item: item[1])]
        + [f"local {n} = {_lua(CONSTANTS[n])}\n" for n in used]
    )
    return LuaScript(
        name=name,
        source=preamble + body,
        keys=tuple(keys[i] for i in sorted(keys)),
        args=tuple(args[i] for i in sorted(args)),
        rest=rest,
        key_rest=key_rest,
    )


def _read(name: str) -> str:
    home = "promptq_core" if name.startswith("include/") else SCRIPT_HOMES[name]
    return resources.files(home).joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


def _lua(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
