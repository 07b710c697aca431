"""Delivery rules: each user's updates are released in order, none twice; presence counts sessions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from components.delivery.domain import PresenceBook, Sequencer


def env(n: int) -> dict:
    return {"type": "message.new", "update_id": n, "chat_id": "c", "at": 0, "data": {}}


@given(st.permutations(list(range(1, 40))), st.lists(st.integers(1, 39), max_size=20))
def test_any_arrival_order_is_released_in_order_once(order, duplicates):
    seq = Sequencer()
    out = []
    first = min(order[:1] or [1])
    arrivals = list(order) + list(duplicates)
    for n in arrivals:
        out += [e["update_id"] for e in seq.offer("u", env(n), 0)]
    # the stream starts at the first id seen; everything from there on comes out once, in order
    assert out == sorted(set(out))
    assert out == list(range(first, 40))


def test_a_gap_is_reported_and_filled_from_the_store():
    seq = Sequencer()
    assert [e["update_id"] for e in seq.offer("u", env(1), 0)] == [1]
    assert seq.offer("u", env(4), 0) == []
    assert seq.gap("u") == (2, 3)
    released = seq.fill("u", [env(3), env(2)], 0)
    assert [e["update_id"] for e in released] == [2, 3, 4]
    assert seq.gap("u") is None


def test_an_unfillable_gap_is_skipped_so_delivery_goes_on():
    seq = Sequencer()
    seq.offer("u", env(1), 0)
    seq.offer("u", env(5), 0)
    assert [e["update_id"] for e in seq.skip_gap("u")] == [5]
    assert [e["update_id"] for e in seq.offer("u", env(6), 0)] == [6]


def test_users_are_independent_and_idle_ones_are_forgotten():
    seq = Sequencer()
    seq.offer("a", env(1), 0)
    seq.offer("b", env(7), 100)
    assert seq.forget_idle(50) == 1 and len(seq) == 1


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=60))
def test_online_while_any_session_is_joined(ops):
    book = PresenceBook()
    sessions: set[int] = set()
    for t, (joining, sid) in enumerate(ops):
        if joining:
            came_online = book.join(sid, "u")
            assert came_online == (not sessions)
            sessions.add(sid)
        else:
            went = book.leave(sid, t)
            if sid in sessions:
                sessions.discard(sid)
                assert (went == "u") == (not sessions)
            else:
                assert went is None
        assert book.get("u")["online"] == bool(sessions)
