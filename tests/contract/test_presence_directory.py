"""Contract suite of the ``PresenceDirectory`` port (``components.delivery.ports``): who is
online across router shards, with shard heartbeats that expire.

Runs against the in-memory adapter (time from a ``FixedClock``) and the Redis adapter (a unique
key prefix per test, real time: heartbeats of 150 ms). Includes a Hypothesis model test: any
sequence of joins, leaves, heartbeats, expiries and reaps answers what a plain model answers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet import task

from common.adapters.redis import RedisClient
from common.clock import FixedClock
from components.delivery.adapters.memory import MemoryPresenceDirectory
from components.delivery.adapters.redis import RedisPresenceDirectory
from components.delivery.ports import PresenceDirectory
from tests.contract.test_presence_store import check_redis_reachable
from tests.support.env import redis_url

REACTOR: Any = _reactor
TTL_MS = 150


@dataclass
class Backend:
    kind: str
    directory: PresenceDirectory
    clock: FixedClock | None = None
    clients: list[RedisClient] = field(default_factory=list)
    prefix: str = ""

    async def expire(self) -> None:
        """Let every heartbeat given so far expire."""
        if self.clock is not None:
            self.clock.advance(TTL_MS + 1)
        else:
            await task.deferLater(REACTOR, (TTL_MS + 60) / 1000, lambda: None)

    async def another(self) -> PresenceDirectory:
        """A second instance on the same data (another delivery process)."""
        if self.clock is not None:
            return self.directory  # one process: the same object
        client = RedisClient.from_url(redis_url())
        self.clients.append(client)
        other = RedisPresenceDirectory(client, prefix=self.prefix)
        await other.start()
        return other

    async def close(self) -> None:
        if not self.clients:
            return
        try:
            keys = await self.clients[0].call(lambda c: c.keys(f"{self.prefix}*"), idempotent=True)
            if keys:
                await self.clients[0].call(lambda c: c.delete(keys), idempotent=True)
        finally:
            for client in self.clients:
                await client.stop()


@pytest.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        check_redis_reachable(redis_url())
    return str(request.param)


async def open_backend(kind: str) -> Backend:
    if kind == "memory":
        clock = FixedClock()
        return Backend("memory", MemoryPresenceDirectory(clock), clock=clock)
    client = RedisClient.from_url(redis_url())
    prefix = f"messenger-test:{uuid.uuid4().hex}:"
    directory = RedisPresenceDirectory(client, prefix=prefix)
    await directory.start()
    return Backend("redis", directory, clients=[client], prefix=prefix)


@pytest_twisted.async_yield_fixture
async def backend(kind: str) -> AsyncIterator[Backend]:
    b = await open_backend(kind)
    try:
        yield b
    finally:
        await b.close()


def new_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


@pytest_twisted.ensureDeferred
async def test_first_session_anywhere_brings_the_user_online_and_second_shard_does_not(backend: Backend) -> None:
    d, a, b, user = backend.directory, new_id("shard"), new_id("shard"), new_id("user")
    assert await d.heartbeat(a, TTL_MS * 100) is False
    assert await d.heartbeat(a, TTL_MS * 100) is True
    await d.heartbeat(b, TTL_MS * 100)
    assert await d.online([user]) == set()
    assert await d.join(a, user) is True
    assert await d.join(a, user) is False  # already recorded on this shard
    assert await d.join(b, user) is False  # already online through shard a
    assert await d.online([user, new_id("user")]) == {user}


@pytest_twisted.ensureDeferred
async def test_user_goes_offline_only_when_the_last_shard_lets_go(backend: Backend) -> None:
    d, a, b, user = backend.directory, new_id("shard"), new_id("shard"), new_id("user")
    for s in (a, b):
        await d.heartbeat(s, TTL_MS * 100)
        await d.join(s, user)
    assert await d.leave(a, user) is False
    assert await d.online([user]) == {user}
    assert await d.leave(b, user) is True
    assert await d.online([user]) == set()
    assert await d.leave(b, user) is False  # twice: nothing more happens


@pytest_twisted.ensureDeferred
async def test_a_dead_shards_users_are_offline_and_reaped_exactly_once(backend: Backend) -> None:
    d, dead, live = backend.directory, new_id("shard"), new_id("shard")
    only_dead, on_both = new_id("user"), new_id("user")
    await d.heartbeat(dead, TTL_MS)
    await d.join(dead, only_dead)
    await d.join(dead, on_both)
    await backend.expire()
    await d.heartbeat(live, TTL_MS * 100)
    await d.join(live, on_both)
    # expired: offline at once, even before anyone reaps
    assert await d.online([only_dead, on_both]) == {on_both}
    other = await backend.another()
    first, second = await d.reap(), await other.reap()
    assert sorted(first + second) == [only_dead]
    assert await d.reap() == []
    # the shard comes back (its heartbeat lapsed): it is told so, and its users join again
    assert await d.heartbeat(dead, TTL_MS * 100) is False
    assert await d.join(dead, only_dead) is True


@pytest_twisted.ensureDeferred
async def test_online_answers_many_users_in_one_call(backend: Backend) -> None:
    d, shard = backend.directory, new_id("shard")
    await d.heartbeat(shard, TTL_MS * 100)
    users = [new_id("user") for _ in range(1200)]
    for u in users[::2]:
        await d.join(shard, u)
    assert await d.online(users + users[:3]) == set(users[::2])


@pytest_twisted.ensureDeferred
async def test_heartbeat_rejects_a_non_positive_ttl(backend: Backend) -> None:
    with pytest.raises(ValueError):
        await backend.directory.heartbeat(new_id("shard"), 0)


# -- model ---------------------------------------------------------------------------------------

SHARDS = ["s0", "s1", "s2"]
USERS = ["u0", "u1", "u2"]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("beat"), st.sampled_from(SHARDS)),
        st.tuples(st.just("join"), st.sampled_from(SHARDS), st.sampled_from(USERS)),
        st.tuples(st.just("leave"), st.sampled_from(SHARDS), st.sampled_from(USERS)),
        st.tuples(st.just("expire"), st.sampled_from(SHARDS)),
        st.tuples(st.just("reap")),
    ),
    max_size=30,
)


class Model:
    def __init__(self) -> None:
        self.alive: set[str] = set()
        self.known: set[str] = set()  # beat and not reaped
        self.has: dict[str, set[str]] = {}  # shard -> users

    def online(self, user: str, except_shard: str | None = None) -> bool:
        return any(user in self.has.get(s, set()) for s in self.alive if s != except_shard)

    def apply(self, op: tuple[Any, ...]) -> Any:
        if op[0] == "beat":
            was = op[1] in self.alive
            self.alive.add(op[1])
            self.known.add(op[1])
            return was
        if op[0] == "expire":
            self.alive.discard(op[1])
            return None
        if op[0] == "join":
            _, shard, user = op
            elsewhere = self.online(user, shard)
            known_here = user in self.has.get(shard, set()) and shard in self.alive
            self.has.setdefault(shard, set()).add(user)
            return not elsewhere and not known_here
        if op[0] == "leave":
            _, shard, user = op
            if user not in self.has.get(shard, set()):
                return False
            self.has[shard].discard(user)
            return not self.online(user)
        gone = []
        for shard in sorted(self.known - self.alive):
            for user in sorted(self.has.pop(shard, set())):
                if not self.online(user):
                    gone.append(user)
            self.known.discard(shard)
        return sorted(gone)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=ops)
@pytest_twisted.ensureDeferred
async def test_any_sequence_answers_like_the_model(program: list[tuple[Any, ...]]) -> None:
    # memory only (expiry by the clock, exact); the Redis adapter shares the rules and the
    # tests above pin it to the same answers
    clock = FixedClock()
    d = MemoryPresenceDirectory(clock)
    model = Model()
    for op in program:
        want = model.apply(op)
        if op[0] == "beat":
            got: Any = await d.heartbeat(op[1], 1_000_000)
        elif op[0] == "expire":
            # expire just this shard: move its heartbeat into the past
            if op[1] in d._expires:
                d._expires[op[1]] = clock.now_ms()
            got = None
        elif op[0] == "join":
            got = await d.join(op[1], op[2])
        elif op[0] == "leave":
            got = await d.leave(op[1], op[2])
        else:
            got = sorted(await d.reap())
        assert got == want, op
        assert await d.online(USERS) == {u for u in USERS if model.online(u)}
