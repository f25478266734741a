"""promptq_core.webhooks: which URLs and hosts a webhook may name, and the signature (checked against
the standardwebhooks package, and against the specification's own example)."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook

from promptq_core.env import ConfigError
from promptq_core.webhooks import WebhookHosts, check_url, is_public, new_secret, secret_from_env, sign


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped: judged as itself
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("::7f00:1", False),  # IPv4-compatible (deprecated): refused
        ("224.0.0.1", False),
        ("0.0.0.0", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_a_list_of_hosts_is_the_only_way_in_when_given() -> None:
    anyone = WebhookHosts()
    assert anyone.allows_addresses("hooks.example.com", ["93.184.216.34"])
    assert not anyone.allows_addresses("rebound.example.com", ["93.184.216.34", "127.0.0.1"])
    assert not anyone.allows_addresses("nothing.example.com", [])
    listed = WebhookHosts.from_env({"PROMPTQ_WEBHOOK_HOSTS": "hooks.example.com, *.corp.example,10.0.0.5"})
    assert listed.allows_addresses("hooks.example.com", ["10.1.1.1"])  # listed: private is fine
    assert listed.allows_addresses("a.b.corp.example", ["10.1.1.1"])
    assert not listed.allows_addresses("corp.example.evil.com", ["93.184.216.34"])  # public, but not listed
    assert not listed.allows_name("notcorp.example")
    assert check_url("http://10.0.0.5:8080/in", listed)
    with pytest.raises(ConfigError, match="PROMPTQ_WEBHOOK_HOSTS"):
        WebhookHosts.from_env({"PROMPTQ_WEBHOOK_HOSTS": "bad host!"})


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in?x=1",
        "http://93.184.216.34:8080/in",
        "https://[2001:4860:4860::8888]/in",
        "https://HOOKS.Example.com/in",
    ],
)
def test_urls_a_webhook_may_name(url: str) -> None:
    assert check_url(url, WebhookHosts()) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "non-empty"),
        ("hooks.example.com/in", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https:///in", "no host"),
        ("https://user@hooks.example.com/in", "credentials"),
        ("https://hooks.example.com/in#x", "fragment"),
        ("https://hooks.example.com:0/in", "port"),
        ("https://hooks.example.com:99999/in", "not a URL"),
        ("https://hooks.example.com./in", "not a host name"),
        ("https://hooks%2eexample.com/in", "not a host name"),
        ("https://[::1]/in", "not public"),
        ("https://localhost/in", "not public"),
        ("https://printer.local/in", "not public"),
        ("https://hooks.example.com/\u00e9", "characters"),
        ("https://hooks.example.com/a\nb", "characters"),
    ],
)
def test_urls_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_url(url, WebhookHosts())


def test_the_signature_is_the_specifications() -> None:
    secret = new_secret()
    key = secret_from_env({"PROMPTQ_WEBHOOK_SECRET": secret})
    assert key is not None and len(key) == 32
    body = b'{"job_id":"a","status":"succeeded"}'
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(key, "msg_1", now, body)}
    assert Webhook(secret).verify(body, headers) == {"job_id": "a", "status": "succeeded"}
    # The specification's published example: secret, id, timestamp, body -> signature.
    example = secret_from_env({"PROMPTQ_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    assert example is not None
    signed = sign(example, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("raw", ["whsec_", "whsec_not base64!", "secret", "whsec_" + "QUFB" * 4])
def test_bad_secrets_are_named(raw: str) -> None:
    with pytest.raises(ConfigError, match="PROMPTQ_WEBHOOK_SECRET"):
        secret_from_env({"PROMPTQ_WEBHOOK_SECRET": raw})
