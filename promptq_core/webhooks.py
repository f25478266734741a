"""Webhooks (stdlib only): the URL a job may name to be told when it ends, which hosts may be named,
and how a delivery is signed, per the Standard Webhooks specification.

A job's ``webhook_url`` is an ``http://`` or ``https://`` URL of at most ``MAX_URL_CHARS`` characters,
without credentials or a fragment. Which hosts it may name is the operator's
(``PROMPTQ_WEBHOOK_HOSTS``, read by the producers, the HTTP API and the workers alike): without it, any
host that is not a private, loopback, link-local or otherwise non-public address (checked at submit
for an address given as such, and by the worker for every address a name resolves to, before each
delivery); with it, only the hosts listed (``hooks.example.com``, ``*.example.com`` for its subdomains,
or an address), private ones included.

A delivery is a ``POST`` of the job's final result document (JSON) with the headers
``webhook-id`` (the same on every retry of one delivery), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed with the secret's bytes, of
``{webhook-id}.{webhook-timestamp}.{body}``. The secret (``PROMPTQ_WEBHOOK_SECRET``) is written
``whsec_`` and the base64 of 24 to 64 random bytes (``new_secret``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from promptq_core.env import ConfigError, env_str

__all__ = [
    "HOSTS_ENV",
    "MAX_URL_CHARS",
    "SECRET_ENV",
    "WebhookHosts",
    "check_url",
    "host_of",
    "is_public",
    "new_secret",
    "secret_from_env",
    "sign",
]

HOSTS_ENV: Final = "PROMPTQ_WEBHOOK_HOSTS"
SECRET_ENV: Final = "PROMPTQ_WEBHOOK_SECRET"
MAX_URL_CHARS: Final = 2000
SECRET_PREFIX: Final = "whsec_"
_HOST_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
)
_URL_CHARS = re.compile(r"[!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]+")
"""The characters a URL may hold as written (RFC 3986's, percent-escapes included): no space, no quote."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: str) -> bool:
    """Whether an IP address is one anybody on the internet may reach (not private, loopback,
    link-local, multicast, reserved or unspecified). An IPv4 address inside an IPv6 one (mapped,
    NAT64) is judged as itself; the deprecated IPv4-compatible form (``::a.b.c.d``) is refused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif int(ip) >> 32 == 0:
            return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True, slots=True)
class WebhookHosts:
    """``PROMPTQ_WEBHOOK_HOSTS``: the hosts a webhook may name (empty: any public one)."""

    listed: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookHosts:
        raw = env_str(env, HOSTS_ENV)
        if raw is None:
            return cls()
        hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
        for host in hosts:
            if not _HOST_RE.fullmatch(host) and not _is_address(host):
                raise ConfigError(
                    f"{HOSTS_ENV}: {host[:80]!r} is not a host name, *.domain or an IP address (comma-separated)"
                )
        return cls(hosts)

    def lists(self, host: str) -> bool:
        """Whether the operator listed ``host`` (by name, by a ``*.`` parent, or as an address)."""
        host = host.lower()
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.listed)

    def allows_name(self, host: str) -> bool:
        """Whether a webhook may name ``host`` (known before any lookup: a listed host, or with no
        list, a name, or a public address)."""
        if self.listed:
            return self.lists(host)
        if _is_address(host):
            return is_public(host)
        return host != "localhost" and not host.endswith((".localhost", ".local", ".internal"))

    def allows_addresses(self, host: str, addresses: Iterable[str]) -> bool:
        """Whether a delivery may go to these addresses ``host`` resolved to: with a list, only a
        listed host (anywhere); without one, a host resolving to public addresses only."""
        if self.listed:
            return self.lists(host)
        found = list(addresses)
        return bool(found) and all(is_public(a) for a in found)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_of(url: str) -> str:
    """The host a checked webhook URL names (an IPv6 address without its brackets)."""
    return (urlsplit(url).hostname or "").lower()


def check_url(url: object, hosts: WebhookHosts | None) -> str:
    """``url`` if a job may name it as its webhook; ``ValueError`` saying why not (never echoing
    more than the URL's host). ``hosts`` None: its form only (a worker reading a job the producer
    checked; it checks the host before each delivery)."""
    if not isinstance(url, str) or not url:
        raise ValueError("webhook_url must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"webhook_url must be at most {MAX_URL_CHARS} characters")
    if not _URL_CHARS.fullmatch(url):
        raise ValueError("webhook_url holds characters a URL may not (spaces, quotes, controls: escape them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("webhook_url is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("webhook_url must be an http:// or https:// URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("webhook_url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("webhook_url may not hold credentials (user:password@): sign with the webhook secret")
    if parts.fragment:
        raise ValueError("webhook_url may not have a #fragment")
    if port == 0:
        raise ValueError("webhook_url's port must be 1 to 65535")
    if not (_HOST_RE.fullmatch(host) or _is_address(host)) or host.startswith("*"):
        raise ValueError("webhook_url's host is not a host name or an IP address")
    if hosts is not None and not hosts.allows_name(host):
        where = f"in {HOSTS_ENV}" if hosts.listed else f"public (private addresses need {HOSTS_ENV})"
        raise ValueError(f"webhook_url's host {host[:100]!r} is not {where}")
    return url


def new_secret() -> str:
    """A new webhook secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_from_env(env: Mapping[str, str]) -> bytes | None:
    """``PROMPTQ_WEBHOOK_SECRET``'s key bytes (None when it is not set); ``ConfigError`` for one
    that is not ``whsec_`` and base64 of 24 to 64 bytes."""
    raw = env_str(env, SECRET_ENV)
    if raw is None:
        return None
    problem = f"{SECRET_ENV} must be whsec_ and the base64 of 24 to 64 random bytes (e.g. `promptq webhook-secret`)"
    if not raw.startswith(SECRET_PREFIX):
        raise ConfigError(problem)
    try:
        key = base64.b64decode(raw.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(problem) from None
    if not 24 <= len(key) <= 64:
        raise ConfigError(problem)
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of a delivery: ``v1,`` and the base64 HMAC-SHA256 of
    ``{message_id}.{timestamp}.{body}``."""
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
