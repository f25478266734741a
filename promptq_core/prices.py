"""An optional price table: usage turned into an estimated cost (stdlib only).

``PROMPTQ_PRICES`` is JSON: per model, US dollars per million ``input`` (prompt) and ``output``
(completion) tokens, e.g. ``{"gpt-4o-mini": {"input": 0.15, "output": 0.60}}``; an embedding model
needs only ``input`` (``{"text-embedding-3-small": {"input": 0.02}}``). A model missing from the table
has no cost estimate. The CLI's ``status`` and the worker's metrics read the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from promptq_core.contract import Usage
from promptq_core.env import ConfigError, env_json_table

__all__ = ["PRICES_ENV", "Price", "cost_usd", "prices_from_env"]

PRICES_ENV = "PROMPTQ_PRICES"


@dataclass(frozen=True, slots=True)
class Price:
    input_per_million_usd: float
    output_per_million_usd: float


def prices_from_env(env: Mapping[str, str]) -> dict[str, Price]:
    parsed = env_json_table(env, PRICES_ENV, '{"gpt-4o-mini": {"input": 0.15, "output": 0.60}}')
    prices = {}
    for model, spec in parsed.items():
        if not isinstance(spec, dict) or set(spec) not in ({"input", "output"}, {"input"}):
            raise ConfigError(
                f"{PRICES_ENV}[{model!r}] must be an object with input and output, or input alone for an embedding "
                "model (USD per 1M tokens)"
            )
        for key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{PRICES_ENV}[{model!r}].{key} must be a number >= 0, got {value!r}")
        prices[model] = Price(float(spec["input"]), float(spec.get("output", 0.0)))
    return prices


def cost_usd(prices: Mapping[str, Price], model: str | None, usage: Usage | None) -> float | None:
    """The estimated cost of one result, or None without a price for its model (or without usage)."""
    price = prices.get(model or "")
    if price is None or usage is None:
        return None
    return (
        usage.prompt_tokens * price.input_per_million_usd + usage.completion_tokens * price.output_per_million_usd
    ) / 1_000_000
