"""Contract of :class:`ChatStore`: every test runs against every adapter in ``CHAT_ADAPTERS``
(``tests/contract/conftest.py``). The port's docstrings are the contract; besides them, the suite
pins down a few behaviours the port leaves open, so the adapters agree on them too (each marked
"adapter contract" below):

- the duplicate check of ``append_message`` comes first: a re-sent ``client_msg_id`` answers the
  first message even when the draft names another (or no existing) chat;
- ``update_chat`` takes title, owner, members (with their ``joined_at_ms``, in order) and
  ``updated_at_ms`` from the chat it is given, and never ``type`` or ``created_at_ms``;
- ``update_message`` takes only text, media, reactions, edited_at and deleted; the rest stays;
- updates are answered as a later read answers them (``data`` as it round-trips through JSON);
- a stopped store answers ``Unavailable``.

Orders the port leaves open (the fan-out order of ``append_message``, and the order in which
concurrent writes land in one user's stream) are compared as sets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from common.errors import Conflict, NotFound, Unavailable
from components.chat.domain import (
    CHAT_CREATED,
    CHAT_MEMBER_ADDED,
    CHAT_MEMBER_REMOVED,
    CHAT_UPDATED,
    DIRECT,
    GROUP,
    MESSAGE_EDITED,
    MESSAGE_NEW,
    RECEIPT_DELIVERED,
    RECEIPT_READ,
    Chat,
    Member,
    Message,
    Receipts,
    Update,
    advance_receipts,
    delete,
    edit,
    new_direct,
    new_id,
    react,
)
from components.chat.ports import Appended, MessageDraft, UpdateDraft
from tests.contract.conftest import ChatBackend
from tests.contract.conftest import ChatStoreUnderTest as Store

NOW = 1_700_000_000_000
ALL = 1 << 62  # an upper bound above any id


# -- builders ------------------------------------------------------------------------------------
def users(n: int) -> list[str]:
    return [new_id() for _ in range(n)]


def make_group(member_ids: list[str], *, title: str = "Team", at: int = NOW, joined: list[int] | None = None) -> Chat:
    joined = joined or [at] * len(member_ids)
    return Chat(
        chat_id=new_id(),
        type=GROUP,
        title=title,
        owner_id=member_ids[0] if member_ids else None,
        members=tuple(Member(u, j) for u, j in zip(member_ids, joined, strict=True)),
        created_at_ms=at,
        updated_at_ms=at,
    )


def drafts_for(user_ids: list[str], type_: str, chat_id: str | None, at: int = NOW, **data: Any) -> list[UpdateDraft]:
    return [UpdateDraft(u, type_, chat_id, at, dict(data)) for u in user_ids]


def message_draft(
    chat_id: str, sender: str, client_msg_id: str | None = None, text: str | None = "hi", at: int = NOW, **kw: Any
) -> MessageDraft:
    return MessageDraft(
        message_id=kw.pop("message_id", new_id()),
        chat_id=chat_id,
        sender_id=sender,
        client_msg_id=client_msg_id or f"c-{new_id()[:12]}",
        text=text,
        sent_at_ms=at,
        **kw,
    )


async def new_chat(store: Store, member_ids: list[str], **kw: Any) -> Chat:
    chat, created, _ = await store.create_chat(make_group(member_ids, **kw), [])
    assert created
    return chat


async def send(store: Store, chat_id: str, sender: str, **kw: Any) -> Message:
    appended = await store.append_message(message_draft(chat_id, sender, **kw))
    assert not appended.duplicate
    return appended.message


async def stream(store: Store, user_id: str) -> list[Update]:
    return await store.get_updates(user_id, 1, ALL)


def by_user(updates: list[Update]) -> dict[str, Update]:
    out = {u.user_id: u for u in updates}
    assert len(out) == len(updates), "one update per user expected"
    return out


# -- chats ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_create_chat_stores_chat_receipts_and_updates(chat_store: Store) -> None:
    a, b, c = users(3)
    # members in no sorted order, each with their own joined_at: both round-trip
    chat = make_group([c, a, b], joined=[NOW + 2, NOW, NOW + 1])
    drafts = drafts_for([c, a, b], CHAT_CREATED, chat.chat_id, title="Team", n=[1, 2])
    stored, created, updates = await chat_store.create_chat(chat, drafts)
    assert created
    assert stored == chat and stored.version == 1 and stored.last_seq == 0 and stored.last_message is None
    got = await chat_store.get_chat(chat.chat_id)
    assert got == chat and got is not None
    assert got.members == chat.members and got.last_message is None
    assert [(u.user_id, u.update_id, u.type, u.chat_id, u.at_ms, u.data) for u in updates] == [
        (u, 1, CHAT_CREATED, chat.chat_id, NOW, {"title": "Team", "n": [1, 2]}) for u in (c, a, b)
    ]
    for u in (a, b, c):
        assert await chat_store.get_receipts(chat.chat_id, u) == Receipts(0, 0)
        assert await chat_store.last_update_id(u) == 1
        assert await stream(chat_store, u) == [next(x for x in updates if x.user_id == u)]
    assert await chat_store.get_receipts(chat.chat_id, new_id()) is None


@pytest_twisted.ensureDeferred
async def test_create_chat_starts_at_version_1_and_seq_0(chat_store: Store) -> None:
    a, b = users(2)
    chat = replace(make_group([a, b]), version=7, last_seq=5, last_message={"seq": 5})
    stored, created, _ = await chat_store.create_chat(chat, [])
    assert created
    expected = replace(chat, version=1, last_seq=0)
    assert stored == expected and stored.last_message is None
    got = await chat_store.get_chat(chat.chat_id)
    assert got == expected and got is not None and got.last_message is None


@pytest_twisted.ensureDeferred
async def test_create_existing_chat_answers_it_and_stores_nothing(chat_store: Store) -> None:
    a, b, c = users(3)
    first = await new_chat(chat_store, [a, b], title="First")
    await send(chat_store, first.chat_id, a)
    again = replace(make_group([a, b, c], title="Second"), chat_id=first.chat_id)
    existing, created, updates = await chat_store.create_chat(again, drafts_for([a, b, c], CHAT_CREATED, first.chat_id))
    assert not created and updates == []
    current = await chat_store.get_chat(first.chat_id)
    assert existing == current and current is not None
    assert existing.title == "First" and existing.last_seq == 1 and existing.member_ids == [a, b]
    assert existing.last_message == current.last_message and existing.last_message is not None
    assert [await chat_store.last_update_id(u) for u in (a, b, c)] == [1, 1, 0]
    assert await chat_store.get_receipts(first.chat_id, c) is None


@pytest_twisted.ensureDeferred
async def test_direct_chat_round_trips(chat_store: Store) -> None:
    a, b = users(2)
    chat = new_direct(a, b, NOW)
    stored, created, _ = await chat_store.create_chat(chat, [])
    assert created and stored == chat
    got = await chat_store.get_chat(chat.chat_id)
    assert got == chat and got is not None
    assert got.type == DIRECT and got.title is None and got.owner_id is None
    # create_direct from the other side is the same chat
    again, created, _ = await chat_store.create_chat(new_direct(b, a, NOW + 5), [])
    assert not created and again == chat


@pytest_twisted.ensureDeferred
async def test_unknown_chat_is_none(chat_store: Store) -> None:
    await new_chat(chat_store, users(2))
    assert await chat_store.get_chat(new_id()) is None


@pytest_twisted.ensureDeferred
async def test_update_chat_replaces_the_row_and_bumps_the_version(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    m = await send(chat_store, chat.chat_id, a, at=NOW + 10)
    current = await chat_store.get_chat(chat.chat_id)
    assert current is not None and current.last_seq == 1
    # adapter contract: type and created_at never change; last_seq and last_message are the store's own
    changed = replace(
        current,
        title="Renamed",
        owner_id=b,
        updated_at_ms=NOW + 20,
        type=DIRECT,
        created_at_ms=NOW + 99,
        last_seq=42,
        last_message={"nope": True},
    )
    updates = await chat_store.update_chat(changed, current.version, drafts_for([a, b], CHAT_UPDATED, chat.chat_id))
    assert [(u.user_id, u.update_id, u.type) for u in updates] == [(a, 2, CHAT_UPDATED), (b, 2, CHAT_UPDATED)]
    got = await chat_store.get_chat(chat.chat_id)
    expected = replace(current, title="Renamed", owner_id=b, updated_at_ms=NOW + 20, version=current.version + 1)
    assert got == expected and got is not None
    assert got.last_message == m.to_dict()
    assert [x.type for x in await stream(chat_store, b)] == [MESSAGE_NEW, CHAT_UPDATED]
    assert (await stream(chat_store, b))[-1] == updates[1]


@pytest_twisted.ensureDeferred
async def test_update_chat_with_a_stale_version_conflicts_and_stores_nothing(chat_store: Store) -> None:
    a, b, c = users(3)
    chat = await new_chat(chat_store, [a, b])
    renamed = replace(chat, title="One", updated_at_ms=NOW + 1)
    await chat_store.update_chat(renamed, chat.version, [])
    stale = replace(chat, title="Two", members=(*chat.members, Member(c, NOW + 2)), updated_at_ms=NOW + 2)
    for version in (chat.version, chat.version + 5):
        with pytest.raises(Conflict):
            await chat_store.update_chat(stale, version, drafts_for([a, b, c], CHAT_UPDATED, chat.chat_id))
    assert await chat_store.get_chat(chat.chat_id) == replace(renamed, version=2)
    assert [await chat_store.last_update_id(u) for u in (a, b, c)] == [0, 0, 0]
    assert await chat_store.get_receipts(chat.chat_id, c) is None


@pytest_twisted.ensureDeferred
async def test_update_unknown_chat_is_not_found(chat_store: Store) -> None:
    a, b = users(2)
    with pytest.raises(NotFound):
        await chat_store.update_chat(make_group([a, b]), 1, drafts_for([a], CHAT_UPDATED, None))
    assert await chat_store.last_update_id(a) == 0


@pytest_twisted.ensureDeferred
async def test_update_chat_membership_moves_receipts_rows(chat_store: Store) -> None:
    a, b, c, d, e = users(5)
    chat = await new_chat(chat_store, [a, b, c])
    for _ in range(3):
        await send(chat_store, chat.chat_id, a)
    await chat_store.set_receipts(chat.chat_id, b, Receipts(3, 2), Receipts(0, 0), [])
    current = await chat_store.get_chat(chat.chat_id)
    assert current is not None
    # c leaves; e and d join; the order is whatever the caller says, a's joined_at changes too
    members = (Member(e, NOW + 5), Member(a, NOW - 1), Member(d, NOW + 6), Member(b, NOW))
    changed = replace(current, members=members, updated_at_ms=NOW + 6)
    updates = await chat_store.update_chat(
        changed, current.version, drafts_for([a, b, c, d, e], CHAT_MEMBER_ADDED, chat.chat_id)
    )
    assert {u.user_id: u.update_id for u in updates} == {a: 4, b: 4, c: 4, d: 1, e: 1}
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None and got.members == members and got.version == current.version + 1
    assert await chat_store.get_receipts(chat.chat_id, c) is None
    assert await chat_store.get_receipts(chat.chat_id, d) == Receipts(3, 3)
    assert await chat_store.get_receipts(chat.chat_id, e) == Receipts(3, 3)
    assert await chat_store.get_receipts(chat.chat_id, a) == Receipts(3, 3)
    assert await chat_store.get_receipts(chat.chat_id, b) == Receipts(3, 2)
    assert [x.chat_id for x, _ in await chat_store.list_user_chats(c)] == []
    assert [(x.chat_id, r) for x, r in await chat_store.list_user_chats(d)] == [(chat.chat_id, Receipts(3, 3))]
    # the removed member gets no message.new any more; the new ones do
    m = await send(chat_store, chat.chat_id, b)
    assert await chat_store.last_update_id(c) == 4
    assert (await stream(chat_store, d))[-1].data == m.to_dict()
    # c comes back: a fresh row at the current last seq, not the old one
    again = replace(got, members=(*got.members, Member(c, NOW + 9)), updated_at_ms=NOW + 9)
    await chat_store.update_chat(again, got.version, [])
    assert await chat_store.get_receipts(chat.chat_id, c) == Receipts(4, 4)
    # an empty member list is stored as such
    current = await chat_store.get_chat(chat.chat_id)
    assert current is not None
    await chat_store.update_chat(replace(current, members=()), current.version, [])
    emptied = await chat_store.get_chat(chat.chat_id)
    assert emptied is not None and emptied.members == ()
    for u in (a, b, c, d, e):
        assert await chat_store.get_receipts(chat.chat_id, u) is None


@pytest_twisted.ensureDeferred
async def test_list_user_chats(chat_store: Store) -> None:
    a, b, c = users(3)
    one = await new_chat(chat_store, [a, b])
    two = await new_chat(chat_store, [c, a], title="Two")
    three = await new_chat(chat_store, [b, c])
    m = await send(chat_store, one.chat_id, b, at=NOW + 3)
    await chat_store.set_receipts(one.chat_id, a, Receipts(1, 0), Receipts(0, 0), [])
    listed = await chat_store.list_user_chats(a)
    assert sorted((x.chat_id for x, _ in listed)) == sorted([one.chat_id, two.chat_id])
    for chat, receipts in listed:
        assert chat == await chat_store.get_chat(chat.chat_id)
        assert receipts == await chat_store.get_receipts(chat.chat_id, a)
        if chat.chat_id == one.chat_id:
            assert chat.last_message == m.to_dict() and receipts == Receipts(1, 0) and chat.last_seq == 1
        else:
            assert chat.member_ids == [c, a] and chat.last_message is None and receipts == Receipts(0, 0)
    assert {x.chat_id for x, _ in await chat_store.list_user_chats(c)} == {two.chat_id, three.chat_id}
    assert await chat_store.list_user_chats(new_id()) == []


# -- messages ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_append_message_numbers_and_stores_it(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    first = message_draft(chat.chat_id, a, "c-1", "hello", NOW + 1)
    second = message_draft(chat.chat_id, b, "c-2", None, NOW + 2, media=("m1", "m0"), reply_to=1)
    third = message_draft(chat.chat_id, a, "c-3", "x" * 4096, NOW + 3, media=("m2",))
    results = [await chat_store.append_message(d) for d in (first, second, third)]
    assert [r.duplicate for r in results] == [False] * 3
    for seq, (d, r) in enumerate(zip((first, second, third), results, strict=True), start=1):
        expected = Message(
            message_id=d.message_id,
            chat_id=chat.chat_id,
            seq=seq,
            sender_id=d.sender_id,
            client_msg_id=d.client_msg_id,
            text=d.text,
            sent_at_ms=d.sent_at_ms,
            reply_to=d.reply_to,
            media=d.media,
        )
        assert r.message == expected and r.message.version == 1
        assert await chat_store.get_message(chat.chat_id, d.message_id) == expected
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None
    assert got.last_seq == 3 and got.updated_at_ms == NOW + 3
    assert got.last_message == results[2].message.to_dict()


@pytest_twisted.ensureDeferred
async def test_append_message_fans_out_to_every_member(chat_store: Store) -> None:
    a, b, c, outsider = users(4)
    chat = await new_chat(chat_store, [a, b, c])
    await chat_store.append_updates(drafts_for([b, b, outsider], CHAT_UPDATED, None))  # b is at 2 already
    r = await chat_store.append_message(message_draft(chat.chat_id, a, at=NOW + 7))
    got = by_user(r.updates)
    assert set(got) == {a, b, c}
    for u, update_id in ((a, 1), (b, 3), (c, 1)):
        assert got[u] == Update(u, update_id, MESSAGE_NEW, chat.chat_id, NOW + 7, r.message.to_dict())
        assert (await stream(chat_store, u))[-1] == got[u]
        assert await chat_store.last_update_id(u) == update_id
    assert await chat_store.last_update_id(outsider) == 1
    # the fan-out's dedupe key is msg:<chat_id>:<seq>: storing it again answers the stored update
    again = await chat_store.append_updates(
        [UpdateDraft(b, MESSAGE_NEW, chat.chat_id, NOW + 8, {"other": 1}, f"msg:{chat.chat_id}:1")]
    )
    assert again == [got[b]]
    assert await chat_store.last_update_id(b) == 3


@pytest_twisted.ensureDeferred
async def test_append_message_marks_it_read_for_the_sender(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    await send(chat_store, chat.chat_id, a)
    await send(chat_store, chat.chat_id, b)
    assert await chat_store.get_receipts(chat.chat_id, b) == Receipts(2, 2)
    assert await chat_store.get_receipts(chat.chat_id, a) == Receipts(1, 1)
    await send(chat_store, chat.chat_id, a)
    assert await chat_store.get_receipts(chat.chat_id, a) == Receipts(3, 3)
    assert await chat_store.get_receipts(chat.chat_id, b) == Receipts(2, 2)


@pytest_twisted.ensureDeferred
async def test_resent_client_msg_id_answers_the_first_message(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    other = await new_chat(chat_store, [a, b])
    first = await chat_store.append_message(message_draft(chat.chat_id, a, "c-1", "first", NOW))
    before = [await chat_store.last_update_id(u) for u in (a, b)]
    # adapter contract: the duplicate check comes first (other chat, unknown chat)
    for target in (chat.chat_id, other.chat_id, new_id()):
        again = await chat_store.append_message(message_draft(target, a, "c-1", "second", NOW + 5))
        assert again == Appended(first.message, [], True)
    assert [await chat_store.last_update_id(u) for u in (a, b)] == before
    assert [m.message_id for m in await chat_store.history(chat.chat_id, 1, ALL)] == [first.message.message_id]
    assert await chat_store.history(other.chat_id, 1, ALL) == []
    other_now = await chat_store.get_chat(other.chat_id)
    assert other_now is not None and other_now.last_seq == 0 and other_now.last_message is None
    # the same client_msg_id from another sender is another message
    theirs = await chat_store.append_message(message_draft(chat.chat_id, b, "c-1", "theirs", NOW + 6))
    assert not theirs.duplicate and theirs.message.seq == 2


@pytest_twisted.ensureDeferred
async def test_append_to_unknown_chat_is_not_found_and_stores_nothing(chat_store: Store) -> None:
    a, b = users(2)
    with pytest.raises(NotFound):
        await chat_store.append_message(message_draft(new_id(), a, "c-1"))
    chat = await new_chat(chat_store, [a, b])
    r = await chat_store.append_message(message_draft(chat.chat_id, a, "c-1"))
    assert not r.duplicate and r.message.seq == 1
    assert await chat_store.last_update_id(a) == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_appends_get_consecutive_seqs(chat_backend: ChatBackend, chat_store: Store) -> None:
    """Twenty appends at once, through two store instances on the same data."""
    other = await chat_backend.open()
    members = users(4)
    chat = await new_chat(chat_store, members)
    drafts = [message_draft(chat.chat_id, members[i % 4], f"c-{i}", f"m{i}", NOW + i) for i in range(20)]
    results: list[Appended] = await defer.gatherResults(
        [defer.ensureDeferred((chat_store, other)[i % 2].append_message(d)) for i, d in enumerate(drafts)]
    )
    assert not any(r.duplicate for r in results)
    assert sorted(r.message.seq for r in results) == list(range(1, 21))
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None and got.last_seq == 20
    assert [m.seq for m in await other.history(chat.chat_id, 1, 20)] == list(range(20, 0, -1))
    for u in members:
        updates = await stream(chat_store, u)
        assert [x.update_id for x in updates] == list(range(1, 21))
        assert sorted(x.data["seq"] for x in updates) == list(range(1, 21))
        returned = [x for r in results for x in r.updates if x.user_id == u]
        assert sorted(returned, key=lambda x: x.update_id) == updates
        # the sender's receipts are at least their own newest message
        mine = max(r.message.seq for r in results if r.message.sender_id == u)
        receipts = await chat_store.get_receipts(chat.chat_id, u)
        assert receipts is not None and receipts.last_read_seq >= mine


@pytest_twisted.ensureDeferred
async def test_concurrent_resends_store_one_message(chat_backend: ChatBackend, chat_store: Store) -> None:
    other = await chat_backend.open()
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    drafts = [message_draft(chat.chat_id, a, "c-same", f"try {i}", NOW + i) for i in range(6)]
    results: list[Appended] = await defer.gatherResults(
        [defer.ensureDeferred((chat_store, other)[i % 2].append_message(d)) for i, d in enumerate(drafts)]
    )
    assert [r.duplicate for r in results].count(False) == 1
    assert len({r.message for r in results}) == 1
    assert sum(len(r.updates) for r in results) == 2
    assert [await chat_store.last_update_id(u) for u in (a, b)] == [1, 1]
    assert len(await chat_store.history(chat.chat_id, 1, ALL)) == 1


@pytest_twisted.ensureDeferred
async def test_get_message(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    other = await new_chat(chat_store, [a, b])
    m = await send(chat_store, chat.chat_id, a)
    assert await chat_store.get_message(chat.chat_id, m.message_id) == m
    assert await chat_store.get_message(chat.chat_id, new_id()) is None
    assert await chat_store.get_message(other.chat_id, m.message_id) is None
    assert await chat_store.get_message(new_id(), m.message_id) is None


@pytest_twisted.ensureDeferred
async def test_update_message_edits_and_bumps_the_version(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    first = await send(chat_store, chat.chat_id, a, text="one", media=("m1",))
    last = await send(chat_store, chat.chat_id, b, text="two")
    edited = edit(first, "one!", NOW + 50)
    updates = await chat_store.update_message(
        edited, 1, drafts_for([a, b], MESSAGE_EDITED, chat.chat_id, NOW + 50, seq=1)
    )
    assert [(u.user_id, u.update_id, u.type, u.data) for u in updates] == [
        (a, 3, MESSAGE_EDITED, {"seq": 1}),
        (b, 3, MESSAGE_EDITED, {"seq": 1}),
    ]
    stored = await chat_store.get_message(chat.chat_id, first.message_id)
    assert stored == replace(edited, version=2)
    # not the last message: the chat's last_message stays
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None and got.last_message == last.to_dict()
    # the last message: last_message follows, with its reactions in the order given
    reacted = react(react(react(last, b, "👍"), a, "❤️"), new_id(), "👍")
    assert list(reacted.reactions) == ["👍", "❤️"]
    await chat_store.update_message(reacted, 1, [])
    stored_last = await chat_store.get_message(chat.chat_id, last.message_id)
    assert stored_last == replace(reacted, version=2) and stored_last is not None
    assert list(stored_last.reactions.items()) == list(reacted.reactions.items())
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None and got.last_message == stored_last.to_dict()
    # deleted: a tombstone
    tombstone = delete(stored_last, NOW + 60)
    await chat_store.update_message(tombstone, 2, [])
    stored_last = await chat_store.get_message(chat.chat_id, last.message_id)
    assert stored_last == replace(tombstone, version=3) and stored_last is not None
    assert stored_last.deleted and stored_last.text is None and stored_last.media == () and not stored_last.reactions
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None and got.last_message == stored_last.to_dict() and got.last_message["deleted"] is True
    assert [m.message_id for m in await chat_store.history(chat.chat_id, 1, 2)] == [last.message_id, first.message_id]


@pytest_twisted.ensureDeferred
async def test_update_message_takes_only_the_mutable_fields(chat_store: Store) -> None:
    """Adapter contract: sender, seq, client_msg_id, sent_at and reply_to are the stored ones."""
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    m = await send(chat_store, chat.chat_id, a, text="one")
    forged = replace(
        m, text="two", sender_id=b, seq=9, client_msg_id="c-x", sent_at_ms=1, reply_to=1, edited_at_ms=NOW + 1
    )
    await chat_store.update_message(forged, 1, [])
    assert await chat_store.get_message(chat.chat_id, m.message_id) == replace(
        m, text="two", edited_at_ms=NOW + 1, version=2
    )


@pytest_twisted.ensureDeferred
async def test_update_message_with_a_stale_version_conflicts(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    m = await send(chat_store, chat.chat_id, a, text="one")
    await chat_store.update_message(edit(m, "two", NOW + 1), 1, [])
    for version in (1, 3):
        with pytest.raises(Conflict):
            await chat_store.update_message(
                edit(m, "three", NOW + 2), version, drafts_for([a, b], MESSAGE_EDITED, chat.chat_id)
            )
    stored = await chat_store.get_message(chat.chat_id, m.message_id)
    assert stored is not None and stored.text == "two" and stored.version == 2
    got = await chat_store.get_chat(chat.chat_id)
    assert got is not None and got.last_message is not None and got.last_message["text"] == "two"
    assert [await chat_store.last_update_id(u) for u in (a, b)] == [1, 1]


@pytest_twisted.ensureDeferred
async def test_update_unknown_message_is_not_found(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    m = await send(chat_store, chat.chat_id, a)
    for ghost in (replace(m, message_id=new_id()), replace(m, chat_id=new_id())):
        with pytest.raises(NotFound):
            await chat_store.update_message(edit(ghost, "x", NOW), 1, drafts_for([a], MESSAGE_EDITED, chat.chat_id))
    assert await chat_store.last_update_id(a) == 1


@pytest_twisted.ensureDeferred
async def test_history_ranges_are_newest_first(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    other = await new_chat(chat_store, [a, b])
    sent = [await send(chat_store, chat.chat_id, (a, b)[i % 2], text=f"m{i}", at=NOW + i) for i in range(50)]
    await send(chat_store, other.chat_id, a)

    async def seqs(lo: int, hi: int) -> list[int]:
        return [m.seq for m in await chat_store.history(chat.chat_id, lo, hi)]

    assert await chat_store.history(chat.chat_id, 1, 50) == sent[::-1]
    assert await seqs(10, 20) == list(range(20, 9, -1))
    assert await seqs(1, 1) == [1]
    assert await seqs(50, 50) == [50]
    assert await seqs(0, 3) == [3, 2, 1]
    assert await seqs(48, 1000) == [50, 49, 48]
    assert await seqs(-5, 0) == []
    assert await seqs(51, 60) == []
    assert await seqs(20, 10) == []
    assert await chat_store.history(new_id(), 1, 50) == []
    assert [m.chat_id for m in await chat_store.history(other.chat_id, 1, ALL)] == [other.chat_id]


# -- receipts ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_set_receipts_is_a_compare_and_set(chat_store: Store) -> None:
    a, b = users(2)
    chat = await new_chat(chat_store, [a, b])
    for _ in range(3):
        await send(chat_store, chat.chat_id, a)
    updates = await chat_store.set_receipts(
        chat.chat_id, b, Receipts(2, 0), Receipts(0, 0), drafts_for([a, b], RECEIPT_DELIVERED, chat.chat_id, up_to=2)
    )
    assert [(u.user_id, u.update_id, u.type, u.data) for u in updates] == [
        (a, 4, RECEIPT_DELIVERED, {"up_to": 2}),
        (b, 4, RECEIPT_DELIVERED, {"up_to": 2}),
    ]
    assert await chat_store.get_receipts(chat.chat_id, b) == Receipts(2, 0)
    with pytest.raises(Conflict):
        await chat_store.set_receipts(
            chat.chat_id, b, Receipts(3, 3), Receipts(0, 0), drafts_for([a, b], RECEIPT_READ, chat.chat_id)
        )
    assert await chat_store.get_receipts(chat.chat_id, b) == Receipts(2, 0)
    assert [await chat_store.last_update_id(u) for u in (a, b)] == [4, 4]
    await chat_store.set_receipts(chat.chat_id, b, Receipts(3, 3), Receipts(2, 0), [])
    assert await chat_store.get_receipts(chat.chat_id, b) == Receipts(3, 3)
    assert await chat_store.get_receipts(chat.chat_id, a) == Receipts(3, 3)


@pytest_twisted.ensureDeferred
async def test_set_receipts_of_a_non_member_is_not_found(chat_store: Store) -> None:
    a, b, outsider = users(3)
    chat = await new_chat(chat_store, [a, b])
    await send(chat_store, chat.chat_id, a)
    for chat_id, user_id in ((chat.chat_id, outsider), (new_id(), a)):
        with pytest.raises(NotFound):
            await chat_store.set_receipts(
                chat_id, user_id, Receipts(1, 1), Receipts(0, 0), drafts_for([a, outsider], RECEIPT_READ, chat_id)
            )
        assert await chat_store.get_receipts(chat_id, user_id) is None
    assert [await chat_store.last_update_id(u) for u in (a, outsider)] == [1, 0]


# -- update stream -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_append_updates_numbers_per_user_in_list_order(chat_store: Store) -> None:
    a, b = users(2)
    data: dict[str, Any] = {"nested": {"list": [1, "two", None], "ü": "ß✓"}, "flag": True, "n": 1.5}
    drafts = [
        UpdateDraft(a, CHAT_UPDATED, None, NOW, {"i": 0}),
        UpdateDraft(b, CHAT_UPDATED, None, NOW + 1, {"i": 1}),
        UpdateDraft(a, CHAT_MEMBER_REMOVED, new_id(), NOW + 2, data),
        UpdateDraft(a, CHAT_UPDATED, None, NOW + 3, {"i": 3}),
        UpdateDraft(b, CHAT_UPDATED, None, NOW + 4, {}),
    ]
    got = await chat_store.append_updates(drafts)
    assert [(u.user_id, u.update_id) for u in got] == [(a, 1), (b, 1), (a, 2), (a, 3), (b, 2)]
    for d, u in zip(drafts, got, strict=True):
        assert (u.user_id, u.type, u.chat_id, u.at_ms, u.data) == (d.user_id, d.type, d.chat_id, d.at_ms, d.data)
    assert await stream(chat_store, a) == [got[0], got[2], got[3]]
    assert await stream(chat_store, b) == [got[1], got[4]]
    assert await chat_store.append_updates([]) == []
    # adapter contract: data answers as stored (JSON: tuples come back as lists)
    (tupled,) = await chat_store.append_updates([UpdateDraft(b, CHAT_UPDATED, None, NOW, {"t": (1, 2)})])
    assert tupled.data == {"t": [1, 2]} and (await stream(chat_store, b))[-1] == tupled


@pytest_twisted.ensureDeferred
async def test_append_updates_dedupes_per_user_and_key(chat_store: Store) -> None:
    a, b = users(2)
    (first,) = await chat_store.append_updates([UpdateDraft(a, CHAT_UPDATED, None, NOW, {"v": 1}, "k1")])
    got = await chat_store.append_updates(
        [
            UpdateDraft(a, CHAT_UPDATED, None, NOW + 1, {"v": 2}, "k1"),  # a has k1: answers first
            UpdateDraft(b, CHAT_UPDATED, None, NOW + 1, {"v": 3}, "k1"),  # b has not
            UpdateDraft(a, CHAT_UPDATED, None, NOW + 1, {"v": 4}, "k2"),
            UpdateDraft(a, CHAT_UPDATED, None, NOW + 1, {"v": 5}, "k2"),  # within one call too
            UpdateDraft(a, CHAT_UPDATED, None, NOW + 1, {"v": 6}),  # no key: never a duplicate
            UpdateDraft(a, CHAT_UPDATED, None, NOW + 1, {"v": 6}),
        ]
    )
    assert got[0] == first
    assert (got[1].user_id, got[1].update_id, got[1].data) == (b, 1, {"v": 3})
    assert (got[2].update_id, got[2].data) == (2, {"v": 4}) and got[3] == got[2]
    assert [u.update_id for u in got[4:]] == [3, 4]
    assert [u.data["v"] for u in await stream(chat_store, a)] == [1, 4, 6, 6]
    assert await chat_store.last_update_id(a) == 4 and await chat_store.last_update_id(b) == 1


@pytest_twisted.ensureDeferred
async def test_get_updates_ranges(chat_store: Store) -> None:
    a, b = users(2)
    await chat_store.append_updates(
        [UpdateDraft(u, CHAT_UPDATED, None, NOW + i, {"i": i}) for i in range(10) for u in (a, b)]
    )

    async def ids(lo: int, hi: int, user: str = a) -> list[int]:
        return [u.update_id for u in await chat_store.get_updates(user, lo, hi)]

    assert await ids(1, 10) == list(range(1, 11))
    assert await ids(3, 5) == [3, 4, 5]
    assert await ids(10, 10) == [10]
    assert await ids(0, 2) == [1, 2]
    assert await ids(9, 500) == [9, 10]
    assert await ids(11, 20) == []
    assert await ids(5, 4) == []
    assert await ids(1, 10, new_id()) == []
    assert [u.data["i"] for u in await chat_store.get_updates(b, 4, 6)] == [3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_last_update_id(chat_store: Store) -> None:
    a = new_id()
    assert await chat_store.last_update_id(a) == 0
    await chat_store.append_updates(drafts_for([a, a, a], CHAT_UPDATED, None))
    assert await chat_store.last_update_id(a) == 3
    assert await chat_store.last_update_id(new_id()) == 0


# -- lifecycle -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart(chat_backend: ChatBackend) -> None:
    first = await chat_backend.open()
    a, b = users(2)
    chat = await new_chat(first, [a, b])
    m = await send(first, chat.chat_id, a)
    more = await defer.gatherResults([defer.ensureDeferred(chat_backend.open()) for _ in range(2)])
    await first.stop()
    await first.start()
    for s in (first, *more):
        got = await s.get_chat(chat.chat_id)
        assert got is not None and got.last_seq == 1 and got.last_message == m.to_dict()
        assert await s.history(chat.chat_id, 1, 1) == [m]
        assert await s.last_update_id(b) == 1
    # numbering goes on where it stopped
    assert (await send(more[0], chat.chat_id, b)).seq == 2
    assert await first.last_update_id(a) == 2


@pytest_twisted.ensureDeferred
async def test_a_stopped_store_is_unavailable(chat_backend: ChatBackend) -> None:
    """Adapter contract."""
    store = await chat_backend.open()
    await store.stop()
    with pytest.raises(Unavailable):
        await store.get_chat(new_id())
    with pytest.raises(Unavailable):
        await store.append_updates(drafts_for([new_id()], CHAT_UPDATED, None))


# -- properties (Hypothesis) -----------------------------------------------------------------------
# pytest-twisted runs ``@given`` coroutine tests itself; the store fixture is shared by the examples
# of one test item, so every example works with fresh users and chats.
PROPERTY_SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

PEOPLE = 4
CHATS = 2
CLIENT_IDS = 3  # few client ids per sender: re-sends are common
person = st.integers(0, PEOPLE - 1)
chat_no = st.integers(0, CHATS - 1)
model_op = st.one_of(
    st.tuples(st.just("send"), chat_no, person, st.integers(0, CLIENT_IDS - 1)),
    st.tuples(st.just("join"), chat_no, person),
    st.tuples(st.just("leave"), chat_no, person),
    st.tuples(st.just("rename"), chat_no, st.booleans()),  # True: with a stale version
    st.tuples(st.just("read"), chat_no, person, st.integers(0, 20), st.booleans()),  # up_to, stale expected
    st.tuples(st.just("note"), person, st.one_of(st.none(), st.integers(0, 2))),  # dedupe key
)


@dataclass
class ChatModel:
    chat: Chat
    messages: list[Message] = field(default_factory=list)
    receipts: dict[str, Receipts] = field(default_factory=dict)

    @property
    def members(self) -> list[str]:
        return self.chat.member_ids


@dataclass
class StoreModel:
    """What the store must hold: chats, and each user's stream as (type, chat_id, data) in order."""

    chats: list[ChatModel]
    streams: dict[str, list[tuple[str, str | None, dict[str, Any]]]]
    sent: dict[tuple[str, str], Message] = field(default_factory=dict)
    keys: dict[tuple[str, str], int] = field(default_factory=dict)  # (user, dedupe key) -> update_id

    def expect(self, drafts: list[UpdateDraft], got: list[Update]) -> None:
        """Record ``drafts`` as stored and check the store's answer ``got`` against the model."""
        assert len(got) == len(drafts)
        for d, u in zip(drafts, got, strict=True):
            if d.dedupe_key is not None and (d.user_id, d.dedupe_key) in self.keys:
                assert u.update_id == self.keys[(d.user_id, d.dedupe_key)]
                continue
            self.streams[d.user_id].append((d.type, d.chat_id, d.data))
            update_id = len(self.streams[d.user_id])
            assert (u.user_id, u.update_id, u.type, u.chat_id, u.data) == (
                d.user_id,
                update_id,
                d.type,
                d.chat_id,
                d.data,
            )
            if d.dedupe_key is not None:
                self.keys[(d.user_id, d.dedupe_key)] = update_id


async def run_model_op(store: Store, model: StoreModel, people: list[str], op: tuple[Any, ...], at: int) -> None:
    kind = op[0]
    if kind == "note":
        user, key = people[op[1]], op[2]
        d = UpdateDraft(user, CHAT_UPDATED, None, at, {"at": at}, None if key is None else f"note:{key}")
        model.expect([d], await store.append_updates([d]))
        return
    cm = model.chats[op[1]]
    chat_id = cm.chat.chat_id
    if kind == "send":
        if not cm.members:
            return
        sender = cm.members[op[2] % len(cm.members)]
        client_msg_id = f"c-{op[3]}"
        r = await store.append_message(message_draft(chat_id, sender, client_msg_id, f"t{at}", at))
        first = model.sent.get((sender, client_msg_id))
        if first is not None:  # (c): a re-send adds no message and no update
            assert r == Appended(first, [], True)
            return
        assert not r.duplicate and r.message.seq == len(cm.messages) + 1  # (b)
        cm.messages.append(r.message)
        model.sent[(sender, client_msg_id)] = r.message
        cm.receipts[sender] = Receipts(r.message.seq, r.message.seq)
        cm.chat = replace(cm.chat, last_seq=r.message.seq, updated_at_ms=at)
        drafts = [UpdateDraft(u, MESSAGE_NEW, chat_id, at, r.message.to_dict()) for u in cm.members]
        got = {u.user_id: u for u in r.updates}
        model.expect(drafts, [got[u] for u in cm.members])
    elif kind in ("join", "leave"):
        user = people[op[2]]
        if (user in cm.members) == (kind == "join"):
            return
        if kind == "join":
            members = (*cm.chat.members, Member(user, at))
            drafts = drafts_for([m.user_id for m in members], CHAT_MEMBER_ADDED, chat_id, at, user_id=user)
            cm.receipts[user] = Receipts(cm.chat.last_seq, cm.chat.last_seq)
        else:
            members = tuple(m for m in cm.chat.members if m.user_id != user)
            drafts = drafts_for(cm.members, CHAT_MEMBER_REMOVED, chat_id, at, user_id=user)
            del cm.receipts[user]
        new = replace(cm.chat, members=members, updated_at_ms=at, version=cm.chat.version + 1)
        model.expect(drafts, await store.update_chat(new, cm.chat.version, drafts))
        cm.chat = new
    elif kind == "rename":
        drafts = drafts_for(cm.members, CHAT_UPDATED, chat_id, at, title=f"T{at}")
        new = replace(cm.chat, title=f"T{at}", updated_at_ms=at, version=cm.chat.version + 1)
        if op[2]:
            with pytest.raises(Conflict):
                await store.update_chat(new, cm.chat.version - 1, drafts)
            return
        model.expect(drafts, await store.update_chat(new, cm.chat.version, drafts))
        cm.chat = new
    elif kind == "read":
        user, up_to, stale = people[op[2]], op[3], op[4]
        drafts = drafts_for(cm.members, RECEIPT_READ, chat_id, at, user_id=user, up_to=up_to)
        current = cm.receipts.get(user)
        if current is None:
            with pytest.raises(NotFound):
                await store.set_receipts(chat_id, user, Receipts(1, 1), Receipts(0, 0), drafts)
            return
        if cm.chat.last_seq == 0:
            return
        new_receipts = advance_receipts(current, RECEIPT_READ, 1 + up_to % cm.chat.last_seq, cm.chat.last_seq)
        if new_receipts is None:
            return
        if stale:
            wrong = Receipts(current.last_delivered_seq + 1, current.last_read_seq)
            with pytest.raises(Conflict):
                await store.set_receipts(chat_id, user, new_receipts, wrong, drafts)
            return
        model.expect(drafts, await store.set_receipts(chat_id, user, new_receipts, current, drafts))
        cm.receipts[user] = new_receipts


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@PROPERTY_SETTINGS
@given(ops=st.lists(model_op, max_size=30))
@pytest_twisted.ensureDeferred
async def test_operations_match_a_model(chat_store: Store, ops: list[tuple[Any, ...]]) -> None:
    """(a) each user's update_ids are exactly 1..n, in order, none twice; (b) each chat's seqs are
    exactly 1..n; (c) a re-sent client_msg_id adds no message and no update."""
    people = users(PEOPLE)
    model = StoreModel(chats=[], streams={u: [] for u in people})
    for i in range(CHATS):
        chat = await new_chat(chat_store, people[i : i + 3])  # two chats of three, overlapping
        model.chats.append(ChatModel(chat, receipts={u: Receipts(0, 0) for u in chat.member_ids}))
    for n, op in enumerate(ops, start=1):
        await run_model_op(chat_store, model, people, op, NOW + n)
    for u in people:
        got = await stream(chat_store, u)
        assert [x.update_id for x in got] == list(range(1, len(model.streams[u]) + 1))
        assert [(x.type, x.chat_id, x.data) for x in got] == model.streams[u]
        assert await chat_store.last_update_id(u) == len(model.streams[u])
    for cm in model.chats:
        stored = await chat_store.get_chat(cm.chat.chat_id)
        assert stored == cm.chat and stored is not None
        assert stored.last_message == (cm.messages[-1].to_dict() if cm.messages else None)
        assert await chat_store.history(cm.chat.chat_id, 1, ALL) == cm.messages[::-1]
        for u in people:
            assert await chat_store.get_receipts(cm.chat.chat_id, u) == cm.receipts.get(u)


concurrent_op = st.one_of(
    st.tuples(st.just("send"), chat_no, person, st.integers(0, CLIENT_IDS - 1)),
    st.tuples(st.just("join"), chat_no, person),
    st.tuples(st.just("leave"), chat_no, person),
    st.tuples(st.just("read"), chat_no, person, st.integers(0, 20)),
    st.tuples(st.just("note"), person),
)


async def run_concurrent_op(store: Store, people: list[str], chat_ids: list[str], op: tuple[Any, ...]) -> list[Any]:
    """One operation as a service would run it: read, decide, write; re-read and retry on Conflict.
    Answers what the store answered (an ``Appended`` or the stored updates), or [] for no write."""
    if op[0] == "note":
        return await store.append_updates(drafts_for([people[op[1]]], CHAT_UPDATED, None))
    chat_id = chat_ids[op[1]]
    while True:
        chat = await store.get_chat(chat_id)
        assert chat is not None
        try:
            if op[0] == "send":
                if not chat.members:
                    return []
                sender = chat.member_ids[op[2] % len(chat.members)]
                return [await store.append_message(message_draft(chat_id, sender, f"c-{op[3]}", at=NOW))]
            if op[0] in ("join", "leave"):
                user = people[op[2]]
                if chat.has_member(user) == (op[0] == "join"):
                    return []
                if op[0] == "join":
                    members = (*chat.members, Member(user, NOW))
                    drafts = drafts_for([m.user_id for m in members], CHAT_MEMBER_ADDED, chat_id, user_id=user)
                else:
                    members = tuple(m for m in chat.members if m.user_id != user)
                    drafts = drafts_for(chat.member_ids, CHAT_MEMBER_REMOVED, chat_id, user_id=user)
                new = replace(chat, members=members, updated_at_ms=NOW)
                return await store.update_chat(new, chat.version, drafts)
            user = people[op[2]]
            current = await store.get_receipts(chat_id, user)
            if current is None or chat.last_seq == 0:
                return []
            new_receipts = advance_receipts(current, RECEIPT_READ, 1 + op[3] % chat.last_seq, chat.last_seq)
            if new_receipts is None:
                return []
            drafts = drafts_for(chat.member_ids, RECEIPT_READ, chat_id)
            return await store.set_receipts(chat_id, user, new_receipts, current, drafts)
        except (Conflict, NotFound):
            continue  # the chat or the membership moved under us: decide again


@pytest.fixture
def hypothesis_store_pair() -> list[Store]:
    """Two store instances on one location, opened by the first example and kept for the rest."""
    return []


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@PROPERTY_SETTINGS
@given(batches=st.lists(st.lists(concurrent_op, min_size=1, max_size=6), max_size=5))
@pytest_twisted.ensureDeferred
async def test_concurrent_operations_leave_no_gaps(
    chat_backend: ChatBackend, hypothesis_store_pair: list[Store], batches: list[list[tuple[Any, ...]]]
) -> None:
    """Each batch runs at once, spread over two store instances: (a) every user's stream is exactly
    1..n and is what the calls answered; (b) every chat's seqs are 1..n; (c) one message per
    (sender, client_msg_id)."""
    if not hypothesis_store_pair:
        hypothesis_store_pair.extend([await chat_backend.open(), await chat_backend.open()])
    stores = hypothesis_store_pair
    people = users(PEOPLE)
    chat_ids = [(await new_chat(stores[0], people[i : i + 3])).chat_id for i in range(CHATS)]
    answered: list[Update] = []
    appended: list[Appended] = []
    for batch in batches:
        results: list[list[Any]] = await defer.gatherResults(
            [defer.ensureDeferred(run_concurrent_op(stores[i % 2], people, chat_ids, op)) for i, op in enumerate(batch)]
        )
        for result in results:
            for item in result:
                if isinstance(item, Appended):
                    appended.append(item)
                    answered.extend(item.updates)
                else:
                    answered.append(item)
    for u in people:
        got = await stream(stores[1], u)
        assert [x.update_id for x in got] == list(range(1, len(got) + 1))
        assert await stores[0].last_update_id(u) == len(got)
        mine = sorted((x for x in answered if x.user_id == u), key=lambda x: x.update_id)
        assert mine == got  # none answered twice, none stored unanswered
    fresh = [a.message for a in appended if not a.duplicate]
    assert Counter((m.sender_id, m.client_msg_id) for m in fresh) == Counter(
        {(m.sender_id, m.client_msg_id): 1 for m in fresh}
    )
    for a in appended:
        if a.duplicate:
            assert a.updates == [] and a.message in fresh
    for chat_id in chat_ids:
        chat = await stores[0].get_chat(chat_id)
        assert chat is not None
        history = await stores[1].history(chat_id, 1, ALL)
        assert [m.seq for m in history] == list(range(chat.last_seq, 0, -1))
        assert sorted(history, key=lambda m: m.seq) == sorted(
            (m for m in fresh if m.chat_id == chat_id), key=lambda m: m.seq
        )


# -- per-member settings: push mutes -------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_mutes_are_set_per_member_replaced_and_cleared(chat_store: Store) -> None:
    a, b, c = users(3)
    chat = await new_chat(chat_store, [a, b, c])
    other = await new_chat(chat_store, [a, b])
    assert await chat_store.mutes(chat.chat_id) == {}
    await chat_store.set_mute(chat.chat_id, b, NOW + 1000)
    await chat_store.set_mute(chat.chat_id, c, NOW + 2000)
    await chat_store.set_mute(chat.chat_id, b, NOW + 5000)  # replaces
    await chat_store.set_mute(chat.chat_id, b, NOW + 5000)  # idempotent
    assert await chat_store.mutes(chat.chat_id) == {b: NOW + 5000, c: NOW + 2000}
    assert await chat_store.mutes(other.chat_id) == {}  # per chat
    await chat_store.set_mute(chat.chat_id, c, None)
    await chat_store.set_mute(chat.chat_id, a, None)  # unmuting a member without a mute is fine
    assert await chat_store.mutes(chat.chat_id) == {b: NOW + 5000}
    # a mute does not touch the chat, the member's receipts or anyone's updates
    await send(chat_store, chat.chat_id, a)
    assert (await chat_store.get_receipts(chat.chat_id, b)) == Receipts(0, 0)
    assert [u.type for u in await stream(chat_store, b)] == [MESSAGE_NEW]


@pytest_twisted.ensureDeferred
async def test_mutes_are_shared_by_stores_on_one_location(chat_backend: ChatBackend) -> None:
    first, second = await chat_backend.open(), await chat_backend.open()
    a, b = users(2)
    chat = await new_chat(first, [a, b])
    await first.set_mute(chat.chat_id, b, NOW + 1)
    assert await second.mutes(chat.chat_id) == {b: NOW + 1}
