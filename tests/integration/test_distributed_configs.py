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
