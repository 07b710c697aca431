"""Contract suite of the ``PresenceStore`` port (``components.delivery.ports``).

Every test runs against the SQLite adapter (a fresh file per test) and the Redis adapter (a
unique key prefix per test, removed afterwards). The port's docstrings are the contract.

Redis: ``MESSENGER_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:56379/0``, see
``scripts/services.sh up``); the suite fails, never skips, when it is unset or Redis is down.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet import reactor as _reactor

from common.adapters.redis import RedisClient
from components.delivery.adapters.redis import RedisPresenceStore
from components.delivery.adapters.sqlite import SqlitePresenceStore
from components.delivery.ports import MAX_AT_MS, PresenceStore
from tests.support.env import REDIS_URL_ENV, redis_url

REACTOR: Any = _reactor
NOW = 1_700_000_000_000


def check_redis_reachable(url: str) -> None:
    client = RedisClient.from_url(url)  # only to parse the URL
    try:
        socket.create_connection((client.host, client.port), timeout=3).close()
    except OSError as e:
        pytest.fail(f"Redis at {url} is not reachable ({e}); start it with `scripts/services.sh up`", pytrace=False)


# -- where the adapter under test keeps its data -------------------------------------------------


@dataclass
class Location:
    """One adapter at one location; ``open()`` starts one more store instance on it and
    ``close()`` stops them all and removes what the test left behind."""

    kind: str
    make: Callable[[], PresenceStore]
    cleanup: Callable[[], Awaitable[None]] | None = None
    stores: list[PresenceStore] = field(default_factory=list)

    async def open(self) -> PresenceStore:
        store = self.make()
        await store.start()
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.stop()
        if self.cleanup is not None:
            await self.cleanup()


def sqlite_location(tmp_path: Path) -> Location:
    path = tmp_path / "db" / "presence.sqlite3"

    def make() -> PresenceStore:
        return SqlitePresenceStore(path, REACTOR)  # also checks, statically, that the adapter fits the port

    return Location("sqlite", make)


def redis_location() -> Location:
    url = redis_url()
    check_redis_reachable(url)
    prefix = f"messenger-test:{uuid.uuid4().hex}:"
    clients: list[RedisClient] = []

    def make() -> PresenceStore:
        client = RedisClient.from_url(url)
        clients.append(client)
        return RedisPresenceStore(client, prefix=prefix)

    async def cleanup() -> None:
        try:  # leave nothing behind in the shared server
            if clients:
                keys = await clients[0].call(lambda c: c.keys(f"{prefix}*"), idempotent=True)
                if keys:
                    await clients[0].call(lambda c: c.delete(keys), idempotent=True)
        finally:
            for client in clients:
                await client.stop()

    return Location("redis", make, cleanup)


ADAPTERS = [pytest.param("sqlite", id="sqlite"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]


@pytest.fixture(params=ADAPTERS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    # A plain fixture on purpose: with pytest-twisted 1.14 on pytest 9, an async fixture that
    # raises leaves its fixture definition half set up, and every later test using it errors.
    # So the checks that may fail (no URL, Redis down) happen here.
    return sqlite_location(tmp_path) if request.param == "sqlite" else redis_location()


@pytest_twisted.async_yield_fixture
async def backend(location: Location) -> AsyncIterator[Location]:
    try:
        yield location
    finally:
        await location.close()


@pytest_twisted.async_fixture
async def store(backend: Location) -> PresenceStore:
    return await backend.open()


def new_user() -> str:
    return f"u-{uuid.uuid4().hex}"


# -- contract ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_set_then_get(store: PresenceStore) -> None:
    alice, bob = new_user(), new_user()
    await store.set_last_seen(alice, NOW)
    await store.set_last_seen(bob, NOW + 5)
    assert await store.get_last_seen([alice, bob]) == {alice: NOW, bob: NOW + 5}
    assert await store.get_last_seen([bob]) == {bob: NOW + 5}
    got = await store.get_last_seen([alice])
    assert type(got[alice]) is int


@pytest_twisted.ensureDeferred
async def test_last_seen_never_moves_backwards(store: PresenceStore) -> None:
    user = new_user()
    await store.set_last_seen(user, NOW)
    await store.set_last_seen(user, NOW - 1)
    assert await store.get_last_seen([user]) == {user: NOW}
    await store.set_last_seen(user, NOW)  # the same value again: no change
    assert await store.get_last_seen([user]) == {user: NOW}
    await store.set_last_seen(user, NOW + 1)
    assert await store.get_last_seen([user]) == {user: NOW + 1}


@pytest_twisted.ensureDeferred
async def test_max_is_numeric_across_digit_counts_and_at_the_edges(store: PresenceStore) -> None:
    """Not a string comparison: 1000 > 999 and 10 > 9, and 0 .. MAX_AT_MS are kept exactly."""
    cases = [
        ([999, 1000], 1000),
        ([1000, 999], 1000),
        ([9, 10, 2], 10),
        ([0], 0),
        ([MAX_AT_MS, 0, MAX_AT_MS - 1], MAX_AT_MS),
        ([MAX_AT_MS - 1, MAX_AT_MS], MAX_AT_MS),
        ([2**53 + 1, 2**53], 2**53 + 1),  # beyond a double's exact integers
        ([2**53, 2**53 + 1], 2**53 + 1),
    ]
    for values, expected in cases:
        user = new_user()
        for v in values:
            await store.set_last_seen(user, v)
        assert await store.get_last_seen([user]) == {user: expected}, values


@pytest_twisted.ensureDeferred
async def test_unknown_users_are_left_out(store: PresenceStore) -> None:
    known, unknown = new_user(), new_user()
    await store.set_last_seen(known, NOW)
    assert await store.get_last_seen([unknown, known, new_user()]) == {known: NOW}
    assert await store.get_last_seen([unknown]) == {}
    assert await store.get_last_seen([]) == {}


@pytest_twisted.ensureDeferred
async def test_many_ids_at_once(store: PresenceStore) -> None:
    users = [new_user() for _ in range(500)]
    expected = {u: NOW + i for i, u in enumerate(users)}
    await defer.gatherResults([defer.ensureDeferred(store.set_last_seen(u, t)) for u, t in expected.items()])
    unknown = [new_user() for _ in range(100)]
    assert await store.get_last_seen(users) == expected
    assert await store.get_last_seen(unknown + users[::-1] + users[:10]) == expected  # any order, duplicates


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_keep_the_largest(store: PresenceStore) -> None:
    user = new_user()
    values = [NOW + (i * 7919) % 101 for i in range(101)]  # 0..100 shuffled
    await defer.gatherResults([defer.ensureDeferred(store.set_last_seen(user, v)) for v in values])
    assert await store.get_last_seen([user]) == {user: NOW + 100}


@pytest_twisted.ensureDeferred
async def test_last_seen_survives_a_restart(backend: Location) -> None:
    first = await backend.open()
    user = new_user()
    await first.set_last_seen(user, NOW)
    await first.stop()
    second = await backend.open()  # a new instance on the same data, as after a restart
    assert await second.get_last_seen([user]) == {user: NOW}
    await second.set_last_seen(user, NOW - 10)
    assert await second.get_last_seen([user]) == {user: NOW}


@pytest_twisted.ensureDeferred
async def test_invalid_at_ms_is_refused_and_nothing_is_stored(store: PresenceStore) -> None:
    user = new_user()
    for bad in (-1, MAX_AT_MS + 1, 1.5, "1", True, None):
        with pytest.raises(ValueError):
            await store.set_last_seen(user, bad)  # type: ignore[arg-type]
    assert await store.get_last_seen([user]) == {}


# -- model-based (Hypothesis) --------------------------------------------------------------------

NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
TIMES = st.one_of(st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=MAX_AT_MS))


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(NAMES, min_size=1, max_size=5, unique=True),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.integers(min_value=0, max_value=4), TIMES),
            st.tuples(st.just("get"), st.lists(st.integers(min_value=0, max_value=6), max_size=8)),
        ),
        max_size=30,
    ),
)
@pytest_twisted.ensureDeferred
async def test_sets_and_gets_match_a_dict_model(
    store: PresenceStore, names: list[str], ops: list[tuple[Any, ...]]
) -> None:
    ns = uuid.uuid4().hex  # a fresh key space per example
    users = [f"{ns}:{n}" for n in names] + [f"{ns}!never-set-1", f"{ns}!never-set-2"]
    model: dict[str, int] = {}
    for op in ops:
        if op[0] == "set":
            _, i, at = op
            user = users[i % len(names)]
            await store.set_last_seen(user, at)
            model[user] = max(model.get(user, at), at)
        else:
            asked = [users[i % len(users)] for i in op[1]]
            assert await store.get_last_seen(asked) == {u: model[u] for u in asked if u in model}
    assert await store.get_last_seen(users) == model


# -- set-up ----------------------------------------------------------------------------------------


def test_missing_redis_url_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"scripts/services\.sh up"):
        redis_url()
