"""One SQLite file for an embedded-profile store: thread, connection, migrations, transactions.

:class:`SqliteDatabase` owns one connection, used by one dedicated worker thread (a Twisted
thread pool of one): every call is shipped to that thread with :func:`deferToThreadPool`, so the
reactor never blocks on disk I/O and the connection is never shared between threads. Several
databases (each with its own connection) may open the same file; SQLite's write lock serializes
their writes.

:class:`SqliteStore` is the base of a store on such a file (one database, its lifecycle).

The file runs in WAL mode with ``synchronous=NORMAL`` and foreign keys on. ``start()`` applies
the pending scripts of the store's ``migrations`` (ordered, append-only; script *n* is schema
version *n*), each recorded as one row of the ``schema_version`` table, all in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from common.errors import Unavailable

T = TypeVar("T")

Params = Sequence[Any] | Mapping[str, Any]


class SqliteDatabase:
    """One SQLite file, one connection, one worker thread; the plumbing every SQLite store shares."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        migrations: Sequence[str],
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        self.path = Path(path)
        self.migrations = tuple(migrations)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor: IReactorFromThreads = reactor
        self._pool: ThreadPool | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the pool's thread

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the file (creating its directory) and apply pending migrations."""
        if self._pool is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pool = ThreadPool(minthreads=1, maxthreads=1, name=f"sqlite:{self.path.name}")
        pool.start()
        self._pool = pool
        try:
            await self.run(self._open)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the connection and stop the worker thread. Safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await deferToThreadPool(self._reactor, pool, self._close)
        finally:
            pool.stop()

    def _open(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            migrate(conn, self.migrations)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- calls (from the reactor) ----------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread; SQLite operational errors become ``Unavailable``."""
        pool = self._pool
        if pool is None:
            raise Unavailable("sqlite store is not started")
        try:
            return await deferToThreadPool(self._reactor, pool, fn, *args)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug or an unmapped constraint: not the dependency's fault
        except sqlite3.Error as e:
            raise Unavailable(f"sqlite is unavailable: {e}") from e

    async def autocommit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` outside any explicit transaction: each of its statements commits by itself."""
        return await self.run(self._with_connection, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one ``BEGIN IMMEDIATE`` transaction: it holds the write lock from the start, so
        what it reads cannot change under it; it commits when ``fn`` returns, rolls back if it raises."""
        return await self.run(self.transaction, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one read transaction: one consistent snapshot across its statements."""
        return await self.run(self.transaction, fn, "BEGIN")

    async def query(self, sql: str, params: Params = ()) -> list[Any]:
        """The rows of one statement."""
        return await self.autocommit(lambda conn: conn.execute(sql, params).fetchall())

    async def change(self, sql: str, params: Params = ()) -> int:
        """The number of rows one statement changed."""
        return await self.autocommit(lambda conn: conn.execute(sql, params).rowcount)

    # -- on the database thread -------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """The open connection (only on the database thread)."""
        if self._conn is None:
            raise sqlite3.OperationalError("connection is closed")
        return self._conn

    def _with_connection(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self.connection())

    def transaction(self, fn: Callable[[sqlite3.Connection], T], begin: str = "BEGIN IMMEDIATE") -> T:
        """On the database thread: ``fn`` inside one transaction opened with ``begin``."""
        conn = self.connection()
        conn.execute(begin)
        try:
            result = fn(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result


class SqliteStore:
    """Base of a store on one SQLite file: it composes a :class:`SqliteDatabase` that applies the
    subclass's ``migrations`` and keeps it in ``self._db``; ``start()``/``stop()`` are the database's."""

    migrations: ClassVar[tuple[str, ...]]

    def __init__(self, path: str | os.PathLike[str], reactor: IReactorFromThreads | None = None) -> None:
        self._db = SqliteDatabase(path, self.migrations, reactor)
        self.path = self._db.path

    async def start(self) -> None:
        """Open the file (creating its directory) and apply pending migrations."""
        await self._db.start()

    async def stop(self) -> None:
        """Close the connection and stop the worker thread. Safe to call twice."""
        await self._db.stop()


def migrate(conn: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Apply the scripts of ``migrations`` newer than the file's ``schema_version``, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ( version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)"
        )
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        for version, script in enumerate(migrations, start=1):
            if version <= current:
                continue
            # executescript() would COMMIT first; run the statements one by one instead.
            for statement in split_sql(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at_ms) VALUES (?, ?)",
                (version, time.time_ns() // 1_000_000),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def split_sql(script: str) -> list[str]:
    """Statements of a migration script (no ``;`` inside literals or triggers in our scripts)."""
    return [s.strip() for s in script.split(";") if s.strip()]
