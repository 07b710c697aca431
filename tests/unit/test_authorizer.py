"""The user role's authorization rules, and what may be cached."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from realms import uris
from router.authorizer import authorize_user

UID = "a" * 32


def test_known_procedures_are_allowed_disclosed_and_cacheable():
    for uri in uris.USER_PROCEDURES:
        assert authorize_user(UID, uri, "call", {}) == {"allow": True, "disclose": True, "cache": True}


def test_internal_and_unknown_procedures_are_denied_without_caching():
    for uri in (uris.INTERNAL_AUTHENTICATE, uris.INTERNAL_AUTHORIZE, "wamp.session.list", "x.y"):
        assert authorize_user(UID, uri, "call", {}) == {"allow": False, "cache": False}


def test_own_topic_only_with_exact_match_and_never_cached():
    assert authorize_user(UID, uris.user_topic(UID), "subscribe", {}) == {"allow": True, "cache": False}
    assert authorize_user(UID, uris.user_topic(UID), "subscribe", {"match": "exact"})["allow"]
    assert not authorize_user(UID, uris.user_topic(UID), "subscribe", {"match": "prefix"})["allow"]
    assert not authorize_user(UID, uris.user_topic("b" * 32), "subscribe", {})["allow"]
    assert not authorize_user(None, uris.user_topic("None"), "subscribe", {})["allow"]


@given(authid=st.text(max_size=40), uri=st.text(max_size=80), action=st.sampled_from(["subscribe", "call"]))
def test_a_cached_answer_is_always_the_same_for_every_user(authid, uri, action):
    answer = authorize_user(authid, uri, action, {})
    if answer.get("cache"):
        assert authorize_user("someone-else", uri, action, {}) == answer


def test_users_never_publish_or_register():
    for action in ("publish", "register"):
        assert not authorize_user(UID, uris.user_topic(UID), action, {})["allow"]
