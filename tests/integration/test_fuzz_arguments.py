"""Hypothesis-generated arguments for every procedure, against a real node.

Whatever arrives, the answer is a result or a clear ``messenger.error.*`` (never an
internal error, never a crash), and the component keeps serving afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor

from realms import uris
from tests.integration.helpers import user_session
from tests.support.client import connect

pytestmark = [pytest.mark.node, pytest.mark.slow]

CLIENT_ERRORS = {
    "messenger.error.invalid_argument",
    "messenger.error.unauthenticated",
    "messenger.error.not_found",
    "messenger.error.conflict",
    "messenger.error.forbidden",
    "messenger.error.rate_limited",
    "messenger.error.payload_too_large",
}

ARG_NAMES = [
    "username",
    "password",
    "display_name",
    "device_name",
    "refresh_token",
    "user_id",
    "user_ids",
    "query",
    "limit",
    "bio",
    "avatar_media_id",
    "cursor",
    "content_type",
    "size",
    "filename",
    "media_id",
    "platform",
    "token",
    "until",
    "details",
    "_wamp_details",
    "x",
    "f",
    "fun",
]


# Autobahn's JSON serializer sends bytes as "\x00" + base64: a text starting with NUL is a
# protocol error that (rightly) closes the sender's connection, so generated texts avoid it.
def _text(**kw: Any) -> st.SearchStrategy[str]:
    return st.text(**kw).filter(lambda s: not s.startswith("\x00"))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _text(max_size=300),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=0, max_size=40),
    st.sampled_from(["0" * 32, "f" * 32, "a" * 31, "", "admin", "%", "_", "a\x00", "é" * 10]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# autobahn's client takes "procedure" and "options" for itself (the raw-message test sends
# them to the server)
kwargs_strategy = st.dictionaries(
    st.sampled_from(ARG_NAMES) | _text(min_size=1, max_size=10).filter(lambda k: k not in ("options", "procedure")),
    values,
    max_size=5,
)

PROCEDURES = sorted(uris.USER_PROCEDURES)


def draw(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """Examples drawn by Hypothesis. Tests run inside the reactor here (pytest-twisted), so
    Hypothesis generates first and the async test sends them; shrinking is given up, and the
    failing arguments are in the assertion message instead."""
    out: list[Any] = []

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out


@pytest_twisted.async_yield_fixture(scope="module")
async def sessions(embedded_node):
    user, _ = await user_session(embedded_node)
    guest = await connect(embedded_node.url)
    yield guest, user
    await user.close()
    await guest.close()


async def outcome(session: Any, uri: str, kwargs: dict[str, Any], positional: list[Any]) -> str:
    try:
        result = await session.call(uri, *positional, **kwargs).addTimeout(10, reactor)
    except ApplicationError as e:
        assert e.error in CLIENT_ERRORS or e.error == "wamp.error.not_authorized", (uri, kwargs, e.error, e.args)
        if e.error.startswith("messenger.error."):
            assert e.args and isinstance(e.args[0], str) and e.args[0], "errors carry a readable message"
        return e.error
    assert isinstance(result, dict), (uri, result)
    return "ok"


@pytest.mark.parametrize("uri", PROCEDURES)
@pytest_twisted.ensureDeferred
async def test_any_arguments_get_a_result_or_a_clear_error(sessions, uri):
    guest, user = sessions
    for kwargs, positional in draw(st.tuples(kwargs_strategy, st.lists(scalars, max_size=2)), 40):
        if uri == uris.AUTH_LOGOUT and not (set(kwargs) - {"_wamp_details"}) and not positional:
            continue  # a valid logout would end the shared session (a client's _wamp_details is overridden)
        await outcome(user, uri, kwargs, positional)
        if uri in uris.GUEST_PROCEDURES:
            await outcome(guest, uri, kwargs, positional)
    # still serving
    assert (await user.call(uris.USER_ME).addTimeout(10, reactor))["user_id"]


@pytest.mark.parametrize("name", ["self", "f", "fun", "procedure", "options"])
@pytest_twisted.ensureDeferred
async def test_keyword_named_like_autobahns_own_parameters_is_rejected_not_fatal(sessions, name):
    """Autobahn calls endpoints as as_future(fun, *args, **kwargs): a kwarg named self/fun/f used to
    raise inside its message loop and drop the component's connection. Sent raw, since autobahn's
    own client cannot even express some of these names."""
    from autobahn.wamp import message
    from autobahn.wamp.request import CallRequest
    from autobahn.wamp.types import CallOptions
    from twisted.internet import defer as _defer

    _, user = sessions
    request = user._request_id_gen.next()
    on_reply: _defer.Deferred[Any] = _defer.Deferred()
    user._call_reqs[request] = CallRequest(request, uris.USER_ME, on_reply, CallOptions())
    user._transport.send(message.Call(request, uris.USER_ME, args=[], kwargs={name: 1}))
    with pytest.raises(ApplicationError) as info:
        await on_reply.addTimeout(5, reactor)
    assert info.value.error == "messenger.error.invalid_argument"
    assert (await user.call(uris.USER_ME))["user_id"]
