"""SQLite adapter of :class:`AccountStore` and :class:`KeyStore` (the embedded profile).

One SQLite file, one connection, owned by one dedicated worker thread
(:class:`common.adapters.sqlite.SqliteDatabase`): every call is shipped to that thread, so the
reactor never blocks on disk I/O and the connection is never shared between threads.
Writes that must be atomic run inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` on that thread.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from common.adapters.sqlite import SqliteStore
from common.errors import Conflict, NotFound
from components.auth.adapters import rows as rowmap
from components.auth.domain import (
    Account,
    Device,
    RefreshToken,
    RotateOutcome,
    RotateResult,
    SigningKey,
)

# Ordered, append-only: never edit a script once released, add a new one instead.
MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, devices, refresh tokens, contacts, blocks, signing keys
    """
    CREATE TABLE accounts (
        user_id            TEXT    PRIMARY KEY,
        username           TEXT    NOT NULL UNIQUE CHECK (username = lower(username)),
        display_name       TEXT    NOT NULL,
        display_name_lower TEXT    NOT NULL,
        password_hash      TEXT    NOT NULL,
        bio                TEXT    NOT NULL DEFAULT '',
        avatar_media_id    TEXT,
        created_at_ms      INTEGER NOT NULL,
        updated_at_ms      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX accounts_display_name_lower ON accounts (display_name_lower);

    CREATE TABLE devices (
        device_id       TEXT    PRIMARY KEY,
        user_id         TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        name            TEXT    NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        last_used_at_ms INTEGER NOT NULL DEFAULT 0,
        revoked_at_ms   INTEGER
    );
    CREATE INDEX devices_user_id ON devices (user_id);

    CREATE TABLE refresh_tokens (
        token_hash    TEXT    PRIMARY KEY,
        device_id     TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        user_id       TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        used_at_ms    INTEGER,
        revoked_at_ms INTEGER
    );
    CREATE INDEX refresh_tokens_device_id ON refresh_tokens (device_id);

    CREATE TABLE contacts (
        owner_id      TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        contact_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (owner_id, contact_id)
    );
    CREATE INDEX contacts_contact_id ON contacts (contact_id);

    CREATE TABLE blocks (
        blocker_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        blocked_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (blocker_id, blocked_id)
    );
    CREATE INDEX blocks_blocked_id ON blocks (blocked_id);

    CREATE TABLE signing_keys (
        kid           TEXT    PRIMARY KEY,
        algorithm     TEXT    NOT NULL,
        private_pem   TEXT    NOT NULL,
        public_jwk    TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX signing_keys_created_at_ms ON signing_keys (created_at_ms);
    """,
)

_IN_CHUNK = 500  # stay far below SQLITE_MAX_VARIABLE_NUMBER


def _integrity(e: sqlite3.IntegrityError, conflict: str, missing: str = "unknown user") -> Exception:
    name = getattr(e, "sqlite_errorname", "")
    if name == "SQLITE_CONSTRAINT_FOREIGNKEY" or "FOREIGN KEY" in str(e):
        return NotFound(missing)
    if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY") or "UNIQUE" in str(e):
        return Conflict(conflict)
    return e


class SqliteAccountStore(SqliteStore):
    """:class:`AccountStore` and :class:`KeyStore` on one SQLite file."""

    migrations = MIGRATIONS

    # -- accounts --------------------------------------------------------------------------
    async def create_account(self, account: Account) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO accounts ({rowmap.ACCOUNT_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rowmap.account_insert_values(account),
                )
            except sqlite3.IntegrityError as e:
                raise _integrity(e, "username is taken") from e

        await self._db.autocommit(insert)

    async def get_account(self, user_id: str) -> Account | None:
        rows = await self._db.query(f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE user_id = ?", (user_id,))
        return rowmap.account(rows[0]) if rows else None

    async def get_account_by_username(self, username: str) -> Account | None:
        rows = await self._db.query(
            f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE username = ?", (username.lower(),)
        )
        return rowmap.account(rows[0]) if rows else None

    async def get_accounts(self, user_ids: Sequence[str]) -> list[Account]:
        ids = list(user_ids)
        if not ids:
            return []

        def select(conn: sqlite3.Connection) -> dict[str, Account]:
            found: dict[str, Account] = {}
            unique = list(dict.fromkeys(ids))
            for i in range(0, len(unique), _IN_CHUNK):
                chunk = unique[i : i + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE user_id IN ({marks})", chunk
                ).fetchall():
                    found[row[0]] = rowmap.account(row)
            return found

        found = await self._db.autocommit(select)
        return [found[uid] for uid in ids if uid in found]

    async def update_profile(self, user_id: str, fields: Mapping[str, Any], now_ms: int) -> Account | None:
        assignments = rowmap.profile_assignments(fields)

        def update(conn: sqlite3.Connection) -> Account | None:
            columns = [*assignments, "updated_at_ms"]
            values = [*assignments.values(), now_ms]
            sets = ", ".join(f"{c} = ?" for c in columns)
            if conn.execute(f"UPDATE accounts SET {sets} WHERE user_id = ?", (*values, user_id)).rowcount == 0:
                return None
            row = conn.execute(
                f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts WHERE user_id = ?", (user_id,)
            ).fetchone()
            return rowmap.account(row)

        return await self._db.write(update)

    async def search_accounts(self, prefix: str, limit: int) -> list[Account]:
        if limit <= 0:
            return []
        p = prefix.lower()
        # LIKE decides; the range (code-point order, like the BINARY collation) lets SQLite use
        # the indexes, which it will not do for a case-insensitive LIKE on BINARY columns.
        rows = await self._db.query(
            f"SELECT {rowmap.ACCOUNT_COLUMNS} FROM accounts"
            " WHERE (username >= :lo AND username < :hi AND username LIKE :p ESCAPE '\\')"
            " OR (display_name_lower >= :lo AND display_name_lower < :hi AND display_name_lower LIKE :p ESCAPE '\\')"
            " ORDER BY username LIMIT :limit",
            {"lo": p, "hi": p + "\U0010ffff", "p": rowmap.escape_like(p) + "%", "limit": limit},
        )
        return [rowmap.account(r) for r in rows]

    # -- devices and refresh tokens -----------------------------------------------------------
    async def create_device(self, device: Device, token: RefreshToken) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO devices ({rowmap.DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        device.device_id,
                        device.user_id,
                        device.name,
                        device.created_at_ms,
                        device.last_used_at_ms,
                        device.revoked_at_ms,
                    ),
                )
                self._insert_token(conn, token, device.device_id, device.user_id)
            except sqlite3.IntegrityError as e:
                raise _integrity(e, "device or token already exists") from e

        await self._db.write(insert)

    @staticmethod
    def _insert_token(conn: sqlite3.Connection, token: RefreshToken, device_id: str, user_id: str) -> None:
        conn.execute(
            "INSERT INTO refresh_tokens (token_hash, device_id, user_id, created_at_ms, expires_at_ms, used_at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token.token_hash, device_id, user_id, token.created_at_ms, token.expires_at_ms, token.used_at_ms),
        )

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self._db.query(f"SELECT {rowmap.DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,))
        return rowmap.device(rows[0]) if rows else None

    async def rotate_refresh_token(self, old_hash: str, new: RefreshToken, now_ms: int) -> RotateResult:
        def rotate(conn: sqlite3.Connection) -> RotateResult:
            tok = conn.execute(
                "SELECT device_id, user_id, expires_at_ms, used_at_ms, revoked_at_ms"
                " FROM refresh_tokens WHERE token_hash = ?",
                (old_hash,),
            ).fetchone()
            if tok is None:
                return RotateResult(RotateOutcome.INVALID)
            device_id, user_id, expires_at_ms, used_at_ms, token_revoked_at_ms = tok
            row = conn.execute(
                f"SELECT {rowmap.DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            if row is None:
                return RotateResult(RotateOutcome.INVALID)
            device = rowmap.device(row)
            if device.revoked or token_revoked_at_ms is not None or now_ms >= expires_at_ms:
                return RotateResult(RotateOutcome.INVALID)
            if used_at_ms is not None:
                self._revoke(conn, device_id, now_ms)
                return RotateResult(RotateOutcome.REUSED, dataclasses.replace(device, revoked_at_ms=now_ms))
            conn.execute("UPDATE refresh_tokens SET used_at_ms = ? WHERE token_hash = ?", (now_ms, old_hash))
            # Expired tokens answer INVALID whether present or not: drop them to keep the table small.
            conn.execute(
                "DELETE FROM refresh_tokens WHERE device_id = ? AND expires_at_ms <= ? AND token_hash <> ?",
                (device_id, now_ms, old_hash),
            )
            try:
                self._insert_token(conn, new, device_id, user_id)
            except sqlite3.IntegrityError as e:
                raise _integrity(e, "refresh token already exists") from e
            conn.execute("UPDATE devices SET last_used_at_ms = ? WHERE device_id = ?", (now_ms, device_id))
            return RotateResult(RotateOutcome.OK, dataclasses.replace(device, last_used_at_ms=now_ms))

        return await self._db.write(rotate)

    @staticmethod
    def _revoke(conn: sqlite3.Connection, device_id: str, now_ms: int) -> None:
        conn.execute("UPDATE devices SET revoked_at_ms = ? WHERE device_id = ?", (now_ms, device_id))
        conn.execute(
            "UPDATE refresh_tokens SET revoked_at_ms = ? WHERE device_id = ? AND revoked_at_ms IS NULL",
            (now_ms, device_id),
        )

    async def revoke_device(self, device_id: str, now_ms: int) -> bool:
        def revoke(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT revoked_at_ms FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None or row[0] is not None:
                return False
            self._revoke(conn, device_id, now_ms)
            return True

        return await self._db.write(revoke)

    # -- contacts and blocks --------------------------------------------------------------------
    async def _insert_pair(self, table: str, a: str, b: str, a_id: str, b_id: str, now_ms: int) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO {table} ({a}, {b}, created_at_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (a_id, b_id, now_ms),
                )
            except sqlite3.IntegrityError as e:
                raise _integrity(e, "already exists") from e

        await self._db.autocommit(insert)

    async def add_contact(self, owner_id: str, contact_id: str, now_ms: int) -> None:
        await self._insert_pair("contacts", "owner_id", "contact_id", owner_id, contact_id, now_ms)

    async def remove_contact(self, owner_id: str, contact_id: str) -> None:
        await self._db.change("DELETE FROM contacts WHERE owner_id = ? AND contact_id = ?", (owner_id, contact_id))

    async def list_contacts(self, owner_id: str) -> list[Account]:
        columns = ", ".join(f"a.{c.strip()}" for c in rowmap.ACCOUNT_COLUMNS.split(","))
        rows = await self._db.query(
            f"SELECT {columns} FROM contacts c JOIN accounts a ON a.user_id = c.contact_id"
            " WHERE c.owner_id = ? ORDER BY a.username",
            (owner_id,),
        )
        return [rowmap.account(r) for r in rows]

    async def count_contacts(self, owner_id: str) -> int:
        rows = await self._db.query("SELECT count(*) FROM contacts WHERE owner_id = ?", (owner_id,))
        return int(rows[0][0])

    async def block(self, blocker_id: str, blocked_id: str, now_ms: int) -> None:
        await self._insert_pair("blocks", "blocker_id", "blocked_id", blocker_id, blocked_id, now_ms)

    async def unblock(self, blocker_id: str, blocked_id: str) -> None:
        await self._db.change("DELETE FROM blocks WHERE blocker_id = ? AND blocked_id = ?", (blocker_id, blocked_id))

    async def is_blocked(self, blocker_id: str, blocked_id: str) -> bool:
        rows = await self._db.query(
            "SELECT 1 FROM blocks WHERE blocker_id = ? AND blocked_id = ?", (blocker_id, blocked_id)
        )
        return bool(rows)

    async def list_blocked(self, blocker_id: str) -> list[str]:
        rows = await self._db.query(
            "SELECT blocked_id FROM blocks WHERE blocker_id = ? ORDER BY blocked_id", (blocker_id,)
        )
        return [r[0] for r in rows]

    # -- signing keys -----------------------------------------------------------------------------
    async def add_signing_key(self, key: SigningKey) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO signing_keys ({rowmap.KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (
                        key.kid,
                        key.algorithm,
                        key.private_pem,
                        json.dumps(key.public_jwk, sort_keys=True),
                        key.created_at_ms,
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise _integrity(e, f"signing key {key.kid!r} already exists") from e

        await self._db.autocommit(insert)

    async def list_signing_keys(self, created_after_ms: int) -> list[SigningKey]:
        rows = await self._db.query(
            f"SELECT {rowmap.KEY_COLUMNS} FROM signing_keys WHERE created_at_ms > ?"
            " ORDER BY created_at_ms DESC, kid DESC",
            (created_after_ms,),
        )
        return [rowmap.signing_key(r) for r in rows]

    async def delete_signing_keys(self, created_before_ms: int) -> int:
        return await self._db.change("DELETE FROM signing_keys WHERE created_at_ms < ?", (created_before_ms,))
