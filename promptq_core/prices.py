"""An optional price table: usage turned into an estimated cost (stdlib only).

``PROMPTQ_PRICES`` is JSON: per model, US dollars per million ``input`` (prompt) and ``output``
(completion) tokens, e.g. ``{"gpt-4o-mini": {"input": 0.15, "output": 0.60}}``; an embedding model
needs only ``input`` (``{"text-embedding-3-small": {"input": 0.02}}``). ``batch`` (default 0.5) is the
share of those prices a job of the ``batch`` or ``flex`` tier pays (the provider's Batch API and flex
processing are priced at half the live rate). A model missing from the table has no cost estimate.
The CLI's ``status`` and the worker's metrics read the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from promptq_core.contract import Usage
from promptq_core.env import ConfigError, env_json_table

__all__ = ["PRICES_ENV", "Price", "cost_usd", "prices_from_env"]

PRICES_ENV = "PROMPTQ_PRICES"


DEFAULT_BATCH_FACTOR = 0.5
DISCOUNTED_TIERS = frozenset({"batch", "flex"})
"""The tiers that pay ``Price.batch_factor`` of the live price."""


@dataclass(frozen=True, slots=True)
class Price:
    input_per_million_usd: float
    output_per_million_usd: float
    batch_factor: float = DEFAULT_BATCH_FACTOR


def prices_from_env(env: Mapping[str, str]) -> dict[str, Price]:
    parsed = env_json_table(env, PRICES_ENV, '{"gpt-4o-mini": {"input": 0.15, "output": 0.60}}')
    prices = {}
    for model, spec in parsed.items():
        if not isinstance(spec, dict) or set(spec) - {"batch"} not in ({"input", "output"}, {"input"}):
            raise ConfigError(
                f"{PRICES_ENV}[{model!r}] must be an object with input and output, or input alone for an embedding "
                "model (USD per 1M tokens), and optionally batch (the share the batch tier pays, default 0.5)"
            )
        for key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{PRICES_ENV}[{model!r}].{key} must be a number >= 0, got {value!r}")
        factor = float(spec.get("batch", DEFAULT_BATCH_FACTOR))
        if factor > 1:
            raise ConfigError(f"{PRICES_ENV}[{model!r}].batch must be a share from 0 to 1, got {spec['batch']!r}")
        prices[model] = Price(float(spec["input"]), float(spec.get("output", 0.0)), factor)
    return prices


def cost_usd(prices: Mapping[str, Price], model: str | None, usage: Usage | None, tier: str = "live") -> float | None:
    """The estimated cost of one result, or None without a price for its model (or without usage);
    a ``batch`` or ``flex`` job's at the model's ``batch`` share."""
    price = prices.get(model or "")
    if price is None or usage is None:
        return None
    live = usage.prompt_tokens * price.input_per_million_usd + usage.completion_tokens * price.output_per_million_usd
    return live * (price.batch_factor if tier in DISCOUNTED_TIERS else 1.0) / 1_000_000
