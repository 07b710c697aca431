"""Media end to end on real nodes (embedded: files over the node's HTTP; distributed: S3 on moto
and Cassandra): upload, complete, attach to a message, history, access rules, downloads."""

from __future__ import annotations

import http.client
import io
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from PIL import Image
from twisted.internet import threads

from realms import uris
from tests.integration.chat_helpers import close_all, new_user, wait_for
from tests.support.client import call_error

pytestmark = [pytest.mark.node, pytest.mark.slow]


def http_request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, parts.path + ("?" + parts.query if parts.query else ""), body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


async def fetch(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    return await threads.deferToThread(http_request, method, url, body, headers)


def jpeg(size: tuple[int, int] = (800, 600)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, "JPEG", quality=85)
    return out.getvalue()


async def upload(client: Any, data: bytes, content_type: str, filename: str | None = None) -> dict[str, Any]:
    up = await client.call(uris.MEDIA_CREATE_UPLOAD, content_type=content_type, size=len(data), filename=filename)
    status, _, _ = await fetch("PUT", up["upload_url"], data, up["upload_headers"])
    assert status in (200, 204), status
    return up


@pytest_twisted.ensureDeferred
async def test_a_photo_travels_from_upload_to_the_partner(node):
    alice, bob, carol = await new_user(node), await new_user(node), await new_user(node)
    cid = (await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id))["chat_id"]
    photo = jpeg()

    up = await alice.d.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/jpeg", size=len(photo), filename="sea.jpg")
    assert set(up) >= {"media_id", "upload_url", "upload_headers", "expires_in"} and up["expires_in"] > 0
    mid = up["media_id"]
    # completing before the bytes are there is a clear error, and so is someone else's media
    assert (await call_error(alice.d.call(uris.MEDIA_COMPLETE, media_id=mid))).error == "messenger.error.conflict"
    status, _, _ = await fetch("PUT", up["upload_url"], photo, up["upload_headers"])
    assert status in (200, 204)
    err = await call_error(bob.d.call(uris.MEDIA_COMPLETE, media_id=mid))
    assert err.error == "messenger.error.not_found"

    done = await alice.d.call(uris.MEDIA_COMPLETE, media_id=mid)
    assert done["media_id"] == mid and done["content_type"] == "image/jpeg" and done["size"] == len(photo)
    assert (done["width"], done["height"]) == (800, 600) and done["url"] and done["thumbnail_url"]
    assert (await alice.d.call(uris.MEDIA_COMPLETE, media_id=mid))["media_id"] == mid  # a retry answers the same

    # not posted anywhere yet: only the owner sees it
    assert (await call_error(bob.d.call(uris.MEDIA_GET, media_id=mid))).error == "messenger.error.forbidden"

    sent = await alice.d.call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id="p1", text="look", media_ids=[mid])
    await wait_for(lambda: len(bob.of_type("message.new")) == 1, what="message.new with media")
    media = bob.of_type("message.new")[0]["data"]["media"]
    assert [m["media_id"] for m in media] == [mid]
    assert media[0]["content_type"] == "image/jpeg" and (media[0]["width"], media[0]["height"]) == (800, 600)
    history = await bob.d.call(uris.MESSAGE_HISTORY, chat_id=cid)
    assert history["messages"][0]["seq"] == sent["seq"] and history["messages"][0]["media"] == media

    # the partner gets fresh URLs; a stranger does not
    got = await bob.d.call(uris.MEDIA_GET, media_id=mid)
    assert got["media_id"] == mid and got["size"] == len(photo)
    assert (await call_error(carol.d.call(uris.MEDIA_GET, media_id=mid))).error == "messenger.error.forbidden"
    missing = await call_error(carol.d.call(uris.MEDIA_GET, media_id="0" * 32))
    assert missing.error == "messenger.error.not_found"

    status, body, _ = await fetch("GET", got["url"])
    assert status == 200 and body == photo
    status, body, _ = await fetch("GET", got["thumbnail_url"])
    assert status == 200
    thumb = Image.open(io.BytesIO(body))
    assert thumb.format == "JPEG" and thumb.size == (320, 240)
    if node.profile == "embedded":  # (moto, the test S3, does not check signatures)
        status, _, _ = await fetch("GET", got["url"].replace("&s=", "&s=0"))
        assert status == 403
    await close_all(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_bad_media_input_is_refused_and_nothing_is_stored(node):
    alice, bob = await new_user(node), await new_user(node)
    cid = (await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id))["chat_id"]
    c = alice.d

    async def code(call: Any) -> str:
        return (await call_error(call)).error

    assert await code(c.call(uris.MEDIA_CREATE_UPLOAD, content_type="text/html", size=10)) == (
        "messenger.error.invalid_argument"
    )
    assert await code(c.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/png", size=0)) == (
        "messenger.error.invalid_argument"
    )
    assert await code(c.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/png", size=51 * 1024 * 1024)) == (
        "messenger.error.payload_too_large"
    )
    assert await code(c.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/png", size="10")) == (
        "messenger.error.invalid_argument"
    )
    assert await code(c.call(uris.MEDIA_COMPLETE, media_id="../../etc")) == "messenger.error.invalid_argument"

    # declared PNG, uploaded JPEG bytes: the sniffed type decides; nothing is complete
    liar = await upload(c, jpeg((40, 40)), "image/png")
    assert await code(c.call(uris.MEDIA_COMPLETE, media_id=liar["media_id"])) == "messenger.error.invalid_argument"
    assert await code(c.call(uris.MEDIA_GET, media_id=liar["media_id"])) == "messenger.error.conflict"

    # attaching media that is not complete, or not yours: an error, and no message
    pending = await c.call(uris.MEDIA_CREATE_UPLOAD, content_type="application/pdf", size=9)
    bobs = await upload(bob.d, b"%PDF-1.4\n", "application/pdf", "b.pdf")
    await bob.d.call(uris.MEDIA_COMPLETE, media_id=bobs["media_id"])
    for ids_, expected in (
        ([pending["media_id"]], "messenger.error.invalid_argument"),
        ([liar["media_id"]], "messenger.error.invalid_argument"),
        ([bobs["media_id"]], "messenger.error.forbidden"),
        (["0" * 32], "messenger.error.invalid_argument"),
    ):
        err = await call_error(c.call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id=f"x{len(ids_[0])}", media_ids=ids_))
        assert err.error == expected, (ids_, err)
    assert (await c.call(uris.MESSAGE_HISTORY, chat_id=cid))["messages"] == []

    # a PDF is not an image: no thumbnail, no dimensions
    doc = await upload(c, b"%PDF-1.4\n", "application/pdf", "a.pdf")
    done = await c.call(uris.MEDIA_COMPLETE, media_id=doc["media_id"])
    assert done["thumbnail_url"] is None and done["width"] is None and done["filename"] == "a.pdf"

    # backend-only procedures are denied to users
    for uri, kw in (
        (uris.INTERNAL_MEDIA_ATTACH, {"owner_id": alice.user_id, "chat_id": cid, "media_ids": [doc["media_id"]]}),
        (uris.INTERNAL_CHAT_IS_MEMBER, {"chat_id": cid, "user_id": alice.user_id}),
    ):
        assert (await call_error(c.call(uri, **kw))).error == "wamp.error.not_authorized"
    await close_all(alice, bob)


@pytest_twisted.ensureDeferred
async def test_embedded_upload_url_rules(embedded_node):
    alice = await new_user(embedded_node)
    data = jpeg((20, 20))
    up = await alice.d.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/jpeg", size=len(data))
    assert up["upload_url"].startswith(f"http://127.0.0.1:{embedded_node.ws_port}/media/")
    status, _, _ = await fetch("PUT", up["upload_url"], data + b"x", up["upload_headers"])
    assert status == 413
    status, _, _ = await fetch("PUT", up["upload_url"], data, {"Content-Type": "image/png"})
    assert status == 403
    status, _, _ = await fetch("PUT", up["upload_url"].replace("&s=", "&s=A"), data, up["upload_headers"])
    assert status == 403
    assert (await call_error(alice.d.call(uris.MEDIA_COMPLETE, media_id=up["media_id"]))).error == (
        "messenger.error.conflict"
    )
    await close_all(alice)
