"""The Cassandra adapter of ``ChatStore`` against a real Cassandra (``scripts/services.sh up``).

One keyspace per module (random name, dropped at the end): creating tables in Cassandra is
slow, so the schema is made once and every test works on chats and users of its own. The
module's store uses a bucket size of 8, so most tests cross partition boundaries.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from cassandra import WriteTimeout, WriteType
from cassandra.protocol import ErrorMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

from common.errors import Conflict, NotFound, Unavailable
from components.chat.adapters.cassandra import CassandraChatStore, SimulatedCrash
from components.chat.domain import (
    CHAT_CREATED,
    CHAT_MEMBER_ADDED,
    MESSAGE_EDITED,
    MESSAGE_NEW,
    RECEIPT_READ,
    Chat,
    Member,
    Message,
    Receipts,
    edit,
    new_direct,
    new_group,
    new_id,
)
from components.chat.ports import MessageDraft, UpdateDraft
from tests.support.node import free_port

pytestmark = pytest.mark.cassandra

reactor: Any = _reactor

ENV = "MESSENGER_TEST_CASSANDRA"
NOW = 1_700_000_000_000
BUCKET = 8


@pytest.fixture(scope="module")
def cassandra_at() -> tuple[str, int]:
    """Where the test Cassandra listens; fails (never skips) when it is not configured."""
    value = os.environ.get(ENV)
    if not value:
        pytest.fail(
            f"{ENV} is not set: start the test servers with `scripts/services.sh up` and"
            f' `eval "$(scripts/services.sh env)"` (or deselect with -m "not cassandra")',
            pytrace=False,
        )
    host, port = value.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        pytest.fail(f"cannot reach Cassandra at {value} ({e}): start it with `scripts/services.sh up`", pytrace=False)
    return host, int(port)


@pytest.fixture(scope="module")
def keyspace() -> str:
    return f"chat_test_{uuid.uuid4().hex[:12]}"


def open_store(at: tuple[str, int], keyspace: str, **kwargs: Any) -> CassandraChatStore:
    kwargs.setdefault("bucket_size", BUCKET)
    kwargs.setdefault("recovery_interval_s", None)
    return CassandraChatStore([at[0]], at[1], keyspace, reactor, **kwargs)


@pytest_twisted.async_yield_fixture(scope="module")
async def store(cassandra_at: tuple[str, int], keyspace: str) -> AsyncIterator[CassandraChatStore]:
    s = open_store(cassandra_at, keyspace)
    await s.start()
    try:
        yield s
    finally:
        await s._ddl(f"DROP KEYSPACE IF EXISTS {keyspace}")
        await s.stop()


@pytest_twisted.async_yield_fixture
async def other(
    cassandra_at: tuple[str, int], keyspace: str, store: CassandraChatStore
) -> AsyncIterator[CassandraChatStore]:
    """A second instance on the same keyspace (another process, as far as Cassandra can tell)."""
    s = open_store(cassandra_at, keyspace)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


# -- helpers -------------------------------------------------------------------------------------
def users(n: int) -> list[str]:
    return [new_id() for _ in range(n)]


async def direct(store: CassandraChatStore) -> tuple[Chat, str, str]:
    a, b = users(2)
    chat, created, _ = await store.create_chat(new_direct(a, b, NOW), [])
    assert created
    return chat, a, b


async def crashed_send(
    store: CassandraChatStore,
    crashy: CassandraChatStore,
    point: str,
    client_msg_id: str | None = None,
    text: str = "hi",
) -> tuple[Chat, str, str]:
    """A fresh direct chat (after recovering what earlier tests left) and a send from its first
    member by ``crashy`` that dies at ``point``. Answers (chat, a, b)."""
    await recover_all(store)
    chat, a, b = await direct(store)
    crashy.crash_points = {point}
    with pytest.raises(SimulatedCrash):
        await crashy.append_message(message(chat, a, client_msg_id, text))
    return chat, a, b


def message(chat: Chat, sender: str, client_msg_id: str | None = None, text: str = "hi") -> MessageDraft:
    return MessageDraft(new_id(), chat.chat_id, sender, client_msg_id or new_id(), text, NOW)


async def all_updates(store: CassandraChatStore, user: str) -> list[Any]:
    return await store.get_updates(user, 1, await store.last_update_id(user))


def seqs_of_new(updates: list[Any]) -> list[int]:
    return [u.data["seq"] for u in updates if u.type == MESSAGE_NEW]


async def cql(store: CassandraChatStore, query: str, *params: Any) -> list[dict[str, Any]]:
    return await store._ddl(query.format(ks=store.keyspace), params)


# -- chats ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_create_chat_stores_receipts_and_updates_once(store: CassandraChatStore) -> None:
    owner, b, c = users(3)
    chat = new_group(new_id(), owner, "team", [b, c], NOW)
    drafts = [UpdateDraft(u, CHAT_CREATED, chat.chat_id, NOW, {"title": "team"}) for u in chat.member_ids]

    stored, created, updates = await store.create_chat(chat, drafts)

    assert created and stored == replace(chat, version=1, last_seq=0)
    assert [(u.user_id, u.update_id, u.type) for u in updates] == [(u, 1, CHAT_CREATED) for u in chat.member_ids]
    assert await store.get_chat(chat.chat_id) == stored
    assert await store.get_receipts(chat.chat_id, b) == Receipts(0, 0)
    assert await store.get_receipts(chat.chat_id, new_id()) is None
    assert await store.list_user_chats(c) == [(stored, Receipts(0, 0))]

    again, created, updates = await store.create_chat(replace(chat, title="other"), drafts)
    assert (again, created, updates) == (stored, False, [])
    assert again.title == "team"
    assert await store.last_update_id(owner) == 1
    assert await store.get_chat(new_id()) is None


@pytest_twisted.ensureDeferred
async def test_update_chat_checks_the_version_and_keeps_members_in_step(store: CassandraChatStore) -> None:
    owner, b, c = users(3)
    chat, _, _ = await store.create_chat(new_group(new_id(), owner, "team", [b], NOW), [])
    for _ in range(2):
        await store.append_message(message(chat, owner))
    changed = replace(
        chat,
        title="renamed",
        members=(chat.members[0], Member(c, NOW + 5)),
        updated_at_ms=NOW + 5,
        last_seq=99,  # the store's own: not taken from the caller
        last_message={"bogus": True},
    )
    drafts = [UpdateDraft(u, CHAT_MEMBER_ADDED, chat.chat_id, NOW + 5, {"user_id": c}) for u in (owner, b, c)]

    updates = await store.update_chat(changed, 1, drafts)

    assert [u.type for u in updates] == [CHAT_MEMBER_ADDED] * 3
    got = await store.get_chat(chat.chat_id)
    assert got is not None
    assert (got.version, got.title, got.member_ids, got.last_seq) == (2, "renamed", [owner, c], 2)
    assert got.last_message is not None and got.last_message["seq"] == 2
    assert await store.get_receipts(chat.chat_id, c) == Receipts(2, 2)  # nothing unread from before
    assert await store.get_receipts(chat.chat_id, b) is None
    assert await store.list_user_chats(b) == []
    assert [x.chat_id for x, _ in await store.list_user_chats(c)] == [chat.chat_id]

    with pytest.raises(Conflict):
        await store.update_chat(replace(changed, title="late"), 1, drafts)
    with pytest.raises(NotFound):
        await store.update_chat(replace(changed, chat_id=new_id()), 1, [])
    assert (await store.get_chat(chat.chat_id)).title == "renamed"  # type: ignore[union-attr]
    assert await store.last_update_id(owner) == 3  # two messages and one member_added: the conflict stored nothing


# -- messages ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_concurrent_appends_get_consecutive_seqs_and_update_ids(store: CassandraChatStore) -> None:
    chat, a, b = await direct(store)

    results = await defer.gatherResults(
        [defer.ensureDeferred(store.append_message(message(chat, a, text=f"m{i}"))) for i in range(20)]
    )

    assert sorted(r.message.seq for r in results) == list(range(1, 21))
    assert not any(r.duplicate for r in results)
    for user in (a, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == list(range(1, 21))
        assert sorted(seqs_of_new(updates)) == list(range(1, 21))
    got = await store.get_chat(chat.chat_id)
    assert got is not None and got.last_seq == 20
    history = await store.history(chat.chat_id, 1, 20)
    assert [m.seq for m in history] == list(range(20, 0, -1))
    assert got.last_message == history[0].to_dict()
    assert await store.get_receipts(chat.chat_id, a) == Receipts(20, 20)
    assert await store.get_receipts(chat.chat_id, b) == Receipts(0, 0)
    for r in results:
        assert [u.user_id for u in r.updates] == [a, b]
        assert all(u.data == r.message.to_dict() and u.at_ms == NOW for u in r.updates)


@pytest_twisted.ensureDeferred
async def test_two_instances_appending_at_once_leave_no_gaps(
    store: CassandraChatStore, other: CassandraChatStore
) -> None:
    chat, a, b = await direct(store)
    await store.append_message(message(chat, a))  # both instances have something cached now
    await other.append_message(message(chat, b))

    results = await defer.gatherResults(
        [defer.ensureDeferred(s.append_message(message(chat, a))) for s in (store, other) for _ in range(8)]
    )

    assert sorted(r.message.seq for r in results) == list(range(3, 19))
    for user in (a, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == list(range(1, 19))
        assert sorted(seqs_of_new(updates)) == list(range(1, 19))


@pytest_twisted.ensureDeferred
async def test_resending_a_client_msg_id_answers_the_first_message(store: CassandraChatStore) -> None:
    chat, a, b = await direct(store)
    first = await store.append_message(message(chat, a, "c-1", "hello"))

    again = await store.append_message(message(chat, a, "c-1", "something else"))

    assert again.duplicate and again.updates == []
    assert again.message == first.message and again.message.text == "hello"
    other_chat, _, _ = await direct(store)
    elsewhere = await store.append_message(message(other_chat, a, "c-1"))
    assert elsewhere.duplicate and elsewhere.message == first.message

    racing = await defer.gatherResults(
        [defer.ensureDeferred(store.append_message(message(chat, a, "c-2", f"try {i}"))) for i in range(3)]
    )
    assert sorted(r.duplicate for r in racing) == [False, True, True]
    assert len({r.message.message_id for r in racing}) == 1
    assert await store.last_update_id(b) == 2
    assert seqs_of_new(await all_updates(store, b)) == [1, 2]


@pytest_twisted.ensureDeferred
async def test_appending_to_a_missing_chat_stores_nothing(store: CassandraChatStore) -> None:
    chat, a, _ = await direct(store)
    missing = replace(chat, chat_id=new_id())

    with pytest.raises(NotFound):
        await store.append_message(message(missing, a, "c-x"))

    done = await store.append_message(message(chat, a, "c-x"))  # the failed attempt held nothing
    assert not done.duplicate and done.message.seq == 1


@pytest_twisted.ensureDeferred
async def test_update_message_checks_the_version_and_last_message_follows(store: CassandraChatStore) -> None:
    chat, a, b = await direct(store)
    m1 = (await store.append_message(message(chat, a, text="one"))).message
    m2 = (await store.append_message(message(chat, a, text="two"))).message
    edited = edit(m2, "two!", NOW + 1)
    drafts = [UpdateDraft(u, MESSAGE_EDITED, chat.chat_id, NOW + 1, {"seq": 2}) for u in (a, b)]

    updates = await store.update_message(edited, 1, drafts)

    assert [(u.user_id, u.update_id) for u in updates] == [(a, 3), (b, 3)]
    stored = await store.get_message(chat.chat_id, m2.message_id)
    assert stored == replace(edited, version=2)
    assert (await store.get_chat(chat.chat_id)).last_message == stored.to_dict()  # type: ignore[union-attr]

    await store.update_message(edit(m1, "one!", NOW + 2), 1, [])
    assert (await store.get_chat(chat.chat_id)).last_message == stored.to_dict()  # type: ignore[union-attr]
    assert (await store.history(chat.chat_id, 1, 1))[0].text == "one!"

    with pytest.raises(Conflict):
        await store.update_message(edit(m2, "late", NOW + 3), 1, drafts)
    with pytest.raises(NotFound):
        await store.update_message(replace(m2, message_id=new_id()), 1, [])
    assert await store.get_message(chat.chat_id, new_id()) is None
    assert await store.last_update_id(b) == 3


@pytest_twisted.ensureDeferred
async def test_history_and_updates_read_across_bucket_boundaries(store: CassandraChatStore) -> None:
    chat, a, b = await direct(store)
    for i in range(20):
        await store.append_message(message(chat, a, text=f"m{i + 1}"))

    assert [m.seq for m in await store.history(chat.chat_id, 5, 12)] == list(range(12, 4, -1))
    assert [m.text for m in await store.history(chat.chat_id, 7, 8)] == ["m8", "m7"]
    assert [m.seq for m in await store.history(chat.chat_id, 19, 30)] == [20, 19]
    assert await store.history(chat.chat_id, 5, 4) == []
    assert [u.update_id for u in await store.get_updates(b, 6, 17)] == list(range(6, 18))
    assert await store.last_update_id(b) == 20
    assert await store.last_update_id(new_id()) == 0
    # partitions as designed: bucket = seq // 8
    rows = await cql(store, "SELECT seq FROM {ks}.messages WHERE chat_id = %s AND bucket = 1", chat.chat_id)
    assert [r["seq"] for r in rows] == list(range(15, 7, -1))
    rows = await cql(store, "SELECT update_id FROM {ks}.user_updates WHERE user_id = %s AND bucket = 2", b)
    assert [r["update_id"] for r in rows] == list(range(16, 21))


# -- receipts and updates ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_set_receipts_is_a_compare_and_set(store: CassandraChatStore) -> None:
    chat, a, b = await direct(store)
    for _ in range(3):
        await store.append_message(message(chat, a))
    drafts = [UpdateDraft(u, RECEIPT_READ, chat.chat_id, NOW, {"user_id": b, "up_to_seq": 2}) for u in (a, b)]

    updates = await store.set_receipts(chat.chat_id, b, Receipts(2, 2), Receipts(0, 0), drafts)

    assert [(u.user_id, u.type) for u in updates] == [(a, RECEIPT_READ), (b, RECEIPT_READ)]
    assert await store.get_receipts(chat.chat_id, b) == Receipts(2, 2)
    with pytest.raises(Conflict):
        await store.set_receipts(chat.chat_id, b, Receipts(3, 3), Receipts(0, 0), drafts)
    with pytest.raises(NotFound):
        await store.set_receipts(chat.chat_id, new_id(), Receipts(1, 1), Receipts(0, 0), [])
    assert await store.last_update_id(b) == 4  # three messages and one receipt
    await store.set_receipts(chat.chat_id, b, Receipts(3, 2), Receipts(2, 2), [])
    assert (await store.list_user_chats(b))[0][1] == Receipts(3, 2)


@pytest_twisted.ensureDeferred
async def test_append_updates_in_order_with_dedupe_keys(store: CassandraChatStore) -> None:
    u, v = users(2)
    drafts = [
        UpdateDraft(u, "chat.updated", None, NOW, {"n": 1}, dedupe_key="k1"),
        UpdateDraft(v, "chat.updated", None, NOW, {"n": 2}),
        UpdateDraft(u, "chat.updated", None, NOW, {"n": 3}),
    ]

    stored = await store.append_updates(drafts)

    assert [(x.user_id, x.update_id, x.data["n"]) for x in stored] == [(u, 1, 1), (v, 1, 2), (u, 2, 3)]
    again = await store.append_updates([replace(drafts[0], data={"n": 9})])
    assert again == [stored[0]]
    assert await store.last_update_id(u) == 2
    assert await store.append_updates([]) == []


# -- recovery ------------------------------------------------------------------------------------
@pytest.fixture
def crashy(other: CassandraChatStore) -> CassandraChatStore:
    """An instance whose writes can 'die' at a named point (``crash_points``); the module's
    store then recovers. It is the second instance of ``other``."""
    return other


async def recover_all(store: CassandraChatStore) -> int:
    total = 0
    while n := await store.recover(min_age_s=0):
        total += n
    return total


@pytest_twisted.ensureDeferred
async def test_recover_finishes_a_fan_out_whose_writer_died(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    chat, a, b = await crashed_send(store, crashy, "append.stored", "c-crash", "lost?")

    assert [m.text for m in await store.history(chat.chat_id, 1, 1)] == ["lost?"]
    assert await store.last_update_id(a) == await store.last_update_id(b) == 0

    assert await recover_all(store) >= 1
    for user in (a, b):
        assert seqs_of_new(await all_updates(store, user)) == [1]
    assert await store.get_receipts(chat.chat_id, a) == Receipts(1, 1)
    rows = await cql(store, "SELECT fanout_done FROM {ks}.messages WHERE chat_id = %s AND bucket = 0", chat.chat_id)
    assert rows == [{"fanout_done": True}]

    assert await recover_all(store) == 0
    resent = await store.append_message(message(chat, a, "c-crash", "again"))
    assert resent.duplicate and resent.message.text == "lost?"
    assert await store.last_update_id(b) == 1


@pytest_twisted.ensureDeferred
async def test_a_message_allocated_but_never_written_is_not_lost(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    chat, a, b = await crashed_send(store, crashy, "append.allocated", "c-gap", "first")
    assert await store.history(chat.chat_id, 1, 1) == []  # seq 1 is taken, its row is missing

    second = await store.append_message(message(chat, b, text="second"))  # writes row 1 before taking seq 2

    assert second.message.seq == 2
    assert [m.text for m in await store.history(chat.chat_id, 1, 2)] == ["second", "first"]
    assert await recover_all(store) >= 1
    for user in (a, b):
        updates = await all_updates(store, user)
        assert sorted(seqs_of_new(updates)) == [1, 2] and [u.update_id for u in updates] == [1, 2]
    resent = await store.append_message(message(chat, a, "c-gap"))
    assert resent.duplicate and resent.message.seq == 1


@pytest_twisted.ensureDeferred
async def test_recover_resumes_an_unfinished_send_and_adopts_half_stored_updates(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    # both updates allocated, their dedupe keys never learn it
    chat, a, b = await crashed_send(store, crashy, "update.allocated", "c-half")
    crashy.crash_points = {"append.allocated"}  # seq allocated, nothing else; no later message repairs it
    with pytest.raises(SimulatedCrash):
        await crashy.append_message(message(chat, b, "c-none"))

    assert await recover_all(store) >= 2

    for user in (a, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == [1, 2]
        assert sorted(seqs_of_new(updates)) == [1, 2]
    assert [m.client_msg_id for m in await store.history(chat.chat_id, 1, 2)] == ["c-none", "c-half"]
    assert await store.get_receipts(chat.chat_id, b) == Receipts(2, 2)


@pytest_twisted.ensureDeferred
async def test_recover_finishes_chat_message_and_receipt_changes(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    await recover_all(store)
    owner, b, c = users(3)
    chat, _, _ = await store.create_chat(new_group(new_id(), owner, "team", [b], NOW), [])
    m1 = (await store.append_message(message(chat, owner, text="one"))).message
    crashy.crash_points = {"op.applied"}

    with pytest.raises(SimulatedCrash):
        await crashy.update_chat(
            replace(chat, members=(*chat.members, Member(c, NOW + 1))),
            1,
            [UpdateDraft(u, CHAT_MEMBER_ADDED, chat.chat_id, NOW + 1, {"user_id": c}) for u in (owner, b, c)],
        )
    with pytest.raises(SimulatedCrash):
        await crashy.update_message(
            edit(m1, "one!", NOW + 2),
            1,
            [UpdateDraft(u, MESSAGE_EDITED, chat.chat_id, NOW + 2, {"seq": 1}) for u in (owner, b)],
        )
    with pytest.raises(SimulatedCrash):
        await crashy.set_receipts(
            chat.chat_id,
            b,
            Receipts(1, 1),
            Receipts(0, 0),
            [UpdateDraft(owner, RECEIPT_READ, chat.chat_id, NOW + 3, {"user_id": b, "up_to_seq": 1})],
        )
    with pytest.raises(SimulatedCrash):
        await crashy.create_chat(new_group(new_id(), c, "late", [owner], NOW + 4), [])

    assert await store.get_receipts(chat.chat_id, c) is None
    assert (await store.get_chat(chat.chat_id)).last_message["text"] == "one"  # type: ignore[index,union-attr]

    assert await recover_all(store) >= 4

    assert await store.get_receipts(chat.chat_id, c) == Receipts(1, 1)
    assert (await store.get_chat(chat.chat_id)).last_message["text"] == "one!"  # type: ignore[index,union-attr]
    owners = await all_updates(store, owner)  # recovered in whatever order the pending rows come
    assert [u.update_id for u in owners] == [1, 2, 3, 4]
    assert sorted(u.type for u in owners) == sorted([MESSAGE_NEW, CHAT_MEMBER_ADDED, MESSAGE_EDITED, RECEIPT_READ])
    assert [u.type for u in await all_updates(store, c)] == [CHAT_MEMBER_ADDED]
    assert len(await store.list_user_chats(c)) == 2  # the group, and the chat created before the crash
    assert await recover_all(store) == 0
    assert await store.last_update_id(owner) == 4


@pytest_twisted.ensureDeferred
async def test_the_background_sweep_recovers_by_itself(
    cassandra_at: tuple[str, int], keyspace: str, store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    _, a, b = await crashed_send(store, crashy, "append.stored")

    sweeper = open_store(cassandra_at, keyspace, grace_s=0.5, recovery_interval_s=0.1)
    await sweeper.start()
    try:
        deadline = time.monotonic() + 10
        while await store.last_update_id(b) == 0 and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        await sweeper.stop()
    assert seqs_of_new(await all_updates(store, b)) == [1]
    assert seqs_of_new(await all_updates(store, a)) == [1]


# -- the write path: guesses, early claims, re-sends ----------------------------------------------
async def settled(store: CassandraChatStore) -> None:
    """Wait for the bookkeeping writes that follow answered sends."""
    while store._background:
        await defer.DeferredList(list(store._background))


async def fanout_of(store: CassandraChatStore, chat_id: str, seq: int) -> list[str]:
    rows = await cql(
        store,
        "SELECT fanout_to FROM {ks}.messages WHERE chat_id = %s AND bucket = %s AND seq = %s",
        chat_id,
        seq // BUCKET,
        seq,
    )
    return list(json.loads(rows[0]["fanout_to"]))


@pytest_twisted.ensureDeferred
async def test_a_send_answers_before_its_bookkeeping_which_follows(store: CassandraChatStore) -> None:
    await recover_all(store)
    chat, a, b = await direct(store)

    sent = await store.append_message(message(chat, a, "c-book"))
    await settled(store)

    rows = await cql(store, "SELECT fanout_done FROM {ks}.messages WHERE chat_id = %s AND bucket = 0", chat.chat_id)
    assert rows == [{"fanout_done": True}]
    for user in (a, b):
        key = await cql(
            store,
            "SELECT update_id FROM {ks}.user_update_keys WHERE user_id = %s AND dedupe_key = %s",
            user,
            f"msg:{chat.chat_id}:1",
        )
        assert key == [{"update_id": 1}]
    assert [u.update_id for u in sent.updates] == [1, 1]
    assert await store.recover(min_age_s=0) == 0  # no pending row left behind


@pytest_twisted.ensureDeferred
async def test_a_resend_finishes_the_fan_out_of_a_send_whose_writer_died(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    chat, a, b = await crashed_send(
        store, crashy, "append.stored", "c-resend", "first"
    )  # the row is stored, no update yet
    assert await store.last_update_id(b) == 0

    again = await store.append_message(message(chat, a, "c-resend", "second"))  # no recovery ran

    assert again.duplicate and again.updates == [] and again.message.text == "first"
    for user in (a, b):
        assert seqs_of_new(await all_updates(store, user)) == [1]
    assert await store.get_receipts(chat.chat_id, a) == Receipts(1, 1)
    rows = await cql(store, "SELECT fanout_done FROM {ks}.messages WHERE chat_id = %s AND bucket = 0", chat.chat_id)
    assert rows == [{"fanout_done": True}]
    assert await recover_all(store) >= 1  # the dead writer's pending row: nothing left to do
    for user in (a, b):
        assert await store.last_update_id(user) == 1


@pytest_twisted.ensureDeferred
async def test_a_resend_adopts_the_updates_a_dead_writer_stored_without_waiting(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    chat, a, b = await crashed_send(
        store, crashy, "update.allocated", "c-adopt"
    )  # updates stored, their (fresh) claims never learn it

    started = time.monotonic()
    again = await store.append_message(message(chat, a, "c-adopt"))

    assert time.monotonic() - started < store._claim_wait_s  # found, not waited for
    assert again.duplicate and again.updates == []
    for user in (a, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == [1] and seqs_of_new(updates) == [1]
    await recover_all(store)
    assert await store.last_update_id(b) == 1


@pytest_twisted.ensureDeferred
async def test_a_stale_guess_of_the_members_still_fans_out_to_the_members_of_the_moment(
    store: CassandraChatStore, other: CassandraChatStore
) -> None:
    owner, b, c = users(3)
    chat, _, _ = await store.create_chat(new_group(new_id(), owner, "team", [b], NOW), [])
    await store.append_message(message(chat, owner))  # store's guess: members (owner, b), last_seq 1
    fresh = await other.get_chat(chat.chat_id)
    assert fresh is not None
    await other.update_chat(replace(fresh, members=(*fresh.members, Member(c, NOW + 1))), 1, [])
    await other.append_message(message(chat, b))  # seq 2, to owner, b and c

    sent = await store.append_message(message(chat, owner))  # guessed (seq 2, two members): both wrong

    assert sent.message.seq == 3
    assert sorted(u.user_id for u in sent.updates) == sorted([owner, b, c])
    assert sorted(await fanout_of(store, chat.chat_id, 3)) == sorted([owner, b, c])
    assert seqs_of_new(await all_updates(store, c)) == [2, 3]
    for user in (owner, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == [1, 2, 3] and seqs_of_new(updates) == [1, 2, 3]
    await settled(store)
    for user in (owner, b):  # the early claims of the lost guess (seq 2) did not displace other's
        key = await cql(
            store,
            "SELECT update_id FROM {ks}.user_update_keys WHERE user_id = %s AND dedupe_key = %s",
            user,
            f"msg:{chat.chat_id}:2",
        )
        assert key == [{"update_id": 2}]


@pytest_twisted.ensureDeferred
async def test_early_claims_of_a_lost_guess_never_block_the_message_that_has_the_seq(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    await recover_all(store)
    chat, a, b = await direct(store)
    await store.append_message(message(chat, a))  # store guesses last_seq 1 from now on
    crashy.crash_points = {"append.allocated"}  # seq 2 is taken, nothing else is written
    with pytest.raises(SimulatedCrash):
        await crashy.append_message(message(chat, b, "c-lost"))
    key2 = f"msg:{chat.chat_id}:2"
    for user in (a, b):  # a claim for seq 2 taken by a send that guessed it and lost (not released)
        await cql(
            store,
            "INSERT INTO {ks}.user_update_keys (user_id, dedupe_key, claim, claimed_at_ms, lo)"
            " VALUES (%s, %s, %s, %s, 1)",
            user,
            key2,
            f"{uuid.uuid4().hex}.{new_id()}",
            int(time.time() * 1000),
        )

    third = await store.append_message(message(chat, a))  # guesses seq 2, writes row 2, takes seq 3
    started = time.monotonic()
    again = await store.append_message(message(chat, b, "c-lost"))  # finishes message 2's fan-out

    assert time.monotonic() - started < store._claim_wait_s  # the foreign claims were taken over at once
    assert third.message.seq == 3 and again.duplicate and again.message.seq == 2
    for user in (a, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == [1, 2, 3] and sorted(seqs_of_new(updates)) == [1, 2, 3]
    await recover_all(store)
    await settled(store)
    for user in (a, b):
        assert await store.last_update_id(user) == 3


@pytest_twisted.ensureDeferred
async def test_a_row_left_without_its_index_gets_it_before_the_next_seq(
    store: CassandraChatStore, crashy: CassandraChatStore
) -> None:
    """The row and its index (the seq in the claim, messages_by_id) are written concurrently: a
    writer may die between them. The next allocation writes the index, so the writer's resumed
    claim finds its seq instead of allocating the message twice."""
    chat, a, b = await crashed_send(store, crashy, "append.stored", "c-index", "first")
    first = (await store.history(chat.chat_id, 1, 1))[0]
    unindex = "UPDATE {ks}.messages_by_client_id SET seq = null WHERE sender_id = %s AND client_msg_id = %s"
    await cql(store, unindex, a, "c-index")
    unindex = "DELETE FROM {ks}.messages_by_id WHERE chat_id = %s AND message_id = %s"
    await cql(store, unindex, chat.chat_id, first.message_id)

    second = await store.append_message(message(chat, b, text="second"))
    assert await recover_all(store) >= 1

    assert second.message.seq == 2
    assert [m.text for m in await store.history(chat.chat_id, 1, 10)] == ["second", "first"]
    assert await store.get_message(chat.chat_id, first.message_id) == first
    for user in (a, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == [1, 2] and sorted(seqs_of_new(updates)) == [1, 2]
    resent = await store.append_message(message(chat, a, "c-index"))
    assert resent.duplicate and resent.message.seq == 1


HINT_SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
hint_op = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 1), st.integers(0, 3), st.integers(0, 2)),  # store, who, client id
    st.tuples(st.just("join"), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("leave"), st.integers(0, 1), st.integers(0, 3)),
)


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@HINT_SETTINGS
@given(batches=st.lists(st.lists(hint_op, min_size=1, max_size=8), min_size=1, max_size=4))
@pytest_twisted.ensureDeferred
async def test_two_instances_with_stale_guesses_keep_seqs_and_fan_outs_exact(
    store: CassandraChatStore, other: CassandraChatStore, batches: list[list[tuple[Any, ...]]]
) -> None:
    """Both instances guess seqs and members from what they last saw, and each batch runs at once
    across them: seqs stay 1..n, one message per client id, every stream stays 1..n with one
    ``message.new`` per message for exactly the members its row says it went to."""
    people = users(4)
    chat, _, _ = await store.create_chat(new_group(new_id(), people[0], "g", people[1:3], NOW), [])
    stores = (store, other)
    fresh: list[Message] = []

    async def run(op: tuple[Any, ...]) -> None:
        while True:
            current = await stores[op[1]].get_chat(chat.chat_id)
            assert current is not None
            try:
                if op[0] == "send":
                    if not current.members:
                        return
                    sender = current.member_ids[op[2] % len(current.members)]
                    r = await stores[op[1]].append_message(message(chat, sender, f"{sender}-{op[3]}"))
                    if not r.duplicate:
                        fresh.append(r.message)
                    return
                user = people[op[2]]
                if current.has_member(user) == (op[0] == "join"):
                    return
                members = (
                    (*current.members, Member(user, NOW))
                    if op[0] == "join"
                    else tuple(m for m in current.members if m.user_id != user)
                )
                await stores[op[1]].update_chat(replace(current, members=members), current.version, [])
                return
            except Conflict:
                continue

    for batch in batches:
        await defer.gatherResults([defer.ensureDeferred(run(op)) for op in batch])

    got = await store.get_chat(chat.chat_id)
    assert got is not None
    assert sorted(m.seq for m in fresh) == list(range(1, got.last_seq + 1))
    assert len({(m.sender_id, m.client_msg_id) for m in fresh}) == len(fresh)
    expected: Counter[tuple[str, int]] = Counter()
    for m in fresh:
        for user in await fanout_of(store, chat.chat_id, m.seq):
            expected[(user, m.seq)] += 1
    seen: Counter[tuple[str, int]] = Counter()
    for user in people:
        updates = await all_updates(other, user)
        assert [u.update_id for u in updates] == list(range(1, len(updates) + 1))
        for seq in seqs_of_new(updates):
            seen[(user, seq)] += 1
    assert seen == expected


# -- failures ------------------------------------------------------------------------------------
def lose_answers(store: CassandraChatStore, counts: dict[str, int]) -> dict[str, int]:
    """The next ``counts[name]`` runs of each LWT are applied, but the caller hears "outcome unknown"
    (a CAS write timeout, or protocol v5's CAS_WRITE_UNKNOWN every other time)."""
    real = store._run
    left = dict(counts)

    def run(name: str, params: Any, consistency: Any = None) -> defer.Deferred[Any]:
        d = real(name, params, consistency)
        if left.get(name, 0) > 0:
            left[name] -= 1

            def lost(_: Any) -> Any:
                if left[name] % 2:
                    raise ErrorMessage(0x1700, "CAS operation result is unknown", None)
                raise WriteTimeout("timed out", write_type=WriteType.CAS)

            d.addCallback(lost)
        return d

    store._run = run  # type: ignore[method-assign]
    return left


@pytest_twisted.ensureDeferred
async def test_lwts_whose_outcome_is_unknown_are_resolved(store: CassandraChatStore, other: CassandraChatStore) -> None:
    owner, b, c = users(3)
    left = lose_answers(
        other,
        {
            "chat_insert": 1,
            "res_claim": 2,
            "chat_alloc": 3,
            "msg_insert": 2,
            "key_claim": 3,
            "upd_insert": 4,
            "uc_bump": 1,
            "chat_update": 1,
            "uc_insert": 2,
            "msg_update": 1,
            "chat_last_message": 1,
            "uc_cas": 1,
        },
    )
    chat, created, _ = await other.create_chat(new_group(new_id(), owner, "team", [b], NOW), [])
    assert created

    results = await defer.gatherResults(
        [defer.ensureDeferred(other.append_message(message(chat, owner, f"u-{i}"))) for i in range(6)]
    )
    await other.update_chat(replace(chat, members=(*chat.members, Member(c, NOW))), 1, [])
    last = max(results, key=lambda r: r.message.seq).message
    await other.update_message(edit(last, "edited", NOW + 1), 1, [])
    await other.set_receipts(chat.chat_id, b, Receipts(6, 6), Receipts(0, 0), [])

    assert not any(left.values()), left
    assert sorted(r.message.seq for r in results) == list(range(1, 7))
    for user in (owner, b):
        updates = await all_updates(store, user)
        assert [u.update_id for u in updates] == list(range(1, 7))
        assert sorted(seqs_of_new(updates)) == list(range(1, 7))
    got = await store.get_chat(chat.chat_id)
    assert got is not None and got.version == 2 and got.last_message is not None
    assert got.last_message["text"] == "edited"
    assert await store.get_receipts(chat.chat_id, c) == Receipts(6, 6)
    assert await store.get_receipts(chat.chat_id, b) == Receipts(6, 6)
    assert await store.get_receipts(chat.chat_id, owner) == Receipts(6, 6)


@pytest_twisted.ensureDeferred
async def test_unreachable_cassandra_is_unavailable_fast(keyspace: str) -> None:
    s = CassandraChatStore(["127.0.0.1"], free_port(), keyspace, reactor, recovery_interval_s=None)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await s.start()
    assert time.monotonic() - started < 3.0
    with pytest.raises(Unavailable):
        await s.get_chat(new_id())
    await s.stop()


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_driver(cassandra_at: tuple[str, int], keyspace: str, store: CassandraChatStore) -> None:
    s = open_store(cassandra_at, keyspace)
    await s.start()
    cluster = s._cluster
    await s.stop()
    await s.stop()
    assert cluster.is_shutdown
    with pytest.raises(Unavailable):
        await s.history(new_id(), 1, 2)


def test_message_json_round_trip() -> None:

    m = Message(new_id(), new_id(), 3, new_id(), "c", "t", NOW, 1, ("x",), None, False, {"👍": ("u",)})
    assert Message.from_dict(json.loads(json.dumps(m.to_dict()))) == m
