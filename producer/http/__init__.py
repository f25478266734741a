"""The HTTP API, for web apps in any language: ``uvicorn producer.http:app`` (``pip install
'promptq[http]'``). It goes through the client's public methods only (``producer.Producer``);
``app`` is built from the environment (``producer.http.app``)."""

from producer.http.app import app, create_app

__all__ = ["app", "create_app"]
