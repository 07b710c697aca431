"""Push notifications end to end: a real embedded node, real WAMP clients, and loopback stand-ins
of FCM (with its OAuth2 token endpoint) and of a Web Push service that verify VAPID and decrypt
the payload (``tests/support/push_standins.py``)."""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from realms import uris
from tests.integration.chat_helpers import User, add_device, close_all, wait_for
from tests.integration.helpers import register
from tests.support.client import call_error
from tests.support.node import Node
from tests.support.push_standins import FcmStandin, Subscription, WebPushStandin, vapid_keypair

pytestmark = [pytest.mark.node, pytest.mark.slow]

INVALID = uris.ERROR_PREFIX + "invalid_argument"


class Env:
    def __init__(self, node: Node, fcm: FcmStandin, webpush: WebPushStandin, vapid_public: str) -> None:
        self.node = node
        self.fcm = fcm
        self.webpush = webpush
        self.vapid_public = vapid_public
        self._n = 0

    def fcm_token(self) -> str:
        self._n += 1
        return f"fcm-token-{self._n:04d}-{time.monotonic_ns()}:APA91bStandInRegistrationToken"

    def stored_tokens(self, user_id: str) -> list[tuple[str, str, str]]:
        """(platform, device_id, token) rows of the push store, read from its SQLite file."""
        conn = sqlite3.connect(f"file:{self.node.data_dir / 'push.sqlite3'}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT platform, device_id, token FROM push_tokens WHERE user_id = ? ORDER BY platform", (user_id,)
            ).fetchall()
            return [tuple(r) for r in rows]
        finally:
            conn.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("push")
    fcm = FcmStandin(workdir).start()
    vapid_private, vapid_public = vapid_keypair()
    webpush = WebPushStandin(vapid_public).start()
    push_config = {
        "fcm": {"service_account_file": str(fcm.service_account_file), "base_url": fcm.url},
        "webpush": {"subject": "mailto:ops@example.com", "ttl_s": 120},
        "queue": {"max_pending": 1000, "concurrency": 4, "attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.5},
    }
    node = Node(workdir, extra={"push": push_config}, env={"MESSENGER_VAPID_PRIVATE_KEY": vapid_private}).start()
    yield Env(node, fcm, webpush, vapid_public)
    node.stop()
    fcm.stop()
    webpush.stop()
    assert not fcm.errors, fcm.errors
    assert not webpush.errors, webpush.errors


async def person(env: Env, name: str) -> User:
    reg = await register(env.node, display_name=name)
    user = User(reg["user_id"], reg["username"])
    await add_device(env.node, user)
    return user


async def go_offline(env: Env, user: User, watcher: User) -> None:
    """Close every session of ``user`` and wait until presence says so."""
    for c in user.devices:
        await c.close()
    user.devices.clear()

    async def offline() -> bool:
        result = await watcher.d.call(uris.PRESENCE_GET, user_ids=[user.user_id])
        return not result["presence"][user.user_id]["online"]

    for _ in range(100):
        if await offline():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("user still online")


async def register_both(env: Env, user: User) -> tuple[str, Subscription]:
    token = env.fcm_token()
    sub = env.webpush.subscribe()
    assert await user.d.call(uris.PUSH_REGISTER, platform="fcm", token=token) == {}
    assert await user.d.call(uris.PUSH_REGISTER, platform="webpush", token=sub.as_json()) == {}
    return token, sub


async def send(user: User, chat_id: str, text: str) -> dict[str, Any]:
    result: dict[str, Any] = await user.d.call(
        uris.MESSAGE_SEND, chat_id=chat_id, client_msg_id=f"c-{time.monotonic_ns()}", text=text
    )
    return result


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# -- registration ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_config_names_the_enabled_platforms_and_the_vapid_key(env: Env) -> None:
    alice = await person(env, "Alice")
    config = await alice.d.call(uris.PUSH_CONFIG)
    assert config == {"platforms": ["fcm", "webpush"], "vapid_public_key": env.vapid_public}
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_invalid_arguments_and_nothing_is_stored(env: Env) -> None:
    alice = await person(env, "Alice")
    good = env.webpush.subscribe().as_json()
    bad: list[tuple[str, Any]] = [
        ("apns", "x" * 64),
        ("fcm", "short"),
        ("fcm", "has spaces " * 5),
        ("fcm", {"token": "x" * 64}),
        ("webpush", "https://push.example.com/abc"),
        ("webpush", {**good, "endpoint": "ftp://push.example.com/x"}),
        ("webpush", {**good, "endpoint": "http://push.example.com/x"}),  # http only to loopback
        ("webpush", {**good, "endpoint": "https://user:pw@push.example.com/x"}),
        ("webpush", {**good, "keys": {"p256dh": good["keys"]["p256dh"][:-4], "auth": good["keys"]["auth"]}}),
        ("webpush", {**good, "keys": {"p256dh": "BA" + "A" * 85, "auth": good["keys"]["auth"]}}),  # not on the curve
        ("webpush", {**good, "keys": {"p256dh": good["keys"]["p256dh"], "auth": "AAAA"}}),
        ("webpush", {"endpoint": good["endpoint"]}),
    ]
    for platform, token in bad:
        e = await call_error(alice.d.call(uris.PUSH_REGISTER, platform=platform, token=token))
        assert e.error == INVALID, (platform, token, e)
    assert env.stored_tokens(alice.user_id) == []
    # register is idempotent; unregister removes (a subscription by its endpoint)
    for _ in range(2):
        await alice.d.call(uris.PUSH_REGISTER, platform="webpush", token=good)
    assert len(env.stored_tokens(alice.user_id)) == 1
    await alice.d.call(uris.PUSH_UNREGISTER, platform="webpush", token={"endpoint": good["endpoint"]})
    await alice.d.call(uris.PUSH_UNREGISTER, platform="webpush", token={"endpoint": good["endpoint"]})
    assert env.stored_tokens(alice.user_id) == []
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_tokens_are_stored_per_device_and_a_signed_out_device_loses_them(env: Env) -> None:
    alice = await person(env, "Alice")
    await add_device(env.node, alice)
    token0, token1 = env.fcm_token(), env.fcm_token()
    await alice.devices[0].call(uris.PUSH_REGISTER, platform="fcm", token=token0)
    await alice.devices[1].call(uris.PUSH_REGISTER, platform="fcm", token=token1)
    stored = {t: dev for _, dev, t in env.stored_tokens(alice.user_id)}
    assert stored == {token0: alice.tokens[0]["device_id"], token1: alice.tokens[1]["device_id"]}
    await alice.devices[1].call(uris.AUTH_LOGOUT)
    await wait_for(lambda: len(env.stored_tokens(alice.user_id)) == 1, what="the device's tokens dropped")
    assert [t for _, _, t in env.stored_tokens(alice.user_id)] == [token0]
    await close_all(alice)


# -- pushes ------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_an_offline_user_gets_a_push_on_both_platforms(env: Env) -> None:
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token, sub = await register_both(env, bob)
    await go_offline(env, bob, alice)
    sent = await send(alice, chat["chat_id"], "Are you there, Bob?")

    await wait_for(lambda: env.fcm.delivered(token) and env.webpush.delivered(sub), what="both pushes")
    message = env.fcm.delivered(token)[0].body["message"]
    assert message["notification"] == {"title": "Alice", "body": "Are you there, Bob?"}
    assert message["android"]["collapse_key"] == chat["chat_id"]
    assert message["android"]["notification"]["tag"] == chat["chat_id"]
    assert message["data"] == {
        "type": "message.new",
        "chat_id": chat["chat_id"],
        "message_id": sent["message_id"],
        "seq": str(sent["seq"]),
        "sender_id": alice.user_id,
    }
    web = env.webpush.delivered(sub)[0]
    assert web.body["title"] == "Alice" and web.body["body"] == "Are you there, Bob?"  # decrypted
    assert web.body["message_id"] == sent["message_id"]
    assert web.headers["topic"] == chat["chat_id"] and web.headers["ttl"] == "120"
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_group_push_names_the_group_and_the_sender_and_long_text_is_cut(env: Env) -> None:
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    group = await alice.d.call(uris.CHAT_CREATE_GROUP, title="Climbing club", member_ids=[bob.user_id])
    token, sub = await register_both(env, bob)
    await go_offline(env, bob, alice)
    await send(alice, group["chat_id"], "word " * 100)
    await wait_for(lambda: env.fcm.delivered(token) and env.webpush.delivered(sub), what="both pushes")
    note = env.fcm.delivered(token)[0].body["message"]["notification"]
    assert note["title"] == "Climbing club"
    assert note["body"].startswith("Alice: word word") and note["body"].endswith("…") and len(note["body"]) <= 120
    assert env.webpush.delivered(sub)[0].body["title"] == "Climbing club"
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_an_online_user_gets_no_push(env: Env) -> None:
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token, sub = await register_both(env, bob)
    await send(alice, chat["chat_id"], "you are online")
    await bob.d.wait_event(lambda kw: kw.get("type") == "message.new")
    await sleep(1.0)
    assert env.fcm.attempts(token) == [] and sub.received == []
    await close_all(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_muted_chat_gets_no_push_until_unmuted(env: Env) -> None:
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token, sub = await register_both(env, bob)
    far = int(time.time() * 1000) + 3_600_000
    assert await bob.d.call(uris.CHAT_MUTE, chat_id=chat["chat_id"], until=far) == {
        "chat_id": chat["chat_id"],
        "muted_until": far,
    }
    # only members may mute
    carol = await person(env, "Carol")
    e = await call_error(carol.d.call(uris.CHAT_MUTE, chat_id=chat["chat_id"], until=far))
    assert e.error == uris.ERROR_PREFIX + "not_found"
    e = await call_error(bob.d.call(uris.CHAT_MUTE, chat_id=chat["chat_id"], until="tomorrow"))
    assert e.error == INVALID
    bob_again = bob.tokens[0]
    await go_offline(env, bob, alice)
    await send(alice, chat["chat_id"], "muted")
    await sleep(1.0)
    assert env.fcm.attempts(token) == [] and sub.received == []
    # unmute (from a new session of the same device) and the next message is pushed
    from tests.support.client import connect

    bob_session = await connect(env.node.url, ticket=bob_again["access_token"])
    assert (await bob_session.call(uris.CHAT_MUTE, chat_id=chat["chat_id"], until=None))["muted_until"] is None
    await bob_session.close()
    await go_offline(env, bob, alice)
    await send(alice, chat["chat_id"], "not muted")
    await wait_for(lambda: env.fcm.delivered(token) and env.webpush.delivered(sub), what="both pushes")
    assert env.fcm.delivered(token)[0].body["message"]["notification"]["body"] == "not muted"
    await close_all(alice, carol)


@pytest_twisted.ensureDeferred
async def test_tokens_the_provider_says_are_gone_are_deleted(env: Env) -> None:
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token, sub = await register_both(env, bob)
    env.fcm.answers[token] = ["unregistered"]
    sub.answers.append(410)
    await go_offline(env, bob, alice)
    await send(alice, chat["chat_id"], "anyone?")
    await wait_for(lambda: env.stored_tokens(bob.user_id) == [], what="both tokens deleted")
    assert len(env.fcm.attempts(token)) == 1 and len(sub.received) == 1
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_transient_failures_are_retried(env: Env) -> None:
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token, sub = await register_both(env, bob)
    env.fcm.answers[token] = ["unavailable"]
    sub.answers.extend([503, 429])
    await go_offline(env, bob, alice)
    await send(alice, chat["chat_id"], "eventually")
    await wait_for(lambda: env.fcm.delivered(token) and env.webpush.delivered(sub), within=10, what="retried pushes")
    assert [m.body["answered"] for m in env.fcm.attempts(token)] == ["unavailable", "ok"]
    assert [r.body["answered"] for r in sub.received] == [503, 429, 201]
    assert len(env.stored_tokens(bob.user_id)) == 2  # transient failures keep the tokens
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_a_provider_that_is_down_or_slow_never_slows_sending(env: Env) -> None:
    from tests.support.node import free_port

    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    dead = env.webpush.subscribe().as_json()
    dead["endpoint"] = f"http://127.0.0.1:{free_port()}/push/nobody-listens"
    await bob.d.call(uris.PUSH_REGISTER, platform="webpush", token=dead)
    token = env.fcm_token()
    await bob.d.call(uris.PUSH_REGISTER, platform="fcm", token=token)
    await go_offline(env, bob, alice)
    env.fcm.delay_s = 3.0  # FCM hangs 3 s on every request
    try:
        took = []
        for i in range(20):
            started = time.perf_counter()
            await send(alice, chat["chat_id"], f"slow {i}")
            took.append(time.perf_counter() - started)
        print(
            f"message.send while push providers are down/slow: p50 {statistics.median(took) * 1000:.1f} ms, "
            f"max {max(took) * 1000:.1f} ms"
        )
        # a send that waited for the hanging provider would take 3 s; the margin is for a loaded machine
        assert statistics.median(took) < 0.1 and max(took) < 1.5, took
    finally:
        env.fcm.delay_s = 0.0
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_push_latency_from_send_answer_to_provider(env: Env) -> None:
    """Measured once: time from ``message.send`` answering to the stand-in receiving the push."""
    alice, bob = await person(env, "Alice"), await person(env, "Bob")
    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    token, sub = await register_both(env, bob)
    await go_offline(env, bob, alice)
    # warm-up (and a backlog other tests may have left in the FCM queue drains first)
    await send(alice, chat["chat_id"], "warm-up")
    await wait_for(lambda: env.fcm.delivered(token) and env.webpush.delivered(sub), within=15, what="warm-up")
    fcm_lat, web_lat = [], []
    for i in range(1, 51):
        await send(alice, chat["chat_id"], f"ping {i}")
        answered = time.perf_counter()
        await wait_for(
            lambda i=i: len(env.fcm.delivered(token)) > i and len(env.webpush.delivered(sub)) > i, what=f"push {i}"
        )
        fcm_lat.append(env.fcm.delivered(token)[i].at - answered)
        web_lat.append(env.webpush.delivered(sub)[i].at - answered)

    def fmt(xs: list[float]) -> str:
        return f"p50 {statistics.median(xs) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms"

    print(
        f"push latency over 50 sends (send answered -> provider received): fcm {fmt(fcm_lat)}; webpush {fmt(web_lat)}"
    )
    assert statistics.median(fcm_lat) < 1.0 and statistics.median(web_lat) < 1.0
    await close_all(alice)
