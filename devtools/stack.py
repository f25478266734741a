"""Local processes for the demo, the tests and the benchmarks: Redis, the simulator, arq workers.

Each is a context manager that stops what it started. Nothing here is imported by the product.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.request import Request, urlopen

import redis

from promptq_core.connect import sync_client
from sim.behaviour import SimConfig

ROOT = Path(__file__).resolve().parent.parent
NO_REDIS_HELP = (
    "no Redis answers at {url} and the redis-server binary is not installed.\n"
    "Install one (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis), or start one in "
    "Docker with `docker compose up -d redis`, or point REDIS_URL at a running server."
)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(*ports: int) -> bool:
    try:
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_port(span: int = 0) -> int:
    """A free port below the range the kernel picks outgoing connections' ports from.

    A server of the tests that lets go of its port for a while (the simulator's ``refuse`` outage, a
    Redis killed and started again) must find it free again: a port from the ephemeral range may by
    then be the local end of some client's connection (or of a connection to itself). With ``span``,
    ``port + span`` is free and below that range too (a cluster node's bus port)."""
    low = _ephemeral_low()
    first = 10_000
    for _ in range(1000):
        port = first + int.from_bytes(os.urandom(2), "big") % max(1, low - span - first)
        if _bindable(port, *((port + span,) if span else ())):
            return port
    raise RuntimeError("no free port below the ephemeral range")


CLUSTER_BUS_OFFSET = 10_000
"""A cluster node also listens on its port plus this (the cluster bus)."""


def cluster_port() -> int:
    """A free port whose cluster bus port is free too (both outside the ephemeral range)."""
    return free_port(span=CLUSTER_BUS_OFFSET)


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """A Redis (or a Sentinel's primary, or a Cluster) answers at ``url``."""
    client = None
    try:
        client = sync_client(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)  # (a Cluster: connects)
        return bool(client.ping())
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
        return False
    finally:
        if client is not None:
            client.close()


def wait_until(check: object, timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s")


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None, log_path: Path | None = None) -> None:
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="promptq-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _await_output(self, marker: str, what: str, timeout_s: float = 20) -> Self:
        """Wait until ``marker`` appears in the output; raise with the output if the process exits first."""
        wait_until(lambda: marker in self.output() or not self.alive(), timeout_s, what)
        if not self.alive():
            raise RuntimeError(f"{what} exited at start:\n{self.output()}")
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait()
        if self._log:
            self._log.close()
        return self.popen.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class RedisServer(Proc):
    """A throw-away ``redis-server`` on a free port (no persistence unless asked)."""

    def __init__(self, *extra_args: str, port: int | None = None, data_dir: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="promptq-redis-"))
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        argv += ["--save", "", "--appendonly", "no", *extra_args]
        super().__init__(argv, log_path=self.data_dir / "redis.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        super().start()
        wait_until(self._answers, 10, "redis-server")
        return self

    def info_link_up(self) -> bool:
        """A replica: its link to the primary is up (it has the data)."""
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            info: dict[str, Any] = client.info("replication")  # type: ignore[assignment]
            return info.get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _answers(self) -> bool:
        """Any reply to PING counts (``-NOAUTH`` too, for a server with a password)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


class SentinelSet:
    """A primary, its replicas (one unless told) and three Sentinels watching them (``redis-server
    --sentinel``), each a throw-away server on a free port; ``url`` is the ``redis+sentinel://`` URL
    promptq takes."""

    def __init__(
        self, service: str = "promptq", *extra_args: str, replicas: int = 1, down_after_ms: int = 1000
    ) -> None:
        self.service, self.extra_args, self.down_after_ms = service, extra_args, down_after_ms
        self.replicas = replicas
        self.servers: list[RedisServer] = []
        self.sentinels: list[Proc] = []
        self.sentinel_ports = [free_port() for _ in range(3)]
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{service}"

    def start(self) -> Self:
        primary = RedisServer(*self.extra_args).start()
        self.servers = [primary] + [
            RedisServer("--replicaof", "127.0.0.1", str(primary.port), *self.extra_args).start()
            for _ in range(self.replicas)
        ]
        binary = shutil.which("redis-server")
        assert binary is not None
        for port in self.sentinel_ports:
            folder = Path(tempfile.mkdtemp(prefix="promptq-sentinel-"))
            (folder / "sentinel.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 3000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self.sentinels.append(
                Proc([binary, str(folder / "sentinel.conf"), "--sentinel"], log_path=folder / "sentinel.log").start()
            )
        wait_until(self._watching, 20, "sentinels watching the primary and its replica")
        return self

    def _watching(self) -> bool:
        for port in self.sentinel_ports:
            try:
                client = redis.Redis(port=port, socket_timeout=0.5)
                ready = len(client.sentinel_slaves(self.service)) >= self.replicas  # type: ignore[no-untyped-call]
                ready = ready and len(client.sentinel_sentinels(self.service)) >= 2  # type: ignore[no-untyped-call]
                client.close()
            except redis.RedisError:
                return False
            if not ready:
                return False
        return all(replica.info_link_up() for replica in self.servers[1:])

    def primary_port(self) -> int:
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            _host, port = client.sentinel_get_master_addr_by_name(self.service)  # type: ignore[no-untyped-call]
            return int(port)
        finally:
            client.close()

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.servers]:
            proc.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class ClusterSet:
    """A Redis Cluster of throw-away servers (``redis-server --cluster-enabled yes``): three primaries
    with a replica each unless told, made with ``redis-cli --cluster create``; ``url`` is the
    ``redis+cluster://`` URL promptq takes. ``start`` returns once every node agrees on the map and
    every replica is in sync: a failover before then could lose writes."""

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.primaries, self.replicas, self.node_timeout_ms = primaries, replicas, node_timeout_ms
        self.servers: list[RedisServer] = []
        self.url = ""

    def start(self) -> Self:
        for _ in range(self.primaries * (1 + self.replicas)):
            port = cluster_port()
            server = RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                port=port,
            )
            self.servers.append(server.start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._settled, 60, "the cluster's nodes agreeing, every replica in sync")
        self.url = "redis+cluster://" + ",".join(nodes[:2])
        return self

    def _settled(self) -> bool:
        views = set()
        for server in self.servers:
            client = redis.Redis(port=server.port, socket_timeout=0.5)
            try:
                info: Any = _command(client, "CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                views.add(tuple(sorted(self._primaries_seen(client))))
                role: Any = client.info("replication")
                if role.get("role") == "slave" and role.get("master_link_status") != "up":
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return len(views) == 1 and len(next(iter(views))) == self.primaries

    @staticmethod
    def _primaries_seen(client: redis.Redis) -> list[str]:
        raw: Any = _command(client, "CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return [line.split()[1] for line in text.splitlines() if "master" in line.split()[2] and "fail" not in line]

    def primaries_now(self) -> list[RedisServer]:
        """The servers that are primaries now (after a failover, the promoted replicas)."""
        found = []
        for server in self.servers:
            client = redis.Redis(port=server.port, socket_timeout=0.5)
            try:
                role: Any = client.info("replication")
                if role.get("role") == "master":
                    found.append(server)
            except redis.RedisError:
                continue
            finally:
                client.close()
        return found

    def node_of(self, key: str) -> RedisServer:
        """The primary serving the slot of ``key`` now."""
        for server in self.primaries_now():
            client = redis.Redis(port=server.port, socket_timeout=0.5)
            try:
                slot = int(_command(client, "CLUSTER", "KEYSLOT", key))
                raw: Any = _command(client, "CLUSTER", "NODES")
            finally:
                client.close()
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            for line in text.splitlines():
                fields = line.split()
                if "myself" in fields[2] and "master" in fields[2]:
                    for span in fields[8:]:
                        low, _, high = span.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return server
        raise LookupError(f"no primary serves the slot of {key!r}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class Simulator(Proc):
    """``python -m sim`` on a free port; ``base_url`` is what OPENAI_BASE_URL takes."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        super().__init__([sys.executable, "-m", "sim", "--port", str(self.port), *args])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Self:
        super().start()
        wait_until(lambda: "listening on" in self.output(), 10, "simulator")
        return self

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        with urlopen(request, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change knobs (see ``sim.behaviour.SimConfig``); the others keep their value."""
        return self._call("POST", "/_sim/config", settings)

    def reset(self) -> None:
        """Every knob back to its default, counters to zero."""
        self.configure(**dataclasses.asdict(SimConfig()))
        self._call("POST", "/_sim/reset", {})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def hooks(self) -> list[dict[str, Any]]:
        """The webhook deliveries received at ``/_sim/hooks/...``: ``path``, ``headers``, ``body``, ``answered``."""
        hooks: list[dict[str, Any]] = self._call("GET", "/_sim/hooks")["hooks"]
        return hooks

    def calls(self) -> list[dict[str, Any]]:
        """Every completion request since the last reset: ``t`` (Unix s), ``prompt``, ``status`` (0: none)."""
        calls: list[dict[str, Any]] = self._call("GET", "/_sim/calls")["calls"]
        return calls


class Worker(Proc):
    """``arq worker.Settings`` with the given environment; ready once it logs ``worker.started``."""

    def __init__(self, env: Mapping[str, str], log_path: Path | None = None) -> None:
        arq = str(Path(sys.executable).with_name("arq"))
        super().__init__([arq, "worker.Settings"], env={"PROMPTQ_LOG_FORMAT": "json", **env}, log_path=log_path)

    def start(self) -> Self:
        return super().start()._await_output("worker.started", "worker")


class Api(Proc):
    """``uvicorn producer.http:app`` on a free port, with the given environment."""

    def __init__(self, env: Mapping[str, str], host: str = "127.0.0.1") -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "producer.http:app", "--host", host, "--port", str(self.port)]
        super().__init__(argv, env=env)
        self.url = f"http://{host}:{self.port}"

    def start(self) -> Self:
        # (uvicorn says "Application startup complete" before it listens, "Uvicorn running on" after)
        return super().start()._await_output("Uvicorn running on", "the API")


@contextlib.contextmanager
def redis_url_for(url: str) -> Iterator[str]:
    """``url`` when a Redis answers there; else a local ``redis-server`` started for the duration."""
    if redis_answers(url):
        yield url
        return
    if shutil.which("redis-server") is None:
        raise SystemExit(NO_REDIS_HELP.format(url=url))
    with RedisServer() as server:
        yield server.url


def _command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (redis-py leaves ``execute_command`` untyped)."""
    run: Any = client.execute_command
    return run(*args)
