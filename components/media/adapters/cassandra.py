"""Cassandra adapter of :class:`MediaStore` (distributed profile).

One table, ``<keyspace>.media`` (one row per media object; ``chats`` is a set). Creation is a
plain insert (ids are random), completion a lightweight transaction (``IF state = 'pending'``:
the first completion wins), posting an ``UPDATE ... SET chats = chats + {...}`` (idempotent).
The keyspace is created if missing (as the chat store does) and the table with
``IF NOT EXISTS``, so several instances may start at once. Statements run with
``execute_async`` under a circuit breaker; the driver's blocking calls run in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.adapters.cassandra import CassandraTables, Row
from common.errors import NotFound
from common.resilience import CircuitBreaker
from components.media.domain import COMPLETE, PENDING, Media

# Ordered, append-only. ``{ks}`` is the keyspace.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE IF NOT EXISTS {ks}.media (media_id text PRIMARY KEY, owner_id text, content_type text,"
        " size bigint, filename text, state text, width int, height int, has_thumbnail boolean,"
        " created_at_ms bigint, chats set<text>)",
    ),
)
STATEMENTS = {
    "insert": "INSERT INTO {ks}.media (media_id, owner_id, content_type, size, filename, state, has_thumbnail,"
    " created_at_ms) VALUES (?, ?, ?, ?, ?, ?, false, ?)",
    "get": "SELECT * FROM {ks}.media WHERE media_id = ?",
    "complete": "UPDATE {ks}.media SET state = ?, width = ?, height = ?, has_thumbnail = ? WHERE media_id = ?"
    " IF state = ?",
    "add_chat": "UPDATE {ks}.media SET chats = chats + ? WHERE media_id = ?",
}


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


class CassandraMediaStore(CassandraTables):
    def __init__(
        self,
        hosts: list[str],
        port: int,
        keyspace: str,
        reactor: Any,
        *,
        replication: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 2.8,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(
            "media",
            hosts,
            port,
            keyspace,
            reactor,
            migrations=MIGRATIONS,
            statements=STATEMENTS,
            serial={"complete"},
            replication=replication,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            breaker=breaker,
        )

    async def create(self, media: Media) -> None:
        await self.call(
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
        rows = await self.call("get", (media_id,))
        return _media_of(rows[0]) if rows and rows[0].get("owner_id") else None

    async def complete(self, media: Media) -> Media:
        if await self.get(media.media_id) is None:
            raise NotFound("no such media")
        await self.call(
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
            await self.call("add_chat", ({chat_id}, media_id))
