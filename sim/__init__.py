"""promptq's OpenAI-compatible simulator: ``python -m sim --port 8000 --latency-ms 50``."""

from __future__ import annotations

from sim.behaviour import SimConfig, SimStats
from sim.server import Simulator

__all__ = ["SimConfig", "SimStats", "Simulator"]
