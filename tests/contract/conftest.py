"""Shared fixtures of the contract suites: each port's adapters behind one parametrized fixture.

``store`` is an :class:`AccountStore` + :class:`KeyStore`, once per adapter (ids ``sqlite`` and
``postgres``). SQLite cases use a file under ``tmp_path``; Postgres cases use a schema of their
own in the database named by ``MESSENGER_TEST_PG_DSN``, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg2
import psycopg2.extensions
import pytest
import pytest_twisted
from twisted.internet import reactor

from components.auth.adapters.postgres import PostgresAccountStore
from components.auth.adapters.sqlite import SqliteAccountStore
from components.auth.ports import AccountStore, KeyStore

PG_DSN_ENV = "MESSENGER_TEST_PG_DSN"
PG_DSN_EXAMPLE = "postgresql://messenger:messenger@127.0.0.1:55432/messenger_test"


class Store(AccountStore, KeyStore, Protocol):
    """What the contract suite drives: both ports plus the lifecycle."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def sqlite_store(path: Path) -> Store:
    return SqliteAccountStore(path, reactor)  # also checks, statically, that the adapter fits the ports


def postgres_store(dsn: str, schema: str) -> Store:
    return PostgresAccountStore(dsn, reactor, schema=schema)


@dataclass
class Backend:
    """One adapter at one location; ``open()`` starts one more store instance on it."""

    kind: str
    make: Callable[[], Store]
    stores: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        store = self.make()
        await store.start()
        self.stores.append(store)
        return store


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The Postgres DSN of the test database; fails (never skips) when it is missing or down."""
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        pytest.fail(
            f"{PG_DSN_ENV} is not set: start the services with `scripts/services.sh up` and export "
            f"{PG_DSN_ENV}={PG_DSN_EXAMPLE} (or deselect with -m 'not postgres')",
            pytrace=False,
        )
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.Error as e:
        pytest.fail(
            f"cannot reach the Postgres of {PG_DSN_ENV}: {e}; start it with `scripts/services.sh up`", pytrace=False
        )
    return dsn


@pytest.fixture(scope="session")
def pg_admin(pg_dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """A plain blocking connection for test set-up: dropping schemas, killing backends."""
    conn = psycopg2.connect(pg_dsn, application_name="messenger-test-admin")
    conn.autocommit = True
    yield conn
    conn.close()


def drop_schema(admin: psycopg2.extensions.connection, schema: str) -> None:
    with admin.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]
)
def backend_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Where the adapter under test keeps its data. A plain fixture on purpose: a pytest-twisted
    async fixture that raises during set-up breaks every later use of that fixture, so the
    checks that may fail (no DSN, server down) happen here."""
    kind: str = request.param
    if kind == "sqlite":
        path = tmp_path / "db" / "auth.sqlite3"
        yield Backend(kind, lambda: sqlite_store(path))
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    admin: psycopg2.extensions.connection = request.getfixturevalue("pg_admin")
    schema = f"t_{uuid.uuid4().hex}"
    try:
        yield Backend(kind, lambda: postgres_store(dsn, schema))
    finally:
        drop_schema(admin, schema)


@pytest_twisted.async_yield_fixture
async def backend(backend_location: Backend) -> AsyncIterator[Backend]:
    """The adapter's location; every store opened on it is stopped afterwards."""
    try:
        yield backend_location
    finally:
        for store in backend_location.stores:
            await store.stop()


@pytest_twisted.async_fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


# -- chat: the ChatStore contract (tests/contract/test_chat_store.py) -----------------------------------
# One entry of CHAT_ADAPTERS per adapter; adding one (say Cassandra) is one more line there plus its
# location factory. The chat imports live here so the section reads on its own.
from components.chat.ports import ChatStore  # noqa: E402


class ChatStoreUnderTest(ChatStore, Protocol):
    """What the chat contract suite drives: the port plus the lifecycle."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ChatLocation = Callable[[pytest.FixtureRequest, Path], Callable[[], ChatStoreUnderTest]]
"""Prepares a fresh, empty location for one test (registering its clean-up with
``request.addfinalizer``) and answers a maker of (unstarted) store instances on it."""


def sqlite_chat_location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ChatStoreUnderTest]:
    from components.chat.adapters.sqlite import SqliteChatStore

    path = tmp_path / "db" / "chat.sqlite3"

    def make() -> ChatStoreUnderTest:
        return SqliteChatStore(path, reactor)  # also checks, statically, that the adapter fits the port

    return make


@pytest.fixture(scope="session")
def chat_cassandra_keyspace() -> Iterator[tuple[str, int, str]]:
    """One keyspace for the whole session (creating Cassandra tables takes ~0.6 s); tests stay
    apart because every test uses fresh random chat and user ids. Dropped at the end."""
    import os
    import secrets

    hostport = os.environ.get("MESSENGER_TEST_CASSANDRA")
    if not hostport:
        pytest.fail("MESSENGER_TEST_CASSANDRA is not set: start the test servers with `scripts/services.sh up`")
    host, port = hostport.rsplit(":", 1)
    keyspace = f"contract_{secrets.token_hex(4)}"
    yield host, int(port), keyspace
    from cassandra.cluster import Cluster

    cluster = Cluster([host], port=int(port), connect_timeout=10)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


def cassandra_chat_location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ChatStoreUnderTest]:
    from components.chat.adapters.cassandra import CassandraChatStore

    host, port, keyspace = request.getfixturevalue("chat_cassandra_keyspace")

    def make() -> ChatStoreUnderTest:
        return CassandraChatStore([host], port, keyspace, reactor)

    return make


@dataclass(frozen=True)
class ChatAdapter:
    location: ChatLocation
    marks: tuple[pytest.MarkDecorator, ...] = ()


CHAT_ADAPTERS: dict[str, ChatAdapter] = {
    "sqlite": ChatAdapter(sqlite_chat_location),
    "cassandra": ChatAdapter(cassandra_chat_location, (pytest.mark.cassandra,)),
}


@dataclass
class ChatBackend:
    """One chat adapter at one location; ``open()`` starts one more store instance on it."""

    kind: str
    make: Callable[[], ChatStoreUnderTest]
    stores: list[ChatStoreUnderTest] = field(default_factory=list)

    async def open(self) -> ChatStoreUnderTest:
        store = self.make()
        await store.start()
        self.stores.append(store)
        return store


@pytest.fixture(params=[pytest.param(kind, id=kind, marks=a.marks) for kind, a in CHAT_ADAPTERS.items()])
def chat_backend_location(request: pytest.FixtureRequest, tmp_path: Path) -> ChatBackend:
    """A plain fixture on purpose (see ``backend_location``): set-up that may fail happens here."""
    kind: str = request.param
    return ChatBackend(kind, CHAT_ADAPTERS[kind].location(request, tmp_path))


@pytest_twisted.async_yield_fixture
async def chat_backend(chat_backend_location: ChatBackend) -> AsyncIterator[ChatBackend]:
    """The chat adapter's location; every store opened on it is stopped afterwards."""
    try:
        yield chat_backend_location
    finally:
        for store in chat_backend_location.stores:
            await store.stop()


@pytest_twisted.async_fixture
async def chat_store(chat_backend: ChatBackend) -> ChatStoreUnderTest:
    """A started :class:`ChatStore`, once per adapter in ``CHAT_ADAPTERS``."""
    return await chat_backend.open()
