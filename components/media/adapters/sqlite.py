"""SQLite adapter of :class:`MediaStore` (embedded profile): ``media.sqlite3`` under the data folder."""

from __future__ import annotations

import sqlite3
from typing import Any, ClassVar

from common.adapters.sqlite import SqliteStore
from common.errors import NotFound
from components.media.domain import COMPLETE, PENDING, Media

MIGRATIONS = (
    """
    CREATE TABLE media (
        media_id      TEXT    PRIMARY KEY,
        owner_id      TEXT    NOT NULL,
        content_type  TEXT    NOT NULL,
        size          INTEGER NOT NULL,
        filename      TEXT,
        state         TEXT    NOT NULL,
        width         INTEGER,
        height        INTEGER,
        has_thumbnail INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE media_chats (
        media_id TEXT NOT NULL REFERENCES media (media_id),
        chat_id  TEXT NOT NULL,
        PRIMARY KEY (media_id, chat_id)
    ) WITHOUT ROWID
    """,
)

_COLUMNS = "media_id, owner_id, content_type, size, filename, state, width, height, has_thumbnail, created_at_ms"


def _media_of(row: Any, chats: list[str]) -> Media:
    return Media(
        media_id=row[0],
        owner_id=row[1],
        content_type=row[2],
        size=row[3],
        filename=row[4],
        state=row[5],
        width=row[6],
        height=row[7],
        has_thumbnail=bool(row[8]),
        created_at_ms=row[9],
        chats=frozenset(chats),
    )


class SqliteMediaStore(SqliteStore):
    migrations: ClassVar[tuple[str, ...]] = MIGRATIONS

    async def create(self, media: Media) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO media ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    media.media_id,
                    media.owner_id,
                    media.content_type,
                    media.size,
                    media.filename,
                    PENDING,
                    None,
                    None,
                    0,
                    media.created_at_ms,
                ),
            )

        await self._db.write(run)

    @staticmethod
    def _get(conn: sqlite3.Connection, media_id: str) -> Media | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM media WHERE media_id = ?", (media_id,)).fetchone()
        if row is None:
            return None
        chats = [r[0] for r in conn.execute("SELECT chat_id FROM media_chats WHERE media_id = ?", (media_id,))]
        return _media_of(row, chats)

    async def get(self, media_id: str) -> Media | None:
        return await self._db.read(lambda conn: self._get(conn, media_id))

    async def complete(self, media: Media) -> Media:
        def run(conn: sqlite3.Connection) -> Media:
            conn.execute(
                "UPDATE media SET state = ?, width = ?, height = ?, has_thumbnail = ? WHERE media_id = ? AND state = ?",
                (COMPLETE, media.width, media.height, int(media.has_thumbnail), media.media_id, PENDING),
            )
            stored = self._get(conn, media.media_id)
            if stored is None:
                raise NotFound("no such media")
            return stored

        return await self._db.write(run)

    async def add_chat(self, media_ids: list[str], chat_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO media_chats (media_id, chat_id)"
                " SELECT media_id, ? FROM media WHERE media_id = ?",
                [(chat_id, m) for m in media_ids],
            )

        await self._db.write(run)
