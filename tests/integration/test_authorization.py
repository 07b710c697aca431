"""Who may do what: guest vs user vs another user, every procedure and topic."""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions, SubscribeOptions

from realms import uris
from tests.integration.helpers import user_session
from tests.support.client import call_error, connect

pytestmark = pytest.mark.node

NOT_AUTHORIZED = "wamp.error.not_authorized"
# every backend-only procedure named in realms/uris.py, and the router's meta API
INTERNAL = [
    *sorted(v for k, v in vars(uris).items() if k.startswith("INTERNAL_")),
    "wamp.session.list",
    "wamp.session.kill_by_authid",
    "wamp.registration.list",
]


async def call_outcome(session, uri: str) -> str:
    """'ok', or the error URI of calling ``uri`` with no arguments."""
    try:
        await session.call(uri)
        return "ok"
    except ApplicationError as e:
        return e.error


@pytest_twisted.ensureDeferred
async def test_guest_may_call_only_the_three_auth_procedures(embedded_node):
    guest = await connect(embedded_node.url)
    for uri in sorted(uris.USER_PROCEDURES | set(INTERNAL) | {"messenger.no.such.thing"}):
        outcome = await call_outcome(guest, uri)
        if uri in uris.GUEST_PROCEDURES:
            assert outcome == "messenger.error.invalid_argument", uri  # allowed: missing arguments
        else:
            assert outcome == NOT_AUTHORIZED, uri
    with pytest.raises(ApplicationError) as info:
        await guest.subscribe(lambda *a, **k: None, uris.user_topic("0" * 32))
    assert info.value.error == NOT_AUTHORIZED
    with pytest.raises(ApplicationError) as info:
        await guest.publish("messenger.user.x", options=PublishOptions(acknowledge=True))
    assert info.value.error == NOT_AUTHORIZED
    await guest.close()


@pytest_twisted.ensureDeferred
async def test_user_may_call_every_client_procedure_but_no_internal_one(embedded_node):
    user, _ = await user_session(embedded_node)
    for uri in sorted(uris.USER_PROCEDURES - {uris.AUTH_LOGOUT}):
        assert await call_outcome(user, uri) != NOT_AUTHORIZED, uri
    for uri in [*INTERNAL, "messenger.no.such.thing"]:
        assert await call_outcome(user, uri) == NOT_AUTHORIZED, uri
    with pytest.raises(ApplicationError) as info:
        await user.register(lambda: None, "messenger.user.fake_me")
    assert info.value.error == NOT_AUTHORIZED
    with pytest.raises(ApplicationError):  # crossbar answers an invocation-policy clash before authorizing
        await user.register(lambda: None, uris.USER_ME)
    await user.close()


@pytest_twisted.ensureDeferred
async def test_user_may_subscribe_only_to_its_own_topic(embedded_node):
    alice, a = await user_session(embedded_node)
    bob, b = await user_session(embedded_node)
    # order matters: an allowed subscribe by one user must not be cached for another
    await alice.subscribe(lambda *a, **k: None, uris.user_topic(a["user_id"]))
    for session, topic, options in [
        (bob, uris.user_topic(a["user_id"]), None),
        (bob, "messenger.user.", SubscribeOptions(match="prefix")),
        (bob, "messenger..", SubscribeOptions(match="wildcard")),
        (bob, f"messenger.user.{b['user_id']}", SubscribeOptions(match="prefix")),
        (alice, uris.user_topic(b["user_id"]), None),
        (alice, uris.EVENT_DEVICE_REVOKED, None),
        (alice, "wamp.session.on_join", None),
    ]:
        with pytest.raises(ApplicationError) as info:
            await session.subscribe(lambda *a, **k: None, topic, options=options)
        assert info.value.error == NOT_AUTHORIZED, topic
    await bob.subscribe(lambda *a, **k: None, uris.user_topic(b["user_id"]))
    # nobody publishes into a user topic, not even its owner
    for session, uid in ((alice, a["user_id"]), (alice, b["user_id"])):
        with pytest.raises(ApplicationError) as info:
            await session.publish(uris.user_topic(uid), type="message.new", options=PublishOptions(acknowledge=True))
        assert info.value.error == NOT_AUTHORIZED
    await alice.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_user_sees_other_users_only_through_the_profile_procedures(embedded_node):
    alice, _a = await user_session(embedded_node)
    bob, b = await user_session(embedded_node)
    # bob's profile changes are bob's own; alice cannot change them
    await bob.call(uris.USER_UPDATE_PROFILE, display_name="Bob B")
    err = await call_error(alice.call(uris.USER_UPDATE_PROFILE, user_id=b["user_id"], display_name="hacked"))
    assert err.error == "messenger.error.invalid_argument"
    got = await alice.call(uris.USER_GET, user_ids=[b["user_id"]])
    assert got["users"][0]["display_name"] == "Bob B"
    assert "password_hash" not in got["users"][0]
    await alice.close()
    await bob.close()
