"""Cassandra adapter of :class:`MediaStore` (distributed profile).

One table, ``<keyspace>.media`` (one row per media object; ``chats`` is a set). Creation is a
plain insert (ids are random), completion a lightweight transaction (``IF state = 'pending'``:
the first completion wins), posting an ``UPDATE ... SET chats = chats + {...}`` (idempotent).
The keyspace is created if missing (as the chat store does) and the table with
``IF NOT EXISTS``, so several instances may start at once. Statements run with
``execute_async`` under a circuit breaker; the driver's blocking calls run in a thread.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import SimpleStatement, dict_factory
from twisted.internet import defer, threads
from twisted.logger import Logger

from common.errors import NotFound, Unavailable
from common.resilience import CircuitBreaker
from components.media.domain import COMPLETE, PENDING, Media

log = Logger(namespace="messenger.media")
KEYSPACE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
DEFAULT_REPLICATION: dict[str, Any] = {"class": "SimpleStrategy", "replication_factor": 1}
Row = dict[str, Any]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {ks}.media (media_id text PRIMARY KEY, owner_id text, content_type text,"
    " size bigint, filename text, state text, width int, height int, has_thumbnail boolean,"
    " created_at_ms bigint, chats set<text>)",
)
STATEMENTS = {
    "insert": "INSERT INTO {ks}.media (media_id, owner_id, content_type, size, filename, state, has_thumbnail,"
    " created_at_ms) VALUES (?, ?, ?, ?, ?, ?, false, ?)",
    "get": "SELECT * FROM {ks}.media WHERE media_id = ?",
    "complete": "UPDATE {ks}.media SET state = ?, width = ?, height = ?, has_thumbnail = ? WHERE media_id = ?"
    " IF state = ?",
    "add_chat": "UPDATE {ks}.media SET chats = chats + ? WHERE media_id = ?",
}


def _as_deferred(reactor: Any, future: Any) -> defer.Deferred[list[Row]]:
    """The rows of a driver ``ResponseFuture`` (one page: these queries answer one row)."""
    d: defer.Deferred[list[Row]] = defer.Deferred()

    def settle(result: list[Row] | None, error: BaseException | None) -> None:
        if d.called:
            return
        if error is not None:
            d.errback(error)
        else:
            d.callback(result or [])

    future.add_callbacks(
        lambda rows: reactor.callFromThread(settle, list(rows or []), None),
        lambda error: reactor.callFromThread(settle, None, error),
    )
    return d


def _media_of(row: Row) -> Media:
    return Media(
        media_id=row["media_id"],
        owner_id=row["owner_id"],
        content_type=row["content_type"],
        size=row["size"],
        filename=row["filename"],
        state=row["state"],
        width=row["width"],
        height=row["height"],
        has_thumbnail=bool(row["has_thumbnail"]),
        created_at_ms=row["created_at_ms"],
        chats=frozenset(row["chats"] or ()),
    )


class CassandraMediaStore:
    def __init__(
        self,
        hosts: list[str],
        port: int,
        keyspace: str,
        reactor: Any,
        *,
        replication: dict[str, Any] | None = None,
        request_timeout_s: float = 2.8,
        connect_timeout_s: float = 3.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not KEYSPACE_RE.match(keyspace):
            raise ValueError(f"not a plain keyspace name: {keyspace!r}")
        self.hosts, self.port, self.keyspace = list(hosts), port, keyspace
        self._reactor = reactor
        self._replication = dict(replication or DEFAULT_REPLICATION)
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self.breaker = breaker or CircuitBreaker("cassandra-media", reactor)
        self._cluster: Any = None
        self._session: Any = None
        self._stmts: dict[str, Any] = {}

    async def start(self) -> None:
        if self._session is not None:
            return
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.SERIAL,
            request_timeout=self._request_timeout_s,
            row_factory=dict_factory,
        )
        cluster = Cluster(
            contact_points=self.hosts,
            port=self.port,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=self._connect_timeout_s,
            control_connection_timeout=self._connect_timeout_s,
        )
        try:
            session = await threads.deferToThread(cluster.connect)
        except Exception as e:
            await threads.deferToThread(cluster.shutdown)
            raise Unavailable(f"cassandra is unreachable: {type(e).__name__}: {e}") from e
        self._cluster, self._session = cluster, session
        try:
            replication = ", ".join(f"'{k}': '{v}'" for k, v in self._replication.items())
            await self._ddl(f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = {{{replication}}}")
            for cql in SCHEMA:
                await self._ddl(cql.format(ks=self.keyspace))
            self._stmts = await threads.deferToThread(self._prepare_all, session)
        except Exception as e:
            await self.stop()
            raise Unavailable(f"cassandra media schema setup failed: {type(e).__name__}: {e}") from e

    async def stop(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._stmts = {}
        if cluster is not None:
            await threads.deferToThread(cluster.shutdown)

    def _prepare_all(self, session: Any) -> dict[str, Any]:
        return {name: session.prepare(cql.format(ks=self.keyspace)) for name, cql in STATEMENTS.items()}

    async def _ddl(self, cql: str) -> None:
        stmt = SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        await _as_deferred(self._reactor, self._session.execute_async(stmt, timeout=60.0))

    async def _run(self, name: str, params: Sequence[Any], *, idempotent: bool = True) -> list[Row]:
        if self._session is None:
            raise Unavailable("cassandra media store is not started")
        bound = self._stmts[name].bind(params)
        if name == "complete":
            bound.serial_consistency_level = ConsistencyLevel.SERIAL

        def attempt() -> defer.Deferred[list[Row]]:
            return _as_deferred(self._reactor, self._session.execute_async(bound, timeout=self._request_timeout_s))

        async def once() -> list[Row]:
            rows: list[Row] = await attempt()
            return rows

        return await self.breaker.call(once, idempotent=idempotent)

    async def create(self, media: Media) -> None:
        await self._run(
            "insert",
            (
                media.media_id,
                media.owner_id,
                media.content_type,
                media.size,
                media.filename,
                PENDING,
                media.created_at_ms,
            ),
        )

    async def get(self, media_id: str) -> Media | None:
        rows = await self._run("get", (media_id,))
        return _media_of(rows[0]) if rows and rows[0].get("owner_id") else None

    async def complete(self, media: Media) -> Media:
        if await self.get(media.media_id) is None:
            raise NotFound("no such media")
        await self._run(
            "complete",
            (COMPLETE, media.width, media.height, media.has_thumbnail, media.media_id, PENDING),
            idempotent=False,
        )
        stored = await self.get(media.media_id)
        if stored is None:
            raise NotFound("no such media")
        return stored

    async def add_chat(self, media_ids: list[str], chat_id: str) -> None:
        for media_id in media_ids:
            await self._run("add_chat", ({chat_id}, media_id))
