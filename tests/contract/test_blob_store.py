"""Contract of the media ``BlobStore`` port, run against the embedded file store (served over
HTTP by :class:`MediaHttpResource` on a loopback port, as in a node) and S3 on moto in server
mode. Uploads and downloads are real HTTP requests to the URLs the store signs."""

from __future__ import annotations

import http.client
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.web.resource import Resource
from twisted.web.server import Site

from components.media.adapters.files import FileBlobStore, MediaHttpResource
from components.media.adapters.s3 import S3BlobStore
from components.media.domain import object_key, thumbnail_key, upload_key
from components.media.ports import BlobStore
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoServer

reactor: Any = _reactor
JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\x00" * 60


def http_request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, parts.path + ("?" + parts.query if parts.query else ""), body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def in_thread(*args: Any, **kwargs: Any) -> tuple[int, bytes]:
    """A blocking HTTP request off the reactor (the file store's server runs on it)."""
    result: tuple[int, bytes] = await threads.deferToThread(http_request, *args, **kwargs)
    return result


@pytest_twisted.async_yield_fixture(params=["files", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "files":
        root = Resource()
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        store: Any = FileBlobStore(tmp_path / "media", b"k" * 32, f"http://127.0.0.1:{port.getHost().port}")
        root.putChild(b"media", MediaHttpResource(store))  # type: ignore[arg-type]
    else:
        moto: MotoServer = request.getfixturevalue("s3_server")
        bucket = moto.new_bucket()
        store = S3BlobStore(
            bucket,
            endpoint_url=moto.endpoint,
            region=REGION,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            prefix="m/",
        )
        port = None
    await store.start()
    yield store
    await store.stop()
    if port is not None:
        await port.stopListening()


def ids() -> str:
    return uuid.uuid4().hex


@pytest_twisted.ensureDeferred
async def test_a_presigned_put_lands_and_reads_back(blobs):
    mid = ids()
    body = JPEG_HEAD + b"x" * 1000
    url, headers = blobs.upload_target(upload_key(mid), "image/jpeg", len(body), 60)
    assert headers["Content-Type"] == "image/jpeg"
    assert await blobs.stat(upload_key(mid)) is None
    status, _ = await in_thread("PUT", url, body, headers)
    assert status in (200, 201, 204)
    info = await blobs.stat(upload_key(mid))
    assert info is not None and info.size == len(body) and info.content_type == "image/jpeg" and info.etag
    assert await blobs.read(upload_key(mid), 4) == body[:4]  # a ranged read
    assert await blobs.read(upload_key(mid), 10_000) == body  # shorter than asked: all of it


@pytest_twisted.ensureDeferred
async def test_promote_moves_checked_bytes_only(blobs):
    mid = ids()
    await blobs.put(upload_key(mid), b"%PDF-1.4 one", "application/octet-stream")
    info = await blobs.stat(upload_key(mid))
    assert await blobs.promote(upload_key(mid), object_key(mid), "not-the-etag", "application/pdf") is False
    assert await blobs.stat(object_key(mid)) is None
    assert await blobs.promote(upload_key(mid), object_key(mid), info.etag, "application/pdf") is True
    moved = await blobs.stat(object_key(mid))
    assert moved.size == len(b"%PDF-1.4 one") and moved.content_type == "application/pdf"
    assert await blobs.stat(upload_key(mid)) is None
    assert await blobs.promote(upload_key(mid), object_key(mid), info.etag, "application/pdf") is False  # gone


@pytest_twisted.ensureDeferred
async def test_download_url_serves_the_bytes(blobs):
    mid = ids()
    await blobs.put(thumbnail_key(mid), JPEG_HEAD + b"thumb", "image/jpeg")
    status, data = await in_thread("GET", blobs.download_url(thumbnail_key(mid), 60))
    assert status == 200 and data == JPEG_HEAD + b"thumb"


@pytest_twisted.ensureDeferred
async def test_missing_blobs_and_idempotent_delete(blobs):
    from common.errors import NotFound

    mid = ids()
    assert await blobs.stat(object_key(mid)) is None
    with pytest.raises(NotFound):
        await blobs.read(object_key(mid), 10)
    await blobs.put(object_key(mid), b"abc", "application/octet-stream")
    await blobs.delete(object_key(mid))
    await blobs.delete(object_key(mid))
    assert await blobs.stat(object_key(mid)) is None


# -- the embedded store's HTTP rules (S3 enforces its own through the signature) --------------------------
@pytest_twisted.async_yield_fixture
async def files(tmp_path: Path) -> AsyncIterator[FileBlobStore]:
    root = Resource()
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    store = FileBlobStore(tmp_path / "media", b"s" * 32, f"http://127.0.0.1:{port.getHost().port}")
    root.putChild(b"media", MediaHttpResource(store))  # type: ignore[arg-type]
    await store.start()
    yield store
    await store.stop()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_file_store_refuses_bad_tokens_sizes_and_types(files):
    mid = ids()
    key = upload_key(mid)
    body = JPEG_HEAD
    url, headers = files.upload_target(key, "image/jpeg", len(body), 60)
    # another content type than the one signed
    assert (await in_thread("PUT", url, body, {"Content-Type": "image/png"}))[0] == 403
    # a tampered token, another key, a GET with an upload token
    assert (await in_thread("PUT", url.replace("s=", "s=x"), body, headers))[0] == 403
    assert (await in_thread("PUT", url.replace(mid, ids()), body, headers))[0] == 403
    # too many bytes: 413, too few: 400; nothing is kept
    assert (await in_thread("PUT", url, body + b"more", headers))[0] == 413
    assert (await in_thread("PUT", url, body[:-1], headers))[0] == 400
    assert await files.stat(key) is None
    # expired
    files.now = lambda: time.time() + 120
    assert (await in_thread("PUT", url, body, headers))[0] == 403
    files.now = time.time
    assert (await in_thread("PUT", url, body, headers))[0] == 200
    assert (await files.stat(key)).size == len(body)
    # downloads: only objects and thumbnails, only with a valid token
    await files.put(object_key(mid), body, "image/jpeg")
    good = files.download_url(object_key(mid), 60)
    assert (await in_thread("GET", good))[0] == 200
    assert (await in_thread("GET", good.replace("s=", "s=x")))[0] == 403
    assert (await in_thread("GET", good.replace("obj/", "thumb/")))[0] == 403
    assert (await in_thread("GET", files.download_url(upload_key(mid), 60)))[0] == 404
    # once complete, the upload URL is refused
    assert (await in_thread("PUT", url, body, headers))[0] == 409


@pytest_twisted.ensureDeferred
async def test_file_store_sweep_removes_only_old_unfinished_uploads(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "media", b"s" * 32, "http://127.0.0.1:1")
    await store.start()
    try:
        old, fresh, done = ids(), ids(), ids()
        for mid in (old, fresh, done):
            await store.put(upload_key(mid), JPEG_HEAD, "image/jpeg")
        info = await store.stat(upload_key(done))
        assert info is not None and await store.promote(upload_key(done), object_key(done), info.etag, "image/jpeg")
        an_hour_ago = time.time() - 3600
        for path in (store.path(upload_key(old)), store.path(object_key(done))):
            os.utime(path, (an_hour_ago, an_hour_ago))
        assert await store.sweep(older_than_s=600) == 1
        assert await store.stat(upload_key(old)) is None
        assert await store.stat(upload_key(fresh)) is not None
        assert await store.stat(object_key(done)) is not None  # completed media are never swept
    finally:
        await store.stop()
