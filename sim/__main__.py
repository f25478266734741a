"""Run the simulator: ``python -m sim [--port 8000] [--latency-ms 50] [--reply demo] ...``.

Prints ``listening on http://HOST:PORT`` once it accepts connections (with ``--port 0`` the port
is chosen free), then serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal

from sim.behaviour import SimConfig
from sim.server import Simulator


def parse_args(argv: list[str] | None = None) -> tuple[str, int, SimConfig]:
    parser = argparse.ArgumentParser(prog="python -m sim", description="OpenAI-compatible simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    defaults = SimConfig()
    for f in dataclasses.fields(SimConfig):
        flag = "--" + f.name.replace("_", "-")
        doc = f"default: {getattr(defaults, f.name)}"
        if f.name == "error_statuses":
            parser.add_argument(flag, type=lambda v: [int(x) for x in v.split(",")], help=f"comma-separated; {doc}")
        elif f.name == "batch_expire":
            parser.add_argument(flag, action="store_true", default=None, help="batches end expired")
        elif f.name in {"reply", "require_api_key", "error_code", "outage"}:
            parser.add_argument(flag, type=str, help=doc)
        elif f.name in {"rpm", "rpm_burst", "tpm", "tpm_burst", "retry_after_ms", "seed", "break_streams"}:
            parser.add_argument(flag, type=int, help=doc)
        else:
            parser.add_argument(flag, type=float, help=doc)
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    config = SimConfig()
    config.update({k: v for k, v in args.items() if v is not None})
    return host, port, config


async def main(argv: list[str] | None = None) -> None:
    host, port, config = parse_args(argv)
    sim = Simulator(config)
    port = await sim.start(host, port)
    print(f"listening on http://{host}:{port}", flush=True)
    sim.outage_changed()  # an outage given on the command line
    print(f"settings: {json.dumps(dataclasses.asdict(config))}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(sim.serve_forever())
    await stop.wait()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await sim.close()


if __name__ == "__main__":
    asyncio.run(main())
