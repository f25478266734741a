"""The dashboard's figures (``Producer.overview``), built from one read of a queue's slot
(``lua/overview.lua``) and one of the fleet's (``lua/fleet.lua``, then the circuits the workers
name): the queue per priority and fairness key, the workers, the last minutes' roll-ups (jobs
ended, latency quantiles, tokens and cost per model), the batches' progress and the newest failures.

Nothing here does I/O: :meth:`Overview.from_reply` turns the replies into the document
``GET /v1/dashboard`` answers. Latency quantiles come from the roll-ups' buckets (a quarter wide
each), so a p95 is right to within that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from promptq_core.contract import (
    DEFAULT_QUEUE,
    STATS_OTHER_MODEL,
    WORKER_BEAT_S,
    JobResult,
    as_text,
    budget_share,
    latency_bucket_bounds,
    loads,
)

__all__ = ["OVERVIEW_BACKENDS", "OVERVIEW_KEYS_MAX", "OVERVIEW_MINUTES", "Overview", "backends_named", "quantile_ms"]

OVERVIEW_MINUTES: Final = 15
"""Minutes of roll-ups the overview reads (the chart's span)."""
OVERVIEW_BATCHES: Final = 20
"""Batches listed, the newest first."""
OVERVIEW_FAILURES: Final = 20
OVERVIEW_BACKENDS: Final = 100
"""Backends whose circuit is read, at most (those the workers' entries name)."""
SCAN_MAX: Final = 500
"""Running and deferred jobs looked at, each, to count them per priority and fairness key (their
totals are counted apart, in full)."""
OVERVIEW_KEYS_MAX: Final = 100
"""Fairness keys listed a priority (those first in turn); the depths list up to ``DEPTHS_KEYS_MAX``."""
ALIVE_BEATS: Final = 3
"""A worker is shown alive while its last beat is at most this many beats old."""


def quantile_ms(buckets: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of the times counted per latency bucket, in ms (None: none counted),
    taken between the bounds of the bucket it falls in."""
    n = sum(buckets.values())
    if n <= 0:
        return None
    target, before = q * n, 0
    for bucket in sorted(buckets):
        count = buckets[bucket]
        if count > 0 and before + count >= target:
            low, high = latency_bucket_bounds(bucket)
            return round(low + (high - low) * max(0.0, target - before) / count, 1)
        before += count
    return round(latency_bucket_bounds(max(buckets))[1], 1)


@dataclass(frozen=True, slots=True)
class Overview:
    """What ``GET /v1/dashboard`` answers (``to_doc``)."""

    now: float
    """Redis's time, Unix seconds."""
    queue: dict[str, Any]
    workers: list[dict[str, Any]]
    minutes: list[dict[str, Any]]
    models: list[dict[str, Any]]
    batches: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    backends: list[dict[str, Any]]

    def to_doc(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "queue": self.queue,
            "backends": self.backends,
            "workers": self.workers,
            "minutes": self.minutes,
            "models": self.models,
            "batches": self.batches,
            "failures": self.failures,
        }

    @classmethod
    def from_reply(
        cls,
        reply: Sequence[Any],
        workers: Sequence[Any],
        circuits: Sequence[Any],
        failures: Iterable[JobResult],
        queue_name: str = DEFAULT_QUEUE,
    ) -> Overview:
        """From the queue's ``overview`` script, the ``fleet`` script's workers and the circuits
        (flat: backend, open_until, opened_at, failures...)."""
        now_ms, totals, ready, running, deferred, minutes, batches = reply
        now_s = int(now_ms) / 1000
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        for kind, flat in (("ready", ready), ("running", running), ("deferred", deferred)):
            for priority, key, n in _triples(flat):
                row = rows.setdefault(
                    (int(priority), as_text(key)),
                    {"priority": int(priority), "key": as_text(key), "ready": 0, "running": 0, "deferred": 0},
                )
                row[kind] += int(n)
        leased, delayed, failed, waiting = (int(v) for v in totals)
        queue = {
            "name": queue_name,
            "totals": {
                "ready": sum(r["ready"] for r in rows.values()),
                "running": leased,
                "deferred": delayed,
                "failed": failed,
                "waiting_for_backend": waiting,
            },
            "rows": [rows[k] for k in sorted(rows)],
        }
        rolled = [_minute(row) for row in minutes]
        entries = [(i, seen, _entry(entry)) for i, seen, entry in _triples(workers)]
        return cls(
            now=round(now_s, 3),
            queue=queue,
            backends=_backends(
                circuits,
                [doc for _, _, doc in entries],
                int(now_ms),
                live=[doc for _, seen, doc in entries if int(now_ms) - int(seen) <= ALIVE_BEATS * WORKER_BEAT_S * 1000],
            ),
            workers=[_worker(i, seen, doc, now_ms) for i, seen, doc in entries],
            minutes=[m for m, _ in rolled],
            models=_models(per_model for _, per_model in rolled),
            batches=[_batch(row, now_s) for row in batches],
            failures=[_failure(r) for r in failures],
        )


def backends_named(workers: Sequence[Any]) -> list[str]:
    """The backends the workers' entries name (``fleet.lua``'s reply), each once, in order."""
    names: dict[str, None] = {}
    for _, _, entry in _triples(workers):
        found = _entry(entry).get("backends")
        if isinstance(found, dict):
            names.update(dict.fromkeys(n for n in found if isinstance(n, str)))
    return list(names)


def _triples(flat: Sequence[Any]) -> Iterable[tuple[Any, Any, Any]]:
    return zip(flat[0::3], flat[1::3], flat[2::3], strict=True)


def _fields(flat: Sequence[Any]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}


def _entry(entry: Any) -> dict[str, Any]:
    """A worker's entry (``WORKERS_KEY``), or an empty one when it is not a JSON object."""
    try:
        doc = loads(entry)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _backends(
    circuits: Sequence[Any], entries: list[dict[str, Any]], now_ms: int, live: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each backend the workers name: its circuit (fleet-wide), the calls the workers made to it
    since they started (their entries' counts, summed), and the budget the live workers used in the
    last minute, per model beside its limits."""
    found = []
    for i in range(0, len(circuits), 4):
        name = as_text(circuits[i])
        open_until, opened_at, fails = (int(float(as_text(v))) for v in circuits[i + 1 : i + 4])
        counts = [e["backends"][name] for e in entries if isinstance(e.get("backends"), dict) and name in e["backends"]]
        calls = sum(int(c.get("calls", 0)) for c in counts if isinstance(c, dict))
        errors = sum(int(c.get("errors", 0)) for c in counts if isinstance(c, dict))
        seconds = sum(float(c.get("seconds", 0)) for c in counts if isinstance(c, dict))
        found.append(
            {
                "name": name,
                "up": open_until == 0,
                "down_for_s": round((now_ms - opened_at) / 1000, 1) if open_until else None,
                "probe_in_s": round(max(0, open_until - now_ms) / 1000, 1) if open_until else None,
                "failures_in_a_row": fails,
                "calls": calls,
                "errors": errors,
                "mean_call_ms": round(seconds / calls * 1000, 1) if calls else None,
                **_budget(name, live),
            }
        )
    return sorted(found, key=lambda b: b["name"])


def _budget(name: str, live: list[dict[str, Any]]) -> dict[str, Any]:
    """A backend's budget in use: per model, the calls and tokens of the last minute (every live
    worker's) beside its RPM and TPM; ``budget_in_use``, the largest share of a limit (None: no limit)."""
    models: dict[str, list[Any]] = {}
    for entry in live:
        doc = entry["backends"].get(name) if isinstance(entry.get("backends"), dict) else None
        budget = doc.get("budget") if isinstance(doc, dict) else None
        for model, row in budget.items() if isinstance(budget, dict) else ():
            if not (isinstance(row, list) and len(row) == 4 and all(isinstance(v, int | None) for v in row)):
                continue
            summed = models.setdefault(str(model), [0, 0, row[2], row[3]])
            summed[0] += row[0] or 0
            summed[1] += row[1] or 0
    rows = [
        {"model": model, "requests": calls, "rpm": rpm, "tokens": tokens, "tpm": tpm}
        for model, (calls, tokens, rpm, tpm) in sorted(models.items())
    ]
    return {"budget": rows, "budget_in_use": budget_share({"budget": models})}


def _worker(worker_id: Any, seen_ms: Any, doc: dict[str, Any], now_ms: Any) -> dict[str, Any]:
    seen = int(seen_ms)
    return {
        "id": as_text(worker_id),
        "host": doc.get("host"),
        "pid": doc.get("pid"),
        "slots": int(doc.get("slots") or 0),
        "busy": int(doc.get("busy") or 0),
        "started_at": doc.get("started_at"),
        "queues": [q for q in doc.get("queues") or [DEFAULT_QUEUE] if isinstance(q, str)],
        "seen_at": seen / 1000,
        "alive": int(now_ms) - seen <= ALIVE_BEATS * WORKER_BEAT_S * 1000,
    }


def _minute(row: Sequence[Any]) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """A minute's roll-up, and its counts per model."""
    fields = _fields(row[1:])
    total: dict[int, int] = {}
    call: dict[int, int] = {}
    ended: dict[str, int] = {"succeeded": 0, "failed": 0, "cancelled": 0}
    per_model: dict[str, dict[str, float]] = {}
    for name, value in fields.items():
        kind, _, rest = name.partition(":")
        if kind == "s":
            ended[rest] = ended.get(rest, 0) + int(value)
        elif kind in ("t", "c") and rest.isdigit():
            (total if kind == "t" else call)[int(rest)] = int(value)
        elif kind in ("j", "i", "o", "$"):
            per_model.setdefault(rest, {})[kind] = float(value)
    return {
        "t": int(as_text(row[0])) * 60,
        **ended,
        "p50_ms": quantile_ms(total, 0.5),
        "p95_ms": quantile_ms(total, 0.95),
        "call_p50_ms": quantile_ms(call, 0.5),
        "call_p95_ms": quantile_ms(call, 0.95),
    }, per_model


def _models(minutes: Iterable[dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    summed: dict[str, dict[str, float]] = {}
    priced: set[str] = set()
    for per_model in minutes:
        for model, counts in per_model.items():
            into = summed.setdefault(model, {})
            for kind, n in counts.items():
                into[kind] = into.get(kind, 0.0) + n
            if "$" in counts:
                priced.add(model)
    order = sorted(summed, key=lambda m: (m == STATS_OTHER_MODEL, -summed[m].get("j", 0), m))
    return [
        {
            "model": model,
            "jobs": int(summed[model].get("j", 0)),
            "input_tokens": int(summed[model].get("i", 0)),
            "output_tokens": int(summed[model].get("o", 0)),
            "cost_usd": round(summed[model].get("$", 0.0), 6) if model in priced else None,
        }
        for model in order
    ]


def _batch(row: Sequence[Any], now_s: float) -> dict[str, Any]:
    fields = _fields(row[3:])
    total = int(fields.get("total", 0))
    succeeded, failed, cancelled = (max(0, int(fields.get(k, 0))) for k in ("succeeded", "failed", "cancelled"))
    running, deferred = int(row[1]), int(row[2])
    ended = succeeded + failed + cancelled
    submitted_s = int(fields.get("submitted_ms", 0)) / 1000
    last_s = int(fields["last_ms"]) / 1000 if "last_ms" in fields else None
    remaining = max(0, total - ended)
    # jobs ended per second since the batch was submitted (until now while it runs, until its last end after)
    span_s = (now_s if remaining else (last_s or now_s)) - submitted_s
    rate = ended / span_s if ended and span_s > 0 else None
    return {
        "name": as_text(row[0]),
        "submitted_at": round(submitted_s, 3),
        "total": total,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
        "running": min(running, remaining),
        "deferred": min(deferred, max(0, remaining - running)),
        "waiting": max(0, remaining - running - deferred),
        "rate_per_s": None if rate is None else round(rate, 3),
        "eta_s": round(remaining / rate, 1) if rate and remaining else (0.0 if not remaining else None),
        "cost_usd": round(float(fields["cost_usd"]), 6) if "cost_usd" in fields else None,
        "tokens": int(fields.get("tokens", 0)),
    }


def _failure(result: JobResult) -> dict[str, Any]:
    doc = result.to_doc()
    return {name: doc[name] for name in ("job_id", "model", "endpoint", "finished_at", "attempts", "error")}
