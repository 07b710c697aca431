"""Login and registration rate limits, and oversize payloads, on a real node."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from realms import uris
from tests.integration.helpers import PASSWORD, new_username, user_session
from tests.support.client import call_error, connect
from tests.support.node import Node

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory):
    limits = {
        "login_per_ip": [8, 60000],
        "login_per_username": [3, 60000],
        "register_per_ip": [4, 60000],
        "refresh_per_ip": [100, 60000],
    }
    node = Node(tmp_path_factory.mktemp("strict"), extra={"limits": limits}).start()
    yield node
    node.stop()


@pytest_twisted.ensureDeferred
async def test_login_attempts_are_limited_per_username_then_per_address(strict_node):
    guest = await connect(strict_node.url)
    name = new_username()
    await guest.call(uris.AUTH_REGISTER, username=name, password=PASSWORD)
    for _ in range(3):
        err = await call_error(guest.call(uris.AUTH_LOGIN, username=name, password="wrong password"))
        assert err.error == "messenger.error.unauthenticated"
    err = await call_error(guest.call(uris.AUTH_LOGIN, username=name, password=PASSWORD))
    assert err.error == "messenger.error.rate_limited"
    assert 0 < err.kwargs["retry_after_ms"] <= 60000
    # an unknown user is limited the same way (no hint that it does not exist)
    ghost = new_username("ghost")
    for _ in range(3):
        await call_error(guest.call(uris.AUTH_LOGIN, username=ghost, password=PASSWORD))
    err = await call_error(guest.call(uris.AUTH_LOGIN, username=ghost, password=PASSWORD))
    assert err.error == "messenger.error.rate_limited"
    # by now the address has used its 8 attempts too
    err = await call_error(guest.call(uris.AUTH_LOGIN, username=new_username(), password=PASSWORD))
    assert err.error == "messenger.error.rate_limited"
    await guest.close()


@pytest.fixture(scope="module")
def upload_limited_node(tmp_path_factory):
    limits = {"uploads_per_window": 3, "upload_window_ms": 60000}
    node = Node(tmp_path_factory.mktemp("uploads"), extra={"limits": limits}).start()
    yield node
    node.stop()


@pytest_twisted.ensureDeferred
async def test_uploads_are_limited_per_user(upload_limited_node):
    alice, _ = await user_session(upload_limited_node)
    bob, _ = await user_session(upload_limited_node)
    for _ in range(3):
        await alice.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/png", size=100)
    err = await call_error(alice.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/png", size=100))
    assert err.error == "messenger.error.rate_limited"
    assert 0 < err.kwargs["retry_after_ms"] <= 60000
    assert (await bob.call(uris.MEDIA_CREATE_UPLOAD, content_type="image/png", size=100))["media_id"]  # per user
    await alice.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_registrations_are_limited_per_address(strict_node):
    guest = await connect(strict_node.url)
    outcomes = []
    for _ in range(5):
        try:
            await guest.call(uris.AUTH_REGISTER, username=new_username(), password=PASSWORD)
            outcomes.append("ok")
        except Exception as e:
            outcomes.append(getattr(e, "error", repr(e)))
    # the first test module registered once from this address
    assert outcomes.count("messenger.error.rate_limited") >= 1
    assert outcomes[-1] == "messenger.error.rate_limited"
    await guest.close()


@pytest_twisted.ensureDeferred
async def test_large_arguments_within_the_frame_limit_get_invalid_argument(embedded_node):
    user, _ = await user_session(embedded_node)
    err = await call_error(user.call(uris.USER_UPDATE_PROFILE, bio="x" * 60_000))
    assert err.error == "messenger.error.invalid_argument"
    err = await call_error(user.call(uris.USER_SEARCH, query="q" * 10_000))
    assert err.error == "messenger.error.invalid_argument"
    assert (await user.call(uris.USER_ME))["bio"] == ""
    await user.close()


@pytest_twisted.ensureDeferred
async def test_a_message_over_64_kib_closes_only_that_connection(embedded_node):
    user, _ = await user_session(embedded_node)
    other, _ = await user_session(embedded_node)
    d = user.call(uris.USER_UPDATE_PROFILE, bio="x" * 70_000)
    d.addErrback(lambda f: None)
    await user.disconnected.addTimeout(5, reactor)
    assert (await other.call(uris.USER_ME))["user_id"]
    await other.close()
