"""``promptq``: batches and single jobs from the command line.

    promptq submit FILE.jsonl [--batch NAME] [--strict] [--priority N] [--fairness-key KEY]
                                                          enqueue a file (again: enqueues only what is new)
    promptq wait BATCH [--timeout S]                      progress until every job has ended
    promptq collect BATCH -o out.jsonl                    wait, then write the Batch API's output format
    promptq status [BATCH]                                queue depth, in flight, failed / a batch's counts
    promptq result ID | cancel ID | retry-failed BATCH
    promptq keys create --tenant NAME [policy] | keys list | keys revoke KEY_ID | keys update --tenant NAME [policy]
                                                          tenants' API keys (the key is printed once)

``--json`` prints one JSON object instead of text. Exit codes: 0 done (every job succeeded), 1 an
error (bad arguments, Redis unavailable, unknown batch or job), 2 some jobs failed or were cancelled
(or, for ``submit``, some lines were bad), 3 ``--timeout`` passed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from producer.cli.batch import (
    SWEEP_MAX,
    Progress,
    Tracker,
    manifest_items,
    output_line,
    parse_jsonl,
    valid_batch_name,
)
from producer.errors import QueueUnavailableError, redis_errors
from producer.sync_client import SyncProducer
from producer.types import ProducerConfig, QueueDepths
from producer.writes import Writes
from promptq_core import tracing
from promptq_core.env import ConfigError
from promptq_core.prices import prices_from_env
from promptq_core.tenants import PERIODS, Policy, check_tenant
from promptq_core.validation import (
    TIERS,
    InvalidJobError,
    check_fairness_key,
    check_priority,
    check_queue,
    escaped,
)

__all__ = ["main"]

OK, ERROR, SOME_FAILED, TIMED_OUT = 0, 1, 2, 3
COLLECT_CHUNK = 1_000
"""Documents ``collect`` reads and writes out at a time."""
PLAIN_REPORT_EVERY_S = 5.0
BAR_WIDTH = 24


class Cli:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args, self.out, self.err = args, out, err
        config = ProducerConfig.from_env()
        if args.redis_url:
            config = config.with_url(args.redis_url)
        if args.queue:
            config = dataclasses.replace(config, queue=args.queue)
        self.producer = SyncProducer(config=config)
        self.prices = prices_from_env(os.environ)

    def emit(self, text: str, data: dict[str, Any]) -> None:
        print(json.dumps(data) if self.args.json else text, file=self.out, flush=True)

    # -- commands ---------------------------------------------------------------------------------
    def submit(self) -> int:
        path = Path(self.args.file)
        name = self.args.batch or valid_batch_name("".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem))
        with path.open(encoding="utf-8") as lines:
            batch = parse_jsonl(
                lines,
                name,
                Writes(self.producer.config),
                priority=self.args.priority,
                fairness_key=self.args.fairness_key,
                tier=self.args.tier,
                webhook_url=self.args.webhook_url,
            )
        for bad in batch.bad:
            print(f"{path}:{bad.line_no}: {bad.message}", file=self.err)
        if batch.bad and self.args.strict:
            print(f"refused: {len(batch.bad)} bad line(s) and --strict; nothing was submitted", file=self.err)
            return ERROR
        known = self.producer.known([a["job_id"] for _, a in batch.items])
        self.producer.open_batch(batch.name, len(batch.items))  # counted from its first job's end
        self.producer.submit_many([a for _, a in batch.items])
        self.producer.save_manifest(batch.name, batch.manifest(time.time()))
        new = len(batch.items) - known
        self.emit(
            f"batch {name}: {len(batch.items)} job(s), {new} new, {known} already submitted, "
            f"{len(batch.bad)} bad line(s)",
            {"batch": name, "jobs": len(batch.items), "new": new, "already": known, "bad_lines": len(batch.bad)},
        )
        return SOME_FAILED if batch.bad else OK

    def wait(self) -> int:
        progress = self._wait_for(self.args.batch, self._job_ids(self.args.batch))
        if progress is None:
            return TIMED_OUT
        self.emit(_summary(self.args.batch, progress), {"batch": self.args.batch, **progress.to_json()})
        return OK if progress.by_status.get("succeeded", 0) == progress.total else SOME_FAILED

    def collect(self) -> int:
        items = self._items(self.args.batch)
        job_ids = [j for _, j in items]
        progress = self._wait_for(self.args.batch, job_ids)
        if progress is None:
            return TIMED_OUT
        target = Path(self.args.output)
        with target.open("w", encoding="utf-8") as out:  # a chunk of documents at a time, none kept
            for start in range(0, len(items), COLLECT_CHUNK):
                chunk = items[start : start + COLLECT_CHUNK]
                results = self.producer.get_many([j for _, j in chunk])
                out.writelines(output_line(c, r) + "\n" for (c, _), r in zip(chunk, results, strict=True))
        self.emit(
            f"{_summary(self.args.batch, progress)}; wrote {len(items)} line(s) to {target}",
            {"batch": self.args.batch, "output": str(target), **progress.to_json()},
        )
        return OK if progress.by_status.get("succeeded", 0) == progress.total else SOME_FAILED

    def status(self) -> int:
        if self.args.batch:
            counts = self.producer.batch_counts(self.args.batch)  # one read; else every document, in chunks
            total = int(counts.get("total", 0)) if counts else 0
            progress = Progress.of_tally(counts, total) if counts and total else self._progress(self.args.batch)
            self.emit(_summary(self.args.batch, progress), {"batch": self.args.batch, **progress.to_json()})
            return OK
        depths = self.producer.depths()
        overview = self.producer.overview()
        waiting = overview.queue["totals"]["waiting_for_backend"]
        batch_tier = self.producer.provider_batches()
        lines = _queue_lines(depths) + _backend_lines(overview.backends, waiting) + _batch_tier_lines(batch_tier)
        data = {**depths.to_json(), "backends": overview.backends, "waiting_for_backend": waiting, **batch_tier}
        self.emit(lines, data)
        return OK

    def result(self) -> int:
        result = self.producer.get(self.args.id)
        if result is None:
            print(f"no job {self.args.id!r} (never submitted, or its result expired)", file=self.err)
            return ERROR
        print(result.to_json(), file=self.out)
        return SOME_FAILED if result.done and not result.ok else OK

    def cancel(self) -> int:
        outcome = self.producer.cancel(self.args.id)
        doc = outcome.result.to_doc() if outcome.result else None
        self.emit(outcome.message, {"job_id": self.args.id, "cancelled": outcome.cancelled, "result": doc})
        return OK if outcome.cancelled or outcome.result is not None else ERROR

    def retry_failed(self) -> int:
        job_ids = self._job_ids(self.args.batch)
        failed = [r.job_id for r in self.producer.get_many(job_ids) if r and r.status == "failed"]
        for job_id in failed:
            self.producer.retry(job_id)
        self.emit(f"batch {self.args.batch}: {len(failed)} failed job(s) queued again", {"retried": len(failed)})
        return OK

    def keys(self) -> int:
        action = self.args.action
        if action == "list":
            policies, entries = self.producer.tenants()
            spent = {name: self.producer.spent(name) for name in policies}
            lines = [
                f"tenant {name}: {_policy_text(p)}; spent ${spent[name]['day']:.4f} today, "
                f"${spent[name]['month']:.4f} this month"
                for name, p in sorted(policies.items())
            ]
            for e in entries:
                made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.created_at))
                lines.append(f"key {e.id}: tenant {e.tenant}, made {made} UTC")
            data = {
                "tenants": {n: {**p.to_doc(), "spent": spent[n]} for n, p in policies.items()},
                "keys": [dataclasses.asdict(e) for e in entries],
            }
            self.emit("\n".join(lines) or "no tenants", data)
            return OK
        if action == "revoke":
            gone = self.producer.revoke_key(self.args.key_id)
            self.emit(f"key {self.args.key_id}: {'revoked' if gone else 'no such key'}", {"revoked": gone})
            return OK if gone else ERROR
        changes = {name: getattr(self.args, name) for name in POLICY_FIELDS}
        if action == "update":
            policy = self.producer.update_tenant(self.args.tenant, **changes)
            self.emit(f"tenant {policy.tenant}: {_policy_text(policy)}", policy.to_doc())
            return OK
        key_id, key = self.producer.create_key(self.args.tenant, **changes)
        self.emit(
            f"key {key_id} for tenant {self.args.tenant} (shown this once; Redis keeps only its hash):\n{key}",
            {"id": key_id, "tenant": self.args.tenant, "key": key},
        )
        return OK

    # -- helpers ----------------------------------------------------------------------------------
    def _job_ids(self, name: str) -> list[str]:
        return [job_id for _, job_id in self._items(name)]

    def _items(self, name: str) -> list[tuple[str, str]]:
        return manifest_items(self.producer.manifest(name), name)

    def _progress(self, name: str) -> Progress:
        tracker = Tracker(self._job_ids(name), self.prices)
        pending = len(tracker.pending)
        for _ in range(0, pending, SWEEP_MAX):
            tracker.sweep(self.producer.get_many)
        return tracker.progress()

    def _now(self, name: str, tracker: Tracker) -> Progress:
        """The batch's progress: its tally's counts while jobs are pending (one read), the documents'
        once all have ended."""
        counts = None if tracker.done else self.producer.batch_counts(name)
        return Progress.of_tally(counts, tracker.ended.total) if counts else tracker.progress()

    def _wait_for(self, name: str, job_ids: list[str]) -> Progress | None:
        """Report progress until every job of the batch has ended (each document read while its job
        is pending, a sweep of them per poll, then once more); None if ``--timeout`` passed."""
        tty = self.err.isatty() and not self.args.json
        tracker = Tracker(job_ids, self.prices)
        tracker.sweep(self.producer.get_many)
        first = progress = self._now(name, tracker)
        last_report = 0.0
        while True:
            elapsed_s = progress.at_s - first.at_s
            rate = (progress.finished - first.finished) / elapsed_s if elapsed_s > 0 else 0.0
            if tty:
                print("\r" + _bar(progress, rate), end="", file=self.err, flush=True)
            elif tracker.done or time.monotonic() - last_report >= PLAIN_REPORT_EVERY_S:
                print(_line(name, progress, rate), file=self.err, flush=True)
                last_report = time.monotonic()
            if tracker.done:
                if tty:
                    print(file=self.err)
                return progress
            if self.args.timeout is not None and elapsed_s > self.args.timeout:
                if tty:
                    print(file=self.err)
                print(f"timed out after {self.args.timeout:g} s: {progress.finished}/{progress.total}", file=self.err)
                return None
            time.sleep(0.2 if tty else 0.5)
            for _ in range(0, len(tracker.pending) if progress.done else 1, SWEEP_MAX):  # all, once the tally says so
                tracker.sweep(self.producer.get_many)
            progress = self._now(name, tracker)


def _eta(progress: Progress, rate: float) -> str:
    left = progress.total - progress.finished
    return f"{left / rate:.0f} s" if rate > 0 and left else ("0 s" if not left else "?")


def _bar(p: Progress, rate: float) -> str:
    filled = round(BAR_WIDTH * p.finished / p.total) if p.total else BAR_WIDTH
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    return (
        f"[{bar}] {p.finished}/{p.total} · {p.by_status.get('failed', 0)} failed · {rate:.1f} jobs/s · "
        f"{p.tokens:,} tokens · ETA {_eta(p, rate)}  "
    )


def _line(name: str, p: Progress, rate: float) -> str:
    return (
        f"batch={name} done={p.finished}/{p.total} failed={p.by_status.get('failed', 0)} "
        f"rate={rate:.1f}/s tokens={p.tokens} eta={_eta(p, rate)}"
    )


STATUS_KEYS_SHOWN = 10


def _batch_tier_lines(batch_tier: dict[str, list[dict[str, Any]]]) -> str:
    """The Batch tier's collections and provider batches, one line each."""
    now = time.time()
    lines = [
        f"batch tier: {c['jobs']} job(s) of {c['model']} ({c['endpoint']}) waiting to be sent to {c['backend']}"
        for c in batch_tier["collecting"]
    ]
    for b in batch_tier["provider_batches"]:
        counts = b["counts"] or {}
        age = f", {_ago(now - b['sealed_at'])} old" if b["sealed_at"] else ""
        done = f", {counts.get('completed', 0)} answered, {counts.get('failed', 0)} failed" if counts else ""
        status = f" ({b['status']})" if b["status"] else ""
        lines.append(
            f"provider batch {b['id']} {b['provider_batch'] or '-'}: {b['step']}{status}, "
            f"{b['lines']} line(s) of {b['model']}{done}{age}"
        )
    return "".join("\n" + line for line in lines)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _queue_lines(d: QueueDepths) -> str:
    """The queue as ``promptq status`` shows it: totals, then each priority with its busiest keys."""
    lines = [
        f"queue {d.queue}: {d.waiting} waiting, {d.running} in flight, {d.deferred} deferred; "
        f"{d.failed} failed job(s) kept"
    ]
    for priority, keys in sorted(d.ready.items()):
        busiest = sorted(keys.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{escaped(key)} {n}" for key, n in busiest[:STATUS_KEYS_SHOWN])
        more = f", and {len(busiest) - STATUS_KEYS_SHOWN} more key(s)" if len(busiest) > STATUS_KEYS_SHOWN else ""
        lines.append(f"  priority {priority}: {sum(keys.values())} waiting ({shown}{more})")
    return "\n".join(lines)


def _backend_lines(backends: list[dict[str, Any]], waiting: int) -> str:
    """The backends the workers name, as ``promptq status`` shows them."""
    if not backends:
        return ""
    rows = []
    for b in backends:
        probe = f"probe in {b['probe_in_s']:g} s" if b["probe_in_s"] else "probe due"
        health = "up" if b["up"] else f"DOWN for {b['down_for_s']:g} s ({probe})"
        mean = f", {b['mean_call_ms']:g} ms a call" if b.get("mean_call_ms") is not None else ""
        share = b.get("budget_in_use")
        budget = f"; {share:.0%} of its budget in use" if share is not None else ""
        counts = f"{b['calls']} call(s), {b['errors']} error(s){mean} since the workers started"
        rows.append(f"  {b['name']}: {health}; {counts}{budget}")
    note = f"; {waiting} job(s) waiting for one" if waiting else ""
    return "\nbackends" + note + ":\n" + "\n".join(rows)


POLICY_FIELDS = ("max_priority", "rpm", "tpm", "max_in_flight", "budget_usd", "budget_period", "queues", "models")


def _policy_text(policy: Policy) -> str:
    parts = [f"priority {policy.max_priority} to 9"]
    parts += [f"{name} {value}" for name in ("rpm", "tpm") if (value := getattr(policy, name)) is not None]
    if policy.max_in_flight is not None:
        parts.append(f"{policy.max_in_flight} in flight")
    if policy.budget_usd is not None:
        parts.append(f"${policy.budget_usd:g} a {policy.budget_period}")
    parts += [f"{name} {', '.join(value)}" for name in ("queues", "models") if (value := getattr(policy, name))]
    return "; ".join(parts)


def _summary(name: str, p: Progress) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(p.by_status.items()))
    cost = "" if p.cost_usd is None else f", about ${p.cost_usd:.4f}"
    return f"batch {name}: {p.total} job(s): {counts or 'none'}; {p.tokens:,} tokens{cost}"


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argument type from one of the core's checks: its ``InvalidJobError`` is argparse's error."""

    def argument(raw: str) -> str:
        try:
            return check(raw)
        except InvalidJobError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return argument


_queue = _checked(check_queue)
_fairness_key = _checked(check_fairness_key)
_tenant = _checked(check_tenant)


def _priority(raw: str) -> int:
    try:
        return check_priority(int(raw))
    except (ValueError, InvalidJobError):
        raise argparse.ArgumentTypeError(f"must be an integer from 0 (runs first) to 9 (last), got {raw!r}") from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="promptq", description="Batches and jobs of promptq, over Redis (REDIS_URL).")
    top.add_argument("--redis-url", help="default: REDIS_URL, else redis://localhost:6379/0")
    top.add_argument("--json", action="store_true", help="print one JSON object")
    queue = argparse.ArgumentParser(add_help=False)  # every command takes --queue, before or after its name
    queue.add_argument(
        "--queue", type=_queue, default=argparse.SUPPRESS, help="the named queue (default: PROMPTQ_QUEUE, else default)"
    )
    top.add_argument("--queue", type=_queue, default=None, help=argparse.SUPPRESS)
    sub = top.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[queue])
    submit = add("submit", help="enqueue a JSONL file (Batch API input format, or prompt/messages lines)")
    submit.add_argument("file")
    submit.add_argument("--batch", type=valid_batch_name, help="the batch's name (default: the file's name)")
    submit.add_argument("--strict", action="store_true", help="refuse the whole file if any line is bad")
    submit.add_argument(
        "--priority", type=_priority, help="0 (runs first) to 9 (last) for lines without their own (default 5)"
    )
    submit.add_argument(
        "--tier",
        choices=TIERS,
        help="live (default), flex or batch (the provider's Batch API, where a backend offers it) "
        "for lines without their own",
    )
    submit.add_argument(
        "--webhook-url",
        help="POST each job's result document there, signed, when it ends (lines may name their own)",
    )
    submit.add_argument(
        "--fairness-key",
        type=_fairness_key,
        help="the key lines without their own share the workers under (default: the batch's name)",
    )
    for name, text in (("wait", "show progress until every job ended"), ("collect", "wait, then write the output")):
        cmd = add(name, help=text)
        cmd.add_argument("batch", type=valid_batch_name)
        cmd.add_argument("--timeout", type=float, help="give up after this many seconds (exit 3)")
        if name == "collect":
            cmd.add_argument("-o", "--output", required=True, help="the JSONL file to write (Batch API output)")
    add("status", help="the queue, or one batch").add_argument("batch", nargs="?", type=valid_batch_name)
    add("result", help="a job's result document (JSON)").add_argument("id")
    add("cancel", help="cancel a queued or running job").add_argument("id")
    add("retry-failed", help="queue a batch's failed jobs again").add_argument("batch", type=valid_batch_name)
    keys = add("keys", help="tenants' API keys for the HTTP API").add_subparsers(dest="action", required=True)
    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument("--tenant", required=True, type=_tenant, help="the tenant (a-z 0-9 _ -, up to 32)")
    policy.add_argument("--max-priority", type=_priority, help="the most urgent priority its jobs may ask for")
    for flag, text in (("--rpm", "calls a minute"), ("--tpm", "tokens a minute"), ("--max-in-flight", "calls at once")):
        policy.add_argument(flag, type=_positive, help=f"{text} its jobs may take, fleet-wide")
    policy.add_argument("--budget-usd", type=float, help="spend per period (PROMPTQ_PRICES), from finished jobs")
    policy.add_argument("--budget-period", choices=PERIODS, help="day or month (default month)")
    policy.add_argument("--queues", type=_names, help="the queues it may use, comma-separated (default: any)")
    policy.add_argument("--models", type=_names, help="the models it may ask for, comma-separated (default: any)")
    keys.add_parser("create", parents=[policy], help="a new key (printed once), and the tenant's policy")
    keys.add_parser("update", parents=[policy], help="change a tenant's policy")
    keys.add_parser("list", help="tenants and their keys' ids (never the keys)")
    keys.add_parser("revoke", help="forget a key (refused from the next request on)").add_argument("key_id")
    return top


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw[:20]!r}")
    return int(raw)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = parser().parse_args(argv)
    try:
        tracing.setup("promptq-cli")
        cli = Cli(args, out, err)
        # traced (traces on): a span for the command, in the trace a TRACEPARENT variable names
        parent = {k: os.environ[k.upper()] for k in tracing.TRACE_FIELDS if os.environ.get(k.upper())}
        with (
            tracing.span(f"promptq {args.command}", carrier=parent if "traceparent" in parent else None),
            cli.producer,
            redis_errors(cli.producer.config.redis_url),
        ):
            command = getattr(cli, args.command.replace("-", "_"))
            code: int = command()
            return code
    except (ConfigError, QueueUnavailableError, LookupError, OSError, ValueError) as e:
        print(f"promptq {args.command}: {e}", file=err)
        return ERROR
    except KeyboardInterrupt:
        print(file=err)
        return 130
    finally:
        tracing.shutdown()  # the spans not yet sent go now


if __name__ == "__main__":
    sys.exit(main())
