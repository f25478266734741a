"""A Redis that wants credentials: a password (requirepass) and an ACL user, for both sides."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import ROOT, RedisServer, Simulator, Worker
from producer import QueueUnavailableError, SyncProducer

pytestmark = pytest.mark.process

PASSWORD = "s3cret-default"
APP_PASSWORD = "app-pass-42"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    acl_user = ["--user", "app", "on", f">{APP_PASSWORD}", "~*", "&*", "+@all"]
    with RedisServer("--requirepass", PASSWORD, *acl_user) as server:
        yield server


def _url(server: RedisServer, credentials: str) -> str:
    return f"redis://{credentials}127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("credentials", [f":{PASSWORD}@", f"app:{APP_PASSWORD}@"])
def test_producer_and_worker_work_with_credentials(locked_redis: RedisServer, sim: Simulator, credentials: str) -> None:
    url = _url(locked_redis, credentials)
    env = {"REDIS_URL": url, "OPENAI_BASE_URL": sim.base_url, "PROMPTQ_POLL_DELAY_S": "0.02"}
    with Worker(env) as worker, SyncProducer(url) as producer:
        result = producer.wait(producer.submit("with a password"), timeout=20)
    assert result.ok
    assert APP_PASSWORD not in worker.output() and PASSWORD not in worker.output()


@pytest.mark.parametrize("credentials", ["", "app:wrong@"])
def test_the_producer_without_the_right_credentials_says_so(locked_redis: RedisServer, credentials: str) -> None:
    with SyncProducer(_url(locked_redis, credentials)) as producer, pytest.raises(QueueUnavailableError) as caught:
        producer.submit("no entry")
    message = str(caught.value)
    assert "refused access" in message and "REDIS_URL" in message
    assert "wrong" not in message  # the password is redacted


@pytest.mark.parametrize("credentials", ["", "app:wrong@"])
def test_the_worker_without_the_right_credentials_stops_with_a_clear_message(
    locked_redis: RedisServer, sim: Simulator, credentials: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTQ_", "OPENAI_", "REDIS_URL"))}
    env |= {"REDIS_URL": _url(locked_redis, credentials), "OPENAI_BASE_URL": sim.base_url}
    arq = str(Path(sys.executable).with_name("arq"))
    done = subprocess.run([arq, "worker.Settings"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "REDIS_URL" in done.stderr and "refused access" in done.stderr
    assert "Traceback" not in done.stderr and "wrong" not in done.stderr
