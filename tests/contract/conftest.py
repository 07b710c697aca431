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
