"""One small HTTP server per process: ``/metrics`` (Prometheus) plus whatever a component mounts."""

from __future__ import annotations

from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

_servers: dict[int, Resource] = {}


def http_root(port: int, interface: str = "127.0.0.1", reactor: Any = None) -> Resource:
    """The root resource of this process's HTTP server on ``port`` (started on first use).

    Port 0 means "no HTTP server": a detached root is returned so callers need not care.
    """
    if port == 0:
        return Resource()
    root = _servers.get(port)
    if root is None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        root = Resource()
        root.putChild(b"metrics", MetricsResource())  # type: ignore[arg-type]
        reactor.listenTCP(port, Site(root), interface=interface)
        _servers[port] = root
    return root


class JsonResource(Resource):
    """GET answers the JSON bytes produced by ``render`` (called per request)."""

    isLeaf = True

    def __init__(self, render: Any, cache_seconds: int = 60) -> None:
        super().__init__()
        self._render = render
        self._cache_seconds = cache_seconds

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", f"public, max-age={self._cache_seconds}".encode())
        request.setHeader(b"access-control-allow-origin", b"*")
        body: bytes = self._render()
        return body


def mount(root: Resource, path: bytes, leaf: Resource) -> None:
    """Put ``leaf`` at ``path`` (e.g. ``b".well-known/jwks.json"``) below ``root``, making folders."""
    *folders, name = path.strip(b"/").split(b"/")
    node = root
    for folder in folders:
        child = node.getStaticEntity(folder)
        if child is None:
            child = Resource()
            node.putChild(folder, child)  # type: ignore[arg-type]
        node = child
    node.putChild(name, leaf)  # type: ignore[arg-type]
