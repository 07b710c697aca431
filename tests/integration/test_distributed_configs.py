"""The shipped distributed configs: router and components as separate nodes, joined over the
ticket-authenticated backend transport, on PostgreSQL and Redis."""

from __future__ import annotations

import secrets
import time

import pytest
import pytest_twisted
from autobahn.twisted.rawsocket import WampRawSocketClientFactory
from autobahn.wamp.serializer import MsgPackSerializer
from autobahn.wamp.types import ComponentConfig
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from common.adapters.redis import RedisClient, user_channel
from realms import uris
from tests.integration.chat_helpers import add_device, close_all, new_user, wait_for
from tests.integration.helpers import user_session
from tests.support.client import Client, JoinFailed, connect

pytestmark = [pytest.mark.node, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def split(split_nodes):
    return split_nodes("split")


async def backend_join(port: int, ticket: str) -> Client:
    client = Client(ComponentConfig(realm="messenger"), ["ticket"], ticket, "backend")
    factory = WampRawSocketClientFactory(lambda *a: client, serializer=MsgPackSerializer())
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)  # type: ignore[arg-type]
    return await client.joined.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_a_user_registers_logs_in_and_joins_through_the_split_nodes(split):
    user, tokens = await user_session(split)
    assert (await user.call(uris.USER_ME))["user_id"] == tokens["user_id"]
    await user.close()


@pytest_twisted.ensureDeferred
async def test_backend_transport_needs_the_ticket_and_clients_cannot_become_backend(split):
    backend_ticket = split.backend_ticket
    with pytest.raises(JoinFailed):
        await backend_join(split.backend_port, "wrong ticket")
    backend = await backend_join(split.backend_port, backend_ticket)
    assert backend.details.authrole == "backend"
    await backend.close()
    # the client transport never grants the backend role, whatever a client presents
    with pytest.raises(JoinFailed):
        await connect(split.url, ticket=backend_ticket, authid="backend")


@pytest_twisted.ensureDeferred
async def test_components_rejoin_by_themselves_when_the_router_node_restarts(split):
    user, tokens = await user_session(split)
    split.restart_router()
    await user.disconnected.addTimeout(10, reactor)
    deadline = time.monotonic() + 30
    while True:
        try:
            again = await connect(split.url, ticket=tokens["access_token"])
            break
        except JoinFailed:
            assert time.monotonic() < deadline, split.components.log_text()[-3000:]
            await task.deferLater(reactor, 0.5, lambda: None)
    print(f"components back {30 - (deadline - time.monotonic()):.1f} s after the router restarted")
    assert (await again.call(uris.USER_ME))["user_id"] == tokens["user_id"]
    await again.close()


@pytest.fixture(scope="module")
def two_shards(split_nodes):
    return split_nodes("shards", shards=2)


@pytest_twisted.ensureDeferred
async def test_components_join_every_shard_so_calls_are_served_on_any(two_shards):
    """Step 1 of the scale-out plan (docs/design/scale-out.md): a user on either shard is served,
    and sync answers the same updates on every shard."""
    a, b = two_shards.shards
    guest = await connect(b.url)
    name = f"shard_{secrets.token_hex(4)}"
    await guest.call(uris.AUTH_REGISTER, username=name, password="correct horse battery")
    await guest.close()
    guest = await connect(a.url)
    tokens = await guest.call(uris.AUTH_LOGIN, username=name, password="correct horse battery")
    other = await guest.call(uris.AUTH_REGISTER, username=f"{name}_x", password="correct horse battery")
    other_tokens = await guest.call(uris.AUTH_LOGIN, username=f"{name}_x", password="correct horse battery")
    await guest.close()
    on_b = await connect(b.url, ticket=tokens["access_token"])
    on_a = await connect(a.url, ticket=other_tokens["access_token"])
    assert (await on_b.call(uris.USER_ME))["username"] == name
    chat = await on_a.call(uris.CHAT_CREATE_DIRECT, user_id=tokens["user_id"])
    sent = await on_a.call(uris.MESSAGE_SEND, chat_id=chat["chat_id"], client_msg_id="x1", text="across shards")
    synced = await on_b.call(uris.SYNC_GET_UPDATES, since_update_id=0)
    news = [u for u in synced["updates"] if u["type"] == "message.new"]
    assert [u["data"]["message_id"] for u in news] == [sent["message_id"]]
    assert other["user_id"] == other_tokens["user_id"]
    await on_a.close()
    await on_b.close()


async def channel_subscribers(redis: RedisClient, user_id: str) -> int:
    reply = await redis.call(lambda c: c.execute_command("PUBSUB", "NUMSUB", user_channel(user_id)))
    return int(reply[1])


@pytest_twisted.ensureDeferred
async def test_live_updates_reach_the_users_devices_on_every_shard_through_redis(two_shards, redis_url):
    """Step 2 of the scale-out plan: chat publishes each recipient's updates on a per-user Redis
    channel; the delivery of every shard the user is connected to subscribes and publishes to
    its own router."""
    a, b = two_shards.shards
    alice = await new_user(a)
    bob = await new_user(a)  # device 0 on shard A
    await add_device(b, bob)  # device 1 on shard B
    redis = RedisClient.from_url(redis_url)
    await redis.start()
    try:
        # each shard's delivery subscribes when the user's first session joins it
        deadline = time.monotonic() + 10
        while (await channel_subscribers(redis, bob.user_id), await channel_subscribers(redis, alice.user_id)) != (
            2,
            1,
        ):
            assert time.monotonic() < deadline, "the shards' delivery did not subscribe"
            await task.deferLater(reactor, 0.05, lambda: None)

        chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
        sent = [
            await alice.d.call(uris.MESSAGE_SEND, chat_id=chat["chat_id"], client_msg_id=f"m{i}", text=f"hi {i}")
            for i in range(3)
        ]
        for device in (0, 1):
            await wait_for(lambda device=device: len(bob.of_type("message.new", device)) == 3, what="message.new")
            news = bob.of_type("message.new", device)
            assert [u["data"]["message_id"] for u in news] == [m["message_id"] for m in sent]
            ids = [u["update_id"] for u in bob.durable(device)]
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids
        assert bob.durable(0) == bob.durable(1)

        await alice.d.call(uris.CHAT_TYPING, chat_id=chat["chat_id"])
        await wait_for(lambda: bob.of_type("typing", 1), what="typing on shard B")
        typing = bob.of_type("typing", 1)[0]
        assert typing["chat_id"] == chat["chat_id"] and typing["data"]["user_id"] == alice.user_id

        # the last session of a user on a shard gone: that shard unsubscribes
        await bob.devices[1].close()
        deadline = time.monotonic() + 10
        while await channel_subscribers(redis, bob.user_id) != 1:
            assert time.monotonic() < deadline, "shard B did not unsubscribe"
            await task.deferLater(reactor, 0.05, lambda: None)
        bob.devices.pop(1)
    finally:
        await redis.stop()
        await close_all(alice, bob)
