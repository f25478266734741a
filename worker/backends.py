"""The backends a worker sends calls to, and the fallback models, read from the environment once.

A backend is one OpenAI-compatible endpoint with its own key, the models it serves (each by the
name it knows it by), its limits per model and its weight. ``PROMPTQ_BACKENDS`` (JSON) or
``PROMPTQ_BACKENDS_FILE`` (a JSON or TOML file) lists them::

    [{"name": "east", "base_url": "https://api.openai.com/v1", "api_key_env": "EAST_KEY",
      "models": ["gpt-4o-mini"], "rpm": 500, "tpm": 200000},
     {"name": "azure", "kind": "azure", "api_version": "2024-10-21",
      "base_url": "https://example.openai.azure.com", "api_key_env": "AZURE_KEY",
      "models": {"gpt-4o-mini": "my-deployment"}, "batch": true}]

(a file may also hold ``{"backends": [...]}``, in TOML ``[[backends]]`` tables). Without either,
one backend named ``default`` is made of ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and the limit
variables, serving every model, as before backends existed.

``PROMPTQ_FALLBACKS`` (JSON: a model -> the models to move to, in order) names where a job goes
when its model's backends stay down (see :mod:`worker.routing`).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from promptq_core.contract import BACKEND_NAME_RE, dumps
from promptq_core.env import ConfigError, env_json_table, env_str
from promptq_core.validation import InvalidJobError, check_model

__all__ = [
    "BACKENDS_ENV",
    "BACKENDS_FILE_ENV",
    "FALLBACKS_ENV",
    "KINDS",
    "Backend",
    "Limit",
    "backends_from_env",
    "fallbacks_from_env",
]

BACKENDS_ENV: Final = "PROMPTQ_BACKENDS"
BACKENDS_FILE_ENV: Final = "PROMPTQ_BACKENDS_FILE"
FALLBACKS_ENV: Final = "PROMPTQ_FALLBACKS"
KINDS: Final = ("openai", "azure")
FIELDS: Final = frozenset(
    {"name", "base_url", "api_key", "api_key_env", "models", "rpm", "tpm", "weight", "kind", "api_version", "headers"}
    | {"batch"}
)
HEADER_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
UNUSED_API_KEY: Final = "unused"
"""Sent to a server that needs no key (a local one), when none is given."""


@dataclass(frozen=True, slots=True)
class Limit:
    rpm: int | None = None
    tpm: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm)


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint: where, with which key, which models (job's name -> the backend's), what limits."""

    name: str
    base_url: str | None
    """None: the openai package's default (``https://api.openai.com/v1``)."""
    api_key: str = field(repr=False)
    models: dict[str, str] | None
    """A job's model name -> the name this backend knows it by; None: every model, by its own name."""
    limit: Limit = field(default_factory=Limit)
    """Requests and tokens per minute of each model on this backend (None: no limit)."""
    limits: dict[str, Limit] = field(default_factory=dict)
    """Per-model limits over ``limit`` (``PROMPTQ_LIMITS``, for the ``default`` backend)."""
    weight: float = 1.0
    kind: str = "openai"
    api_version: str | None = None
    """``kind`` azure: the API version every request names."""
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    """Sent with every request (they may hold secrets: never in a repr)."""
    batch: bool = False
    """Its API has ``/v1/files`` and ``/v1/batches``: batch-tier jobs go there in provider batches."""

    def serves(self, model: str) -> str | None:
        """The name this backend knows ``model`` by, or None when it does not serve it."""
        if self.models is None:
            return model
        return self.models.get(model)

    def limit_for(self, model: str) -> Limit:
        return self.limits.get(model, self.limit)


def backends_from_env(env: Mapping[str, str], default: Backend) -> tuple[Backend, ...]:
    """The listed backends, or ``(default,)`` when none are; :class:`ConfigError` naming the
    variable, the backend (by name, or by position) and the field of the first problem."""
    raw, where = _listing(env)
    if raw is None:
        return (default,)
    _repeated(raw, where)
    entries = raw.get("backends") if isinstance(raw, dict) and set(raw) == {"backends"} else raw
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'{where} must be a non-empty list of backends (or {{"backends": [...]}})')
    backends: list[Backend] = []
    for position, entry in enumerate(entries):
        backend = _backend(env, entry, f"{where}[{position}]")
        if any(b.name == backend.name for b in backends):
            raise ConfigError(f"{where}[{position}] ({backend.name!r}).name: another backend has this name")
        backends.append(backend)
    return tuple(backends)


def _listing(env: Mapping[str, str]) -> tuple[Any, str]:
    """The parsed listing and where it came from (for errors), or (None, ...) when there is none."""
    inline, path = env_str(env, BACKENDS_ENV), env_str(env, BACKENDS_FILE_ENV)
    if inline is not None and path is not None:
        raise ConfigError(f"{BACKENDS_ENV} and {BACKENDS_FILE_ENV} are both set: set one")
    if inline is not None:
        try:
            return _json(inline), BACKENDS_ENV
        except ValueError as e:
            raise ConfigError(f"{BACKENDS_ENV} must be JSON: {e}") from None
    if path is None:
        return None, ""
    where = f"{BACKENDS_FILE_ENV} ({path})"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{BACKENDS_FILE_ENV}: cannot read {path}: {e.strerror or e}") from None
    try:
        return (tomllib.loads(text) if path.endswith(".toml") else _json(text)), where
    except ValueError as e:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise ConfigError(f"{where} must be {kind}: {e}") from None


class _Object(dict[str, Any]):
    """A JSON object as read, with the keys it gave more than once (JSON would keep the last)."""

    repeated: tuple[str, ...] = ()


def _json(text: str) -> Any:
    """JSON whose objects say which keys they repeat (:func:`_repeated` refuses them, naming where)."""

    def remember(pairs: list[tuple[str, Any]]) -> _Object:
        seen = _Object()
        repeated: list[str] = []
        for key, value in pairs:
            if key in seen:
                repeated.append(key)
            seen[key] = value
        seen.repeated = tuple(repeated)
        return seen

    return json.loads(text, object_pairs_hook=remember)


def _repeated(value: Any, at: str, what: str = "is given twice") -> None:
    """Refuse an object that gave a key twice (a model mapped twice would otherwise keep its last name)."""
    if isinstance(value, _Object) and value.repeated:
        raise ConfigError(f"{at}: {value.repeated[0]!r} {what}")


def _backend(env: Mapping[str, str], entry: Any, at: str) -> Backend:
    if not isinstance(entry, dict):
        raise ConfigError(f"{at} must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not BACKEND_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{at}.name must be 1 to 64 letters, digits, '_', '.' or '-' (starting with one of the first two)"
        )
    at = f"{at} ({name!r})"
    _repeated(entry, at)
    if unknown := sorted(set(entry) - FIELDS):
        raise ConfigError(f"{at}: unknown fields {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})")
    kind = entry.get("kind", "openai")
    if kind not in KINDS:
        raise ConfigError(f"{at}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")) or len(base_url) > 2000:
        raise ConfigError(f"{at}.base_url must be an http:// or https:// URL")
    api_version = entry.get("api_version")
    if kind == "azure" and (not isinstance(api_version, str) or not api_version.strip()):
        raise ConfigError(f'{at}.api_version is needed for kind azure (e.g. "2024-10-21")')
    if kind != "azure" and api_version is not None:
        raise ConfigError(f"{at}.api_version is for kind azure only")
    return Backend(
        name=name,
        base_url=base_url.rstrip("/"),
        api_key=_api_key(env, entry, at),
        models=_models(entry.get("models"), at),
        limit=Limit(_positive_int(entry, "rpm", at), _positive_int(entry, "tpm", at)),
        weight=_weight(entry.get("weight", 1), at),
        kind=kind,
        api_version=api_version,
        headers=_headers(entry.get("headers", {}), at),
        batch=_flag(entry, "batch", at),
    )


def _api_key(env: Mapping[str, str], entry: dict[str, Any], at: str) -> str:
    key, variable = entry.get("api_key"), entry.get("api_key_env")
    if key is not None and variable is not None:
        raise ConfigError(f"{at}: give api_key or api_key_env, not both")
    if variable is not None:
        if not isinstance(variable, str) or not variable.strip():
            raise ConfigError(f"{at}.api_key_env must name an environment variable")
        value = env_str(env, variable)
        if value is None:
            raise ConfigError(f"{at}.api_key_env: the variable {variable} is not set")
        return value
    if key is None:
        return UNUSED_API_KEY
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"{at}.api_key must be a non-empty string")
    return key


def _models(models: Any, at: str) -> dict[str, str]:
    if isinstance(models, list):
        pairs = [(m, m) for m in models]
    elif isinstance(models, dict):
        _repeated(models, f"{at}.models", "is mapped twice")
        pairs = list(models.items())
    else:
        raise ConfigError(f"{at}.models must be a list of model names or an object (model -> this backend's name)")
    if not pairs:
        raise ConfigError(f"{at}.models must name at least one model")
    served: dict[str, str] = {}
    for model, own in pairs:
        for value in (model, own):
            try:
                check_model(value, f"{at}.models: a name")
            except InvalidJobError as e:
                raise ConfigError(str(e)) from None
        if model in served:
            raise ConfigError(f"{at}.models: {model!r} is listed twice")
        served[model] = own
    return served


def _positive_int(entry: dict[str, Any], name: str, at: str) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{at}.{name} must be a positive integer, got {value!r}")
    return value


def _flag(entry: dict[str, Any], name: str, at: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{at}.{name} must be true or false, got {value!r}")
    return value


def _weight(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{at}.weight must be a positive number, got {value!r}")
    return float(value)


def _headers(headers: Any, at: str) -> dict[str, str]:
    if not isinstance(headers, dict):
        raise ConfigError(f"{at}.headers must be an object of header names and values")
    _repeated(headers, f"{at}.headers")
    for name, value in headers.items():
        if not name or not set(name) <= HEADER_NAME_CHARS or len(name) > 100:
            raise ConfigError(f"{at}.headers: {name!r} is not a header name")
        if not isinstance(value, str) or len(value) > 4000 or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{at}.headers[{name!r}] must be a string on one line")
    return dict(headers)


def fallbacks_from_env(env: Mapping[str, str], backends: tuple[Backend, ...]) -> dict[str, tuple[str, ...]]:
    """``PROMPTQ_FALLBACKS``: each model's fallback models, in order. A model may not fall back to
    itself, name one twice, or reach itself through other models' fallbacks; each fallback must be
    served by a backend."""
    parsed = env_json_table(env, FALLBACKS_ENV, '{"gpt-4o": ["gpt-4o-mini"]}')
    table: dict[str, tuple[str, ...]] = {}
    for model, chain in parsed.items():
        at = f"{FALLBACKS_ENV}[{model!r}]"
        if not isinstance(chain, list) or not chain or not all(isinstance(m, str) and m.strip() for m in chain):
            raise ConfigError(f"{at} must be a non-empty list of model names")
        for name in (model, *chain):
            try:
                check_model(name, f"{at}: a name")
            except InvalidJobError as e:
                raise ConfigError(str(e)) from None
        if model in chain:
            raise ConfigError(f"{at} names the model itself")
        if len(set(chain)) != len(chain):
            raise ConfigError(f"{at} names a model twice")
        if unserved := [m for m in chain if not any(b.serves(m) for b in backends)]:
            raise ConfigError(f"{at}: no backend serves {', '.join(map(repr, unserved))}")
        table[model] = tuple(chain)
    for model in table:
        if loop := _loop(table, model):
            raise ConfigError(f"{FALLBACKS_ENV} loops: {' -> '.join(loop)}")
    return table


def _loop(table: dict[str, tuple[str, ...]], start: str) -> list[str] | None:
    """A path of fallbacks from ``start`` back to it, if there is one."""
    paths = [[start]]
    while paths:
        path = paths.pop()
        for nxt in table.get(path[-1], ()):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                paths.append([*path, nxt])
    return None


def describe(backends: tuple[Backend, ...]) -> str:
    """The backends in one line for the start-up log (no keys)."""
    return dumps(
        [{"name": b.name, "models": None if b.models is None else sorted(b.models), "kind": b.kind} for b in backends]
    )
