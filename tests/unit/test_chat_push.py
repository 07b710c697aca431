"""Chat's side of push: mutes, the notice handed to push after a send, and that the hand-over
never waits or fails a send."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

from common.adapters.memory import MemoryRateLimiter
from common.clock import FixedClock
from common.errors import InvalidArgument, NotFound
from components.chat import domain as d
from components.chat.adapters.sqlite import SqliteChatStore
from components.chat.service import ChatService
from components.chat.wamp import WampPusher
from realms import uris

A, B, C = "a" * 32, "b" * 32, "c" * 32
NOW = 1_700_000_000_000


def test_validate_mute_until() -> None:
    assert d.validate_mute_until(None, NOW) is None
    assert d.validate_mute_until(NOW + 1, NOW) == NOW + 1
    assert d.validate_mute_until(NOW, NOW) is None  # an end in the past unmutes
    for bad in ["tomorrow", 1.5, True, -1, d.MUTE_UNTIL_MAX + 1]:
        with pytest.raises(InvalidArgument):
            d.validate_mute_until(bad, NOW)


def test_push_notice_leaves_out_the_sender_and_muted_members() -> None:
    chat = d.new_group("1" * 32, A, "Team", [B, C], NOW)
    message = d.Message(
        message_id="2" * 32, chat_id=chat.chat_id, seq=3, sender_id=A, client_msg_id="x", text="t" * 500, sent_at_ms=NOW
    )
    n = d.push_notice(chat, message, {B: NOW + 10, C: NOW - 10}, NOW)
    assert n is not None
    assert n["recipients"] == [C] and n["chat_title"] == "Team" and n["chat_kind"] == "group"
    assert len(n["text_preview"]) == d.PUSH_PREVIEW_MAX and n["has_media"] is False and n["seq"] == 3
    assert d.push_notice(chat, message, {B: NOW + 10, C: NOW + 10}, NOW) is None


class Directory:
    async def existing(self, user_ids: list[str]) -> set[str]:
        return set(user_ids)

    async def is_blocked(self, blocker_id: str, blocked_id: str) -> bool:
        return False


class Notifier:
    def updates(self, updates: Any) -> None:
        pass

    def ephemeral(self, user_ids: Any, envelope: Any) -> None:
        pass


class Pusher:
    def __init__(self) -> None:
        self.handed: list[Awaitable[dict[str, Any] | None]] = []

    def message_new(self, notice: Awaitable[dict[str, Any] | None]) -> None:
        self.handed.append(notice)


@pytest_twisted.ensureDeferred
async def test_send_hands_a_notice_to_push_and_mute_is_for_members(tmp_path: Path) -> None:
    store = SqliteChatStore(tmp_path / "chat.sqlite3", _reactor)
    await store.start()
    try:
        clock = FixedClock(NOW)
        pusher = Pusher()
        s = ChatService(store, Directory(), Notifier(), MemoryRateLimiter(clock), clock, pusher=pusher)
        chat = await s.create_group(A, "Team", [B, C])
        cid = chat["chat_id"]
        assert await s.mute(B, cid, NOW + 60_000) == {"chat_id": cid, "muted_until": NOW + 60_000}
        with pytest.raises(NotFound):
            await s.mute("d" * 32, cid, NOW + 60_000)
        sent = await s.send(A, cid, "m1", "hello", None, None)
        assert len(pusher.handed) == 1  # handed over, not awaited by the send
        notice = await pusher.handed[0]
        assert notice is not None
        assert (
            notice["recipients"] == [C]
            and notice["message_id"] == sent["message_id"]
            and notice["text_preview"] == "hello"
        )
        await s.send(A, cid, "m1", "hello", None, None)  # a retried send is not pushed twice
        assert len(pusher.handed) == 1
        clock.advance(60_000)  # the mute ran out
        await s.send(A, cid, "m2", "again", None, None)
        notice = await pusher.handed[1]
        assert notice is not None and notice["recipients"] == [B, C]
        await s.mute(C, cid, None)
    finally:
        await store.stop()


class Session:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, uri: str, **kwargs: Any) -> defer.Deferred[Any]:
        self.calls.append((uri, kwargs))
        return self.answer()


@pytest_twisted.ensureDeferred
async def test_the_hand_over_never_waits_and_failures_are_dropped() -> None:
    clock = task.Clock()

    async def notice(n: int = 0) -> dict[str, Any]:
        return {"chat_id": f"x{n}"}

    hanging = Session(defer.Deferred)  # push never answers
    pusher = WampPusher(hanging, clock, timeout_s=5.0, batch_s=0.02)
    pusher.message_new(notice(1))  # returns at once
    pusher.message_new(notice(2))
    assert hanging.calls == []  # collected for one batch
    clock.advance(0.02)
    assert hanging.calls == [(uris.INTERNAL_PUSH_NOTIFY_MANY, {"notices": [{"chat_id": "x1"}, {"chat_id": "x2"}]})]
    clock.advance(5.0)  # the call times out: logged and dropped
    assert pusher.failures == 1
    missing = Session(lambda: defer.fail(RuntimeError("wamp.error.no_such_procedure")))
    pusher = WampPusher(missing, clock, batch_max=3)
    for n in range(3):
        pusher.message_new(notice(n))  # a full batch goes at once
    assert len(missing.calls) == 1 and len(missing.calls[0][1]["notices"]) == 3
    assert pusher.failures == 1

    async def nothing() -> None:
        return None

    pusher.message_new(nothing())
    clock.advance(1.0)
    assert len(missing.calls) == 1
