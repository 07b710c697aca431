"""What every Cassandra adapter needs: a driver session on one keyspace, its own versioned
schema, prepared statements run on the reactor thread under a circuit breaker.

- :func:`as_deferred`: a driver ``ResponseFuture`` (every page) as a Deferred that fires on the
  reactor thread (the driver calls back on its own threads).
- :class:`CassandraTables`: connect (blocking driver calls in a thread), create the keyspace if
  missing, apply the component's migrations once (``<name>_schema_version``; every statement is
  ``IF NOT EXISTS``, so instances may race), prepare the statements, run them by name.

The chat store (``components/chat/adapters/cassandra.py``) uses :func:`as_deferred` but keeps
its own session plumbing (batches, serial reads, LWT loops); media and push use
:class:`CassandraTables`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import SimpleStatement, dict_factory
from twisted.internet import defer, threads
from twisted.logger import Logger

from common.errors import MessengerError, Unavailable
from common.resilience import CircuitBreaker

log = Logger(namespace="messenger.cassandra")
Row = dict[str, Any]
KEYSPACE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
DEFAULT_REPLICATION: Mapping[str, Any] = {"class": "SimpleStrategy", "replication_factor": 1}


def as_deferred(reactor: Any, future: Any) -> defer.Deferred[list[Row]]:
    """The rows of a driver ``ResponseFuture`` (every page), delivered on the reactor thread."""
    d: defer.Deferred[list[Row]] = defer.Deferred()
    rows: list[Row] = []

    def settle(result: list[Row] | None, error: BaseException | None) -> None:
        if d.called:  # cancelled by a timeout meanwhile
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


def replication_cql(replication: Mapping[str, Any]) -> str:
    """``{'class': 'SimpleStrategy', 'replication_factor': '1'}`` from a mapping."""
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in replication.items()) + "}"


class CassandraTables:
    """One component's tables in ``keyspace``. ``migrations``: ordered, append-only groups of
    CQL (``{ks}`` is the keyspace); ``statements``: name → CQL to prepare; those named in
    ``serial`` are lightweight transactions (serial consistency SERIAL)."""

    def __init__(
        self,
        name: str,
        hosts: Sequence[str],
        port: int,
        keyspace: str,
        reactor: Any,
        *,
        migrations: Sequence[Sequence[str]],
        statements: Mapping[str, str],
        serial: Collection[str] = (),
        replication: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 2.8,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not KEYSPACE_RE.match(keyspace):
            raise ValueError(f"not a plain keyspace name: {keyspace!r}")
        self.name = name
        self.hosts = list(hosts)
        self.port = port
        self.keyspace = keyspace
        self._reactor = reactor
        self._migrations = [list(group) for group in migrations]
        self._statements = dict(statements)
        self._serial = frozenset(serial)
        self._replication = dict(replication or DEFAULT_REPLICATION)
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self.breaker = breaker or CircuitBreaker(f"cassandra-{name}", reactor)
        self._cluster: Any = None
        self._session: Any = None
        self._prepared: dict[str, Any] = {}

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
            await _shutdown(cluster)
            raise Unavailable(f"cassandra is unreachable: {type(e).__name__}: {e}") from e
        self._cluster, self._session = cluster, session
        try:
            await self._migrate()
            self._prepared = await threads.deferToThread(self._prepare_all, session)
        except BaseException as e:
            await self.stop()
            if isinstance(e, MessengerError):
                raise
            raise Unavailable(f"cassandra {self.name} schema setup failed: {type(e).__name__}: {e}") from e

    async def stop(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._prepared = {}
        if cluster is not None:
            await _shutdown(cluster)

    def _prepare_all(self, session: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, cql in self._statements.items():
            stmt = session.prepare(cql.format(ks=self.keyspace))
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
            if name in self._serial:
                stmt.serial_consistency_level = ConsistencyLevel.SERIAL
            out[name] = stmt
        return out

    async def ddl(self, cql: str, params: Sequence[Any] | None = None) -> list[Row]:
        stmt = SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        return await as_deferred(self._reactor, self._session.execute_async(stmt, params, timeout=60.0))

    async def _migrate(self) -> None:
        ks, table = self.keyspace, f"{self.name}_schema_version"
        await self.ddl(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication_cql(self._replication)}")
        await self.ddl(f"CREATE TABLE IF NOT EXISTS {ks}.{table} (version int PRIMARY KEY)")
        done = {r["version"] for r in await self.ddl(f"SELECT version FROM {ks}.{table}")}
        for version, group in enumerate(self._migrations, start=1):
            if version in done:
                continue
            for cql in group:  # every statement is IF NOT EXISTS: instances may race here
                await self.ddl(cql.format(ks=ks))
            await self.ddl(f"INSERT INTO {ks}.{table} (version) VALUES (%s)", (version,))
            log.info("cassandra {name} schema of {ks} at version {version}", name=self.name, ks=ks, version=version)

    # -- statements --------------------------------------------------------------------------------
    def _run(self, name: str, params: Sequence[Any]) -> defer.Deferred[list[Row]]:
        if self._session is None:
            raise Unavailable(f"cassandra {self.name} store is not started")
        bound = self._prepared[name].bind(params)
        return as_deferred(self._reactor, self._session.execute_async(bound, timeout=self._request_timeout_s))

    async def call(self, name: str, params: Sequence[Any], *, idempotent: bool = True) -> list[Row]:
        """Run the prepared statement ``name`` under the breaker (retried if ``idempotent``)."""
        if self._session is None:
            raise Unavailable(f"cassandra {self.name} store is not started")
        return await self.breaker.call(lambda: self._run(name, params), idempotent=idempotent)


async def _shutdown(cluster: Any) -> None:
    try:
        await threads.deferToThread(cluster.shutdown)
    except Exception as e:
        log.info("cassandra shutdown: {error}", error=e)
