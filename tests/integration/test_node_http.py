"""What the node serves over HTTP: JWKS (also over WAMP) and Prometheus metrics per process."""

from __future__ import annotations

import json
import urllib.request

import pytest
import pytest_twisted

from realms import uris
from tests.integration.helpers import user_session
from tests.support.client import call_error, connect

pytestmark = pytest.mark.node


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers.get("content-type", ""), r.read().decode()


@pytest_twisted.ensureDeferred
async def test_jwks_is_published_over_http_and_wamp_and_holds_only_public_keys(node):
    user, _ = await user_session(node)
    status, ctype, body = get(f"http://127.0.0.1:{node.ws_port}/.well-known/jwks.json")
    assert status == 200 and ctype.startswith("application/json")
    http_jwks = json.loads(body)
    wamp_jwks = await user.call(uris.AUTH_JWKS)
    assert http_jwks == wamp_jwks
    assert http_jwks["keys"]
    for key in http_jwks["keys"]:
        assert key["kty"] == "OKP" and key["alg"] == "EdDSA" and key["use"] == "sig" and key["kid"]
        assert "d" not in key
    await user.close()


@pytest_twisted.ensureDeferred
async def test_router_and_component_processes_expose_prometheus_metrics(node):
    user, _ = await user_session(node)
    await user.call(uris.USER_ME)
    await call_error(user.call(uris.USER_GET, user_ids="nope"))
    await user.close()

    _, _, router = get(f"http://127.0.0.1:{node.metrics_port}/metrics")
    assert 'messenger_sessions_joined_total{authrole="user"}' in router
    assert "messenger_sessions_active" in router

    _, _, auth = get(f"http://127.0.0.1:{node.auth_http_port}/metrics")
    assert 'messenger_calls_total{procedure="messenger.user.me"}' in auth
    assert 'messenger_call_errors_total{code="invalid_argument",procedure="messenger.user.get"}' in auth
    assert 'messenger_call_seconds_bucket{le="0.005",procedure="messenger.user.me"}' in auth
    assert 'messenger_auth_decisions_total{result="accepted"}' in auth


@pytest_twisted.ensureDeferred
async def test_node_health_check_names_the_websocket_path(node):
    status, _, body = get(f"http://127.0.0.1:{node.ws_port}/healthz")
    assert status == 200 and json.loads(body)["websocket"] == "/ws"
    guest = await connect(node.url)
    await guest.close()
