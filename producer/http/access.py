"""Who is calling the HTTP API, and what it may reach.

- **The operator**: ``Authorization: Bearer <PROMPTQ_API_TOKEN>``; without a token set, any caller
  from loopback (or any caller at all with ``PROMPTQ_API_OPEN=1``). Sees and does everything;
  reaches a tenant's job with ``?tenant=NAME``.
- **A tenant**: ``Authorization: Bearer <a key from promptq keys create>``, looked up in Redis on
  each request (a revoked key is refused at once). Its job ids are its own namespace
  (``{tenant}/{id}`` in Redis, ``id`` in what it reads), its jobs run under its fairness key, within
  its policy; another tenant's job is 404, as if absent.

Besides: a ``Host`` outside ``PROMPTQ_API_HOSTS`` is refused (400; ``/healthz`` excepted, for
probes), a state-changing request needs the bearer header or ``Content-Type: application/json``
(which a cross-site form cannot send), and every answer carries security headers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptq_core.contract import dumps
from promptq_core.env import HOST_RE, ConfigError, env_flag
from promptq_core.tenants import Policy, owner_of, tenant_job_id
from promptq_core.validation import TENANT_RE, InvalidJobError

__all__ = [
    "HOSTS_ENV",
    "OPEN_ENV",
    "OPERATOR",
    "TOKEN_ENV",
    "Access",
    "Caller",
    "CallerDep",
    "Guarded",
    "caller",
    "page_policy",
]

TOKEN_ENV = "PROMPTQ_API_TOKEN"
OPEN_ENV = "PROMPTQ_API_OPEN"
HOSTS_ENV = "PROMPTQ_API_HOSTS"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Access:
    """The API's settings about callers, read once at start-up."""

    token: str | None
    open: bool
    hosts: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, token: str | None = None) -> Access:
        env = os.environ if env is None else env
        hosts = tuple(h.strip().lower().strip("[]") for h in env.get(HOSTS_ENV, "").split(",") if h.strip())
        for host in hosts:
            if host != "*" and not HOST_RE.fullmatch(host):
                raise ConfigError(f"{HOSTS_ENV}: {host[:40]!r} is not a host name, an address or *")
        token = token if token is not None else (env.get(TOKEN_ENV) or None)
        return cls(token=token, open=env_flag(env, OPEN_ENV), hosts=hosts or DEFAULT_HOSTS)

    def start_up_line(self) -> str:
        """What the API says at start-up about who may call it."""
        if self.token is not None:
            return f"the operator's calls need {TOKEN_ENV}; tenants call with their keys (promptq keys)"
        if self.open:
            return f"WARNING: {OPEN_ENV}=1 and no {TOKEN_ENV}: any caller that reaches this port is the operator"
        return (
            f"no {TOKEN_ENV}: the operator's calls are served to loopback clients only "
            f"(tenants call with their keys; {OPEN_ENV}=1 serves every caller as the operator)"
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """The operator (``policy`` None) or a tenant."""

    policy: Policy | None

    @property
    def tenant(self) -> str | None:
        return None if self.policy is None else self.policy.tenant

    def job_id(self, own: str, tenant: str | None = None) -> str:
        """The id in Redis of the caller's job ``own`` (the operator's: of ``tenant``'s, if named)."""
        if self.policy is not None:
            if tenant is not None and tenant != self.policy.tenant:
                raise InvalidJobError("tenant is the operator's parameter: a tenant key reaches its own jobs only")
            return tenant_job_id(self.policy.tenant, own)
        return own if tenant is None else tenant_job_id(tenant, own)

    def sees(self, job_id: str) -> str | None:
        """``job_id`` (an id in Redis) as this caller names it; None when it is not the caller's."""
        if self.policy is None:
            return job_id
        tenant, own = owner_of(job_id)
        return own if tenant == self.policy.tenant else None


OPERATOR = Caller(None)
bearer = HTTPBearer(auto_error=False, description=f"{TOKEN_ENV} (the operator), or a tenant's key")


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    """Who is calling (401 for a key that is no one's; 403 for a cross-site form's request)."""
    access: Access = request.app.state.access
    given = credentials.credentials.strip() if credentials is not None else ""
    if request.method in STATE_CHANGING and not given:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPException(
                403, "a request that changes something needs Authorization: Bearer or Content-Type: application/json"
            )
    if given:
        if access.token is not None and hmac.compare_digest(given.encode(), access.token.encode()):
            return OPERATOR
        policy = await request.app.state.producer.tenant_of(given)
        if policy is not None:
            return Caller(policy)
        raise HTTPException(401, "wrong bearer token or key", headers={"WWW-Authenticate": "Bearer"})
    if access.token is None and (access.open or _loopback(request)):
        return OPERATOR
    detail = "missing bearer token" if access.token is not None else "only loopback clients may call without a key"
    raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


CallerDep = Annotated[Caller, Depends(caller)]


def check_tenant_param(tenant: str | None) -> str | None:
    if tenant is not None and not TENANT_RE.fullmatch(tenant):
        raise InvalidJobError("tenant must be 1 to 32 of a-z 0-9 _ -")
    return tenant


# -- every answer -----------------------------------------------------------------------------------
API_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
API_POLICY = b"default-src 'none'; frame-ancestors 'none'"


def page_policy(html: str) -> str:
    """The Content-Security-Policy of a page: its own inline scripts (by hash) and nothing from
    elsewhere; styles may be inline (they cannot run code)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    hashes = " ".join(f"'sha256-{b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    return (
        f"default-src 'none'; script-src {hashes or chr(39) + 'none' + chr(39)}; style-src 'unsafe-inline'; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class Guarded:
    """The host check and the security headers, around every request."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.hosts = app, frozenset(access.hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "*" not in self.hosts and scope["path"] != "/healthz":
            host = _host(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                body = dumps({"detail": f"this API does not serve the host {host[:60]!a} ({HOSTS_ENV})"})
                await send({"type": "http.response.start", "status": 400, "headers": _headers(API_POLICY)})
                await send({"type": "http.response.body", "body": body.encode()})
                return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in (*API_HEADERS, (b"content-security-policy", API_POLICY)) if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, sending)


def _host(value: str) -> str:
    """A Host header's name, without its port (``[::1]:8000`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _headers(policy: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), *API_HEADERS, (b"content-security-policy", policy)]
