"""promptq's worker: run it with ``arq worker.Settings``.

``import worker`` is cheap; ``worker.Settings`` reads and checks the environment when first used,
and stops with a message naming the bad variable when the configuration is wrong.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings"]


def __getattr__(name: str) -> Any:
    if name != "Settings":
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    from worker.config import ConfigError
    from worker.settings import make_settings

    try:
        settings = make_settings()
    except ConfigError as e:
        raise SystemExit(f"promptq worker: configuration error: {e}") from None
    globals()["Settings"] = settings
    return settings
