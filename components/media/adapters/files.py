"""Embedded-profile blob store: files under ``<data folder>/media``, uploaded and downloaded over
HTTP with HMAC-signed, expiring URLs (``components.media.signing``).

The component's HTTP server (``common.httpserver``, the process's port) serves ``/media/<key>``
(:class:`MediaHttpResource`); the router's web transport proxies ``/media/`` to it
(``router/web.py``), so clients use the one public origin (``extra.public_url``).

- ``PUT /media/up/<id>?n=<size>&e=<expires>&s=<sig>`` with ``Content-Type`` as signed: a wrong or
  expired token is 403, more than ``n`` bytes 413, fewer 400; nothing is kept then. The bytes
  land in a temporary file renamed into place, so a reader never sees half an upload.
- ``GET /media/obj/<id>?e=&s=`` and ``/media/thumb/<id>?...``: the file, streamed, with its stored
  content type (``nosniff``); Range requests work (``twisted.web.static.File``).

Files: ``<root>/<kind>/<id>`` and the content type beside it in ``<id>.type``. Disk work runs
in a small thread pool, never on the reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web import server, static
from twisted.web.resource import Resource

from common.errors import NotFound, Unavailable
from components.media import signing
from components.media.domain import BLOB_KEY
from components.media.ports import BlobInfo

log = Logger(namespace="messenger.media")
T = TypeVar("T")
URL_PREFIX = "/media/"


def _check_key(key: str) -> str:
    if not BLOB_KEY.match(key):
        raise ValueError(f"not a blob key: {key!r}")
    return key


class FileBlobStore:
    def __init__(
        self,
        root: Path,
        secret: bytes,
        public_url: str,
        reactor: Any = None,
        now: Callable[[], float] = time.time,
        threads: int = 4,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.root = Path(root)
        self.secret = secret
        self.public_url = public_url.rstrip("/")
        self.now = now
        self._reactor = reactor
        self._threads = threads
        self._pool: ThreadPool | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._pool is not None:
            return
        for kind in ("up", "obj", "thumb", "tmp"):
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        pool = ThreadPool(minthreads=1, maxthreads=self._threads, name="media-files")
        pool.start()
        self._pool = pool

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise Unavailable("the media file store is not started")
        try:
            return await deferToThreadPool(self._reactor, self._pool, fn, *args)
        except OSError as e:
            raise Unavailable(f"media files: {type(e).__name__}: {e}") from e

    # -- URLs ----------------------------------------------------------------------------------
    def upload_target(self, key: str, content_type: str, size: int, expires_s: int) -> tuple[str, dict[str, str]]:
        expires = int(self.now()) + expires_s
        sig = signing.sign(self.secret, "PUT", _check_key(key), content_type, size, expires)
        query = urlencode({"n": size, "e": expires, "s": sig})
        return f"{self.public_url}{URL_PREFIX}{key}?{query}", {"Content-Type": content_type}

    def download_url(self, key: str, expires_s: int) -> str:
        expires = int(self.now()) + expires_s
        sig = signing.sign(self.secret, "GET", _check_key(key), "", None, expires)
        return f"{self.public_url}{URL_PREFIX}{key}?{urlencode({'e': expires, 's': sig})}"

    # -- files (thread pool) ---------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _stat(self, key: str) -> BlobInfo | None:
        path = self.path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        try:
            ctype: str | None = path.with_name(path.name + ".type").read_text().strip() or None
        except FileNotFoundError:
            ctype = None
        return BlobInfo(st.st_size, ctype, f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")

    async def stat(self, key: str) -> BlobInfo | None:
        return await self.run(self._stat, key)

    def _read(self, key: str, length: int) -> bytes:
        try:
            with self.path(key).open("rb") as f:
                return f.read(length)
        except FileNotFoundError:
            raise NotFound(f"no blob {key}") from None

    async def read(self, key: str, length: int) -> bytes:
        return await self.run(self._read, key, length)

    def write_from(self, key: str, source: Any, content_type: str) -> None:
        """Copy the file-like ``source`` to ``key`` through a temporary file (on a pool thread)."""
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(source, f, 1024 * 1024)
            path.with_name(path.name + ".type").write_text(content_type)
            os.replace(tmp, path)
        except BaseException:
            with _quiet():
                os.unlink(tmp)
            raise

    def _sweep(self, older_than_s: float) -> int:
        """Delete uploads (``up/``) and temporary files last written more than ``older_than_s``
        ago: uploads never completed (``complete`` moves a finished one to ``obj/``)."""
        cutoff = self.now() - older_than_s
        gone = 0
        for kind in ("up", "tmp"):
            for path in (self.root / kind).iterdir():
                with _quiet():
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        gone += 0 if path.name.endswith(".type") else 1
        return gone

    async def sweep(self, older_than_s: float) -> int:
        return await self.run(self._sweep, older_than_s)

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        import io

        self.write_from(key, io.BytesIO(data), content_type)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self.run(self._put, key, data, content_type)

    def _promote(self, src: str, dst: str, etag: str, content_type: str) -> bool:
        info = self._stat(src)
        if info is None or info.etag != etag:
            return False
        dst_path = self.path(dst)
        dst_path.with_name(dst_path.name + ".type").write_text(content_type)
        os.replace(self.path(src), dst_path)
        self._delete(src)
        return True

    async def promote(self, src: str, dst: str, etag: str, content_type: str) -> bool:
        return await self.run(self._promote, src, dst, etag, content_type)

    def _delete(self, key: str) -> None:
        path = self.path(key)
        for p in (path, path.with_name(path.name + ".type")):
            with _quiet():
                p.unlink()

    async def delete(self, key: str) -> None:
        await self.run(self._delete, key)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], FileNotFoundError)


def _arg(request: Any, name: bytes) -> str | None:
    values = request.args.get(name)
    return values[0].decode("ascii", "replace") if values else None


class MediaHttpResource(Resource):
    """``/media/<kind>/<id>``: PUT of uploads and GET of objects and thumbnails (see the module)."""

    isLeaf = True

    def __init__(self, store: FileBlobStore, cache_seconds: int = 300) -> None:
        super().__init__()
        self.store = store
        self.cache_seconds = cache_seconds

    def _key(self, request: Any) -> str | None:
        key = b"/".join(request.postpath).decode("ascii", "replace")
        return key if BLOB_KEY.match(key) else None

    def _fail(self, request: Any, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (text + "\n").encode()

    def _expires(self, request: Any) -> int | None:
        try:
            return int(_arg(request, b"e") or "")
        except ValueError:
            return None

    def render_PUT(self, request: Any) -> bytes | int:
        key = self._key(request)
        if key is None or not key.startswith("up/"):
            return self._fail(request, 404, "no such upload")
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1").split(";", 1)[0].strip().lower()
        expires, sig = self._expires(request), _arg(request, b"s") or ""
        try:
            size = int(_arg(request, b"n") or "")
        except ValueError:
            return self._fail(request, 403, "bad token")
        if expires is None or not signing.verify(
            self.store.secret, sig, "PUT", key, ctype, size, expires, self.store.now()
        ):
            return self._fail(request, 403, "bad or expired token (the content type must be the one declared)")
        content = request.content
        content.seek(0, os.SEEK_END)
        received = content.tell()
        content.seek(0)
        if received > size:
            return self._fail(request, 413, f"more than the declared {size} bytes")
        if received < size:
            return self._fail(request, 400, f"expected {size} bytes, got {received}")
        if self.store.path("obj/" + key[3:]).exists():
            return self._fail(request, 409, "this media is complete already")

        def done(_: Any) -> None:
            request.setResponseCode(200)
            request.setHeader(b"content-length", b"0")
            request.finish()

        def failed(f: Any) -> None:
            log.error("media upload {key} failed: {e}", key=key, e=f.getErrorMessage())
            request.setResponseCode(500)
            request.finish()

        d = defer.ensureDeferred(self.store.run(self.store.write_from, key, content, ctype))
        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET

    def render_GET(self, request: Any) -> bytes | int:
        key = self._key(request)
        if key is None or key.startswith("up/"):
            return self._fail(request, 404, "no such media")
        expires, sig = self._expires(request), _arg(request, b"s") or ""
        if expires is None or not signing.verify(
            self.store.secret, sig, "GET", key, "", None, expires, self.store.now()
        ):
            return self._fail(request, 403, "bad or expired token")
        path = self.store.path(key)
        if not path.exists():
            return self._fail(request, 404, "no such media")
        try:
            ctype = path.with_name(path.name + ".type").read_text().strip()
        except FileNotFoundError:
            ctype = "application/octet-stream"
        leaf = static.File(str(path))
        leaf.type = ctype
        leaf.encoding = None
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", f"private, max-age={self.cache_seconds}".encode())
        if not ctype.startswith(("image/", "video/", "audio/")):
            request.setHeader(b"content-disposition", b"attachment")
        return leaf.render_GET(request)
