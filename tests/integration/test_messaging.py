"""Two users on three devices, groups, receipts, typing, presence and sync through a real node."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError

from realms import uris
from tests.integration.chat_helpers import User, add_device, close_all, new_user, wait_for
from tests.support.client import call_error
from tests.support.node import Node

pytestmark = pytest.mark.node


def ids(events):
    return [e["update_id"] for e in events]


@pytest_twisted.ensureDeferred
async def test_two_users_on_three_devices_see_every_event_with_consecutive_ids(node):
    alice = await new_user(node, devices=2)
    bob = await new_user(node)

    chat = await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    assert chat["type"] == "direct" and sorted(chat["member_ids"]) == sorted([alice.user_id, bob.user_id])
    again = await bob.d.call(uris.CHAT_CREATE_DIRECT, user_id=alice.user_id)
    assert again["chat_id"] == chat["chat_id"]  # the same pair always gets the same chat
    cid = chat["chat_id"]

    sent = await alice.devices[0].call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id="c1", text="hi bob")
    assert sent["seq"] == 1
    for user, device in ((alice, 0), (alice, 1), (bob, 0)):
        await wait_for(lambda u=user, dv=device: len(u.of_type("message.new", dv)) == 1, what="message.new")
        new = user.of_type("message.new", device)[0]
        assert new["chat_id"] == cid and new["data"]["text"] == "hi bob" and new["data"]["seq"] == 1
        assert new["data"]["message_id"] == sent["message_id"] and new["data"]["sender_id"] == alice.user_id

    # a retry with the same client_msg_id (even with other content) answers the first result
    retry = await alice.devices[1].call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id="c1", text="something else")
    assert retry == sent

    await bob.d.call(uris.MESSAGE_MARK_DELIVERED, chat_id=cid, up_to_seq=1)
    marks = await bob.d.call(uris.MESSAGE_MARK_READ, chat_id=cid, up_to_seq=1)
    assert marks == {"last_delivered_seq": 1, "last_read_seq": 1}
    await wait_for(lambda: len(alice.of_type("receipt.read", 1)) == 1, what="receipt.read")
    read = alice.of_type("receipt.read", 1)[0]
    assert read["data"] == {"user_id": bob.user_id, "up_to_seq": 1}
    assert alice.of_type("receipt.delivered", 0)[0]["data"] == {"user_id": bob.user_id, "up_to_seq": 1}
    # ticks for a client that opens the chat later: chat.get carries the other members' receipts
    seen = await alice.d.call(uris.CHAT_GET, chat_id=cid)
    assert seen["receipts"] == {bob.user_id: {"last_delivered_seq": 1, "last_read_seq": 1}}
    assert (await bob.d.call(uris.CHAT_GET, chat_id=cid))["receipts"] == {
        alice.user_id: {"last_delivered_seq": 1, "last_read_seq": 1}  # sending marks read for the sender
    }

    reply = await bob.d.call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id="b1", text="hello alice", reply_to=1)
    assert reply["seq"] == 2
    await wait_for(lambda: len(alice.of_type("message.new", 1)) == 2, what="reply")

    # typing is ephemeral: no update_id, only to the others
    await alice.d.call(uris.CHAT_TYPING, chat_id=cid)
    await wait_for(lambda: len(bob.of_type("typing")) == 1, what="typing")
    assert bob.of_type("typing")[0]["update_id"] is None
    assert bob.of_type("typing")[0]["data"] == {"user_id": alice.user_id}
    assert alice.of_type("typing") == []

    # every device saw the user's durable updates 1..n in order, and sync returns the same
    for user in (alice, bob):
        for dv in range(len(user.devices)):
            live = user.durable(dv)
            assert ids(live) == list(range(1, len(live) + 1)), (user.username, ids(live))
        synced = await user.d.call(uris.SYNC_GET_UPDATES, since_update_id=0)
        assert synced["updates"] == user.durable(0)
        assert synced["last_update_id"] == len(user.durable(0)) and synced["has_more"] is False

    listed = await alice.d.call(uris.CHAT_LIST)
    row = next(c for c in listed["chats"] if c["chat_id"] == cid)
    assert row["unread_count"] == 1 and row["last_message"]["text"] == "hello alice"
    history = await bob.d.call(uris.MESSAGE_HISTORY, chat_id=cid)
    assert [m["seq"] for m in history["messages"]] == [2, 1] and history["messages"][0]["reply_to"] == 1
    await close_all(alice, bob)


@pytest_twisted.ensureDeferred
async def test_group_fan_out_edit_delete_react_and_membership(node):
    alice, bob, carol = [await new_user(node) for _ in range(3)]
    group = await alice.d.call(uris.CHAT_CREATE_GROUP, title="trip", member_ids=[bob.user_id, carol.user_id])
    gid = group["chat_id"]
    assert group["owner_id"] == alice.user_id and len(group["member_ids"]) == 3
    sent = await bob.d.call(uris.MESSAGE_SEND, chat_id=gid, client_msg_id="m1", text="who drives?")
    for u in (alice, bob, carol):
        await wait_for(lambda u=u: len(u.of_type("message.new")) == 1, what="group fan-out")

    await bob.d.call(uris.MESSAGE_EDIT, chat_id=gid, message_id=sent["message_id"], text="who drives? (me?)")
    await carol.d.call(uris.MESSAGE_REACT, chat_id=gid, message_id=sent["message_id"], emoji="👍")
    err = await call_error(alice.d.call(uris.MESSAGE_EDIT, chat_id=gid, message_id=sent["message_id"], text="x"))
    assert err.error == "messenger.error.forbidden"
    await bob.d.call(uris.MESSAGE_DELETE, chat_id=gid, message_id=sent["message_id"])
    await wait_for(lambda: len(alice.of_type("message.deleted")) == 1, what="delete")
    [m] = (await carol.d.call(uris.MESSAGE_HISTORY, chat_id=gid))["messages"]
    assert m["deleted"] is True and m["text"] is None and m["reactions"] == {}

    # only the owner renames and removes; anyone leaves; the chat vanishes for those who left
    err = await call_error(bob.d.call(uris.CHAT_UPDATE, chat_id=gid, title="mine"))
    assert err.error == "messenger.error.forbidden"
    await alice.d.call(uris.CHAT_UPDATE, chat_id=gid, title="road trip")
    await carol.d.call(uris.CHAT_LEAVE, chat_id=gid)
    err = await call_error(carol.d.call(uris.CHAT_GET, chat_id=gid))
    assert err.error == "messenger.error.not_found"
    await alice.d.call(uris.CHAT_LEAVE, chat_id=gid)
    assert (await bob.d.call(uris.CHAT_GET, chat_id=gid))["owner_id"] == bob.user_id
    for u in (alice, bob, carol):
        synced = await u.d.call(uris.SYNC_GET_UPDATES, since_update_id=0)
        assert ids(synced["updates"]) == list(range(1, len(synced["updates"]) + 1))
    await close_all(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_offline_user_gets_exactly_what_was_missed_through_sync(node):
    alice = await new_user(node)
    bob = await new_user(node)
    cid = (await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id))["chat_id"]
    await wait_for(lambda: len(bob.durable()) == 1, what="chat.created")
    held = bob.durable()[-1]["update_id"]
    await bob.d.close()
    bob.devices.clear()
    for i in range(500):
        await alice.d.call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id=f"x{i}", text=f"message {i}")
    await add_device(node, bob)
    got, since = [], held
    while True:
        page = await bob.d.call(uris.SYNC_GET_UPDATES, since_update_id=since, limit=1000)
        assert len(page["updates"]) <= 100
        got += page["updates"]
        since = page["last_update_id"]
        if not page["has_more"]:
            break
    assert ids(got) == list(range(held + 1, held + 501))
    assert [u["data"]["text"] for u in got] == [f"message {i}" for i in range(500)]
    history = await bob.d.call(uris.MESSAGE_HISTORY, chat_id=cid, before_seq=301, limit=1000)
    assert [m["seq"] for m in history["messages"]] == list(range(300, 200, -1))
    await close_all(alice, bob)


@pytest_twisted.ensureDeferred
async def test_presence_follows_sessions_and_reaches_chat_partners(node):
    alice = await new_user(node)
    bob = await new_user(node)
    await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
    second = await add_device(node, bob)
    state = await alice.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id])
    assert state["presence"][bob.user_id]["online"] is True
    await bob.d.close()  # one device left: still online
    state = await alice.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id])
    assert state["presence"][bob.user_id]["online"] is True
    await second.close()
    await wait_for(lambda: any(e["data"]["online"] is False for e in alice.of_type("presence")), what="offline")
    offline = [e for e in alice.of_type("presence") if e["data"]["online"] is False][-1]
    assert offline["update_id"] is None and offline["data"]["user_id"] == bob.user_id
    assert isinstance(offline["data"]["last_seen"], int)
    await close_all(alice)


@pytest_twisted.ensureDeferred
async def test_strangers_get_not_found_and_blocked_users_cannot_write(node):
    alice, bob, carol = [await new_user(node) for _ in range(3)]
    cid = (await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id))["chat_id"]
    sent = await alice.d.call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id="s", text="secret")
    cases: list[tuple[str, dict[str, Any]]] = [
        (uris.CHAT_GET, {}),
        (uris.MESSAGE_HISTORY, {}),
        (uris.MESSAGE_SEND, {"client_msg_id": "z", "text": "hi"}),
        (uris.MESSAGE_MARK_READ, {"up_to_seq": 1}),
        (uris.MESSAGE_REACT, {"message_id": sent["message_id"], "emoji": "x"}),
        (uris.CHAT_TYPING, {}),
    ]
    for uri, kw in cases:
        err = await call_error(carol.d.call(uri, chat_id=cid, **kw))
        assert err.error == "messenger.error.not_found", uri
    await bob.d.call(uris.USER_BLOCK, user_id=alice.user_id)
    err = await call_error(alice.d.call(uris.MESSAGE_SEND, chat_id=cid, client_msg_id="t", text="hello?"))
    assert err.error == "messenger.error.forbidden"
    err = await call_error(alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id))
    assert err.error == "messenger.error.forbidden"
    # bad input: clear errors, nothing stored
    bad: list[tuple[dict[str, Any], str]] = [
        ({"client_msg_id": "u", "text": "x" * 4097}, "invalid_argument"),
        ({"client_msg_id": "u", "text": "   "}, "invalid_argument"),
        ({"client_msg_id": "", "text": "x"}, "invalid_argument"),
        ({"client_msg_id": "u", "text": "x", "reply_to": 99}, "invalid_argument"),
    ]
    for kw, code in bad:
        err = await call_error(bob.d.call(uris.MESSAGE_SEND, chat_id=cid, **kw))
        assert err.error == f"messenger.error.{code}", kw
    for seq in (0, 2, -1, "1"):
        err = await call_error(bob.d.call(uris.MESSAGE_MARK_READ, chat_id=cid, up_to_seq=seq))
        assert err.error == "messenger.error.invalid_argument"
    err = await call_error(bob.d.call(uris.CHAT_LIST, cursor="garbage!"))
    assert err.error == "messenger.error.invalid_argument"
    history = await bob.d.call(uris.MESSAGE_HISTORY, chat_id=cid, limit=10**9)
    assert [m["seq"] for m in history["messages"]] == [1]
    try:
        await close_all(alice, bob, carol)
    except ApplicationError:
        pass


@pytest_twisted.ensureDeferred
async def test_last_seen_survives_a_node_restart(tmp_path):
    """``last_seen`` is stored (``presence.sqlite3``): a restarted delivery component still knows it."""
    node = Node(tmp_path / "first", profile="embedded").start()
    try:
        alice, bob = await new_user(node), await new_user(node)
        await alice.d.call(uris.CHAT_CREATE_DIRECT, user_id=bob.user_id)
        await bob.d.close()
        await wait_for(lambda: any(e["data"]["online"] is False for e in alice.of_type("presence")), what="offline")
        last_seen = alice.of_type("presence")[-1]["data"]["last_seen"]
        assert isinstance(last_seen, int)
        await close_all(alice)
    finally:
        node.stop()
    # a new process on the same data folder
    node = Node(tmp_path / "second", profile="embedded", extra={"data_dir": str(node.data_dir)}).start()
    try:
        again = User(alice.user_id, alice.username)
        await add_device(node, again)
        state = await again.d.call(uris.PRESENCE_GET, user_ids=[bob.user_id, alice.user_id])
        assert state["presence"][bob.user_id] == {"online": False, "last_seen": last_seen}
        mine = state["presence"][alice.user_id]  # online again; her leave before the restart is remembered
        assert mine["online"] is True and isinstance(mine["last_seen"], int) and mine["last_seen"] >= last_seen
        await close_all(again)
    finally:
        node.stop()
