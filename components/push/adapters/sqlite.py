"""SQLite adapter of :class:`TokenStore` (the embedded profile): ``push.sqlite3`` under the data
folder, on the shared :class:`common.adapters.sqlite.SqliteStore` (one connection on one worker
thread; the reactor never blocks on disk I/O)."""

from __future__ import annotations

import sqlite3

from common.adapters.sqlite import SqliteStore
from components.push.domain import PushToken

# Ordered, append-only: never edit a script once released, add a new one instead.
MIGRATIONS: tuple[str, ...] = (
    # 1: push targets per user, keyed by what identifies them on their platform
    """
    CREATE TABLE push_tokens (
        user_id       TEXT    NOT NULL,
        token_key     TEXT    NOT NULL,
        device_id     TEXT    NOT NULL,
        platform      TEXT    NOT NULL,
        token         TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, token_key)
    ) WITHOUT ROWID;
    """,
    # 2: who holds a token (a device's token moves to whoever registered it last)
    "CREATE INDEX push_tokens_by_key ON push_tokens (token_key);",
)

_CHUNK = 500
_COLUMNS = "user_id, device_id, platform, token, token_key, created_at_ms"


class SqliteTokenStore(SqliteStore):
    migrations = MIGRATIONS

    async def put(self, token: PushToken) -> None:
        await self._db.change(
            f"INSERT INTO push_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, token_key) DO UPDATE SET device_id = excluded.device_id,"
            " platform = excluded.platform, token = excluded.token, created_at_ms = excluded.created_at_ms",
            (token.user_id, token.device_id, token.platform, token.token, token.key, token.created_at_ms),
        )

    async def remove(self, user_id: str, key: str) -> bool:
        n = await self._db.change("DELETE FROM push_tokens WHERE user_id = ? AND token_key = ?", (user_id, key))
        return n > 0

    async def remove_device(self, user_id: str, device_id: str) -> int:
        return await self._db.change(
            "DELETE FROM push_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )

    async def owners_of(self, key: str) -> set[str]:
        rows = await self._db.query("SELECT user_id FROM push_tokens WHERE token_key = ?", (key,))
        return {row[0] for row in rows}

    async def tokens_of(self, user_ids: list[str]) -> list[PushToken]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return []

        def read(conn: sqlite3.Connection) -> list[PushToken]:
            out: list[PushToken] = []
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT {_COLUMNS} FROM push_tokens WHERE user_id IN ({marks})", chunk)
                out.extend(PushToken(*row) for row in rows)
            return out

        return await self._db.read(read)
