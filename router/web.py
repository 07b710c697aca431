"""The router's public HTTP root (``/``): a small index, ``/.well-known/*`` proxied to the auth
component's HTTP server (JWKS), ``/media/*`` proxied to the media component's HTTP server
(embedded profile: signed uploads and downloads), and later the web client's static files.

Crossbar's web transport path names cannot contain dots, hence this resource.

``GET /`` is also the balancer's health check: it answers 503 while the shard drains
(``router/drain.py``), so that no new connections are sent here.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource

from router import drain


class _Index(Resource):
    isLeaf = True

    def __init__(self, index: dict[str, Any], state: drain.DrainState) -> None:
        super().__init__()
        self._body = json.dumps(index).encode()
        self._draining = json.dumps({**index, "draining": True}).encode()
        self._state = state

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if self._state.draining:
            request.setResponseCode(503)
            request.setHeader(b"cache-control", b"no-store")
            return self._draining
        return self._body


class _Root(Resource):
    def __init__(self, index: Resource) -> None:
        super().__init__()
        self._index = index

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"":
            return self._index
        return super().getChild(path, request)


def root_resource(extra: dict[str, Any]) -> Resource:
    index = _Index({"service": "messenger", "websocket": "/ws", "jwks": "/.well-known/jwks.json"}, drain.STATE)
    root = _Root(index)
    auth = extra.get("auth_http") or {"host": "127.0.0.1", "port": 8091}
    root.putChild(
        b".well-known",
        ReverseProxyResource(str(auth["host"]), int(auth["port"]), b"/.well-known"),  # type: ignore[arg-type]
    )
    # the components' HTTP server (one per process: the container's in the embedded profile)
    media = extra.get("media_http") or auth
    root.putChild(
        b"media",
        ReverseProxyResource(str(media["host"]), int(media["port"]), b"/media"),  # type: ignore[arg-type]
    )
    return root
