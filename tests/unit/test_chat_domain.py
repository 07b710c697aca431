"""Pure chat rules: membership, ownership, receipts, reactions, paging, cursors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import Forbidden, InvalidArgument, NotFound
from components.chat import domain as d

A, B, C, D = (f"{i:032x}" for i in range(1, 5))


def test_direct_chat_id_is_the_same_whoever_creates_it():
    assert d.direct_chat_id(A, B) == d.direct_chat_id(B, A) != d.direct_chat_id(A, C)
    with pytest.raises(InvalidArgument):
        d.new_direct(A, A, 0)


def test_group_owner_renames_and_removes_others_members_add_and_leave():
    g = d.new_group("f" * 32, A, "team", [B, C], 1)
    assert g.member_ids == [A, B, C] and g.owner_id == A
    with pytest.raises(Forbidden):
        d.rename(g, B, "x", 2)
    with pytest.raises(Forbidden):
        d.remove_member(g, B, C, 2)
    g2, added = d.add_members(g, B, [C, D], 3)
    assert added == [D] and g2.member_ids == [A, B, C, D]
    g3 = d.remove_member(g2, C, C, 4)  # leave
    assert C not in g3.member_ids
    with pytest.raises(NotFound):
        d.rename(g3, C, "x", 5)  # no longer a member: the chat does not exist for them


def test_when_the_owner_leaves_the_longest_standing_member_becomes_owner():
    g = d.new_group("f" * 32, A, "team", [B], 1)
    g, _ = d.add_members(g, A, [C], 5)
    assert d.remove_member(g, A, A, 6).owner_id == B
    assert d.remove_member(d.remove_member(g, A, A, 6), B, B, 7).owner_id == C


def test_groups_hold_at_most_200_members():
    others = [f"{i:032x}" for i in range(10, 10 + 199)]
    g = d.new_group("f" * 32, A, "big", others, 1)
    assert len(g.members) == 200
    with pytest.raises(InvalidArgument):
        d.add_members(g, A, [B], 2)
    with pytest.raises(InvalidArgument):
        d.new_group("f" * 32, A, "too big", [*others, B], 1)


def test_non_members_get_not_found_for_everything():
    g = d.new_group("f" * 32, A, "team", [B], 1)
    with pytest.raises(NotFound):
        d.require_member(g, C)
    with pytest.raises(NotFound):
        d.require_member(None, A)
    with pytest.raises(NotFound):
        d.add_members(g, C, [D], 2)


@given(st.lists(st.tuples(st.sampled_from([d.RECEIPT_READ, d.RECEIPT_DELIVERED]), st.integers(1, 50)), max_size=40))
def test_receipts_only_move_forward_and_read_implies_delivered(marks):
    r = d.Receipts()
    for kind, n in marks:
        new = d.advance_receipts(r, kind, n, last_seq=50)
        if new is None:
            continue
        assert new.last_read_seq >= r.last_read_seq and new.last_delivered_seq >= r.last_delivered_seq
        assert new.last_delivered_seq >= new.last_read_seq
        assert new != r
        r = new


def test_receipts_beyond_the_last_seq_or_malformed_are_invalid():
    for bad in (0, -1, 11, "3", 2.0, True, None):
        with pytest.raises(InvalidArgument):
            d.advance_receipts(d.Receipts(), d.RECEIPT_READ, bad, last_seq=10)
    assert d.advance_receipts(d.Receipts(5, 5), d.RECEIPT_READ, 3, last_seq=10) is None


def _msg(**kw: Any) -> d.Message:
    base: dict[str, Any] = dict(
        message_id="m" * 32, chat_id="c" * 32, seq=1, sender_id=A, client_msg_id="x", text="hi", sent_at_ms=1
    )
    base.update(kw)
    return d.Message(**base)


@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from(["👍", "❤", None])), max_size=30))
def test_one_reaction_per_user_per_message(ops):
    m = _msg()
    last: dict[str, str | None] = {}
    for user, emoji in ops:
        m = d.react(m, user, emoji)
        last[user] = emoji
    everyone = [u for users in m.reactions.values() for u in users]
    assert len(everyone) == len(set(everyone))
    for user, emoji in last.items():
        if emoji is None:
            assert user not in everyone
        else:
            assert user in m.reactions[emoji]
    assert all(m.reactions.values())


def test_delete_leaves_a_tombstone_without_content():
    m = d.delete(d.react(_msg(media=("a",)), B, "👍"), 5)
    assert m.deleted and m.text is None and m.media == () and m.reactions == {}
    with pytest.raises(NotFound):
        d.require_own_live_message(m, A)
    with pytest.raises(Forbidden):
        d.require_own_live_message(_msg(), B)


@given(last_seq=st.integers(0, 5000), before=st.one_of(st.none(), st.integers(1, 6000)), limit=st.integers(1, 100))
def test_history_pages_are_exact_ranges_below_before_seq(last_seq, before, limit):
    lo, hi = d.history_range(before, last_seq, limit)
    top = last_seq if before is None else min(before - 1, last_seq)
    assert hi == top and (hi - lo + 1 == min(limit, top) if top >= 1 else hi < lo)


@given(since=st.integers(0, 5000), last=st.integers(0, 5000), limit=st.integers(1, 100))
def test_update_pages_cover_everything_after_since_once(since, last, limit):
    lo, hi, more = d.updates_range(since, last, limit)
    assert lo == since + 1 and hi <= since + limit and more == (last > hi)
    assert hi == min(last, since + limit)


@given(lo=st.integers(0, 10**6), span=st.integers(0, 5000))
def test_buckets_between_cover_the_range(lo, span):
    buckets = d.buckets_between(lo, lo + span)
    assert buckets[0] == lo // d.BUCKET_SIZE and buckets[-1] == (lo + span) // d.BUCKET_SIZE
    assert buckets == sorted(set(buckets))


def test_cursors_round_trip_and_garbage_is_invalid():
    c = d.encode_cursor(123, "a" * 32)
    assert d.decode_cursor(c) == (123, "a" * 32)
    for bad in ("", "!!!", "e30", d.encode_cursor(1, "nope"), 5, "x" * 500):
        with pytest.raises(InvalidArgument):
            d.decode_cursor(bad)


@pytest.mark.parametrize(
    "text,media,ok",
    [
        ("hi", None, True),
        (None, ["m1"], True),
        ("", ["m1"], True),
        ("   ", None, False),
        (None, None, False),
        ("x" * 4096, None, True),
        ("x" * 4097, None, False),
        (5, None, False),
        ("hi", "m1", False),
    ],
)
def test_a_message_has_text_or_media(text, media, ok):
    if ok:
        d.validate_content(text, media)
    else:
        with pytest.raises(InvalidArgument):
            d.validate_content(text, media)


def test_envelopes_have_the_contract_shape():
    u = d.Update(A, 7, d.MESSAGE_NEW, "c" * 32, 99, {"x": 1})
    assert u.envelope() == {"type": "message.new", "update_id": 7, "chat_id": "c" * 32, "at": 99, "data": {"x": 1}}
    assert d.ephemeral_envelope(d.TYPING, "c" * 32, 5, {"user_id": A})["update_id"] is None
