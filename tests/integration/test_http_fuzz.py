"""The HTTP API under a property-based fuzzer (schemathesis), from the OpenAPI schema the app publishes,
against a real uvicorn process, a real worker and Redis: no 5xx, every answer's status and body in
the schema, bad data refused, the token never ignored; as the operator and as a tenant. Bounded: a
few dozen examples an operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.core.parameters import ParameterLocation

from devtools.stack import Api, Simulator, Worker
from producer import ProducerConfig, SyncProducer
from tests.conftest import worker_env

pytestmark = pytest.mark.process

TOKEN = "fuzz-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 75
NOT_CHECKED = [checks.positive_data_acceptance]
"""A job the schema allows may still be refused (422): the schema cannot say "prompt or messages,
not both", nor which roles and parameters a message takes; the producer's own checks do."""


@pytest.fixture(scope="module")
def fuzzed(redis_server_url: str, sim_process: Simulator) -> Iterator[Api]:
    env = {"REDIS_URL": redis_server_url, "PROMPTQ_API_TOKEN": TOKEN, "PROMPTQ_SSE_KEEPALIVE_S": "0.2"}
    with Worker(worker_env(redis_server_url, sim_process)), Api(env) as api:
        yield api


def operations(api: Api) -> list[Any]:
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    return [cast(Any, result).ok() for result in schema.get_all_operations()]


@pytest.fixture(scope="module")
def tenant_key(redis_server_url: str) -> str:
    with SyncProducer(config=ProducerConfig(redis_url=redis_server_url)) as producer:
        _, key = producer.create_key("fuzzer", max_priority=3, max_in_flight=5)
    return key


@pytest.mark.parametrize("who", ["operator", "tenant"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_http_api_keeps_to_its_published_schema(
    fuzzed: Api, tenant_key: str, mode: GenerationMode, who: str
) -> None:
    headers = AUTH if who == "operator" else {"Authorization": f"Bearer {tenant_key}"}
    examples = EXAMPLES if who == "operator" else EXAMPLES // 3
    checked = []
    for operation in operations(fuzzed):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def holds(case: Any) -> None:
            # A request made bad in its headers (its Authorization missing or malformed) is sent as
            # made: ours in their place would make it a good one.
            sent = {} if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER) else headers
            case.call_and_validate(base_url=fuzzed.url, headers=sent, timeout=10, excluded_checks=NOT_CHECKED)

        try:
            holds()
        except Unsatisfiable:  # nothing to get wrong (no parameter, no body): only in negative mode
            assert mode == GenerationMode.NEGATIVE
            continue
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 4, checked
