"""The whole account life cycle through a real Crossbar node, in both profiles."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.integration.helpers import PASSWORD, login, new_username, register
from tests.support.client import JoinFailed, call_error, connect

pytestmark = pytest.mark.node


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
@pytest_twisted.ensureDeferred
async def test_register_login_join_profile_refresh_reuse_logout(node, serializer):
    name = new_username("alice")
    guest = await connect(node.url, serializer=serializer)
    reg = await guest.call("messenger.auth.register", username=name.upper(), password=PASSWORD, display_name="Alice")
    user_id = reg["user_id"]
    assert set(reg) == {"user_id"}

    tokens = await guest.call("messenger.auth.login", username=name, password=PASSWORD, device_name="laptop")
    assert tokens["user_id"] == user_id
    assert tokens["expires_in"] == 900
    assert set(tokens) == {"user_id", "device_id", "access_token", "refresh_token", "expires_in"}
    await guest.close()

    user = await connect(node.url, ticket=tokens["access_token"], serializer=serializer)
    assert user.details.authid == user_id
    assert user.details.authrole == "user"

    me = await user.call("messenger.user.me")
    assert me == {"user_id": user_id, "username": name, "display_name": "Alice", "bio": "", "avatar_media_id": None}
    updated = await user.call("messenger.user.update_profile", bio="hello there")
    assert updated["bio"] == "hello there" and updated["display_name"] == "Alice"

    # refresh rotates: the new pair works, the old refresh token is spent
    guest = await connect(node.url, serializer=serializer)
    fresh = await guest.call("messenger.auth.refresh", refresh_token=tokens["refresh_token"])
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert fresh["device_id"] == tokens["device_id"] and fresh["user_id"] == user_id
    second = await connect(node.url, ticket=fresh["access_token"], serializer=serializer)
    assert (await second.call("messenger.user.me"))["user_id"] == user_id

    # presenting the spent token again: reuse detected, the whole device family is revoked
    err = await call_error(guest.call("messenger.auth.refresh", refresh_token=tokens["refresh_token"]))
    assert err.error == "messenger.error.unauthenticated"
    err = await call_error(guest.call("messenger.auth.refresh", refresh_token=fresh["refresh_token"]))
    assert err.error == "messenger.error.unauthenticated"
    # and the device's open sessions are closed
    await user.left.addTimeout(5, reactor)
    await second.left.addTimeout(5, reactor)
    with pytest.raises(JoinFailed):
        await connect(node.url, ticket=fresh["access_token"], serializer=serializer)
    await guest.close()


@pytest_twisted.ensureDeferred
async def test_logout_revokes_the_device_and_closes_its_sessions_only(node):
    reg = await register(node)
    a = await login(node, reg["username"], device_name="phone")
    b = await login(node, reg["username"], device_name="laptop")
    phone1 = await connect(node.url, ticket=a["access_token"])
    phone2 = await connect(node.url, ticket=a["access_token"])
    laptop = await connect(node.url, ticket=b["access_token"])

    assert await phone1.call("messenger.auth.logout") == {}
    await phone1.left.addTimeout(5, reactor)
    await phone2.left.addTimeout(5, reactor)
    assert phone2.close_reason == "messenger.close.signed_out"
    # the other device is untouched
    await task.deferLater(reactor, 0.2, lambda: None)
    assert (await laptop.call("messenger.user.me"))["user_id"] == reg["user_id"]
    # the revoked access token and refresh token no longer work
    with pytest.raises(JoinFailed):
        await connect(node.url, ticket=a["access_token"])
    guest = await connect(node.url)
    err = await call_error(guest.call("messenger.auth.refresh", refresh_token=a["refresh_token"]))
    assert err.error == "messenger.error.unauthenticated"
    await guest.close()
    await laptop.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_get_the_same_answer(node):
    reg = await register(node)
    guest = await connect(node.url)
    wrong = await call_error(guest.call("messenger.auth.login", username=reg["username"], password="not the password"))
    unknown = await call_error(guest.call("messenger.auth.login", username=new_username("ghost"), password=PASSWORD))
    assert wrong.error == unknown.error == "messenger.error.unauthenticated"
    assert wrong.args == unknown.args and wrong.kwargs == unknown.kwargs
    await guest.close()


@pytest_twisted.ensureDeferred
async def test_username_is_unique_case_insensitively(node):
    name = new_username("bob")
    await register(node, name)
    guest = await connect(node.url)
    err = await call_error(guest.call("messenger.auth.register", username=name.upper(), password=PASSWORD))
    assert err.error == "messenger.error.conflict"
    await guest.close()


@pytest_twisted.ensureDeferred
async def test_a_rejected_registration_writes_nothing(node):
    name = new_username("carol")
    guest = await connect(node.url)
    for bad in ({"display_name": "x" * 65}, {"display_name": "two\nlines"}, {"display_name": 7}):
        err = await call_error(guest.call("messenger.auth.register", username=name, password=PASSWORD, **bad))
        assert err.error == "messenger.error.invalid_argument"
    err = await call_error(guest.call("messenger.auth.login", username=name, password=PASSWORD))
    assert err.error == "messenger.error.unauthenticated"
    assert (await guest.call("messenger.auth.register", username=name, password=PASSWORD))["user_id"]
    await guest.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_take_similar_time(embedded_node):
    import time

    reg = await register(embedded_node)
    guest = await connect(embedded_node.url)

    async def timed(username: str) -> float:
        started = time.perf_counter()
        await call_error(guest.call("messenger.auth.login", username=username, password="not the password"))
        return time.perf_counter() - started

    wrong, unknown = [], []
    for _ in range(7):
        wrong.append(await timed(reg["username"]))
        unknown.append(await timed(new_username("ghost")))
    med_wrong, med_unknown = sorted(wrong)[3], sorted(unknown)[3]
    # both pay one argon2id verification; without the dummy hash an unknown user answers ~10x faster
    assert 0.5 < med_wrong / med_unknown < 2.0, (med_wrong, med_unknown)
    await guest.close()
