"""Push in the distributed profile: the shipped split configs with two router shards, tokens in
Cassandra, presence from Redis across shards (a user online on the *other* shard gets no push)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from realms import uris
from tests.integration.chat_helpers import User, close_all, wait_for
from tests.integration.helpers import login, register
from tests.support.client import connect
from tests.support.node import SplitNodes
from tests.support.push_standins import FcmStandin, WebPushStandin, vapid_keypair

pytestmark = [pytest.mark.node, pytest.mark.postgres, pytest.mark.redis, pytest.mark.cassandra, pytest.mark.slow]


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FcmStandin, WebPushStandin, str]]:
    fcm = FcmStandin(tmp_path_factory.mktemp("fcm")).start()
    private, public = vapid_keypair()
    webpush = WebPushStandin(public).start()
    yield fcm, webpush, private
    fcm.stop()
    webpush.stop()
    assert not fcm.errors and not webpush.errors, (fcm.errors, webpush.errors)


@pytest.fixture(scope="module")
def split(split_nodes, standins) -> SplitNodes:
    fcm, _, vapid_private = standins
    push = {
        "fcm": {"service_account_file": str(fcm.service_account_file), "base_url": fcm.url},
        "webpush": {"subject": "mailto:ops@example.com", "vapid_private_key": vapid_private},
        "queue": {"attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.5},
    }
    nodes: SplitNodes = split_nodes("push", shards=2, push=push)
    return nodes


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def on_shard(split: Any, shard: int, name: str) -> tuple[User, dict]:
    reg = await register(split, display_name=name)  # the first shard's URL
    tokens = await login(split, reg["username"])
    client = await connect(split.shards[shard].url, ticket=tokens["access_token"])
    await client.listen(uris.user_topic(reg["user_id"]))
    return User(reg["user_id"], reg["username"], [client], [tokens]), tokens


@pytest_twisted.ensureDeferred
async def test_push_across_shards(split: SplitNodes, standins) -> None:
    fcm, webpush, _ = standins
    alice, _ = await on_shard(split, 0, "Alice")
    bob, _ = await on_shard(split, 1, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token = "dist-token-" + "x" * 40
    sub = webpush.subscribe()
    await bob.d.call(uris.PUSH_REGISTER, platform="fcm", token=token)
    await bob.d.call(uris.PUSH_REGISTER, platform="webpush", token=sub.as_json())
    # bob online on shard 1, alice sends on shard 0: no push
    await alice.d.call(uris.MESSAGE_SEND, chat_id=chat["chat_id"], client_msg_id="d-1", text="online?")
    await bob.d.wait_event(lambda kw: kw.get("type") == "message.new", timeout=10)
    await sleep(1.0)
    assert fcm.attempts(token) == [] and sub.received == []
    # bob goes offline: the next message is pushed on both platforms
    await bob.d.close()

    async def offline() -> bool:
        p = await alice.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id])
        return not p["presence"][bob.user_id]["online"]

    for _ in range(100):
        if await offline():
            break
        await sleep(0.1)
    await alice.d.call(uris.MESSAGE_SEND, chat_id=chat["chat_id"], client_msg_id="d-2", text="now offline")
    await wait_for(lambda: fcm.delivered(token) and webpush.delivered(sub), within=10, what="both pushes")
    assert fcm.delivered(token)[0].body["message"]["notification"] == {"title": "Alice", "body": "now offline"}
    assert webpush.delivered(sub)[0].body["body"] == "now offline"
    # a gone subscription is deleted from Cassandra: the next message reaches FCM only
    sub.answers.append(410)
    await alice.d.call(uris.MESSAGE_SEND, chat_id=chat["chat_id"], client_msg_id="d-3", text="third")
    await wait_for(lambda: len(fcm.delivered(token)) == 2 and len(sub.received) == 2, within=10, what="third")
    await alice.d.call(uris.MESSAGE_SEND, chat_id=chat["chat_id"], client_msg_id="d-4", text="fourth")
    await wait_for(lambda: len(fcm.delivered(token)) == 3, within=10, what="fourth")
    await sleep(0.5)
    assert len(sub.received) == 2
    await close_all(alice)
