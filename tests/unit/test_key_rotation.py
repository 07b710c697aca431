"""Signing-key rotation with a controllable clock, on the real SQLite key store."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from common.adapters.memory import MemoryLock
from common.clock import FixedClock
from common.errors import Unauthenticated
from components.auth.adapters.sqlite import SqliteAccountStore
from components.auth.tokens import KeyRing, KeySecretMismatch, TokenPolicy

SECRET = b"test-key-secret"
POLICY = TokenPolicy(access_ttl_s=900, rotation_interval_s=3600, leeway_s=30)


@pytest_twisted.async_yield_fixture
async def store(tmp_path):
    s = SqliteAccountStore(tmp_path / "keys.sqlite3")
    await s.start()
    yield s
    await s.stop()


@pytest_twisted.ensureDeferred
async def test_first_start_creates_a_key_and_publishes_it(store):
    clock = FixedClock()
    ring = KeyRing(store, MemoryLock(clock), clock, SECRET, POLICY)
    assert await ring.ensure_current_key() is True
    assert [k["kid"] for k in ring.jwks()["keys"]] == [ring.current_kid]
    jwk = ring.jwks()["keys"][0]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA" and "d" not in jwk
    assert await ring.ensure_current_key() is False


@pytest_twisted.ensureDeferred
async def test_tokens_of_the_previous_key_stay_valid_until_they_expire(store):
    clock = FixedClock()
    ring = KeyRing(store, MemoryLock(clock), clock, SECRET, POLICY)
    await ring.ensure_current_key()
    first_kid = ring.current_kid
    clock.advance(3590 * 1000)
    old_token, _ = ring.issue("u1", "d1")  # signed just before rotation
    clock.advance(20 * 1000)
    assert await ring.ensure_current_key() is True
    assert ring.current_kid != first_kid
    new_token, _ = ring.issue("u1", "d1")
    assert {k["kid"] for k in ring.jwks()["keys"]} == {first_kid, ring.current_kid}
    assert ring.verify(old_token).user_id == "u1"
    assert ring.verify(new_token).user_id == "u1"
    # once every token the old key signed has expired, the old key is no longer published
    clock.advance((900 + 30 + 1) * 1000)
    await ring.reload()
    assert [k["kid"] for k in ring.jwks()["keys"]] == [ring.current_kid]
    with pytest.raises(Unauthenticated):
        ring.verify(old_token)
    newest, _ = ring.issue("u1", "d1")
    assert ring.verify(newest).device_id == "d1"


@pytest_twisted.ensureDeferred
async def test_expiry_and_not_before_follow_the_clock(store):
    clock = FixedClock()
    ring = KeyRing(store, MemoryLock(clock), clock, SECRET, POLICY)
    await ring.ensure_current_key()
    token, ttl = ring.issue("u1", "d1")
    assert ttl == 900
    clock.advance((900 + 29) * 1000)
    assert ring.verify(token).user_id == "u1"  # within the leeway
    clock.advance(2 * 1000)
    with pytest.raises(Unauthenticated, match="expired"):
        ring.verify(token)
    clock.set(clock.now_ms() - 3 * 3600 * 1000)  # a token from the future
    with pytest.raises(Unauthenticated):
        ring.verify(token)


@pytest_twisted.ensureDeferred
async def test_several_instances_rotate_once_and_learn_each_others_keys(store):
    clock = FixedClock()
    lock = MemoryLock(clock)
    rings = [KeyRing(store, lock, clock, SECRET, POLICY) for _ in range(4)]
    results = await defer.gatherResults([defer.ensureDeferred(r.ensure_current_key()) for r in rings])
    assert sum(results) == 1
    for r in rings:
        await r.reload()
    assert len({r.current_kid for r in rings}) == 1
    clock.advance(3601 * 1000)
    results = await defer.gatherResults([defer.ensureDeferred(r.ensure_current_key()) for r in rings])
    assert sum(results) == 1
    assert len(await store.list_signing_keys(0)) == 2
    # an instance that has not reloaded yet verifies the new key's tokens after a reload on unknown kid
    stale = KeyRing(store, lock, clock, SECRET, POLICY)
    await stale.reload()
    token, _ = rings[0].issue("u", "d")
    assert stale.verify(token).user_id == "u"


@pytest_twisted.ensureDeferred
async def test_private_keys_are_stored_encrypted_and_need_the_secret(store):
    clock = FixedClock()
    ring = KeyRing(store, MemoryLock(clock), clock, SECRET, POLICY)
    await ring.ensure_current_key()
    [key] = await store.list_signing_keys(0)
    assert "ENCRYPTED PRIVATE KEY" in key.private_pem
    wrong = KeyRing(store, MemoryLock(clock), clock, b"another secret", POLICY)
    await wrong.reload()
    with pytest.raises(KeySecretMismatch, match="same key secret"):
        wrong.check_secret()
    with pytest.raises(ValueError):
        wrong.issue("u", "d")


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_instances_sharing_the_redis_lock_rotate_once(store, redis_url):
    import secrets

    from common.adapters.redis import RedisClient, RedisLock

    client = RedisClient.from_url(redis_url)
    await client.start()
    try:
        clock = FixedClock()
        prefix = f"test:{secrets.token_hex(4)}:"
        rings = [KeyRing(store, RedisLock(client, prefix=prefix), clock, SECRET, POLICY) for _ in range(4)]
        for _ in range(2):
            results = await defer.gatherResults([defer.ensureDeferred(r.ensure_current_key()) for r in rings])
            assert sum(results) == 1
            clock.advance(3601 * 1000)
        assert len(await store.list_signing_keys(0)) == 2
    finally:
        await client.stop()
