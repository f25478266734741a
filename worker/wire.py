"""How a request is put together under the openai client: a shorter ``build_request``.

The openai client hands its HTTP client a finished request: an absolute URL as a string, its
headers as a list, its body as bytes. httpx's ``build_request`` then parses that URL again (to join
it to a ``base_url`` the client does not have), copies the client's headers into a ``Headers``, and
copies them once more into the ``Request``: about 70 µs of the worker's CPU a call, the same for
every call to a backend. :class:`ShortBuild` keeps each URL parsed (a backend has a handful) and
merges the client's headers into the list once, then makes the same ``Request`` (the same method,
URL, headers in the same order, cookies the client holds, body and timeout; ``tests/unit/test_wire.py``
holds them equal). Anything else (a call's own cookies, query parameters, as an Azure client's
``api-version``, form data, files, a relative URL, extensions) goes to httpx's own ``build_request``.
"""

from __future__ import annotations

from typing import Any

import httpx2

__all__ = ["ShortBuild"]

URLS_KEPT = 64
"""Parsed URLs a client keeps (a backend's endpoints: chat, embeddings, responses, batches...)."""


class ShortBuild(httpx2.AsyncClient):
    """An httpx client whose ``build_request`` takes the short way for what the openai client sends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls: dict[str, httpx2.URL] = {}

    def build_request(
        self,
        method: str,
        url: httpx2.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = httpx2.USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> httpx2.Request:
        parsed = self._absolute(url) if isinstance(url, str) else None
        if (
            parsed is None
            or not isinstance(headers, list)
            or data is not None
            or files is not None
            or json is not None
            or params
            or cookies
            or extensions
            or self.params
        ):
            return super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
        given = {str(name).lower() for name, _ in headers}
        merged: list[tuple[Any, Any]] = [
            (raw, value) for raw, value in self.headers.raw if raw.decode("latin-1").lower() not in given
        ]
        merged += headers
        chosen = self.timeout if isinstance(timeout, type(httpx2.USE_CLIENT_DEFAULT)) else httpx2.Timeout(timeout)
        return httpx2.Request(
            method,
            parsed,
            content=content,
            headers=merged,
            cookies=self.cookies,  # (the ones the client was given or has received, as httpx's own sends)
            extensions={"timeout": chosen.as_dict()},
        )

    def _absolute(self, url: str) -> httpx2.URL | None:
        """``url`` parsed, if it is absolute (a relative one is joined to ``base_url`` by httpx)."""
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx2.URL(url)
            if parsed.is_relative_url:
                return None
            if len(self._urls) < URLS_KEPT:
                self._urls[url] = parsed
        return parsed
