"""Shared fixtures: real servers (from ``scripts/services.sh``) and real Crossbar nodes."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.node import Node, SplitNodes
from tests.support.s3 import MotoServer

SERVICES_HINT = "start the test servers with `scripts/services.sh up` (the README's test command does it)"


def require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: {SERVICES_HINT}")
    return value


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    return require_env("MESSENGER_TEST_PG_DSN")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require_env("MESSENGER_TEST_REDIS_URL")


def _admin_connect(dsn: str, dbname: str = "postgres"):
    import psycopg2

    parts = urlsplit(dsn)
    conn = psycopg2.connect(host=parts.hostname, port=parts.port or 5432, user="postgres", dbname=dbname)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def new_pg_database(pg_dsn: str) -> Iterator[Callable[[], str]]:
    """Makes new empty databases (one per node: each node has its own key secret); all are
    dropped at the end of the session. Calling it answers the new database's DSN."""
    made: list[str] = []
    conn = _admin_connect(pg_dsn)

    def make() -> str:
        name = f"messenger_it_{secrets.token_hex(4)}"
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" OWNER messenger')
        made.append(name)
        return urlunsplit(urlsplit(pg_dsn)._replace(path=f"/{name}"))

    yield make
    with conn.cursor() as cur:
        for name in made:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


@pytest.fixture(scope="session")
def embedded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(tmp_path_factory.mktemp("embedded"), profile="embedded").start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def cassandra_location() -> str:
    return require_env("MESSENGER_TEST_CASSANDRA")


@pytest.fixture(scope="session")
def new_keyspace(cassandra_location: str) -> Iterator[Callable[[], str]]:
    """Names for fresh Cassandra keyspaces (one per node); all are dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"it_{secrets.token_hex(4)}"
        made.append(name)
        return name

    yield make
    if made:
        from cassandra.cluster import Cluster

        host, port = cassandra_location.rsplit(":", 1)
        cluster = Cluster([host], port=int(port), connect_timeout=10)
        try:
            session = cluster.connect()
            for name in made:
                session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
        finally:
            cluster.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """An S3 endpoint on loopback (moto in server mode), for the whole session."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def distributed_env(new_pg_database, redis_url, cassandra_location, new_keyspace, s3_server):
    """``make(pg_dsn=None) -> (env, extra)`` for a distributed node with its own database, keyspace
    and S3 bucket."""

    def make(pg_dsn: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
        env = {
            "MESSENGER_PG_DSN": pg_dsn or new_pg_database(),
            "MESSENGER_REDIS_URL": redis_url,
            "MESSENGER_CASSANDRA": cassandra_location,
            "MESSENGER_KEY_SECRET": secrets.token_hex(32),
            **s3_server.env(s3_server.new_bucket()),
        }
        return env, {"cassandra_keyspace": new_keyspace()}

    return make


@pytest.fixture(scope="module")
def split_nodes(
    tmp_path_factory: pytest.TempPathFactory, distributed_env: Callable[..., Any]
) -> Iterator[Callable[..., SplitNodes]]:
    """``make(name, shards=1, **extra) -> SplitNodes``: the shipped distributed configs with their
    own database and keyspace, started; stopped at the end of the module."""
    started: list[SplitNodes] = []

    def make(name: str, shards: int = 1, **more: Any) -> SplitNodes:
        env, extra = distributed_env()
        nodes = SplitNodes(tmp_path_factory.mktemp(name), env, {**extra, **more}, shards=shards).start()
        started.append(nodes)
        return nodes

    yield make
    for nodes in started:
        nodes.stop()


@pytest.fixture(scope="session")
def distributed_node(tmp_path_factory: pytest.TempPathFactory, distributed_env: Callable[..., Any]) -> Iterator[Node]:
    env, extra = distributed_env()
    node = Node(tmp_path_factory.mktemp("distributed"), profile="distributed", env=env, extra=extra).start()
    yield node
    node.stop()


@pytest.fixture(params=["embedded", "distributed"])
def node(request: pytest.FixtureRequest) -> Node:
    """The same test against a node of each profile."""
    fixture: Node = request.getfixturevalue(f"{request.param}_node")
    return fixture


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parents[1] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def hypothesis_rewrap_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """pytest-twisted 1.14 runs a Hypothesis test by replacing ``fn.hypothesis.inner_test`` with a
    wrapper, in place, on every call. A parametrized test is one function for all its items, so
    the second item would wrap the first item's wrapper (whose item is gone) and fail. Put the
    original back after each item."""
    handle = request.function.hypothesis
    original = handle.inner_test
    try:
        yield
    finally:
        handle.inner_test = original
