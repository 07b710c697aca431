"""Contract of the push :class:`TokenStore`: every test runs against the SQLite adapter (embedded)
and the Cassandra adapter (distributed, a keyspace of its own, dropped at the end)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_twisted
from twisted.internet import reactor

from common.errors import Unavailable
from components.chat.domain import new_id
from components.push.domain import PushToken, token_key
from components.push.ports import TokenStore


class Store(TokenStore, Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@pytest.fixture(scope="module")
def push_keyspace(cassandra_location: str, new_keyspace: Callable[[], str]) -> tuple[str, int, str]:
    host, port = cassandra_location.rsplit(":", 1)
    return host, int(port), new_keyspace()  # dropped at the end of the session


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    if request.param == "sqlite":
        from components.push.adapters.sqlite import SqliteTokenStore

        path = tmp_path / "push.sqlite3"
        return lambda: SqliteTokenStore(path, reactor)
    from components.push.adapters.cassandra import CassandraTokenStore

    host, port, keyspace = request.getfixturevalue("push_keyspace")
    return lambda: CassandraTokenStore([host], port, keyspace, reactor)


@pytest_twisted.async_yield_fixture
async def opened(make_store: Callable[[], Store]) -> AsyncIterator[Callable[[], Any]]:
    stores: list[Store] = []

    async def open_one() -> Store:
        store = make_store()
        await store.start()
        stores.append(store)
        return store

    try:
        yield open_one
    finally:
        for s in stores:
            await s.stop()


@pytest_twisted.async_fixture
async def store(opened: Callable[[], Any]) -> Store:
    s: Store = await opened()
    return s


def fcm(user: str, device: str = "dev1", at: int = 1, token: str | None = None) -> PushToken:
    value = token or f"tok-{secrets.token_hex(20)}"
    return PushToken(user, device, "fcm", value, token_key("fcm", value), at)


def web(user: str, device: str = "dev1", at: int = 1) -> PushToken:
    endpoint = f"https://push.example.com/{secrets.token_hex(8)}"
    value = f'{{"endpoint":"{endpoint}","keys":{{"auth":"x","p256dh":"y"}}}}'
    return PushToken(user, device, "webpush", value, token_key("webpush", endpoint), at)


def key(tokens: list[PushToken]) -> list[tuple[str, str]]:
    return sorted((t.user_id, t.key) for t in tokens)


@pytest_twisted.ensureDeferred
async def test_put_and_read_back(store: Store) -> None:
    a, b = new_id(), new_id()
    t1, t2, t3 = fcm(a), web(a, "dev2"), fcm(b)
    for t in (t1, t2, t3):
        await store.put(t)
    assert sorted(await store.tokens_of([a]), key=lambda t: t.key) == sorted([t1, t2], key=lambda t: t.key)
    assert key(await store.tokens_of([a, b, new_id()])) == key([t1, t2, t3])
    assert await store.tokens_of([]) == []
    assert await store.tokens_of([new_id()]) == []


@pytest_twisted.ensureDeferred
async def test_put_is_an_idempotent_upsert_by_key(store: Store) -> None:
    a = new_id()
    t = fcm(a, "phone", at=1)
    await store.put(t)
    await store.put(t)
    moved = PushToken(a, "tablet", "fcm", t.token, t.key, 5)  # the same token, registered from another device
    await store.put(moved)
    assert await store.tokens_of([a]) == [moved]


@pytest_twisted.ensureDeferred
async def test_remove_one_and_remove_a_device(store: Store) -> None:
    a, b = new_id(), new_id()
    p1, p2, lap, other = fcm(a, "phone"), web(a, "phone"), fcm(a, "laptop"), fcm(b, "phone")
    for t in (p1, p2, lap, other):
        await store.put(t)
    assert await store.remove(a, lap.key) is True
    assert await store.remove(a, lap.key) is False
    assert await store.remove(b, p1.key) is False  # another user's key
    assert await store.remove_device(a, "phone") == 2
    assert await store.remove_device(a, "phone") == 0
    assert await store.tokens_of([a]) == []
    assert await store.tokens_of([b]) == [other]  # another user's device of the same name is untouched


@pytest_twisted.ensureDeferred
async def test_owners_of_a_token_follow_puts_and_removals(store: Store) -> None:
    a, b = new_id(), new_id()
    t = fcm(a, "phone")
    assert await store.owners_of(t.key) == set()
    await store.put(t)
    await store.put(PushToken(b, "phone", "fcm", t.token, t.key, 2))  # the same device's token, another user
    assert await store.owners_of(t.key) == {a, b}
    await store.remove(a, t.key)
    assert await store.owners_of(t.key) == {b}
    await store.remove_device(b, "phone")
    assert await store.owners_of(t.key) == set()


@pytest_twisted.ensureDeferred
async def test_stores_on_one_location_share_tokens(opened: Callable[[], Any]) -> None:
    first, second = await opened(), await opened()
    a = new_id()
    t = web(a)
    await first.put(t)
    assert await second.tokens_of([a]) == [t]
    await second.remove(a, t.key)
    assert await first.tokens_of([a]) == []


@pytest_twisted.ensureDeferred
async def test_many_users_at_once(store: Store) -> None:
    people = [new_id() for _ in range(30)]
    for u in people:
        await store.put(fcm(u))
    assert len(await store.tokens_of(people)) == 30


@pytest_twisted.ensureDeferred
async def test_a_stopped_store_is_unavailable(opened: Callable[[], Any]) -> None:
    s = await opened()
    await s.stop()
    with pytest.raises(Unavailable):
        await s.tokens_of([new_id()])
