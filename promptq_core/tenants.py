"""Tenants: who may call the HTTP API with a key of their own, and within what (standard library only).

A tenant is a name and a :class:`Policy`, kept in ``TENANTS_KEY``; its API keys are kept hashed in
``API_KEYS_KEY`` (SHA-256: a key is 190 random bits, so a plain hash is enough, and compared by
lookup). A tenant's jobs have the ids ``{tenant}/{id}`` (``tenant_job_id``): two tenants' ``order-42``
are two jobs, and an id from outside never has a ``/``. The operator (``PROMPTQ_API_TOKEN``, or
in-process code) is no tenant and sees everything.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

from promptq_core.contract import DEFAULT_PRIORITY, PRIORITIES, spend_key
from promptq_core.validation import TENANT_RE, InvalidJobError, check_model, check_queue

__all__ = [
    "KEY_PREFIX",
    "PERIODS",
    "KeyEntry",
    "Policy",
    "PolicyError",
    "budget_period",
    "check_tenant",
    "key_digest",
    "new_key",
    "owner_of",
    "spend_keys",
    "tenant_job_id",
]

KEY_PREFIX: Final = "pq_"
"""Every tenant key starts so: ``pq_{key id}_{secret}``."""
PERIODS: Final = ("day", "month")
Period = Literal["day", "month"]


class PolicyError(InvalidJobError):
    """A tenant's job asks for more than its policy allows (a priority above its ceiling, a queue or
    a model it may not use)."""


def check_tenant(name: Any) -> str:
    """``name`` as given, if it is a tenant name (:data:`TENANT_RE`); else :class:`InvalidJobError`."""
    if not isinstance(name, str) or not TENANT_RE.fullmatch(name):
        raise InvalidJobError("a tenant's name must be 1 to 32 of a-z 0-9 _ -, starting with a letter or digit")
    return name


def tenant_job_id(tenant: str, job_id: str) -> str:
    """The id a tenant's job ``job_id`` has in Redis."""
    return f"{tenant}/{job_id}"


def owner_of(job_id: str) -> tuple[str | None, str]:
    """``(tenant, its own id)`` of a job id; ``(None, job_id)`` for the operator's jobs."""
    tenant, slash, own = job_id.partition("/")
    return (tenant, own) if slash else (None, job_id)


def budget_period(period: Period, now_s: float) -> tuple[str, float]:
    """The budget period holding ``now_s`` (Unix time, UTC): its name (``2026-12``, ``2026-12-03``)
    and when the next one starts."""
    day = datetime.datetime.fromtimestamp(now_s, datetime.UTC)
    if period == "day":
        start = day.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), (start + datetime.timedelta(days=1)).timestamp()
    start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = divmod(start.month, 12)  # (December: month 0 of the next year)
    following = start.replace(year=start.year + year, month=month + 1)
    return start.strftime("%Y-%m"), following.timestamp()


def spend_keys(tenant: str, at_s: float) -> dict[Period, str]:
    """The keys of ``tenant``'s spend in each period (day, month) holding ``at_s`` (Unix time, UTC)."""
    return {period: spend_key(tenant, budget_period(period, at_s)[0]) for period in PERIODS}


def new_key() -> tuple[str, str]:
    """``(key id, key)``: a new API key, and the id it is listed and revoked by."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """An API key as kept: its id, its tenant and when it was made (never the key)."""

    id: str
    tenant: str
    created_at: float

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "tenant": self.tenant, "created_at": self.created_at})

    @classmethod
    def from_json(cls, raw: str | bytes) -> KeyEntry:
        doc = json.loads(raw)
        return cls(id=str(doc["id"]), tenant=str(doc["tenant"]), created_at=float(doc["created_at"]))


@dataclass(frozen=True, slots=True)
class Policy:
    """What a tenant's keys may do. Unset limits are no limit."""

    tenant: str
    max_priority: int = 0
    """The most urgent priority its jobs may ask for (0 runs first): a job asking for a smaller
    number is refused. Its jobs without one take ``max(5, max_priority)``."""
    rpm: int | None = None
    """Calls a minute its jobs may start, fleet-wide."""
    tpm: int | None = None
    """Tokens a minute its jobs may spend (estimated before a call, settled after), fleet-wide."""
    max_in_flight: int | None = None
    """Calls of its jobs running at once, fleet-wide."""
    budget_usd: float | None = None
    """Spend per ``budget_period`` (``PROMPTQ_PRICES``), counted from finished jobs."""
    budget_period: Period = "month"
    queues: tuple[str, ...] = ()
    """The queues it may use (none listed: any)."""
    models: tuple[str, ...] = ()
    """The models it may ask for (none listed: any)."""

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        if self.max_priority not in PRIORITIES or isinstance(self.max_priority, bool):
            raise InvalidJobError("max_priority must be an integer from 0 to 9")
        for name in ("rpm", "tpm", "max_in_flight"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidJobError(f"{name} must be a positive integer")
        if self.budget_usd is not None and (isinstance(self.budget_usd, bool) or not self.budget_usd > 0):
            raise InvalidJobError("budget_usd must be a positive number")
        if self.budget_period not in PERIODS:
            raise InvalidJobError(f"budget_period must be one of {', '.join(PERIODS)}")
        for queue in self.queues:
            check_queue(queue, "each of queues")
        for model in self.models:
            check_model(model, "each of models")

    @property
    def default_priority(self) -> int:
        return max(DEFAULT_PRIORITY, self.max_priority)

    def admit(self, *, priority: int | None, queue: str, models: list[str | None]) -> None:
        """Refuse (:class:`PolicyError`) a job above the priority ceiling, or in a queue or for a
        model the tenant may not use (``models``: the job's model and fallbacks)."""
        if priority is not None and priority < self.max_priority:
            raise PolicyError(
                f"priority {priority} is above this key's ceiling: its jobs may ask for {self.max_priority} to 9"
            )
        if self.queues and queue not in self.queues:
            raise PolicyError(f"queue {queue!r} is not one this key may use ({', '.join(self.queues)})")
        if self.models:
            for model in models:
                if model is None:
                    raise PolicyError(f"name a model: this key may use {', '.join(self.models)}")
                if model not in self.models:
                    raise PolicyError(f"model {model!r} is not one this key may use ({', '.join(self.models)})")

    def changed(self, **changes: Any) -> Policy:
        """This policy with ``changes`` (None leaves a field as it is; checked)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_doc(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["queues"], doc["models"] = list(self.queues), list(self.models)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_doc())

    @classmethod
    def from_json(cls, raw: str | bytes) -> Policy:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise InvalidJobError("a tenant's policy is not a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        doc = {k: v for k, v in doc.items() if k in fields}
        doc["queues"], doc["models"] = tuple(doc.get("queues") or ()), tuple(doc.get("models") or ())
        return cls(**doc)
