"""Tokens that must never produce a session, tried against a real node.

The embedded node keeps its (encrypted) signing keys in its data folder; the tests read
them the way an attacker who stole the key file *and* the key secret could, to forge
tokens that are correctly signed but wrong in one claim, and so prove that every claim
is checked, not only the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.auth.adapters.sqlite import SqliteAccountStore
from tests.integration.helpers import login, register
from tests.support.client import JoinFailed, connect

pytestmark = pytest.mark.node


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


async def signing_key(node) -> tuple[str, Ed25519PrivateKey, dict[str, Any]]:
    store = SqliteAccountStore(node.data_dir / "accounts.sqlite3")
    await store.start()
    try:
        keys = await store.list_signing_keys(0)
    finally:
        await store.stop()
    secret = (node.data_dir / "key_secret").read_text().strip().encode()
    private = serialization.load_pem_private_key(keys[0].private_pem.encode(), password=secret)
    assert isinstance(private, Ed25519PrivateKey)
    return keys[0].kid, private, keys[0].public_jwk


async def valid_tokens(node) -> dict[str, Any]:
    reg = await register(node)
    return await login(node, reg["username"])


async def assert_rejected(node, token: str) -> None:
    with pytest.raises(JoinFailed) as info:
        await connect(node.url, ticket=token)
    assert info.value.reason.startswith(("messenger.error.", "wamp.error.")), info.value.reason


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(unb64(token.split(".")[1]))


@pytest_twisted.ensureDeferred
async def test_a_valid_token_joins_as_its_user_whatever_authid_the_client_claims(embedded_node):
    tokens = await valid_tokens(embedded_node)
    client = await connect(embedded_node.url, ticket=tokens["access_token"], authid="somebody_else")
    assert client.details.authid == tokens["user_id"]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_tampered_payload_is_rejected(embedded_node):
    tokens = await valid_tokens(embedded_node)
    header, _payload, sig = tokens["access_token"].split(".")
    claims = claims_of(tokens["access_token"])
    other = await register(embedded_node)
    claims["sub"] = other["user_id"]
    await assert_rejected(embedded_node, ".".join([header, b64(json.dumps(claims).encode()), sig]))


@pytest_twisted.ensureDeferred
async def test_alg_none_is_rejected(embedded_node):
    tokens = await valid_tokens(embedded_node)
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    payload = tokens["access_token"].split(".")[1]
    await assert_rejected(embedded_node, f"{header}.{payload}.")
    await assert_rejected(embedded_node, f"{header}.{payload}")


@pytest_twisted.ensureDeferred
async def test_hs256_signed_with_the_public_key_is_rejected(embedded_node):
    tokens = await valid_tokens(embedded_node)
    kid, _, jwk = await signing_key(embedded_node)
    payload = tokens["access_token"].split(".")[1]
    for key in (unb64(jwk["x"]), json.dumps(jwk).encode(), jwk["x"].encode()):
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{header}.{payload}".encode()
        sig = b64(hmac.new(key, signing_input, hashlib.sha256).digest())
        await assert_rejected(embedded_node, f"{header}.{payload}.{sig}")


@pytest_twisted.ensureDeferred
async def test_token_signed_by_a_foreign_key_with_a_known_kid_is_rejected(embedded_node):
    tokens = await valid_tokens(embedded_node)
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    forged = jwt.encode(
        claims_of(tokens["access_token"]), Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid}
    )
    await assert_rejected(embedded_node, forged)


@pytest.mark.parametrize(
    "change",
    [
        {"aud": "someone-else"},
        {"iss": "evil"},
        {"exp": int(time.time()) - 120, "iat": int(time.time()) - 1000, "nbf": int(time.time()) - 1000},
        {"iat": int(time.time()) + 3600, "nbf": int(time.time()) + 3600, "exp": int(time.time()) + 7200},
        {"sub": ""},
        {"did": None},
        {"jti": None},
    ],
    ids=["wrong-audience", "wrong-issuer", "expired", "not-yet-valid", "empty-subject", "no-device", "no-jti"],
)
@pytest_twisted.ensureDeferred
async def test_correctly_signed_token_with_a_bad_claim_is_rejected(embedded_node, change):
    tokens = await valid_tokens(embedded_node)
    kid, private, _ = await signing_key(embedded_node)
    claims = claims_of(tokens["access_token"])
    # control: re-signing the untouched claims gives a token that works
    good = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})
    (await connect(embedded_node.url, ticket=good)).leave()
    for k, v in change.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    await assert_rejected(embedded_node, jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid}))


@pytest.mark.parametrize("ticket", ["", "x", "a.b.c", "a" * 5000, "eyJhbGciOiJFZERTQSJ9.e30."], ids=repr)
@pytest_twisted.ensureDeferred
async def test_garbage_tickets_are_rejected(embedded_node, ticket):
    await assert_rejected(embedded_node, ticket)


@pytest_twisted.ensureDeferred
async def test_token_of_a_revoked_device_is_rejected(embedded_node):
    tokens = await valid_tokens(embedded_node)
    client = await connect(embedded_node.url, ticket=tokens["access_token"])
    await client.call("messenger.auth.logout")
    await assert_rejected(embedded_node, tokens["access_token"])
