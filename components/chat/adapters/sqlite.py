"""SQLite adapter of :class:`ChatStore` (the embedded profile).

One SQLite file, one connection, owned by one dedicated worker thread
(:class:`common.adapters.sqlite.SqliteDatabase`): every call is shipped to that thread, so the
reactor never blocks on disk I/O and the connection is never shared between threads.

Every method runs as ONE transaction on that thread; a change runs inside ``BEGIN IMMEDIATE``
... ``COMMIT``, together with every update it causes. So ``seq`` (the chat row's ``last_seq``)
and ``update_id`` (``user_state.last_update_id``) are allocated atomically with the rows they
number: a failed call leaves no trace and no gap, and several stores on one file (each with its
own connection) serialize their writes on SQLite's write lock. No recovery sweep is needed
(``docs/design/messaging.md``, "SQLite").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from common.adapters.sqlite import SqliteStore
from common.errors import Conflict, NotFound
from components.chat.domain import MESSAGE_NEW, Chat, Member, Message, Receipts, Update
from components.chat.ports import Appended, MessageDraft, UpdateDraft

# Ordered, append-only: never edit a script once released, add a new one instead.
MIGRATIONS: tuple[str, ...] = (
    # 1: chats, members with their receipts, messages, the per-user update log
    """
    CREATE TABLE chats (
        chat_id       TEXT    PRIMARY KEY,
        type          TEXT    NOT NULL,
        title         TEXT,
        owner_id      TEXT,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        last_seq      INTEGER NOT NULL DEFAULT 0,
        last_message  TEXT,
        version       INTEGER NOT NULL DEFAULT 1
    );

    CREATE TABLE chat_members (
        chat_id            TEXT    NOT NULL REFERENCES chats (chat_id) ON DELETE CASCADE,
        user_id            TEXT    NOT NULL,
        position           INTEGER NOT NULL,
        joined_at_ms       INTEGER NOT NULL,
        last_delivered_seq INTEGER NOT NULL DEFAULT 0,
        last_read_seq      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX chat_members_user_id ON chat_members (user_id);

    CREATE TABLE messages (
        chat_id       TEXT    NOT NULL REFERENCES chats (chat_id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        message_id    TEXT    NOT NULL,
        sender_id     TEXT    NOT NULL,
        client_msg_id TEXT    NOT NULL,
        text          TEXT,
        reply_to      INTEGER,
        media         TEXT    NOT NULL DEFAULT '[]',
        sent_at_ms    INTEGER NOT NULL,
        edited_at_ms  INTEGER,
        deleted       INTEGER NOT NULL DEFAULT 0,
        reactions     TEXT    NOT NULL DEFAULT '{}',
        version       INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (chat_id, seq)
    );
    CREATE UNIQUE INDEX messages_message_id ON messages (chat_id, message_id);
    CREATE UNIQUE INDEX messages_client_msg_id ON messages (sender_id, client_msg_id);

    CREATE TABLE user_updates (
        user_id    TEXT    NOT NULL,
        update_id  INTEGER NOT NULL,
        type       TEXT    NOT NULL,
        chat_id    TEXT,
        at_ms      INTEGER NOT NULL,
        data       TEXT    NOT NULL,
        dedupe_key TEXT,
        PRIMARY KEY (user_id, update_id)
    );
    CREATE UNIQUE INDEX user_updates_dedupe_key ON user_updates (user_id, dedupe_key)
        WHERE dedupe_key IS NOT NULL;

    CREATE TABLE user_state (
        user_id        TEXT    PRIMARY KEY,
        last_update_id INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: per-member mute of a chat's push notifications
    """
    CREATE TABLE chat_mutes (
        chat_id  TEXT    NOT NULL,
        user_id  TEXT    NOT NULL,
        until_ms INTEGER NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    """,
)

_CHAT_COLUMNS = "chat_id, type, title, owner_id, created_at_ms, updated_at_ms, last_seq, last_message, version"
_MESSAGE_COLUMNS = (
    "message_id, chat_id, seq, sender_id, client_msg_id, text, sent_at_ms, reply_to, media,"
    " edited_at_ms, deleted, reactions, version"
)
_UPDATE_COLUMNS = "user_id, update_id, type, chat_id, at_ms, data"


# -- row mapping ---------------------------------------------------------------------------------
def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _load_optional(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _chat(row: Sequence[Any], members: Sequence[Member]) -> Chat:
    chat_id, type_, title, owner_id, created_at_ms, updated_at_ms, last_seq, last_message, version = row
    return Chat(
        chat_id=chat_id,
        type=type_,
        title=title,
        owner_id=owner_id,
        members=tuple(members),
        created_at_ms=created_at_ms,
        updated_at_ms=updated_at_ms,
        last_seq=last_seq,
        last_message=_load_optional(last_message),
        version=version,
    )


def _message(row: Sequence[Any]) -> Message:
    (
        message_id,
        chat_id,
        seq,
        sender_id,
        client_msg_id,
        text,
        sent_at_ms,
        reply_to,
        media,
        edited_at_ms,
        deleted,
        reactions,
        version,
    ) = row
    return Message(
        message_id=message_id,
        chat_id=chat_id,
        seq=seq,
        sender_id=sender_id,
        client_msg_id=client_msg_id,
        text=text,
        sent_at_ms=sent_at_ms,
        reply_to=reply_to,
        media=tuple(json.loads(media)),
        edited_at_ms=edited_at_ms,
        deleted=bool(deleted),
        # a JSON object keeps its keys in order, so the reactions' order round-trips
        reactions={emoji: tuple(users) for emoji, users in json.loads(reactions).items()},
        version=version,
    )


def _reactions(message: Message) -> str:
    return _dump({emoji: list(users) for emoji, users in message.reactions.items()})


def _update(row: Sequence[Any]) -> Update:
    user_id, update_id, type_, chat_id, at_ms, data = row
    return Update(user_id=user_id, update_id=update_id, type=type_, chat_id=chat_id, at_ms=at_ms, data=json.loads(data))


# -- statements used inside transactions (all run on the database thread) -------------------------
def _members(conn: sqlite3.Connection, chat_id: str) -> list[Member]:
    rows = conn.execute(
        "SELECT user_id, joined_at_ms FROM chat_members WHERE chat_id = ? ORDER BY position", (chat_id,)
    ).fetchall()
    return [Member(user_id, joined_at_ms) for user_id, joined_at_ms in rows]


def _select_chat(conn: sqlite3.Connection, chat_id: str) -> Chat | None:
    row = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
    return None if row is None else _chat(row, _members(conn, chat_id))


def _store_updates(conn: sqlite3.Connection, drafts: Sequence[UpdateDraft]) -> list[Update]:
    """Each draft gets its user's next ``update_id`` (in list order), unless the user has an
    update with its dedupe key already: then that one is answered and nothing is stored."""
    out: list[Update] = []
    for d in drafts:
        if d.dedupe_key is not None:
            row = conn.execute(
                f"SELECT {_UPDATE_COLUMNS} FROM user_updates WHERE user_id = ? AND dedupe_key = ?",
                (d.user_id, d.dedupe_key),
            ).fetchone()
            if row is not None:
                out.append(_update(row))
                continue
        (update_id,) = conn.execute(
            "INSERT INTO user_state (user_id, last_update_id) VALUES (?, 1)"
            " ON CONFLICT (user_id) DO UPDATE SET last_update_id = last_update_id + 1"
            " RETURNING last_update_id",
            (d.user_id,),
        ).fetchone()
        data = _dump(d.data)
        conn.execute(
            "INSERT INTO user_updates (user_id, update_id, type, chat_id, at_ms, data, dedupe_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (d.user_id, update_id, d.type, d.chat_id, d.at_ms, data, d.dedupe_key),
        )
        # answer what a later read answers (JSON turns tuples into lists)
        out.append(Update(d.user_id, update_id, d.type, d.chat_id, d.at_ms, json.loads(data)))
    return out


class SqliteChatStore(SqliteStore):
    """:class:`ChatStore` on one SQLite file."""

    migrations = MIGRATIONS

    # Every method is one transaction: ``self._db.write`` (BEGIN IMMEDIATE: it holds the write lock
    # from the start, so what it reads -- last_seq, last_update_id, versions -- cannot change under
    # it) or ``self._db.read`` (one consistent snapshot across its statements).

    # -- chats -----------------------------------------------------------------------------
    async def create_chat(self, chat: Chat, updates: list[UpdateDraft]) -> tuple[Chat, bool, list[Update]]:
        stored = replace(chat, last_seq=0, last_message=None, version=1)

        def create(conn: sqlite3.Connection) -> tuple[Chat, bool, list[Update]]:
            existing = _select_chat(conn, chat.chat_id)
            if existing is not None:
                return existing, False, []
            conn.execute(
                f"INSERT INTO chats ({_CHAT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, NULL, 1)",
                (chat.chat_id, chat.type, chat.title, chat.owner_id, chat.created_at_ms, chat.updated_at_ms),
            )
            conn.executemany(
                "INSERT INTO chat_members (chat_id, user_id, position, joined_at_ms, last_delivered_seq, last_read_seq)"
                " VALUES (?, ?, ?, ?, 0, 0)",
                [(chat.chat_id, m.user_id, i, m.joined_at_ms) for i, m in enumerate(chat.members)],
            )
            return stored, True, _store_updates(conn, updates)

        return await self._db.write(create)

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self._db.read(lambda conn: _select_chat(conn, chat_id))

    async def update_chat(self, chat: Chat, expected_version: int, updates: list[UpdateDraft]) -> list[Update]:
        def update(conn: sqlite3.Connection) -> list[Update]:
            row = conn.execute("SELECT version, last_seq FROM chats WHERE chat_id = ?", (chat.chat_id,)).fetchone()
            if row is None:
                raise NotFound("no such chat")
            version, last_seq = row
            if version != expected_version:
                raise Conflict(f"chat version is {version}, not {expected_version}")
            conn.execute(
                "UPDATE chats SET title = ?, owner_id = ?, updated_at_ms = ?, version = ? WHERE chat_id = ?",
                (chat.title, chat.owner_id, chat.updated_at_ms, expected_version + 1, chat.chat_id),
            )
            before = {r[0] for r in conn.execute("SELECT user_id FROM chat_members WHERE chat_id = ?", (chat.chat_id,))}
            after = set(chat.member_ids)
            conn.executemany(
                "DELETE FROM chat_members WHERE chat_id = ? AND user_id = ?",
                [(chat.chat_id, user_id) for user_id in before - after],
            )
            for i, m in enumerate(chat.members):
                if m.user_id in before:
                    conn.execute(
                        "UPDATE chat_members SET position = ?, joined_at_ms = ? WHERE chat_id = ? AND user_id = ?",
                        (i, m.joined_at_ms, chat.chat_id, m.user_id),
                    )
                else:  # nothing unread from before they joined
                    conn.execute(
                        "INSERT INTO chat_members"
                        " (chat_id, user_id, position, joined_at_ms, last_delivered_seq, last_read_seq)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (chat.chat_id, m.user_id, i, m.joined_at_ms, last_seq, last_seq),
                    )
            return _store_updates(conn, updates)

        return await self._db.write(update)

    async def list_user_chats(self, user_id: str) -> list[tuple[Chat, Receipts]]:
        columns = ", ".join(f"c.{c.strip()}" for c in _CHAT_COLUMNS.split(","))

        def select(conn: sqlite3.Connection) -> list[tuple[Chat, Receipts]]:
            members: dict[str, list[Member]] = {}
            for chat_id, member_id, joined_at_ms in conn.execute(
                "SELECT m.chat_id, m.user_id, m.joined_at_ms FROM chat_members m"
                " WHERE m.chat_id IN (SELECT chat_id FROM chat_members WHERE user_id = ?)"
                " ORDER BY m.chat_id, m.position",
                (user_id,),
            ):
                members.setdefault(chat_id, []).append(Member(member_id, joined_at_ms))
            rows = conn.execute(
                f"SELECT {columns}, r.last_delivered_seq, r.last_read_seq"
                " FROM chat_members r JOIN chats c ON c.chat_id = r.chat_id"
                " WHERE r.user_id = ? ORDER BY c.updated_at_ms DESC, c.chat_id",
                (user_id,),
            ).fetchall()
            return [(_chat(row[:-2], members[row[0]]), Receipts(row[-2], row[-1])) for row in rows]

        return await self._db.read(select)

    # -- messages --------------------------------------------------------------------------
    async def append_message(self, draft: MessageDraft) -> Appended:
        def append(conn: sqlite3.Connection) -> Appended:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender_id = ? AND client_msg_id = ?",
                (draft.sender_id, draft.client_msg_id),
            ).fetchone()
            if row is not None:
                return Appended(_message(row), [], True)
            row = conn.execute("SELECT last_seq FROM chats WHERE chat_id = ?", (draft.chat_id,)).fetchone()
            if row is None:
                raise NotFound("no such chat")
            message = draft.accepted(row[0] + 1)
            conn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.message_id,
                    message.chat_id,
                    message.seq,
                    message.sender_id,
                    message.client_msg_id,
                    message.text,
                    message.sent_at_ms,
                    message.reply_to,
                    _dump(list(message.media)),
                    message.edited_at_ms,
                    int(message.deleted),
                    _reactions(message),
                    message.version,
                ),
            )
            data = message.to_dict()
            conn.execute(
                "UPDATE chats SET last_seq = ?, last_message = ?, updated_at_ms = ? WHERE chat_id = ?",
                (message.seq, _dump(data), message.sent_at_ms, message.chat_id),
            )
            conn.execute(
                "UPDATE chat_members SET last_delivered_seq = ?, last_read_seq = ? WHERE chat_id = ? AND user_id = ?",
                (message.seq, message.seq, message.chat_id, message.sender_id),
            )
            key = f"msg:{message.chat_id}:{message.seq}"
            drafts = [
                UpdateDraft(m.user_id, MESSAGE_NEW, message.chat_id, message.sent_at_ms, data, key)
                for m in _members(conn, message.chat_id)
            ]
            return Appended(message, _store_updates(conn, drafts), False)

        return await self._db.write(append)

    async def get_message(self, chat_id: str, message_id: str) -> Message | None:
        def select(conn: sqlite3.Connection) -> Message | None:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND message_id = ?", (chat_id, message_id)
            ).fetchone()
            return None if row is None else _message(row)

        return await self._db.read(select)

    async def update_message(self, message: Message, expected_version: int, updates: list[UpdateDraft]) -> list[Update]:
        def update(conn: sqlite3.Connection) -> list[Update]:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND message_id = ?",
                (message.chat_id, message.message_id),
            ).fetchone()
            if row is None:
                raise NotFound("no such message")
            current = _message(row)
            if current.version != expected_version:
                raise Conflict(f"message version is {current.version}, not {expected_version}")
            stored = replace(
                current,
                text=message.text,
                media=tuple(message.media),
                reactions=dict(message.reactions),
                edited_at_ms=message.edited_at_ms,
                deleted=message.deleted,
                version=expected_version + 1,
            )
            conn.execute(
                "UPDATE messages SET text = ?, media = ?, reactions = ?, edited_at_ms = ?, deleted = ?, version = ?"
                " WHERE chat_id = ? AND seq = ?",
                (
                    stored.text,
                    _dump(list(stored.media)),
                    _reactions(stored),
                    stored.edited_at_ms,
                    int(stored.deleted),
                    stored.version,
                    stored.chat_id,
                    stored.seq,
                ),
            )
            conn.execute(
                "UPDATE chats SET last_message = ? WHERE chat_id = ? AND last_seq = ?",
                (_dump(stored.to_dict()), stored.chat_id, stored.seq),
            )
            return _store_updates(conn, updates)

        return await self._db.write(update)

    async def history(self, chat_id: str, lo: int, hi: int) -> list[Message]:
        def select(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND seq BETWEEN ? AND ? ORDER BY seq DESC",
                (chat_id, lo, hi),
            ).fetchall()
            return [_message(r) for r in rows]

        return await self._db.read(select)

    # -- receipts --------------------------------------------------------------------------
    async def get_receipts(self, chat_id: str, user_id: str) -> Receipts | None:
        def select(conn: sqlite3.Connection) -> Receipts | None:
            row = conn.execute(
                "SELECT last_delivered_seq, last_read_seq FROM chat_members WHERE chat_id = ? AND user_id = ?",
                (chat_id, user_id),
            ).fetchone()
            return None if row is None else Receipts(row[0], row[1])

        return await self._db.read(select)

    async def set_receipts(
        self, chat_id: str, user_id: str, new: Receipts, expected: Receipts, updates: list[UpdateDraft]
    ) -> list[Update]:
        def cas(conn: sqlite3.Connection) -> list[Update]:
            row = conn.execute(
                "SELECT last_delivered_seq, last_read_seq FROM chat_members WHERE chat_id = ? AND user_id = ?",
                (chat_id, user_id),
            ).fetchone()
            if row is None:
                raise NotFound("not a member of the chat")
            current = Receipts(row[0], row[1])
            if current != expected:
                raise Conflict("receipts changed")
            conn.execute(
                "UPDATE chat_members SET last_delivered_seq = ?, last_read_seq = ? WHERE chat_id = ? AND user_id = ?",
                (new.last_delivered_seq, new.last_read_seq, chat_id, user_id),
            )
            return _store_updates(conn, updates)

        return await self._db.write(cas)

    # -- update stream ---------------------------------------------------------------------
    async def append_updates(self, updates: list[UpdateDraft]) -> list[Update]:
        if not updates:
            return []
        return await self._db.write(lambda conn: _store_updates(conn, updates))

    async def get_updates(self, user_id: str, lo: int, hi: int) -> list[Update]:
        def select(conn: sqlite3.Connection) -> list[Update]:
            rows = conn.execute(
                f"SELECT {_UPDATE_COLUMNS} FROM user_updates WHERE user_id = ? AND update_id BETWEEN ? AND ?"
                " ORDER BY update_id",
                (user_id, lo, hi),
            ).fetchall()
            return [_update(r) for r in rows]

        return await self._db.read(select)

    async def last_update_id(self, user_id: str) -> int:
        def select(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT last_update_id FROM user_state WHERE user_id = ?", (user_id,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(select)

    # -- per-member settings ---------------------------------------------------------------
    async def set_mute(self, chat_id: str, user_id: str, until_ms: int | None) -> None:
        if until_ms is None:
            await self._db.change("DELETE FROM chat_mutes WHERE chat_id = ? AND user_id = ?", (chat_id, user_id))
            return
        await self._db.change(
            "INSERT INTO chat_mutes (chat_id, user_id, until_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (chat_id, user_id) DO UPDATE SET until_ms = excluded.until_ms",
            (chat_id, user_id, until_ms),
        )

    async def mutes(self, chat_id: str) -> dict[str, int]:
        rows = await self._db.query("SELECT user_id, until_ms FROM chat_mutes WHERE chat_id = ?", (chat_id,))
        return {user_id: int(until_ms) for user_id, until_ms in rows}
