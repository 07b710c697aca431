"""The embedded profile's SQLite files, whichever store: WAL journal, one schema_version row per
migration, start/stop repeatable (the plumbing is shared: common/adapters/sqlite.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from components.auth.adapters import sqlite as auth_sqlite
from components.chat.adapters import sqlite as chat_sqlite

STORES: list[tuple[Any, list[str]]] = [
    (auth_sqlite.SqliteAccountStore, list(auth_sqlite.MIGRATIONS)),
    (chat_sqlite.SqliteChatStore, list(chat_sqlite.MIGRATIONS)),
]


@pytest.mark.parametrize(("store_class", "migrations"), STORES, ids=lambda v: getattr(v, "__name__", ""))
@pytest_twisted.ensureDeferred
async def test_sqlite_file_settings(tmp_path: Path, store_class: Any, migrations: list[str]) -> None:
    path = tmp_path / "nested" / "dir" / "store.db"
    store = store_class(path)
    await store.start()
    await store.stop()
    await store.start()  # again: nothing to migrate
    await store.stop()
    await store.stop()  # harmless
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(migrations) + 1))
    finally:
        conn.close()
