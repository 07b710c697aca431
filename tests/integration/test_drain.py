"""Graceful drain of a router shard (router/drain.py, scripts/drain): two shards, users on the
first; draining it closes their sessions, paced, with messenger.close.shard_draining; they
reconnect to the other shard and sync what was sent meanwhile. Backends stay joined."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.rawsocket import WampRawSocketClientFactory
from autobahn.wamp.serializer import MsgPackSerializer
from autobahn.wamp.types import ComponentConfig
from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from realms import uris
from router.drain import CLOSE_REASON
from tests.integration.chat_helpers import close_all, new_user
from tests.integration.helpers import login
from tests.support.client import Client, JoinFailed, connect
from tests.support.node import ROOT

pytestmark = [pytest.mark.node, pytest.mark.postgres, pytest.mark.redis, pytest.mark.cassandra, pytest.mark.slow]


@pytest.fixture(scope="module")
def shards(split_nodes):
    return split_nodes("drain", shards=2)


def http(method: str, url: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def backend_join(port: int, ticket: str) -> Client:
    client = Client(ComponentConfig(realm="messenger"), ["ticket"], ticket, "backend")
    factory = WampRawSocketClientFactory(lambda *a: client, serializer=MsgPackSerializer())
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)  # type: ignore[arg-type]
    return await client.joined.addTimeout(10, reactor)


async def turned_away(url: str, **kw: Any) -> str | None:
    """Join and answer the reason the server closed the session with (at once or right after)."""
    try:
        client = await connect(url, **kw)
    except JoinFailed as e:
        return e.reason
    await client.left.addTimeout(5, reactor)
    return client.close_reason


async def backends(session: Client) -> tuple[int, int]:
    """(backend sessions joined, callees of messenger.auth.login) on the session's shard."""
    count = await session.call("wamp.session.count", ["backend"])
    reg = await session.call("wamp.registration.match", uris.AUTH_LOGIN)
    callees = await session.call("wamp.registration.count_callees", reg) if reg else 0
    return count, callees


@pytest_twisted.ensureDeferred
async def test_draining_a_shard_moves_its_users_to_the_other_one_without_losing_anything(shards):
    a, b = shards.shards
    sender = await new_user(b)
    users = [await new_user(a) for _ in range(3)]
    chats = [await sender.d.call(uris.CHAT_CREATE_DIRECT, user_id=u.user_id) for u in users]
    backend = await backend_join(a.backend_port, shards.backend_ticket)
    before = await backends(backend)
    assert before[1] >= 1
    code, state = http("GET", f"http://127.0.0.1:{a.metrics_port}/drain")
    assert code == 200 and state["draining"] is False and state["sessions_left"] == 3

    # 4 closes per second: the three users go at 0, 0.25 and 0.5 s
    started = time.monotonic()
    code, state = http("POST", f"http://127.0.0.1:{a.metrics_port}/drain?rate=4&grace=0")
    assert code == 202 and state["draining"] is True
    sent = [
        await sender.d.call(uris.MESSAGE_SEND, chat_id=c["chat_id"], client_msg_id=f"drain{i}", text="meanwhile")
        for i, c in enumerate(chats)
    ]

    closed_at = []
    for u in users:
        await u.d.left.addTimeout(10, reactor)
        closed_at.append(time.monotonic() - started)
        assert u.d.close_reason == CLOSE_REASON
    assert closed_at[-1] - closed_at[0] >= 0.3, closed_at  # paced, not all at once

    # the shard is out of the balancer and empty; new sessions are turned away
    status, index = http("GET", f"http://127.0.0.1:{a.ws_port}/healthz")
    assert status == 503 and index["draining"] is True
    deadline = time.monotonic() + 5
    while (state := http("GET", f"http://127.0.0.1:{a.metrics_port}/drain")[1])["sessions_left"] != 0:
        assert time.monotonic() < deadline, state
        await task.deferLater(reactor, 0.05, lambda: None)
    assert state["closing"] is True and state["closed"] >= 3
    assert await turned_away(a.url) == CLOSE_REASON  # a guest (to log in)
    assert await turned_away(a.url, ticket=users[0].tokens[0]["access_token"]) == CLOSE_REASON

    # the users come back on the other shard and sync what was sent during the drain
    back = []
    for u, message in zip(users, sent, strict=True):
        client = await connect(b.url, ticket=u.tokens[0]["access_token"])
        back.append(time.monotonic() - started)
        synced = await client.call(uris.SYNC_GET_UPDATES, since_update_id=0)
        news = [x["data"]["message_id"] for x in synced["updates"] if x["type"] == "message.new"]
        assert news == [message["message_id"]]
        u.devices[0] = client
    assert (await login(b, users[0].username))["user_id"] == users[0].user_id
    print(f"closed at {[round(t, 2) for t in closed_at]} s, back on shard 1 at {[round(t, 2) for t in back]} s")

    # backends on the drained shard are untouched; the sender's shard never noticed
    assert await backends(backend) == before
    assert sender.d.is_attached()
    assert http("GET", f"http://127.0.0.1:{b.ws_port}/healthz")[0] == 200
    await backend.close()
    await close_all(sender, *users)


@pytest_twisted.ensureDeferred
async def test_drain_script_waits_until_the_shard_is_empty_and_can_cancel(shards):
    a, _ = shards.shards

    def run(*args: str) -> Deferred[subprocess.CompletedProcess[str]]:
        argv = [sys.executable, str(ROOT / "scripts" / "drain"), "--port", str(a.metrics_port), *args]
        # in a thread: the reactor must keep running for the clients to answer the close
        return threads.deferToThread(subprocess.run, argv, capture_output=True, text=True, timeout=30)

    assert (await run("--cancel")).returncode == 0  # whatever an earlier test left
    user = await new_user(a)
    result = await run("--rate", "100", "--grace", "0", "--wait", "--interval", "0.1", "--timeout", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drained in" in result.stdout
    await user.d.left.addTimeout(5, reactor)
    assert user.d.close_reason == CLOSE_REASON
    status = json.loads((await run("--status")).stdout)
    assert status["draining"] is True and status["sessions_left"] == 0

    assert (await run("--cancel")).returncode == 0
    assert http("GET", f"http://127.0.0.1:{a.ws_port}/healthz")[0] == 200
    guest = await connect(a.url)  # serving again: a new session stays joined
    await task.deferLater(reactor, 0.3, lambda: None)
    assert guest.is_attached()
    await guest.close()
