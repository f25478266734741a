"""Reading configuration from the environment, with errors that name the variable (standard library only)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from promptq_core.connect import CLUSTER_SCHEMES, SENTINEL_SCHEMES, parse_cluster, parse_sentinel
from promptq_core.contract import DEFAULT_QUEUE, QUEUE_NAME_RE, RESERVED_QUEUE_NAMES

__all__ = [
    "HOST_RE",
    "NO_REPLICAS_ON_CLUSTER",
    "ConfigError",
    "env_choice",
    "env_flag",
    "env_float",
    "env_int",
    "env_json_table",
    "env_queue",
    "env_queues",
    "env_redis_url",
    "env_str",
    "redact_url",
]


NO_REPLICAS_ON_CLUSTER = (
    "PROMPTQ_MIN_REPLICAS is not supported with a redis+cluster:// REDIS_URL (a Cluster's replicas are "
    "per shard: set it to 0, and rely on the cluster's own replication)"
)


HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}|\[?[0-9A-Fa-f:.]{2,45}\]?")
"""A host a setting may name: a host name, or an IPv4 or IPv6 address (bracketed or not)."""


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message starts with its name."""


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(
    env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0, or_equal: bool = False
) -> float:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not (value >= minimum if or_equal else value > minimum) or value == float("inf"):
        bound = "at least" if or_equal else "greater than"
        raise ConfigError(f"{name} must be a finite number {bound} {minimum:g}, got {raw}")
    return value


def env_json_table(env: Mapping[str, str], name: str, example: str) -> dict[str, Any]:
    """A JSON object keyed by name (``PROMPTQ_PRICES``, ``PROMPTQ_LIMITS``, ...); empty when unset.
    The caller checks each entry; ``example`` shows the shape in the error."""
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be JSON like {example}: {e}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object, like {example}")
    return parsed


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no variable: 1, true, yes, on (or 0, false, no, off, unset)."""
    raw = (env_str(env, name) or "0").lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), got {raw!r}")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env_str(env, name) or default).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_redis_url(env: Mapping[str, str], default: str) -> str:
    url = env_str(env, "REDIS_URL", default) or default
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel(url, env)
        except ValueError as e:
            raise ConfigError(
                f"REDIS_URL {redact_url(url)!r}: {e} (redis+sentinel://[user:password@]host:port,.../service[/db])"
            ) from None
    elif scheme in CLUSTER_SCHEMES:
        try:
            parse_cluster(url)
        except ValueError as e:
            raise ConfigError(
                f"REDIS_URL {redact_url(url)!r}: {e} (redis+cluster://[user:password@]host:port[,host:port...])"
            ) from None
    elif scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            "REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://, "
            f"got {redact_url(url)!r}"
        )
    return url


SECRET_QUERY_RE = re.compile(r"((?:^|[&;])[^=&;]*(?:password|passwd|pass|secret|token|key)[^=&;]*=)[^&;]*", re.I)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages: the one before the host
    (``redis://user:pw@host``) and any in the query (``?password=pw``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can read: show none of it
        return "<a URL that cannot be read>"
    if password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@", 1))
    if parts.query:
        parts = parts._replace(query=SECRET_QUERY_RE.sub(r"\1***", parts.query))
    return parts.geturl()


def env_queues(env: Mapping[str, str], name: str, default: str = DEFAULT_QUEUE) -> tuple[str, ...]:
    """A comma-separated list of queue names (``QUEUE_NAME_RE``), none twice; ``default`` when unset."""
    raw = env.get(name)
    if raw is None:
        return (default,)
    names = [part.strip() for part in raw.split(",")]
    for queue in names:
        if not QUEUE_NAME_RE.fullmatch(queue):
            shown = repr(queue[:40]) if queue else "an empty name"
            raise ConfigError(f"{name}: {shown} is not a queue name (1 to 64 of A-Z a-z 0-9 _ . -)")
    if reserved := sorted(set(names) & RESERVED_QUEUE_NAMES):
        raise ConfigError(f"{name}: {reserved[0]!r} is reserved (the tag of keys that belong to no queue)")
    if len(set(names)) < len(names):
        twice = sorted({q for q in names if names.count(q) > 1})
        raise ConfigError(f"{name} names {', '.join(twice)} more than once")
    return tuple(names)


def env_queue(env: Mapping[str, str], name: str, default: str = DEFAULT_QUEUE) -> str:
    """One queue name (``QUEUE_NAME_RE``); ``default`` when unset."""
    queues = env_queues(env, name, default)
    if len(queues) != 1:
        raise ConfigError(f"{name} must name one queue, got {len(queues)}")
    return queues[0]
