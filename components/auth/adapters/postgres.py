"""PostgreSQL adapter of :class:`AccountStore` and :class:`KeyStore` (the distributed profile).

Non-blocking all the way: txpostgres drives psycopg2's asynchronous connections from the
reactor, through a small pool (``min_connections``..``max_connections``) that hands each call
a connection of its own. Every call runs under a :class:`CircuitBreaker` (reads idempotent,
writes not), so a slow or dead server answers :class:`Unavailable` within the call timeout.

Dead connections are dropped and replaced by themselves:

- an idle connection whose server went away (restart, ``pg_terminate_backend``) is noticed
  by the reactor as soon as the server's goodbye arrives and is never handed out again;
- a call that fails on a broken connection, or is cancelled by the breaker's timeout, closes
  that connection, and the next call opens a fresh one;
- connecting has its own timeout, so an unreachable server cannot hang a call (libpq still
  resolves a host name synchronously: give an IP address or a name the local resolver knows).

A connection carries one statement at a time: the pool never hands out a connection whose
statement is still running (a call cancelled by its timeout marks its connection broken
*before* anybody else can run, and a connection still executing is never pooled), so
concurrent calls never meet psycopg2's "asynchronous query is underway".

Errors are sorted by whose fault they are. The server being away or slow (connection lost,
timeouts, ``OperationalError``) counts against the breaker and answers :class:`Unavailable`.
A statement the server rejected as wrong (``ProgrammingError``, ``DataError``, an integrity
violation no caller maps, ...) is a bug here: it is logged with its SQL (never its
parameters), answers :class:`StoreFault` (``messenger.error.internal``), and does not count
as the dependency being down.

Overload is not an outage: a call first waits for a turn (one of ``max_connections``), outside
the breaker and bounded by ``queue_timeout_s``; only the time on a connection counts against the
breaker's call timeout. A burst (600 joins at once) therefore queues and is served, and one that
waits too long answers :class:`Unavailable` ("busy") without opening the breaker for everyone.

Migrations run at :meth:`PostgresAccountStore.start`, in one transaction holding an advisory
lock, so several instances may start at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer
from twisted.logger import Logger
from txpostgres import txpostgres

from common.errors import Conflict, MessengerError, NotFound, Unavailable
from common.resilience import CircuitBreaker
from components.auth.adapters import rows as rowmap
from components.auth.domain import (
    Account,
    Device,
    RefreshToken,
    RotateOutcome,
    RotateResult,
    SigningKey,
)

T = TypeVar("T")
log = Logger()

# Ordered, append-only: never edit a script once released, add a new one instead.
# Text that is compared or sorted uses COLLATE "C": code-point order, the same as SQLite's,
# and plain btree indexes then serve ``LIKE 'prefix%'``.
MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, devices, refresh tokens, contacts, blocks, signing keys
    """
    CREATE TABLE accounts (
        user_id            text COLLATE "C" PRIMARY KEY,
        username           text COLLATE "C" NOT NULL CONSTRAINT accounts_username_key UNIQUE
                                             CONSTRAINT accounts_username_lower CHECK (username = lower(username)),
        display_name       text   NOT NULL,
        display_name_lower text COLLATE "C" NOT NULL,
        password_hash      text   NOT NULL,
        bio                text   NOT NULL DEFAULT '',
        avatar_media_id    text,
        created_at_ms      bigint NOT NULL,
        updated_at_ms      bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX accounts_display_name_lower ON accounts (display_name_lower);

    CREATE TABLE devices (
        device_id       text COLLATE "C" PRIMARY KEY,
        user_id         text COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        name            text   NOT NULL,
        created_at_ms   bigint NOT NULL,
        last_used_at_ms bigint NOT NULL DEFAULT 0,
        revoked_at_ms   bigint
    );
    CREATE INDEX devices_user_id ON devices (user_id);

    CREATE TABLE refresh_tokens (
        token_hash    text COLLATE "C" PRIMARY KEY,
        device_id     text COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        user_id       text COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at_ms bigint NOT NULL,
        expires_at_ms bigint NOT NULL,
        used_at_ms    bigint,
        revoked_at_ms bigint
    );
    CREATE INDEX refresh_tokens_device_id ON refresh_tokens (device_id);

    CREATE TABLE contacts (
        owner_id      text COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        contact_id    text COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at_ms bigint NOT NULL,
        PRIMARY KEY (owner_id, contact_id)
    );
    CREATE INDEX contacts_contact_id ON contacts (contact_id);

    CREATE TABLE blocks (
        blocker_id    text COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        blocked_id    text COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at_ms bigint NOT NULL,
        PRIMARY KEY (blocker_id, blocked_id)
    );
    CREATE INDEX blocks_blocked_id ON blocks (blocked_id);

    CREATE TABLE signing_keys (
        kid           text COLLATE "C" PRIMARY KEY,
        algorithm     text   NOT NULL,
        private_pem   text   NOT NULL,
        public_jwk    text   NOT NULL,
        created_at_ms bigint NOT NULL
    );
    CREATE INDEX signing_keys_created_at_ms ON signing_keys (created_at_ms);
    """,
)

MIGRATION_LOCK_KEY = 0x6D_73_67_61_75_74_68  # "msgauth": pg_advisory_xact_lock key of the migrations
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_REVOKE_SQL = (
    "WITH d AS (UPDATE devices SET revoked_at_ms = %(now)s"
    "           WHERE device_id = %(device_id)s AND revoked_at_ms IS NULL RETURNING device_id),"
    " t AS (UPDATE refresh_tokens SET revoked_at_ms = %(now)s"
    "       WHERE device_id IN (SELECT device_id FROM d) AND revoked_at_ms IS NULL)"
    " SELECT count(*) FROM d"
)

Row = tuple[Any, ...]
SQL_ATTR = "messenger_sql"  # set on a psycopg2 error: the statement's SQL (without its parameters)


class StoreFault(MessengerError):
    """A statement the server rejected as wrong: a bug in this adapter, not an outage.

    A :class:`MessengerError` (code ``internal``), so the breaker sees an answer from the
    server and neither retries it nor counts it as a failure of the dependency."""

    code = "internal"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _is_fault(e: psycopg2.Error) -> bool:
    """Whether the server (or psycopg2) rejected the statement itself, rather than failing to run it."""
    if isinstance(e, psycopg2.ProgrammingError | psycopg2.DataError | psycopg2.NotSupportedError):
        return True
    if isinstance(e, psycopg2.InternalError):  # invalid transaction state, ...; class XX: the server's own trouble
        return not str(getattr(e, "pgcode", None) or "").startswith("XX")
    return False


def _fault(e: BaseException, sql: str | None) -> StoreFault:
    """Log ``e`` with the statement's SQL, and answer the :class:`StoreFault` to raise.

    Only the server's primary message is logged: its detail lines may quote the statement with
    its parameters interpolated (password hashes, token hashes)."""
    diag = getattr(e, "diag", None)
    primary = getattr(diag, "message_primary", None) or (str(e).splitlines() or [""])[0]
    log.error(
        "postgres rejected a statement (a bug, not an outage): {error_type} {pgcode}: {error}; SQL: {sql}",
        error_type=type(e).__name__,
        pgcode=getattr(e, "pgcode", None) or "-",
        error=primary.strip(),
        sql=" ".join((sql or "(unknown)").split()),
    )
    return StoreFault("internal error; the failure was logged")


def _integrity(e: psycopg2.IntegrityError, conflict: str, missing: str = "unknown user") -> Exception:
    if isinstance(e, psycopg2.errors.UniqueViolation):
        return Conflict(conflict)
    if isinstance(e, psycopg2.errors.ForeignKeyViolation):
        return NotFound(missing)
    return _fault(e, getattr(e, SQL_ATTR, None))


# -- connections and pool ------------------------------------------------------------------------
class _Connection(txpostgres.Connection):
    """A txpostgres connection that takes the server's goodbye quietly.

    While idle, the connection watches its socket (for NOTIFY). When the server closes it,
    psycopg2 raises from ``poll()`` inside ``doRead``; txpostgres lets that escape to the
    reactor as an unhandled error. Here it marks the connection broken instead, and the pool
    drops it the next time it looks.
    """

    broken = False

    def doRead(self) -> None:
        try:
            super().doRead()
        except psycopg2.Error as e:
            self.broken = True
            log.info("postgres connection lost while idle: {error}", error=_one_line(e))


def _alive(conn: _Connection) -> bool:
    """Open, and free for a statement (none still running on it)."""
    pg = conn.pollable()
    return not conn.broken and pg is not None and not pg.closed and not pg.isexecuting()


def _close_quietly(conn: _Connection) -> None:
    try:
        conn.close()
    except Exception:  # never opened, or already gone
        pass


def _guard(d: defer.Deferred[Any], conn: _Connection) -> defer.Deferred[Any]:
    """``d``'s result, through a Deferred whose cancellation abandons ``conn`` (closes it).

    txpostgres's own cancellation sends a cancel request and raises until the server answers;
    a timed-out call on a dead server would then never finish. Closing the connection always
    ends the call at once, and the pool replaces the connection.

    The connection is marked broken *before* the caller hears of the cancellation: the caller
    releases the connection from that errback, and the release must not pool a connection
    whose statement is still running (the next call on it would fail with psycopg2's
    ``ProgrammingError: ... asynchronous query is underway``).
    """

    def cancel(out: defer.Deferred[Any]) -> None:
        conn.broken = True
        out.errback(defer.CancelledError())
        _close_quietly(conn)

    out: defer.Deferred[Any] = defer.Deferred(cancel)

    def ok(result: Any) -> None:
        if not out.called:
            out.callback(result)

    def fail(f: Any) -> None:
        if not out.called:
            out.errback(f)

    d.addCallbacks(ok, fail)
    return out


class _Cursor:
    """One call's view of its connection: ``await execute(...)``, then ``fetchone``/``fetchall``."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._cursor = conn.cursor()

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        """Run one statement. A statement the server rejects as wrong raises :class:`StoreFault`
        (logged with ``sql``); integrity violations stay psycopg2's, for the caller to map."""
        try:
            await _guard(self._cursor.execute(sql, params), self._conn)
        except psycopg2.IntegrityError as e:
            setattr(e, SQL_ATTR, sql)
            raise
        except psycopg2.Error as e:
            if _is_fault(e):
                raise _fault(e, sql) from e
            raise
        except (ValueError, TypeError) as e:  # parameters psycopg2 cannot send (a NUL in a string, ...)
            raise _fault(e, sql) from e

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self) -> list[Row]:
        return [tuple(r) for r in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


class _Pool:
    """At most ``max_size`` connections; each call holds one for itself; broken ones are replaced."""

    def __init__(self, reactor: Any, dsn: str, min_size: int, max_size: int, connect_timeout_s: float) -> None:
        self._reactor = reactor
        self._dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._size = 0  # connections open, opening or in use
        self._waiters: list[defer.Deferred[None]] = []
        self._wakes = 0  # wakes owed to waiters, while _wake's loop runs
        self._waking = False
        self.closed = False

    @property
    def size(self) -> int:
        return self._size

    async def _connect(self) -> _Connection:
        conn = _Connection(self._reactor)
        d = _guard(conn.connect(self._dsn), conn)
        d.addTimeout(self.connect_timeout_s, self._reactor)
        try:
            await d
        except defer.TimeoutError as e:
            raise psycopg2.OperationalError(f"connecting timed out after {self.connect_timeout_s} s") from e
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    async def acquire(self) -> _Connection:
        while True:
            if self.closed:
                raise Unavailable("postgres store is stopped")
            while self._idle:
                conn = self._idle.pop()
                if _alive(conn):
                    self._busy.add(conn)
                    return conn
                self._drop(conn)
            if self._size < self.max_size:
                self._size += 1
                try:
                    conn = await self._connect()
                except BaseException:
                    self._size -= 1
                    self._wake()
                    raise
                if self.closed:
                    self._size -= 1
                    _close_quietly(conn)
                    continue
                self._busy.add(conn)
                return conn
            waiter: defer.Deferred[None] = defer.Deferred(self._waiters.remove)
            self._waiters.append(waiter)
            await waiter

    def release(self, conn: _Connection, healthy: bool) -> None:
        self._busy.discard(conn)
        if healthy and _alive(conn) and not self.closed:
            self._idle.append(conn)
            self._wake()
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        _close_quietly(conn)
        self._size -= 1
        self._wake()

    def _wake(self) -> None:
        """Let the longest waiter look again. A woken waiter runs at once, and may release or
        drop a connection itself (a call that fails synchronously): those wakes are served by
        the loop of the outermost call instead of recursing, one stack frame per waiter."""
        self._wakes += 1
        if self._waking:
            return
        self._waking = True
        try:
            while self._wakes and self._waiters:
                self._wakes -= 1
                self._waiters.pop(0).callback(None)
        finally:
            self._waking = False
            self._wakes = 0

    async def fill(self) -> None:
        """Open connections until ``min_size`` are open."""
        opened: list[_Connection] = []
        try:
            while self._size < self.min_size:
                opened.append(await self.acquire())
        finally:
            for conn in opened:
                self.release(conn, healthy=True)

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)
        for conn in list(self._busy):  # their calls fail now; release() will drop them
            _close_quietly(conn)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(Unavailable("postgres store is stopped"))

    async def run(self, fn: Callable[[_Cursor], Awaitable[T]], *, transaction: bool) -> T:
        """``fn`` on a connection of its own, inside ``BEGIN``/``COMMIT`` if ``transaction``."""
        try:
            return await self._run(fn, transaction=transaction)
        except psycopg2.IntegrityError as e:  # one that ``fn`` did not map: a bug too
            raise _fault(e, getattr(e, SQL_ATTR, None)) from e

    async def _run(self, fn: Callable[[_Cursor], Awaitable[T]], *, transaction: bool) -> T:
        conn = await self.acquire()
        healthy = False
        try:
            cur = _Cursor(conn)
            if not transaction:
                try:
                    return await fn(cur)
                finally:
                    healthy = _alive(conn)
            await cur.execute("BEGIN")
            try:
                result = await fn(cur)
            except BaseException:
                if _alive(conn):
                    try:
                        await cur.execute("ROLLBACK")
                        healthy = True
                    except Exception as e:
                        log.info("postgres rollback failed: {error}", error=_one_line(e))
                raise
            await cur.execute("COMMIT")
            healthy = True
            return result
        finally:
            self.release(conn, healthy)


# -- the store ----------------------------------------------------------------------------------
class PostgresAccountStore:
    """:class:`AccountStore` and :class:`KeyStore` on PostgreSQL.

    ``dsn``: ``postgresql://user:pass@host:port/db`` (or a libpq key=value string).
    ``schema``: a schema of its own (created at start; used by tests to isolate themselves).
    """

    def __init__(
        self,
        dsn: str,
        reactor: Any,
        *,
        schema: str | None = None,
        min_connections: int = 1,
        max_connections: int = 6,
        connect_timeout_s: float = 3.0,
        queue_timeout_s: float = 10.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if schema is not None and not SCHEMA_RE.match(schema):
            raise ValueError(f"not a plain schema name: {schema!r}")
        if not 1 <= min_connections <= max_connections:
            raise ValueError("need 1 <= min_connections <= max_connections")
        self.schema = schema
        self._reactor = reactor
        params: dict[str, Any] = dict(parse_dsn(dsn))
        params.setdefault("application_name", "messenger-auth")
        # Notice a peer that vanished without a word (host down, network cut) in ~1 min, not hours.
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "30")
        params.setdefault("keepalives_interval", "10")
        params.setdefault("keepalives_count", "3")
        if schema is not None:
            params["options"] = (params.get("options", "") + f" -c search_path={schema}").strip()
        self._dsn: str = make_dsn(**params)
        self._min = min_connections
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._queue_timeout_s = queue_timeout_s
        self._turns = defer.DeferredSemaphore(max_connections)
        self.breaker = breaker or CircuitBreaker("postgres", reactor, call_timeout_s=max(3.0, connect_timeout_s))
        self._pool: _Pool | None = None

    @property
    def pool_size(self) -> int:
        """Connections currently open (or opening)."""
        return self._pool.size if self._pool else 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and apply pending migrations. ``Unavailable`` if the server cannot be reached."""
        if self._pool is not None:
            return
        pool = _Pool(self._reactor, self._dsn, self._min, self._max, self._connect_timeout_s)
        self._pool = pool
        try:
            await self.breaker.call(lambda: pool.run(self._migrate, transaction=True))
            await self.breaker.call(pool.fill)
        except BaseException:
            self._pool = None
            pool.close()
            raise

    async def stop(self) -> None:
        """Close every connection. Safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def _migrate(self, cur: _Cursor) -> None:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        if self.schema is not None:
            await cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await cur.execute(f'SET LOCAL search_path TO "{self.schema}"')
        await cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at_ms bigint NOT NULL)"
        )
        await cur.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = cur.fetchone()
        current = int(row[0]) if row else 0
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            await cur.execute(script)
            await cur.execute(
                "INSERT INTO schema_version (version, applied_at_ms) VALUES (%s, %s)",
                (version, time.time_ns() // 1_000_000),
            )
            log.info("postgres auth schema migrated to version {version}", version=version)

    # -- plumbing --------------------------------------------------------------------------
    def _running_pool(self) -> _Pool:
        if self._pool is None:
            raise Unavailable("postgres store is not started")
        return self._pool

    async def _on_connection(self, fn: Callable[[_Cursor], Awaitable[T]], *, idempotent: bool, transaction: bool) -> T:
        """``fn`` under the breaker, once a turn is free: waiting for one of ``max_connections``
        turns happens outside the breaker (overload is not an outage) and is bounded by
        ``queue_timeout_s``. With the breaker open, turns are short: its calls fail at once."""
        pool = self._running_pool()
        waiting = self._turns.acquire()
        waiting.addTimeout(self._queue_timeout_s, self._reactor)
        try:
            await waiting
        except defer.TimeoutError as e:
            raise Unavailable(f"postgres store busy: no connection free within {self._queue_timeout_s:g} s") from e
        try:
            return await self.breaker.call(lambda: pool.run(fn, transaction=transaction), idempotent=idempotent)
        finally:
            self._turns.release()

    async def _read(self, fn: Callable[[_Cursor], Awaitable[T]]) -> T:
        return await self._on_connection(fn, idempotent=True, transaction=False)

    async def _write(self, fn: Callable[[_Cursor], Awaitable[T]], *, transaction: bool = False) -> T:
        return await self._on_connection(fn, idempotent=False, transaction=transaction)

    async def _fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[Row]:
        async def fetch(cur: _Cursor) -> list[Row]:
            await cur.execute(sql, params)
            return cur.fetchall()

        return await self._read(fetch)

    async def _change(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        conflict: str = "already exists",
    ) -> int:
        async def change(cur: _Cursor) -> int:
            try:
                await cur.execute(sql, params)
            except psycopg2.IntegrityError as e:
                raise _integrity(e, conflict) from e
            return cur.rowcount

        return await self._write(change)

    # -- accounts --------------------------------------------------------------------------
    async def create_account(self, account: Account) -> None:
        await self._change(
            f"INSERT INTO accounts ({rowmap.ACCOUNT_INSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rowmap.account_insert_values(account),
            conflict="username is taken",
        )

    async def get_account(self, user_id: str) -> Account | None:
        rows = await self._fetch(f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE user_id = %s", (user_id,))
        return rowmap.account(rows[0]) if rows else None

    async def get_account_by_username(self, username: str) -> Account | None:
        rows = await self._fetch(
            f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE username = %s", (username.lower(),)
        )
        return rowmap.account(rows[0]) if rows else None

    async def get_accounts(self, user_ids: Sequence[str]) -> list[Account]:
        ids = list(user_ids)
        if not ids:
            return []
        rows = await self._fetch(
            f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE user_id = ANY(%s)", (list(dict.fromkeys(ids)),)
        )
        found = {r[0]: rowmap.account(r) for r in rows}
        return [found[uid] for uid in ids if uid in found]

    async def update_profile(self, user_id: str, fields: Mapping[str, Any], now_ms: int) -> Account | None:
        assignments = rowmap.profile_assignments(fields)
        columns = [*assignments, "updated_at_ms"]
        sets = ", ".join(f"{c} = %s" for c in columns)

        async def update(cur: _Cursor) -> Account | None:
            await cur.execute(
                f"UPDATE accounts SET {sets} WHERE user_id = %s RETURNING {rowmap.ACCOUNT_COLUMNS}",
                (*assignments.values(), now_ms, user_id),
            )
            row = cur.fetchone()
            return rowmap.account(row) if row else None

        return await self._write(update)

    async def search_accounts(self, prefix: str, limit: int) -> list[Account]:
        if limit <= 0:
            return []
        pattern = rowmap.escape_like(prefix.lower()) + "%"
        rows = await self._fetch(
            f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts"
            " WHERE username LIKE %(p)s ESCAPE '\\' OR display_name_lower LIKE %(p)s ESCAPE '\\'"
            " ORDER BY username LIMIT %(limit)s",
            {"p": pattern, "limit": limit},
        )
        return [rowmap.account(r) for r in rows]

    # -- devices and refresh tokens -----------------------------------------------------------
    async def create_device(self, device: Device, token: RefreshToken) -> None:
        async def insert(cur: _Cursor) -> None:
            try:
                await cur.execute(
                    f"INSERT INTO devices ({rowmap.DEVICE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        device.device_id,
                        device.user_id,
                        device.name,
                        device.created_at_ms,
                        device.last_used_at_ms,
                        device.revoked_at_ms,
                    ),
                )
                await self._insert_token(cur, token, device.device_id, device.user_id)
            except psycopg2.IntegrityError as e:
                raise _integrity(e, "device or token already exists") from e

        await self._write(insert, transaction=True)

    @staticmethod
    async def _insert_token(cur: _Cursor, token: RefreshToken, device_id: str, user_id: str) -> None:
        await cur.execute(
            "INSERT INTO refresh_tokens (token_hash, device_id, user_id, created_at_ms, expires_at_ms, used_at_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (token.token_hash, device_id, user_id, token.created_at_ms, token.expires_at_ms, token.used_at_ms),
        )

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self._fetch(f"SELECT {rowmap.DEVICE_COLUMNS} FROM devices WHERE device_id = %s", (device_id,))
        return rowmap.device(rows[0]) if rows else None

    async def rotate_refresh_token(self, old_hash: str, new: RefreshToken, now_ms: int) -> RotateResult:
        async def rotate(cur: _Cursor) -> RotateResult:
            # Lock the device first: every change to a device's tokens (rotate, revoke) takes this
            # lock before touching them, so concurrent calls queue here and never deadlock. The
            # token is read after the lock is held, so a concurrent winner's spend is visible.
            await cur.execute(
                f"SELECT {rowmap.DEVICE_COLUMNS} FROM devices"
                " WHERE device_id = (SELECT device_id FROM refresh_tokens WHERE token_hash = %s) FOR UPDATE",
                (old_hash,),
            )
            row = cur.fetchone()
            if row is None:
                return RotateResult(RotateOutcome.INVALID)
            device = rowmap.device(row)
            await cur.execute(
                "SELECT user_id, expires_at_ms, used_at_ms, revoked_at_ms FROM refresh_tokens"
                " WHERE token_hash = %s FOR UPDATE",
                (old_hash,),
            )
            tok = cur.fetchone()
            if tok is None:
                return RotateResult(RotateOutcome.INVALID)
            user_id, expires_at_ms, used_at_ms, token_revoked_at_ms = tok
            if device.revoked or token_revoked_at_ms is not None or now_ms >= expires_at_ms:
                return RotateResult(RotateOutcome.INVALID)
            if used_at_ms is not None:
                await cur.execute(_REVOKE_SQL, {"now": now_ms, "device_id": device.device_id})
                return RotateResult(RotateOutcome.REUSED, dataclasses.replace(device, revoked_at_ms=now_ms))
            try:
                await cur.execute(
                    "WITH spent AS (UPDATE refresh_tokens SET used_at_ms = %(now)s WHERE token_hash = %(old)s),"
                    # expired tokens answer INVALID whether present or not: drop them to keep the table small
                    " purged AS (DELETE FROM refresh_tokens"
                    "            WHERE device_id = %(device_id)s AND expires_at_ms <= %(now)s"
                    "              AND token_hash <> %(old)s),"
                    " fresh AS (INSERT INTO refresh_tokens"
                    "           (token_hash, device_id, user_id, created_at_ms, expires_at_ms, used_at_ms)"
                    "           VALUES (%(new)s, %(device_id)s, %(user_id)s, %(created)s, %(expires)s, %(used)s))"
                    " UPDATE devices SET last_used_at_ms = %(now)s WHERE device_id = %(device_id)s",
                    {
                        "now": now_ms,
                        "old": old_hash,
                        "device_id": device.device_id,
                        "user_id": user_id,
                        "new": new.token_hash,
                        "created": new.created_at_ms,
                        "expires": new.expires_at_ms,
                        "used": new.used_at_ms,
                    },
                )
            except psycopg2.IntegrityError as e:
                raise _integrity(e, "refresh token already exists") from e
            return RotateResult(RotateOutcome.OK, dataclasses.replace(device, last_used_at_ms=now_ms))

        return await self._write(rotate, transaction=True)

    async def revoke_device(self, device_id: str, now_ms: int) -> bool:
        async def revoke(cur: _Cursor) -> bool:
            await cur.execute(_REVOKE_SQL, {"now": now_ms, "device_id": device_id})
            row = cur.fetchone()
            return bool(row and row[0])

        return await self._write(revoke)

    # -- contacts and blocks --------------------------------------------------------------------
    async def add_contact(self, owner_id: str, contact_id: str, now_ms: int) -> None:
        await self._change(
            "INSERT INTO contacts (owner_id, contact_id, created_at_ms) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (owner_id, contact_id, now_ms),
        )

    async def remove_contact(self, owner_id: str, contact_id: str) -> None:
        await self._change("DELETE FROM contacts WHERE owner_id = %s AND contact_id = %s", (owner_id, contact_id))

    async def list_contacts(self, owner_id: str) -> list[Account]:
        columns = ", ".join(f"a.{c.strip()}" for c in rowmap.ACCOUNT_COLUMNS.split(","))
        rows = await self._fetch(
            f"SELECT {columns} FROM contacts c JOIN accounts a ON a.user_id = c.contact_id"
            " WHERE c.owner_id = %s ORDER BY a.username",
            (owner_id,),
        )
        return [rowmap.account(r) for r in rows]

    async def count_contacts(self, owner_id: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM contacts WHERE owner_id = %s", (owner_id,))
        return int(rows[0][0])

    async def block(self, blocker_id: str, blocked_id: str, now_ms: int) -> None:
        await self._change(
            "INSERT INTO blocks (blocker_id, blocked_id, created_at_ms) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (blocker_id, blocked_id, now_ms),
        )

    async def unblock(self, blocker_id: str, blocked_id: str) -> None:
        await self._change("DELETE FROM blocks WHERE blocker_id = %s AND blocked_id = %s", (blocker_id, blocked_id))

    async def is_blocked(self, blocker_id: str, blocked_id: str) -> bool:
        rows = await self._fetch(
            "SELECT 1 FROM blocks WHERE blocker_id = %s AND blocked_id = %s", (blocker_id, blocked_id)
        )
        return bool(rows)

    async def list_blocked(self, blocker_id: str) -> list[str]:
        rows = await self._fetch(
            "SELECT blocked_id FROM blocks WHERE blocker_id = %s ORDER BY blocked_id", (blocker_id,)
        )
        return [r[0] for r in rows]

    # -- signing keys -----------------------------------------------------------------------------
    async def add_signing_key(self, key: SigningKey) -> None:
        await self._change(
            f"INSERT INTO signing_keys ({rowmap.KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
            (key.kid, key.algorithm, key.private_pem, json.dumps(key.public_jwk, sort_keys=True), key.created_at_ms),
            conflict=f"signing key {key.kid!r} already exists",
        )

    async def list_signing_keys(self, created_after_ms: int) -> list[SigningKey]:
        rows = await self._fetch(
            f"SELECT {rowmap.KEY_COLUMNS} FROM signing_keys WHERE created_at_ms > %s"
            " ORDER BY created_at_ms DESC, kid DESC",
            (created_after_ms,),
        )
        return [rowmap.signing_key(r) for r in rows]

    async def delete_signing_keys(self, created_before_ms: int) -> int:
        return await self._change("DELETE FROM signing_keys WHERE created_at_ms < %s", (created_before_ms,))
