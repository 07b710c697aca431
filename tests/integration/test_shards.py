"""Three router shards on loopback (the shipped distributed configs, one components process
joined to every shard): users on different shards chat, presence and sign-out span shards,
a shard killed mid-conversation loses nothing acknowledged, and a Redis restart mid-run is
healed (docs/design/scale-out.md)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from realms import uris
from tests.integration.chat_helpers import User, add_device, close_all, new_user, wait_for
from tests.integration.helpers import login
from tests.support.client import Client, JoinFailed, connect
from tests.support.node import SplitNodes, free_port, wait_port

pytestmark = [pytest.mark.node, pytest.mark.postgres, pytest.mark.redis, pytest.mark.cassandra, pytest.mark.slow]

# fast presence timings, so a dead shard's users go offline within the test's patience
PRESENCE = {"ttl_ms": 2000, "heartbeat_every_s": 0.5, "reap_every_s": 0.5}


def start_split(workdir: Path, env: dict[str, str], extra: dict[str, Any], shards: int) -> SplitNodes:
    return SplitNodes(workdir, env, {**extra, "presence": PRESENCE}, shards=shards).start()


@pytest.fixture(scope="module")
def three(split_nodes: Any) -> SplitNodes:
    nodes: SplitNodes = split_nodes("three", shards=3, presence=PRESENCE)
    return nodes


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def presence_events(user: User, about: str, device: int = 0) -> list[dict[str, Any]]:
    return [e["data"] for e in user.of_type("presence", device) if e["data"]["user_id"] == about]


def consecutive(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids))) if ids else True


async def direct_chat(a: User, b: User) -> str:
    chat = await a.d.call(uris.CHAT_CREATE_DIRECT, user_id=b.user_id)
    return str(chat["chat_id"])


@pytest_twisted.ensureDeferred
async def test_users_on_three_different_shards_chat_live_in_order(three: SplitNodes) -> None:
    s0, s1, s2 = three.shards
    alice, bob, carol = await new_user(s0), await new_user(s1), await new_user(s2)
    try:
        group = await alice.d.call(
            uris.CHAT_CREATE_GROUP, title="three shards", member_ids=[bob.user_id, carol.user_id]
        )
        sent = []
        for i, sender in enumerate([alice, bob, carol] * 3):
            msg = await sender.d.call(uris.MESSAGE_SEND, chat_id=group["chat_id"], client_msg_id=f"g{i}", text=f"m{i}")
            sent.append(msg["message_id"])
        for user in (alice, bob, carol):
            await wait_for(lambda user=user: len(user.of_type("message.new")) == len(sent), what="every message")
            assert [e["data"]["message_id"] for e in user.of_type("message.new")] == sent
            assert consecutive([e["update_id"] for e in user.durable()])
    finally:
        await close_all(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_presence_spans_shards_online_until_the_last_device_on_any_shard_leaves(three: SplitNodes) -> None:
    s0, s1, s2 = three.shards
    alice, bob = await new_user(s0), await new_user(s1)
    try:
        await direct_chat(alice, bob)
        await add_device(s2, bob)  # bob on shards 1 and 2
        await bob.devices[0].close()  # leaves shard 1: still online through shard 2
        bob.devices.pop(0)
        answer = await alice.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id])
        assert answer["presence"][bob.user_id]["online"] is True
        await sleep(0.5)
        assert not [p for p in presence_events(alice, bob.user_id) if not p["online"]]

        before = int(time.time() * 1000)
        await bob.devices[0].close()  # the last one
        bob.devices.pop(0)
        await wait_for(lambda: any(not p["online"] for p in presence_events(alice, bob.user_id)), what="offline event")
        gone = [p for p in presence_events(alice, bob.user_id) if not p["online"]][-1]
        assert gone["last_seen"] >= before
        answer = await alice.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id])
        assert answer["presence"][bob.user_id] == {"online": False, "last_seen": gone["last_seen"]}

        await add_device(s2, bob)  # back, on another shard than alice
        await wait_for(lambda: presence_events(alice, bob.user_id)[-1]["online"], what="online event across shards")
    finally:
        await close_all(alice, bob)


@pytest_twisted.ensureDeferred
async def test_logout_on_one_shard_closes_the_devices_sessions_on_every_shard(three: SplitNodes) -> None:
    s0, s1, s2 = three.shards
    user = await new_user(s0)
    tokens = user.tokens[0]
    on_1 = await connect(s1.url, ticket=tokens["access_token"])  # the same device, two more shards
    on_2 = await connect(s2.url, ticket=tokens["access_token"])
    other_device = await add_device(s1, user)  # another device: stays
    try:
        await on_2.call(uris.AUTH_LOGOUT)
        for client in (user.devices[0], on_1, on_2):
            await client.left.addTimeout(5, reactor)
            assert client.close_reason == "messenger.close.signed_out"
        assert (await other_device.call(uris.USER_ME))["user_id"] == user.user_id
    finally:
        await other_device.close()


async def reconnect(url: str, token: str, within: float = 10.0) -> Client:
    deadline = time.monotonic() + within
    while True:
        try:
            return await connect(url, ticket=token)
        except (JoinFailed, ConnectionError, OSError):
            assert time.monotonic() < deadline, f"could not reconnect to {url}"
            await sleep(0.1)


@pytest_twisted.ensureDeferred
async def test_killing_a_shard_mid_conversation_loses_nothing_acknowledged(three: SplitNodes) -> None:
    s0, s1, s2 = three.shards
    alice, bob, carol = await new_user(s0), await new_user(s1), await new_user(s1)
    try:
        chat = await direct_chat(alice, bob)
        await direct_chat(alice, carol)
        acked: list[str] = []
        bob_acked: list[str] = []

        async def alice_sends() -> None:
            for i in range(40):
                try:
                    msg = await alice.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id=f"a{i}", text=f"a{i}")
                    acked.append(msg["message_id"])
                except Exception:  # acknowledged or not: only acknowledged ones count
                    pass
                await sleep(0.025)

        async def bob_sends() -> None:
            for i in range(40):
                try:
                    msg = await bob.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id=f"b{i}", text=f"b{i}")
                    bob_acked.append(msg["message_id"])
                except Exception:  # his shard dies under him
                    return
                await sleep(0.025)

        sending = [defer.ensureDeferred(alice_sends()), defer.ensureDeferred(bob_sends())]
        await wait_for(lambda: len(acked) >= 10, what="ten messages")
        seen = [e["update_id"] for e in bob.durable()]
        killed_at = time.monotonic()
        three.kill_router(1)
        await bob.d.disconnected.addTimeout(10, reactor)
        # bob's client reconnects (through the balancer: on another shard) and syncs
        again = await reconnect(s2.url, bob.tokens[0]["access_token"])
        since = max(seen) if seen else 0
        synced = await again.call(uris.SYNC_GET_UPDATES, since_update_id=since)
        caught_up = time.monotonic() - killed_at
        # a call that was in flight on the killed shard may never be answered (the client
        # library's business); only acknowledged messages count, so wait for the rest, bounded
        await wait_for(lambda: sending[0].called, within=20, what="alice's sends")
        await wait_for(lambda: sending[1].called or len(bob_acked) > 0, within=20, what="bob's sends")
        synced2 = await again.call(uris.SYNC_GET_UPDATES, since_update_id=since)
        got = [u["data"]["message_id"] for u in synced2["updates"] if u["type"] == "message.new"]
        live = [e["data"]["message_id"] for e in bob.of_type("message.new")]
        have = set(got) | set(live)
        assert [m for m in acked if m not in have] == [], "acknowledged messages missing on bob's side"
        assert consecutive([u["update_id"] for u in synced2["updates"]])
        history = await alice.d.call(uris.MESSAGE_HISTORY, chat_id=chat, limit=100)
        in_history = {m["message_id"] for m in history["messages"]}
        assert set(bob_acked) <= in_history and set(acked) <= in_history
        assert synced["updates"] is not None
        print(f"bob back on another shard and caught up {caught_up:.2f} s after his shard was killed")
        assert caught_up < 5.0
        await again.close()

        # carol stayed away: her shard stopped beating, so she goes offline for alice
        await wait_for(
            lambda: any(not p["online"] for p in presence_events(alice, carol.user_id)),
            within=PRESENCE["ttl_ms"] / 1000 + 5,
            what="carol offline after her shard died",
        )
    finally:
        bob.devices, carol.devices = [], []
        await close_all(alice)
        three.start_router(1)


# -- Redis restarted mid-run -----------------------------------------------------------------------


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen([*argv, "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_and_shards(tmp_path: Path, distributed_env: Any) -> Iterator[tuple[PrivateRedis, SplitNodes]]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    env, extra = distributed_env()
    env["MESSENGER_REDIS_URL"] = redis.url
    nodes = start_split(tmp_path / "nodes", env, extra, 2)
    try:
        yield redis, nodes
    finally:
        nodes.stop()
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_a_redis_restart_mid_run_resumes_delivery_and_heals_the_gap(
    redis_and_shards: tuple[PrivateRedis, SplitNodes],
) -> None:
    redis, nodes = redis_and_shards
    s0, s1 = nodes.shards
    alice, bob = await new_user(s0), await new_user(s1)
    try:
        chat = await direct_chat(alice, bob)
        first = await alice.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id="r0", text="before")
        await wait_for(lambda: len(bob.of_type("message.new")) == 1, what="live before the restart")

        redis.stop()  # everything Redis held is gone: subscriptions, presence, limits
        during = [
            await alice.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id=f"r{i}", text="during")
            for i in range(1, 4)
        ]  # accepted: Cassandra is the truth, the send limit holds per process meanwhile
        redis.start()
        restarted_at = time.monotonic()

        # once the feed has re-subscribed, a new message arrives live and the gap before it is
        # filled from the store, in order
        sent = [first["message_id"]] + [m["message_id"] for m in during]
        for i in range(4, 80):
            msg = await alice.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id=f"r{i}", text="after")
            sent.append(msg["message_id"])
            if bob.of_type("message.new")[-1]["data"]["message_id"] == msg["message_id"]:
                break
            await sleep(0.25)
        resumed = time.monotonic() - restarted_at
        await wait_for(lambda: len(bob.of_type("message.new")) == len(sent), what="gap healed")
        assert [e["data"]["message_id"] for e in bob.of_type("message.new")] == sent
        assert consecutive([e["update_id"] for e in bob.durable()])
        print(f"live delivery resumed {resumed:.1f} s after Redis came back")

        # presence was lost with Redis; the shards record their users again
        deadline = time.monotonic() + 5
        while not (await alice.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id]))["presence"][bob.user_id]["online"]:
            assert time.monotonic() < deadline, "bob not online again after the Redis restart"
            await sleep(0.2)
        tokens = await login(s1, bob.username)  # type: ignore[arg-type]  # and auth works again
        assert tokens["user_id"] == bob.user_id
    finally:
        await close_all(alice, bob)


# -- several components processes on one shard ----------------------------------------------------


@pytest.fixture
def two_processes(tmp_path: Path, distributed_env: Any) -> Iterator[SplitNodes]:
    env, extra = distributed_env()
    nodes = start_split(tmp_path, env, extra, 1)
    try:
        second = nodes.add_components()
        deadline = time.monotonic() + 60
        while "delivery component ready" not in second.log_text():
            assert time.monotonic() < deadline and not second.exited(), second.log_text()[-3000:]
            time.sleep(0.1)
        yield nodes
    finally:
        nodes.stop()


@pytest_twisted.ensureDeferred
async def test_with_two_components_processes_one_delivery_leads_and_the_other_takes_over(
    two_processes: SplitNodes,
) -> None:
    nodes = two_processes
    (shard,) = nodes.shards
    assert "standby" in nodes.more_components[0].log_text()
    alice, bob = await new_user(shard), await new_user(shard)
    try:
        chat = await direct_chat(alice, bob)
        sent = [
            (await alice.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id=f"p{i}", text="x"))["message_id"]
            for i in range(5)
        ]
        await wait_for(lambda: len(bob.of_type("message.new")) >= len(sent), what="live")
        await sleep(0.3)
        assert [e["data"]["message_id"] for e in bob.of_type("message.new")] == sent  # once each, not twice

        nodes.components.kill()  # the leader's process dies; the standby takes the lead
        killed_at = time.monotonic()
        deadline = killed_at + 15
        while True:
            try:
                msg = await alice.d.call(uris.MESSAGE_SEND, chat_id=chat, client_msg_id=f"p{len(sent)}", text="y")
            except Exception:  # the dead process still held some registrations for a moment
                await sleep(0.2)
                continue
            sent.append(msg["message_id"])
            await sleep(0.2)
            if bob.of_type("message.new")[-1]["data"]["message_id"] == msg["message_id"]:
                break
            assert time.monotonic() < deadline, nodes.more_components[0].log_text()[-3000:]
        print(f"live delivery back {time.monotonic() - killed_at:.1f} s after the leading process was killed")
        synced = await bob.d.call(uris.SYNC_GET_UPDATES, since_update_id=0)
        got = [u["data"]["message_id"] for u in synced["updates"] if u["type"] == "message.new"]
        assert got == sent
    finally:
        await close_all(alice, bob)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.cassandra
def test_a_components_process_started_before_its_router_joins_it_when_it_comes_up(tmp_path, distributed_env):
    """Autobahn retries only after a first successful connection: a components process that
    starts while its shard is down must keep trying, not give up ("hit stop")."""
    env, extra = distributed_env()
    nodes = start_split(tmp_path, env, extra, 1)
    try:
        nodes.kill_router(0)
        late = nodes.add_components()
        time.sleep(2.0)  # several refused connections
        assert "hit stop" not in late.log_text() and not late.exited()
        nodes.start_router(0)
        deadline = time.monotonic() + 60
        while late.log_text().count("component ready") < 3:  # auth, chat, delivery (and more)
            assert time.monotonic() < deadline and not late.exited(), late.log_text()[-3000:]
            time.sleep(0.1)
    finally:
        nodes.stop()
