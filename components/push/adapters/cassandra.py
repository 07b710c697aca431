"""Cassandra adapter of :class:`TokenStore` (the distributed profile).

One table, ``push_tokens``, partitioned by user: ``tokens_of`` reads one partition per user,
``remove_device`` reads the user's partition and deletes that device's rows (a user has few).
Plain writes only (no LWT): a registration is an upsert of one row and is idempotent, so every
statement is retried under ``CircuitBreaker("cassandra-push")``. The schema lives in the same
keyspace as chat's tables, with its own ``push_schema_version`` bookkeeping.
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

from common.errors import MessengerError, Unavailable
from common.resilience import CircuitBreaker
from components.push.domain import PushToken

log = Logger(namespace="messenger.push")
Row = dict[str, Any]
KEYSPACE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
DEFAULT_REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 1}"

# Ordered, append-only. ``{ks}`` is the keyspace.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS {ks}.push_tokens (
            user_id text, token_key text, device_id text, platform text, target text, created_at_ms bigint,
            PRIMARY KEY (user_id, token_key))""",
    ),
)

STATEMENTS: dict[str, str] = {
    "put": "INSERT INTO {ks}.push_tokens (user_id, token_key, device_id, platform, target, created_at_ms)"
    " VALUES (?, ?, ?, ?, ?, ?)",
    "get": "SELECT token_key FROM {ks}.push_tokens WHERE user_id = ? AND token_key = ?",
    "delete": "DELETE FROM {ks}.push_tokens WHERE user_id = ? AND token_key = ?",
    "of_user": "SELECT user_id, token_key, device_id, platform, target, created_at_ms FROM {ks}.push_tokens"
    " WHERE user_id = ?",
}


def _as_deferred(reactor: Any, future: Any) -> defer.Deferred[list[Row]]:
    """The rows of a driver ``ResponseFuture`` (every page), delivered on the reactor thread."""
    d: defer.Deferred[list[Row]] = defer.Deferred()
    rows: list[Row] = []

    def settle(result: list[Row] | None, error: BaseException | None) -> None:
        if d.called:
            return
        if error is not None:
            d.errback(error)
        else:
            d.callback(result or [])

    def ok(page: Any) -> None:  # a driver thread
        try:
            if page:
                rows.extend(page)
            if future.has_more_pages:
                future.start_fetching_next_page()
                return
        except BaseException as e:
            reactor.callFromThread(settle, None, e)
            return
        reactor.callFromThread(settle, rows, None)

    def fail(error: BaseException) -> None:  # a driver thread
        reactor.callFromThread(settle, None, error)

    future.add_callbacks(ok, fail)
    return d


def _token(row: Row) -> PushToken:
    return PushToken(
        user_id=row["user_id"],
        device_id=row["device_id"] or "",
        platform=row["platform"],
        token=row["target"],  # "token" is a CQL keyword
        key=row["token_key"],
        created_at_ms=int(row["created_at_ms"] or 0),
    )


class CassandraTokenStore:
    def __init__(
        self,
        hosts: list[str],
        port: int,
        keyspace: str,
        reactor: Any,
        *,
        replication: str = DEFAULT_REPLICATION,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 2.8,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not KEYSPACE_RE.match(keyspace):
            raise ValueError(f"not a plain keyspace name: {keyspace!r}")
        self.hosts = list(hosts)
        self.port = port
        self.keyspace = keyspace
        self._reactor = reactor
        self._replication = replication
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self.breaker = breaker or CircuitBreaker("cassandra-push", reactor)
        self._cluster: Any = None
        self._session: Any = None
        self._stmts: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._session is not None:
            return
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
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
            await self._shutdown(cluster)
            raise Unavailable(f"cassandra is unreachable: {type(e).__name__}: {e}") from e
        self._cluster, self._session = cluster, session
        try:
            await self._migrate()
            self._stmts = await threads.deferToThread(self._prepare_all, session)
        except BaseException as e:
            await self.stop()
            if isinstance(e, MessengerError):
                raise
            raise Unavailable(f"cassandra push schema setup failed: {type(e).__name__}: {e}") from e

    async def stop(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._stmts = {}
        if cluster is not None:
            await self._shutdown(cluster)

    @staticmethod
    async def _shutdown(cluster: Any) -> None:
        try:
            await threads.deferToThread(cluster.shutdown)
        except Exception as e:
            log.info("cassandra shutdown: {error}", error=e)

    def _prepare_all(self, session: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, cql in STATEMENTS.items():
            stmt = session.prepare(cql.format(ks=self.keyspace))
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
            out[name] = stmt
        return out

    async def _ddl(self, cql: str, params: Sequence[Any] | None = None) -> list[Row]:
        stmt = SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        return await _as_deferred(self._reactor, self._session.execute_async(stmt, params, timeout=60.0))

    async def _migrate(self) -> None:
        ks = self.keyspace
        await self._ddl(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {self._replication}")
        await self._ddl(f"CREATE TABLE IF NOT EXISTS {ks}.push_schema_version (version int PRIMARY KEY)")
        done = {r["version"] for r in await self._ddl(f"SELECT version FROM {ks}.push_schema_version")}
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            for cql in statements:  # every statement is IF NOT EXISTS: instances may race here
                await self._ddl(cql.format(ks=ks))
            await self._ddl(f"INSERT INTO {ks}.push_schema_version (version) VALUES (%s)", (version,))
            log.info("cassandra push schema of {ks} migrated to version {version}", ks=ks, version=version)

    # -- statements --------------------------------------------------------------------------------
    def _run(self, name: str, params: Sequence[Any]) -> defer.Deferred[list[Row]]:
        if self._session is None:
            raise Unavailable("cassandra push store is not started")
        bound = self._stmts[name].bind(params)
        return _as_deferred(self._reactor, self._session.execute_async(bound, timeout=self._request_timeout_s))

    async def _call(self, name: str, params: Sequence[Any]) -> list[Row]:
        if self._session is None:
            raise Unavailable("cassandra push store is not started")
        return await self.breaker.call(lambda: self._run(name, params), idempotent=True)

    # -- TokenStore ----------------------------------------------------------------------------------
    async def put(self, token: PushToken) -> None:
        await self._call(
            "put", (token.user_id, token.key, token.device_id, token.platform, token.token, token.created_at_ms)
        )

    async def remove(self, user_id: str, key: str) -> bool:
        existed = bool(await self._call("get", (user_id, key)))
        await self._call("delete", (user_id, key))
        return existed

    async def remove_device(self, user_id: str, device_id: str) -> int:
        mine = await self._call("of_user", (user_id,))
        gone = [r["token_key"] for r in mine if r["device_id"] == device_id]
        for key in gone:
            await self._call("delete", (user_id, key))
        return len(gone)

    async def tokens_of(self, user_ids: list[str]) -> list[PushToken]:
        ids = list(dict.fromkeys(user_ids))
        try:
            results = await defer.gatherResults(
                [defer.ensureDeferred(self._call("of_user", (u,))) for u in ids], consumeErrors=True
            )
        except defer.FirstError as e:
            error = e.subFailure.value
            raise (error if error is not None else e) from None
        return [_token(row) for rows in results for row in rows]
