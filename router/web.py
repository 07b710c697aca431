"""The router's public HTTP root (``/``): a small index, ``/.well-known/*`` proxied to the auth
component's HTTP server (JWKS), and later the web client's static files.

Crossbar's web transport path names cannot contain dots, hence this resource.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource


class _Index(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
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
    index = _Index(json.dumps({"service": "messenger", "websocket": "/ws", "jwks": "/.well-known/jwks.json"}).encode())
    root = _Root(index)
    auth = extra.get("auth_http") or {"host": "127.0.0.1", "port": 8091}
    root.putChild(
        b".well-known",
        ReverseProxyResource(str(auth["host"]), int(auth["port"]), b"/.well-known"),  # type: ignore[arg-type]
    )
    return root
