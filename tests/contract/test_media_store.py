"""Contract of the media ``MediaStore`` port, run against SQLite (embedded) and Cassandra
(distributed; one keyspace for the module, dropped at the end)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as _reactor

from common.errors import NotFound
from components.media.adapters.cassandra import CassandraMediaStore
from components.media.adapters.sqlite import SqliteMediaStore
from components.media.domain import COMPLETE, PENDING, Media, new_media_id
from components.media.ports import MediaStore

reactor: Any = _reactor
OWNER = "a" * 32


@pytest.fixture(scope="module")
def keyspace(new_keyspace: Callable[[], str]) -> str:
    return new_keyspace()  # made by the store, dropped at the end of the session


@pytest_twisted.async_yield_fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MediaStore]:
    if request.param == "sqlite":
        s: Any = SqliteMediaStore(tmp_path / "media.sqlite3", reactor)
    else:
        host, port = request.getfixturevalue("cassandra_location").rsplit(":", 1)
        s = CassandraMediaStore([host], int(port), request.getfixturevalue("keyspace"), reactor)
    await s.start()
    yield s
    await s.stop()


def media(**kw: Any) -> Media:
    return Media(new_media_id(), OWNER, "image/png", 123, 1_700_000_000_000, filename="x.png", **kw)


@pytest_twisted.ensureDeferred
async def test_create_get_complete(store):
    m = media()
    assert await store.get(m.media_id) is None
    await store.create(m)
    assert await store.get(m.media_id) == m
    done = await store.complete(replace(m, state=COMPLETE, width=10, height=20, has_thumbnail=True))
    assert done == replace(m, state=COMPLETE, width=10, height=20, has_thumbnail=True)
    # the first completion wins
    again = await store.complete(replace(m, state=COMPLETE, width=99, height=99, has_thumbnail=False))
    assert again == done and (await store.get(m.media_id)) == done
    with pytest.raises(NotFound):
        await store.complete(replace(media(), state=COMPLETE))


@pytest_twisted.ensureDeferred
async def test_chats_where_posted_accumulate_idempotently(store):
    a, b = media(), media()
    for m in (a, b):
        await store.create(m)
    await store.add_chat([a.media_id, b.media_id], "c" * 32)
    await store.add_chat([a.media_id], "c" * 32)
    await store.add_chat([a.media_id], "d" * 32)
    assert (await store.get(a.media_id)).chats == frozenset({"c" * 32, "d" * 32})
    assert (await store.get(b.media_id)).chats == frozenset({"c" * 32})
    assert (await store.get(a.media_id)).state == PENDING


@pytest_twisted.ensureDeferred
async def test_concurrent_completions_agree(store):
    m = media()
    await store.create(m)
    results = await defer.gatherResults(
        [
            defer.ensureDeferred(store.complete(replace(m, state=COMPLETE, width=w, height=w, has_thumbnail=True)))
            for w in (1, 2, 3)
        ]
    )
    assert len({(r.width, r.height) for r in results}) == 1
