"""The delivery's Redis notification feed (``components/delivery/adapters/redis_feed.py``)
against the real Redis: watched users' notifications arrive, unwatched ones do not, and a
dropped subscriber connection comes back by itself with its subscriptions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from common.adapters.redis import RedisClient, user_channel
from components.delivery.adapters.redis_feed import IncompleteReply, RedisFeed, encode_command, parse_reply
from tests.support.env import redis_url

pytestmark = [pytest.mark.redis]


async def until(pred: Any, what: str, within: float = 5.0) -> None:
    waited = 0.0
    while not await pred():
        assert waited < within, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


def test_resp_round_trip() -> None:
    assert encode_command("SUBSCRIBE", "a") == b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n"
    buf = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n[]\r\n:1\r\n"
    reply, pos = parse_reply(buf)
    assert reply == [b"message", b"c", b"[]"]
    assert parse_reply(buf, pos) == (1, len(buf))
    for cut in (3, 20, pos - 1):
        with pytest.raises(IncompleteReply):
            parse_reply(buf[:cut])
    assert str(parse_reply(b"-ERR nope\r\n")[0]) == "ERR nope"


@pytest_twisted.ensureDeferred
async def test_watched_users_get_their_notifications_also_after_the_connection_drops() -> None:
    got: list[tuple[str, bytes]] = []
    feed = RedisFeed.from_url(redis_url(), lambda user, payload: got.append((user, payload)))
    redis = RedisClient.from_url(redis_url())
    alice, bob = f"feed-{uuid.uuid4().hex}", f"feed-{uuid.uuid4().hex}"

    async def subscribers(user_id: str) -> int:
        reply = await redis.call(lambda c: c.execute_command("PUBSUB", "NUMSUB", user_channel(user_id)))
        return int(reply[1])

    async def publish(user_id: str, payload: str) -> None:
        await redis.call(lambda c: c.publish(user_channel(user_id), payload))

    await redis.start()
    assert await feed.start()
    try:
        feed.watch(alice)
        await until(lambda: _eq(subscribers(alice), 1), "subscription")
        await publish(alice, "[1]")
        await publish(bob, "[2]")  # not watched
        await until(lambda: _true(len(got) == 1), "notification")
        assert got == [(alice, b"[1]")]

        # the server drops the subscriber connection: the feed reconnects and re-subscribes
        port = feed._conn._out.getHost().port  # type: ignore[union-attr]
        await redis.call(lambda c: c.execute_command("CLIENT", "KILL", "ADDR", f"127.0.0.1:{port}"))
        await until(lambda: _true(feed.connected and feed._conn._out.getHost().port != port), "reconnection")  # type: ignore[union-attr]
        await until(lambda: _eq(subscribers(alice), 1), "re-subscription")
        await publish(alice, "[3]")
        await until(lambda: _true(len(got) == 2), "notification after reconnecting")
        assert got[-1] == (alice, b"[3]")

        feed.unwatch(alice)
        await until(lambda: _eq(subscribers(alice), 0), "unsubscription")
    finally:
        await feed.stop()
        await redis.stop()


async def _eq(d: Any, want: int) -> bool:
    return bool(await d == want)


async def _true(value: bool) -> bool:
    return value
