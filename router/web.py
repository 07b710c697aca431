"""The router's public HTTP root (``/``): the web client's static files (``web/dist``, built by
``scripts/run``), the health check ``/healthz``, ``/.well-known/*`` proxied to the auth
component's HTTP server (JWKS), ``/media/*`` proxied to the media component's HTTP server
(embedded profile: signed uploads and downloads). ``/ws`` is Crossbar's WebSocket path next to
this resource.

Crossbar's web transport path names cannot contain dots, hence this resource.

``GET /healthz`` is the balancer's health check (``config/haproxy/haproxy.cfg``): it answers the
JSON index with 200, and 503 while the shard drains (``router/drain.py``), so that no new
connections are sent here. ``GET /`` serves the web client (``index.html``; any other path
without a file is the single-page app too, so client-side routes can be reloaded). When the
client is not built, ``GET /`` answers the JSON index exactly like ``/healthz`` (as before).

``extra``: ``web_dir`` (default ``web/dist``; a relative path is taken from the project root,
the folder that holds ``router/``), ``auth_http`` and ``media_http`` (``{host, port}``),
``media_origins`` (origins the page may load media from and upload to besides its own: the S3
endpoint of the distributed profile, e.g. ``["https://s3.example.com"]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.static import File

from router import drain

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEB_DIR = "web/dist"
HEALTH_PATH = b"healthz"
# Vite puts content-hashed files under assets/: they never change under the same name
IMMUTABLE = b"public, max-age=31536000, immutable"


class _Index(Resource):
    """The JSON index, and the health check: 503 while this shard drains."""

    isLeaf = True

    def __init__(self, index: dict[str, Any], state: drain.DrainState) -> None:
        super().__init__()
        self._body = json.dumps(index).encode()
        self._draining = json.dumps({**index, "draining": True}).encode()
        self._state = state

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if self._state.draining:
            request.setResponseCode(503)
            return self._draining
        return self._body


def content_security_policy(media_origins: list[str]) -> bytes:
    """The page loads only its own scripts (no inline script, no eval), talks only to its own
    origin (HTTP and WebSocket) and to the media store's origins (``extra.media_origins``, e.g.
    the S3 endpoint that presigned URLs point at), and cannot be framed."""
    media = "".join(f" {o}" for o in media_origins)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data: blob:{media}; connect-src 'self'{media}; worker-src 'self'; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ).encode()


class _AppPage(Resource):
    """``index.html`` of the single-page app, never cached (it names the hashed assets), with a
    Content-Security-Policy."""

    isLeaf = True

    def __init__(self, path: Path, csp: bytes) -> None:
        super().__init__()
        self._path = path
        self._csp = csp

    def render_GET(self, request: Any) -> bytes:
        try:
            body = self._path.read_bytes()
        except OSError:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"web client not built: run scripts/run (or npm ci && npm run build in web/)\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", self._csp)
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
        return body

    def render_HEAD(self, request: Any) -> bytes:
        self.render_GET(request)
        return b""


class _Static(File):
    """The built files; hashed assets are cached for good; no directory listings."""

    def directoryListing(self) -> Resource:
        return self.forbidden

    def render_GET(self, request: Any) -> Any:
        if request.path.startswith(b"/assets/"):
            request.setHeader(b"cache-control", IMMUTABLE)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


class _Root(Resource):
    def __init__(self, index: Resource, web_dir: Path, csp: bytes) -> None:
        super().__init__()
        self._index = index
        self._web_dir = web_dir
        self._page = _AppPage(web_dir / "index.html", csp)

    def built(self) -> bool:
        return (self._web_dir / "index.html").is_file()

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == HEALTH_PATH:
            return self._index
        if not self.built():
            return self._index if path == b"" else super().getChild(path, request)
        if path == b"" or path == b"index.html":
            return self._page
        try:
            name = path.decode()
        except UnicodeDecodeError:
            return super().getChild(path, request)
        target = self._web_dir / name
        if name not in (".", "..") and "/" not in name and target.exists():
            return _Static(str(target))
        if request.method in (b"GET", b"HEAD") and "." not in name:
            return self._page  # a client-side route: the app decides
        return super().getChild(path, request)  # 404


def media_origins(extra: dict[str, Any]) -> list[str]:
    """``extra.media_origins``, else the origin of ``MESSENGER_S3_ENDPOINT`` if the router has it."""
    given = extra.get("media_origins")
    if given:
        return [str(o) for o in given]
    parts = urlsplit(os.environ.get("MESSENGER_S3_ENDPOINT", ""))
    return [f"{parts.scheme}://{parts.netloc}"] if parts.scheme in ("http", "https") and parts.netloc else []


def web_dir_of(extra: dict[str, Any]) -> Path:
    path = Path(str(extra.get("web_dir") or DEFAULT_WEB_DIR))
    return path if path.is_absolute() else PROJECT_ROOT / path


def root_resource(extra: dict[str, Any]) -> Resource:
    index = _Index(
        {"service": "messenger", "websocket": "/ws", "jwks": "/.well-known/jwks.json", "health": "/healthz"},
        drain.STATE,
    )
    root = _Root(index, web_dir_of(extra), content_security_policy(media_origins(extra)))
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
