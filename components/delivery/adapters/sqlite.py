"""SQLite adapter of :class:`PresenceStore` (the embedded profile).

One SQLite file (``presence.sqlite3`` under the data folder) on the shared
:class:`common.adapters.sqlite.SqliteStore`: one connection, owned by one worker thread, so the
reactor never blocks on disk I/O. ``set_last_seen`` is one upsert statement that keeps the
larger value, so concurrent writers (several stores on one file) can never move it backwards.
"""

from __future__ import annotations

import sqlite3

from common.adapters.sqlite import SqliteStore
from components.delivery.ports import check_at_ms

# Ordered, append-only: never edit a script once released, add a new one instead.
MIGRATIONS: tuple[str, ...] = (
    # 1: the last time each user went offline
    """
    CREATE TABLE last_seen (
        user_id TEXT    PRIMARY KEY,
        at_ms   INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
)

# well below SQLite's limit of bound parameters per statement (32766; 999 before 3.32)
_CHUNK = 500


class SqlitePresenceStore(SqliteStore):
    migrations = MIGRATIONS

    async def set_last_seen(self, user_id: str, at_ms: int) -> None:
        at_ms = check_at_ms(at_ms)
        await self._db.change(
            "INSERT INTO last_seen (user_id, at_ms) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET at_ms = max(at_ms, excluded.at_ms)",
            (user_id, at_ms),
        )

    async def get_last_seen(self, user_ids: list[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}

        def read(conn: sqlite3.Connection) -> dict[str, int]:
            found: dict[str, int] = {}
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT user_id, at_ms FROM last_seen WHERE user_id IN ({marks})", chunk)
                found.update((user_id, int(at_ms)) for user_id, at_ms in rows)
            return found

        return await self._db.read(read)
