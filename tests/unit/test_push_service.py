"""The push use cases and queues with fake ports and a controlled reactor clock (``task.Clock``):
who gets a push, gone tokens, retries with backoff, bounded queues, platforms kept apart."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from common.clock import ReactorClock
from common.errors import InvalidArgument
from components.push import domain as d
from components.push.dispatch import Dispatcher, Retry
from components.push.domain import Content, Outcome, PushToken, RetryPolicy, Verdict
from components.push.service import NOTICES, PushService

A, B, C = "a" * 32, "b" * 32, "c" * 32
CHAT, MSG = "1" * 32, "2" * 32


class MemoryTokens:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], PushToken] = {}

    async def put(self, token: PushToken) -> None:
        self.rows[(token.user_id, token.key)] = token

    async def owners_of(self, key: str) -> set[str]:
        return {u for (u, k) in self.rows if k == key}

    async def remove(self, user_id: str, key: str) -> bool:
        return self.rows.pop((user_id, key), None) is not None

    async def remove_device(self, user_id: str, device_id: str) -> int:
        gone = [k for k, t in self.rows.items() if k[0] == user_id and t.device_id == device_id]
        for k in gone:
            del self.rows[k]
        return len(gone)

    async def tokens_of(self, user_ids: list[str]) -> list[PushToken]:
        return [t for (u, _), t in self.rows.items() if u in user_ids]


class FakePresence:
    def __init__(self, online: set[str] | None = None, fail: bool = False) -> None:
        self.on = online or set()
        self.fail = fail

    async def online(self, user_ids: list[str]) -> set[str]:
        if self.fail:
            raise RuntimeError("delivery is away")
        return self.on & set(user_ids)


class FakeProfiles:
    def __init__(self) -> None:
        self.calls = 0

    async def display_names(self, user_ids: list[str]) -> dict[str, str]:
        self.calls += 1
        return {A: "Alice"}


class ScriptedSender:
    """Answers from a script per token (default SENT); ``hold`` keeps sends pending."""

    def __init__(self) -> None:
        self.script: dict[str, list[Outcome]] = {}
        self.sent: list[tuple[PushToken, Content]] = []
        self.hold: list[defer.Deferred[Outcome]] | None = None

    async def send(self, token: PushToken, content: Content) -> Outcome:
        self.sent.append((token, content))
        if self.hold is not None:
            d_: defer.Deferred[Outcome] = defer.Deferred()
            self.hold.append(d_)
            return await d_
        queue = self.script.get(token.token) or []
        return queue.pop(0) if queue else Outcome(Verdict.SENT)


class World:
    def __init__(self, *, platforms: tuple[str, ...] = ("fcm", "webpush"), max_pending: int = 100) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = MemoryTokens()
        self.presence = FakePresence()
        self.profiles = FakeProfiles()
        self.senders = {p: ScriptedSender() for p in platforms}
        self.queues = {n: Dispatcher(self.clock, max_pending=max_pending, concurrency=2) for n in (NOTICES, *platforms)}
        self.service = PushService(
            self.tokens,
            self.presence,
            self.profiles,
            dict(self.senders),
            self.queues,
            ReactorClock(self.clock),
            RetryPolicy(attempts=3, base_s=1.0, max_s=8.0),
            rand=lambda: 1.0,
        )

    async def add(self, user: str, token: str, platform: str = "fcm", device: str = "dev1") -> PushToken:
        value: Any = (
            token
            if platform == "fcm"
            else {
                "endpoint": f"https://push.example.com/{token}",
                "keys": {"p256dh": P256DH, "auth": "AAAAAAAAAAAAAAAAAAAAAA"},
            }
        )
        await self.service.register(user, device, platform, value)
        return next(t for t in self.tokens.rows.values() if t.user_id == user and token in t.token)


P256DH = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"


def notice(recipients: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "chat_id": CHAT,
        "chat_kind": "direct",
        "chat_title": None,
        "sender_id": A,
        "message_id": MSG,
        "seq": 1,
        "text_preview": "hi",
        "has_media": False,
        "recipients": recipients,
        **kw,
    }


FCM_B = "b-token-" + "x" * 30
FCM_C = "c-token-" + "x" * 30


@pytest_twisted.ensureDeferred
async def test_register_validates_and_stores_nothing_on_bad_input() -> None:
    w = World(platforms=("webpush",))
    with pytest.raises(InvalidArgument, match="not enabled"):
        await w.service.register(B, "dev", "fcm", FCM_B)
    with pytest.raises(InvalidArgument):
        await w.service.register(B, "dev", "webpush", {"endpoint": "http://push.example.com/x", "keys": {}})
    assert w.tokens.rows == {}
    await w.add(B, "sub1", "webpush")
    await w.add(B, "sub1", "webpush")  # idempotent
    assert len(w.tokens.rows) == 1
    await w.service.unregister(B, "fcm", FCM_B)  # a disabled platform may still be cleaned up
    await w.service.unregister(B, "webpush", {"endpoint": "https://push.example.com/sub1"})
    assert w.tokens.rows == {}


@pytest_twisted.ensureDeferred
async def test_a_user_keeps_at_most_the_newest_tokens() -> None:
    w = World()
    for i in range(d.TOKENS_PER_USER_MAX + 3):
        w.clock.advance(1)
        await w.service.register(B, "dev", "fcm", f"token-{i:04d}-" + "y" * 30)
    kept = sorted(t.token for t in w.tokens.rows.values())
    assert len(kept) == d.TOKENS_PER_USER_MAX and kept[0].startswith("token-0003")


@pytest_twisted.ensureDeferred
async def test_a_token_registered_by_another_user_stops_pushing_for_the_first() -> None:
    """One phone, two accounts: B signed in, then C (app reinstalled, B never signed out). The
    phone's token is C's now: B's messages must not appear on it."""
    w = World()
    await w.add(B, FCM_B, device="phone-b")
    await w.add(C, FCM_B, device="phone-c")
    assert [(t.user_id, t.token) for t in w.tokens.rows.values()] == [(C, FCM_B)]
    w.service.notify(notice([B, C]))
    w.clock.advance(0)
    assert [t.user_id for t, _ in w.senders["fcm"].sent] == [C]


@pytest_twisted.ensureDeferred
async def test_device_revoked_drops_that_devices_tokens() -> None:
    w = World()
    await w.add(B, FCM_B, device="phone")
    await w.add(B, "sub", "webpush", device="laptop")
    assert await w.service.device_revoked(B, "phone") == 1
    assert [t.device_id for t in w.tokens.rows.values()] == ["laptop"]


@pytest_twisted.ensureDeferred
async def test_offline_recipients_get_pushes_online_ones_and_the_sender_do_not() -> None:
    w = World()
    tb = await w.add(B, FCM_B)
    await w.add(C, FCM_C)
    await w.add(A, "a-token-" + "x" * 30)
    w.presence.on = {C}
    assert w.service.notify(notice([A, B, C])) is True
    await w.queues[NOTICES].idle()
    await w.queues["fcm"].idle()
    assert [t for t, _ in w.senders["fcm"].sent] == [tb]
    content = w.senders["fcm"].sent[0][1]
    assert (content.title, content.body) == ("Alice", "hi")


@pytest_twisted.ensureDeferred
async def test_names_are_looked_up_once_and_given_names_win() -> None:
    w = World()
    await w.add(B, FCM_B)
    for _ in range(3):
        w.service.notify(notice([B]))
    w.service.notify(notice([B], sender_name="Alice Given"))
    await w.queues[NOTICES].idle()
    await w.queues["fcm"].idle()
    assert w.profiles.calls == 1
    assert [c.title for _, c in w.senders["fcm"].sent] == ["Alice", "Alice", "Alice", "Alice Given"]


@pytest_twisted.ensureDeferred
async def test_when_presence_is_unknown_everyone_is_pushed() -> None:
    w = World()
    await w.add(B, FCM_B)
    w.presence.fail = True
    w.service.notify(notice([B]))
    await w.queues["fcm"].idle()
    assert len(w.senders["fcm"].sent) == 1


@pytest_twisted.ensureDeferred
async def test_gone_tokens_are_deleted() -> None:
    w = World()
    await w.add(B, FCM_B)
    w.senders["fcm"].script[FCM_B] = [Outcome(Verdict.GONE, "UNREGISTERED")]
    w.service.notify(notice([B]))
    await w.queues["fcm"].idle()
    assert w.tokens.rows == {}


@pytest_twisted.ensureDeferred
async def test_transient_failures_retry_with_backoff_then_give_up() -> None:
    w = World()
    await w.add(B, FCM_B)
    w.senders["fcm"].script[FCM_B] = [Outcome(Verdict.RETRY, "503"), Outcome(Verdict.RETRY, "429", 5.0)] * 2
    w.service.notify(notice([B]))
    sent = w.senders["fcm"].sent
    assert len(sent) == 1
    w.clock.advance(0.99)
    assert len(sent) == 1
    w.clock.advance(0.01)  # first backoff: base 1 s (rand 1.0)
    assert len(sent) == 2
    w.clock.advance(4.99)  # second: 2 s of backoff, but Retry-After 5 s is the floor
    assert len(sent) == 2
    w.clock.advance(0.01)
    assert len(sent) == 3  # third attempt of three: the 503 ends it, no more tries
    w.clock.advance(100)
    assert len(sent) == 3
    assert w.queues["fcm"].pending == 0
    assert len(w.tokens.rows) == 1  # transient failures keep the token


@pytest_twisted.ensureDeferred
async def test_a_hanging_platform_never_holds_the_other() -> None:
    w = World()
    await w.add(B, FCM_B)
    await w.add(B, "sub", "webpush")
    w.senders["fcm"].hold = []
    for _ in range(5):
        w.service.notify(notice([B]))
    await w.queues["webpush"].idle()
    assert len(w.senders["webpush"].sent) == 5
    assert len(w.senders["fcm"].sent) == 2  # concurrency 2, the rest waits in its own queue
    assert w.queues["fcm"].pending == 5


def test_the_queue_is_bounded_and_drops_what_does_not_fit() -> None:
    clock = task.Clock()
    q = Dispatcher(clock, max_pending=3, concurrency=1)
    held: list[defer.Deferred[None]] = []

    async def job() -> None:
        waiter: defer.Deferred[None] = defer.Deferred()
        held.append(waiter)
        await waiter

    assert [q.submit(job) for _ in range(5)] == [True, True, True, False, False]
    assert q.dropped == 2 and q.running == 1 and len(held) == 1
    held[0].callback(None)
    assert q.submit(job) is True and len(held) == 2


def test_a_failing_job_frees_its_slot_and_retries_wait_on_the_clock() -> None:
    clock = task.Clock()
    q = Dispatcher(clock, max_pending=2, concurrency=2)
    runs: list[str] = []

    async def boom() -> None:
        runs.append("boom")
        raise RuntimeError("bug")

    async def again() -> Retry | None:
        runs.append("again")
        return Retry(2.0, ok) if runs.count("again") == 1 else None

    async def ok() -> None:
        runs.append("ok")

    q.submit(boom)
    q.submit(again)
    assert runs == ["boom", "again"] and q.pending == 1
    clock.advance(2.0)
    assert runs == ["boom", "again", "ok"] and q.pending == 0
    q.stop()
    assert q.submit(ok) is False


def test_notices_without_recipients_or_platforms_queue_nothing() -> None:
    w = World()
    assert w.service.notify(notice([])) is False
    w2 = World(platforms=())
    assert w2.service.notify(notice([B])) is False
    with pytest.raises(InvalidArgument):
        w.service.notify(notice([B], seq="1"))


@pytest_twisted.ensureDeferred
async def test_notify_many_skips_a_malformed_notice_and_queues_the_rest() -> None:
    from common.wampkit import Caller
    from components.push.wamp import NOTICES_PER_CALL_MAX, PushWamp

    w = World()
    await w.add(B, FCM_B)
    edge = PushWamp(w.service, session=None)
    backend = Caller(session_id=1, authid="backend", authrole="backend")
    answer = await edge.notify_many(backend, [notice([B]), {"seq": "x"}, "not a dict", notice([B], seq=2)])
    assert answer == {"queued": 2, "rejected": 2}
    w.clock.advance(0)
    assert len(w.senders["fcm"].sent) == 2
    for bad in ("notices", [notice([B])] * (NOTICES_PER_CALL_MAX + 1)):
        with pytest.raises(InvalidArgument):
            await edge.notify_many(backend, bad)
