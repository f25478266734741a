"""Worker and producer configuration from the environment: defaults, and errors naming the variable."""

from __future__ import annotations

import pytest

from producer import ProducerConfig
from promptq_core.env import ConfigError, redact_url
from promptq_core.validation import escaped
from worker.backends import UNUSED_API_KEY
from worker.config import WorkerConfig

BASE = {"OPENAI_API_KEY": "sk-x"}


def test_defaults_work_on_a_laptop() -> None:
    c = WorkerConfig.from_env(BASE)
    assert (c.redis_url, c.model, c.max_jobs, c.max_tries) == ("redis://localhost:6379/0", "gpt-4o-mini", 16, 5)
    assert (c.request_timeout_s, c.job_timeout_s, c.result_ttl_s) == (120, 130, 86_400)
    assert c.openai_base_url is None
    assert "sk-x" not in repr(c)


def test_a_local_server_needs_no_key() -> None:
    c = WorkerConfig.from_env({"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert c.openai_api_key == UNUSED_API_KEY


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "OPENAI_API_KEY is not set"),
        ({**BASE, "PROMPTQ_MAX_JOBS": "many"}, "PROMPTQ_MAX_JOBS must be an integer, got 'many'"),
        ({**BASE, "PROMPTQ_MAX_JOBS": "0"}, "PROMPTQ_MAX_JOBS must be at least 1"),
        ({**BASE, "PROMPTQ_METRICS_HOST": "every where"}, "PROMPTQ_METRICS_HOST must be an address to listen on"),
        ({**BASE, "PROMPTQ_MAX_TRIES": "-1"}, "PROMPTQ_MAX_TRIES must be at least 1"),
        ({**BASE, "PROMPTQ_REQUEST_TIMEOUT_S": "soon"}, "PROMPTQ_REQUEST_TIMEOUT_S must be a number"),
        (
            {**BASE, "PROMPTQ_REQUEST_TIMEOUT_S": "0"},
            "PROMPTQ_REQUEST_TIMEOUT_S must be a finite number greater than 0",
        ),
        ({**BASE, "PROMPTQ_REQUEST_TIMEOUT_S": "60", "PROMPTQ_JOB_TIMEOUT_S": "30"}, "PROMPTQ_JOB_TIMEOUT_S (30)"),
        ({**BASE, "PROMPTQ_LOG_FORMAT": "xml"}, "PROMPTQ_LOG_FORMAT must be one of auto, json, console"),
        ({**BASE, "PROMPTQ_LOG_LEVEL": "loud"}, "PROMPTQ_LOG_LEVEL must be one of"),
        ({**BASE, "REDIS_URL": "http://x"}, "REDIS_URL must start with redis://"),
        ({**BASE, "OPENAI_BASE_URL": "localhost:8000"}, "OPENAI_BASE_URL must be an http"),
        ({**BASE, "PROMPTQ_RESULT_TTL_S": "1.5"}, "PROMPTQ_RESULT_TTL_S must be an integer"),
        ({**BASE, "PROMPTQ_LEASE_S": "0.5"}, "PROMPTQ_LEASE_S must be a finite number at least 1"),
        ({**BASE, "PROMPTQ_SHUTDOWN_GRACE_S": "-1"}, "PROMPTQ_SHUTDOWN_GRACE_S must be a finite number at least 0"),
        ({**BASE, "PROMPTQ_SHUTDOWN_GRACE_S": "inf"}, "PROMPTQ_SHUTDOWN_GRACE_S must be a finite number"),
        ({**BASE, "PROMPTQ_POLL_DELAY_S": "nan"}, "PROMPTQ_POLL_DELAY_S must be a finite number"),
        ({**BASE, "PROMPTQ_OTEL": "sometimes"}, "PROMPTQ_OTEL must be 1 or 0"),
        (
            {**BASE, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "maybe"},
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT must be true or false",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        WorkerConfig.from_env(env)
    assert message in str(e.value)


def test_traces_are_on_with_an_endpoint_or_the_flag_and_off_with_the_flag() -> None:
    assert not WorkerConfig.from_env(BASE).traces
    assert WorkerConfig.from_env({**BASE, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).traces
    assert WorkerConfig.from_env({**BASE, "PROMPTQ_OTEL": "1"}).traces
    off = WorkerConfig.from_env({**BASE, "PROMPTQ_OTEL": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not off.traces
    capturing = {**BASE, "PROMPTQ_OTEL": "1", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    assert WorkerConfig.from_env(capturing).trace_content


def test_producer_config_from_env() -> None:
    c = ProducerConfig.from_env({"REDIS_URL": "redis://r:1/2", "PROMPTQ_MAX_PAYLOAD_BYTES": "10"})
    assert (c.redis_url, c.max_payload_bytes, c.result_ttl_s) == ("redis://r:1/2", 10, 86_400)
    with pytest.raises(ConfigError, match="PROMPTQ_RESULT_TTL_S"):
        ProducerConfig.from_env({"PROMPTQ_RESULT_TTL_S": "x"})


def test_passwords_are_redacted_from_urls_in_messages() -> None:
    assert redact_url("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    with pytest.raises(ConfigError) as e:
        WorkerConfig.from_env({**BASE, "REDIS_URL": "http://user:hunter2@host"})
    assert "hunter2" not in str(e.value)


def test_redis_urls_carry_tls_credentials_and_database_to_arq() -> None:
    from worker.redis_conn import OutageRetry, redis_settings

    s = redis_settings("rediss://app:pw@cache.example:6380/2")
    assert (s.host, s.port, s.database, s.username, s.password, s.ssl) == ("cache.example", 6380, 2, "app", "pw", True)
    assert isinstance(s.retry, OutageRetry)
    plain = redis_settings("redis://localhost/0")
    assert (plain.port, plain.ssl, plain.username, plain.password) == (6379, False, None, None)


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    from promptq_core.connect import parse_sentinel
    from promptq_core.env import env_redis_url

    url = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2,10.0.0.3:26380/queue/2"
    target = parse_sentinel(url, {"PROMPTQ_SENTINEL_PASSWORD": "watch"})
    assert target is not None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380))
    assert (target.service, target.db, target.username, target.password) == ("queue", 2, "app", "s3cret")
    assert target.sentinel_password == "watch" and not target.ssl
    assert parse_sentinel("redis://localhost:6379/0") is None
    assert env_redis_url({"REDIS_URL": url}, "redis://x") == url
    for bad, problem in [
        ("redis+sentinel://h1:26379", "/service_name"),
        ("redis+sentinel://h1:port/svc", "is not host or host:port"),
        ("redis+sentinel://h1/svc/db", "/service_name or /service_name/db"),
        ("http://localhost", "redis+sentinel://"),
    ]:
        with pytest.raises(ConfigError, match="REDIS_URL") as caught:
            env_redis_url({"REDIS_URL": bad}, "redis://x")
        assert problem in str(caught.value)


def test_a_tls_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    from promptq_core.connect import parse_cluster
    from promptq_core.env import env_redis_url
    from worker.redis_conn import cluster_settings

    url = "rediss+cluster://user:pw@h1:7000,h2:7001"
    target = parse_cluster(url)
    assert target is not None
    assert (target.nodes, target.username, target.password, target.ssl) == (
        (("h1", 7000), ("h2", 7001)),
        "user",
        "pw",
        True,
    )
    assert target.client_kwargs() == {"username": "user", "password": "pw", "ssl": True}
    settings = cluster_settings(url)  # what the worker's ArqCluster is given
    assert [(n.host, n.port) for n in settings["startup_nodes"]] == [("h1", 7000), ("h2", 7001)]
    assert (settings["username"], settings["password"], settings["ssl"]) == ("user", "pw", True)
    plain = parse_cluster("redis+cluster://h1")
    assert plain is not None and plain.nodes == (("h1", 6379),) and not plain.ssl and plain.username is None
    assert parse_cluster("rediss://h1:7000") is None
    assert env_redis_url({"REDIS_URL": url}, "redis://x") == url
    assert ProducerConfig.from_env({"REDIS_URL": url}).redis_url == url
    for bad, problem in [
        ("rediss+cluster://user:hunter2@h1:7000,h2:port", "'h2:port' is not host or host:port"),
        ("rediss+cluster://user:hunter2@h1:7000,h2:0", "'h2:0' is not host or host:port"),
        ("rediss+cluster://user:hunter2@", "no node"),
        ("rediss+cluster://user:hunter2@h1:7000,:7001", "':7001' is not host or host:port"),
        ("rediss+cluster://user:hunter2@h1:7000/1", "one database"),
        ("rediss+cluster://user:hunter2@h1:7000?ssl_cert_reqs=none", "takes no options"),
    ]:
        with pytest.raises(ConfigError, match=r"^REDIS_URL ") as caught:
            WorkerConfig.from_env({**BASE, "REDIS_URL": bad})
        assert problem in str(caught.value) and "hunter2" not in str(caught.value), bad


def test_prices_take_input_and_output_or_input_alone_for_an_embedding_model() -> None:
    from promptq_core.contract import Usage
    from promptq_core.prices import cost_usd, prices_from_env

    table = '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}, "text-embedding-3-small": {"input": 0.02}}'
    prices = prices_from_env({"PROMPTQ_PRICES": table})
    assert cost_usd(prices, "text-embedding-3-small", Usage(1_000_000, 0, 1_000_000)) == pytest.approx(0.02)
    assert cost_usd(prices, "gpt-4o-mini", Usage(1_000_000, 1_000_000, 2_000_000)) == pytest.approx(0.75)
    for bad in ('{"m": {"output": 1}}', '{"m": {"input": 1, "cached": 1}}', '{"m": {"input": -1}}'):
        with pytest.raises(ConfigError, match="PROMPTQ_PRICES"):
            prices_from_env({"PROMPTQ_PRICES": bad})


def test_metrics_listen_on_loopback_unless_told() -> None:
    assert WorkerConfig.from_env(BASE).metrics_host == "127.0.0.1"
    assert WorkerConfig.from_env({**BASE, "PROMPTQ_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"


def test_passwords_in_a_urls_query_are_redacted_too() -> None:
    url = "redis://app:pw1@h:6379/0?password=pw2&socket_timeout=1&sentinel_password=pw3"
    shown = redact_url(url)
    assert "pw1" not in shown and "pw2" not in shown and "pw3" not in shown and "socket_timeout=1" in shown


def test_names_are_escaped_for_a_terminal() -> None:
    assert escaped("plain-name é") == "plain-name é"
    assert escaped("a\x1b]0;x\x07b\u202ec") == "a\\x1b]0;x\\x07b\\u202ec"
