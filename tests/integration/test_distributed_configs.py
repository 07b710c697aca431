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

from realms import uris
from tests.integration.helpers import user_session
from tests.support.client import Client, JoinFailed, connect
from tests.support.node import SplitNodes

pytestmark = [pytest.mark.node, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def backend_ticket():
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def split(tmp_path_factory, distributed_env, backend_ticket):
    env, extra = distributed_env()
    env["MESSENGER_BACKEND_TICKET"] = backend_ticket
    nodes = SplitNodes(tmp_path_factory.mktemp("split"), env, extra).start()
    yield nodes
    nodes.stop()


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
async def test_backend_transport_needs_the_ticket_and_clients_cannot_become_backend(split, backend_ticket):
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
def two_shards(tmp_path_factory, distributed_env, backend_ticket):
    env, extra = distributed_env()
    env["MESSENGER_BACKEND_TICKET"] = backend_ticket
    nodes = SplitNodes(tmp_path_factory.mktemp("shards"), env, extra, shards=2).start()
    yield nodes
    nodes.stop()


@pytest_twisted.ensureDeferred
async def test_components_join_every_shard_so_calls_are_served_on_any(two_shards):
    """Step 1 of the scale-out plan (docs/design/scale-out.md). Live events still reach only
    the users on the shard where the change was made; users elsewhere get it through sync
    until the Redis bus lands (issue 4)."""
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
