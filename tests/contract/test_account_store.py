"""Contract of :class:`AccountStore` and :class:`KeyStore`: every test runs against every adapter.

Besides the ports' docstrings, the suite pins down a few behaviours the ports leave open, so the
adapters agree on them too (each marked "adapter contract" below):

- rotation checks, in order: unknown / expired / device revoked -> INVALID; spent -> REUSED;
  so an expired token that was spent is INVALID and revokes nothing;
- ``expires_at_ms`` is exclusive: a token is valid while ``now_ms < expires_at_ms``;
- referencing an unknown user (device, contact, block) raises ``NotFound``;
- ``update_profile`` accepts only the profile fields (else ``InvalidArgument``);
- ``search_accounts`` and ``list_contacts`` order by username in code-point order.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from common.errors import Conflict, InvalidArgument, NotFound
from components.auth.domain import (
    Account,
    Device,
    RefreshToken,
    RotateOutcome,
    SigningKey,
    hash_refresh_token,
    new_id,
    new_refresh_token,
)
from tests.contract.conftest import Backend, Store

NOW = 1_700_000_000_000
DAY = 86_400_000


# -- builders ------------------------------------------------------------------------------------
def make_account(username: str | None = None, display_name: str | None = None, **kw: Any) -> Account:
    username = username or f"u{uuid.uuid4().hex[:12]}"
    return Account(
        user_id=kw.pop("user_id", new_id()),
        username=username,
        display_name=display_name if display_name is not None else username.capitalize(),
        password_hash=kw.pop("password_hash", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"),
        created_at_ms=kw.pop("created_at_ms", NOW),
        **kw,
    )


def make_token(device: Device, now: int = NOW, ttl: int = DAY) -> tuple[str, RefreshToken]:
    raw = new_refresh_token()
    return raw, RefreshToken(
        token_hash=hash_refresh_token(raw),
        device_id=device.device_id,
        user_id=device.user_id,
        created_at_ms=now,
        expires_at_ms=now + ttl,
    )


def make_key(kid: str, created_at_ms: int) -> SigningKey:
    return SigningKey(
        kid=kid,
        algorithm="EdDSA",
        private_pem=f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{kid}\n-----END ENCRYPTED PRIVATE KEY-----\n",
        public_jwk={"kty": "OKP", "crv": "Ed25519", "x": f"x-{kid}", "kid": kid, "key_ops": ["verify"]},
        created_at_ms=created_at_ms,
    )


async def new_account(store: Store, username: str | None = None, display_name: str | None = None) -> Account:
    account = make_account(username, display_name)
    await store.create_account(account)
    return account


async def new_device(store: Store, user: Account, now: int = NOW, ttl: int = DAY) -> tuple[Device, RefreshToken]:
    device = Device(device_id=new_id(), user_id=user.user_id, name="phone", created_at_ms=now)
    _, token = make_token(device, now, ttl)
    await store.create_device(device, token)
    return device, token


# -- accounts ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_create_and_get_account(store: Store) -> None:
    account = make_account("alice", "Alice A.", bio="hi", avatar_media_id="m_1", updated_at_ms=NOW + 1)
    await store.create_account(account)
    assert await store.get_account(account.user_id) == account
    assert await store.get_account_by_username("alice") == account
    plain = await new_account(store, "bob")
    assert await store.get_account(plain.user_id) == plain
    assert plain.bio == "" and plain.avatar_media_id is None


@pytest_twisted.ensureDeferred
async def test_unknown_account_is_none(store: Store) -> None:
    await new_account(store, "alice")
    assert await store.get_account(new_id()) is None
    assert await store.get_account_by_username("nobody") is None
    assert await store.get_account_by_username("alic") is None


@pytest_twisted.ensureDeferred
async def test_duplicate_username_conflicts(store: Store) -> None:
    first = await new_account(store, "alice")
    with pytest.raises(Conflict):
        await store.create_account(make_account("alice", "Another Alice"))
    assert await store.get_account_by_username("alice") == first


@pytest_twisted.ensureDeferred
async def test_username_is_case_insensitive(store: Store) -> None:
    """Usernames arrive lower-case; should one slip through in another case, it is still the same name."""
    first = await new_account(store, "carol")
    with pytest.raises(Conflict):
        await store.create_account(make_account("CaRoL"))
    assert await store.get_account_by_username("carol") == first


@pytest_twisted.ensureDeferred
async def test_duplicate_user_id_conflicts(store: Store) -> None:
    first = await new_account(store, "alice")
    with pytest.raises(Conflict):
        await store.create_account(make_account("bob", user_id=first.user_id))
    assert await store.get_account_by_username("bob") is None


@pytest_twisted.ensureDeferred
async def test_get_accounts_keeps_order_and_drops_unknown(store: Store) -> None:
    a, b, c = [await new_account(store, n) for n in ("anna", "bert", "cleo")]
    unknown = new_id()
    got = await store.get_accounts([c.user_id, unknown, a.user_id, b.user_id])
    assert got == [c, a, b]
    assert await store.get_accounts([]) == []
    assert await store.get_accounts([unknown]) == []


@pytest_twisted.ensureDeferred
async def test_update_profile_sets_only_given_fields(store: Store) -> None:
    account = await new_account(store, "alice", "Alice")
    updated = await store.update_profile(account.user_id, {"bio": "likes tea"}, NOW + 5)
    assert updated == replace(account, bio="likes tea", updated_at_ms=NOW + 5)
    updated = await store.update_profile(
        account.user_id, {"display_name": "Alice Z", "avatar_media_id": "media-9"}, NOW + 6
    )
    expected = replace(
        account, bio="likes tea", display_name="Alice Z", avatar_media_id="media-9", updated_at_ms=NOW + 6
    )
    assert updated == expected
    assert await store.get_account(account.user_id) == expected
    cleared = await store.update_profile(account.user_id, {"avatar_media_id": None, "bio": ""}, NOW + 7)
    assert cleared == replace(expected, avatar_media_id=None, bio="", updated_at_ms=NOW + 7)
    assert await store.get_account(account.user_id) == cleared


@pytest_twisted.ensureDeferred
async def test_update_profile_of_unknown_user_is_none(store: Store) -> None:
    assert await store.update_profile(new_id(), {"bio": "x"}, NOW) is None


@pytest_twisted.ensureDeferred
async def test_update_profile_rejects_other_fields(store: Store) -> None:
    """Adapter contract: only display_name, bio and avatar_media_id can change."""
    account = await new_account(store, "alice")
    with pytest.raises(InvalidArgument):
        await store.update_profile(account.user_id, {"username": "mallory"}, NOW + 1)
    assert await store.get_account(account.user_id) == account


@pytest_twisted.ensureDeferred
async def test_update_display_name_is_searchable(store: Store) -> None:
    account = await new_account(store, "alice", "Alice")
    await store.update_profile(account.user_id, {"display_name": "Zelda"}, NOW + 1)
    assert [a.username for a in await store.search_accounts("zel", 10)] == ["alice"]
    assert await store.search_accounts("alice a", 10) == []


# -- search -------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_search_matches_username_or_display_name_prefix(store: Store) -> None:
    for username, display in [
        ("bob", "Robert"),
        ("bobby", "Bobby Tables"),
        ("zed", "Bob Marley"),
        ("rob", "Someone Else"),
        ("abob", "Not Bob"),
    ]:
        await new_account(store, username, display)
    assert [a.username for a in await store.search_accounts("bob", 10)] == ["bob", "bobby", "zed"]
    assert [a.username for a in await store.search_accounts("bob m", 10)] == ["zed"]
    assert [a.username for a in await store.search_accounts("rob", 10)] == ["bob", "rob"]
    assert await store.search_accounts("nobody", 10) == []


@pytest_twisted.ensureDeferred
async def test_search_is_ordered_by_username_and_limited(store: Store) -> None:
    names = ["sam_b", "sam", "samz", "sam9", "sama", "sam_"]
    for n in names:
        await new_account(store, n, "Display")
    found = await store.search_accounts("sam", 100)
    assert [a.username for a in found] == sorted(names)
    assert [a.username for a in await store.search_accounts("sam", 3)] == sorted(names)[:3]
    assert (await store.search_accounts("sam", 1))[0].username == "sam"


@pytest_twisted.ensureDeferred
async def test_search_returns_whole_accounts(store: Store) -> None:
    account = make_account("alice", "Alice", bio="b", avatar_media_id="m")
    await store.create_account(account)
    assert await store.search_accounts("ali", 5) == [account]


@pytest_twisted.ensureDeferred
async def test_search_escapes_like_wildcards(store: Store) -> None:
    await new_account(store, "ab_c", "Plain")
    await new_account(store, "abxc", "Plain")
    await new_account(store, "pct1", "100% real")
    await new_account(store, "pct2", "1000 real")
    await new_account(store, "bsl1", "back\\slash")
    await new_account(store, "bsl2", "backslash")
    assert [a.username for a in await store.search_accounts("ab_", 10)] == ["ab_c"]
    assert [a.username for a in await store.search_accounts("100%", 10)] == ["pct1"]
    assert [a.username for a in await store.search_accounts("%", 10)] == []
    assert [a.username for a in await store.search_accounts("_", 10)] == []
    assert [a.username for a in await store.search_accounts("back\\", 10)] == ["bsl1"]
    assert [a.username for a in await store.search_accounts("back\\s", 10)] == ["bsl1"]
    assert [a.username for a in await store.search_accounts("back", 10)] == ["bsl1", "bsl2"]


@pytest_twisted.ensureDeferred
async def test_search_display_name_is_case_insensitive_beyond_ascii(store: Store) -> None:
    await new_account(store, "elodie", "Élodie Ünal")
    assert [a.username for a in await store.search_accounts("élo", 10)] == ["elodie"]
    assert [a.username for a in await store.search_accounts("élodie ü", 10)] == ["elodie"]


# -- devices and refresh tokens ---------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_create_and_get_device(store: Store) -> None:
    user = await new_account(store)
    device, _ = await new_device(store, user)
    assert await store.get_device(device.device_id) == device
    assert await store.get_device(new_id()) is None


@pytest_twisted.ensureDeferred
async def test_create_device_is_atomic(store: Store) -> None:
    user = await new_account(store)
    device, token = await new_device(store, user)
    # a second device whose token hash is taken: neither row is written
    other = Device(device_id=new_id(), user_id=user.user_id, name="tablet", created_at_ms=NOW)
    with pytest.raises(Conflict):
        await store.create_device(other, replace(token, device_id=other.device_id))
    assert await store.get_device(other.device_id) is None
    # the same device id again
    _, fresh = make_token(device)
    with pytest.raises(Conflict):
        await store.create_device(replace(device, name="again"), fresh)
    assert await store.get_device(device.device_id) == device
    assert (await store.rotate_refresh_token(fresh.token_hash, make_token(device)[1], NOW)).outcome is (
        RotateOutcome.INVALID
    )


@pytest_twisted.ensureDeferred
async def test_create_device_of_unknown_user_is_not_found(store: Store) -> None:
    """Adapter contract: a device must belong to an account."""
    ghost = Device(device_id=new_id(), user_id=new_id(), name="ghost", created_at_ms=NOW)
    with pytest.raises(NotFound):
        await store.create_device(ghost, make_token(ghost)[1])
    assert await store.get_device(ghost.device_id) is None


@pytest_twisted.ensureDeferred
async def test_rotate_ok_chains(store: Store) -> None:
    user = await new_account(store)
    device, token = await new_device(store, user)
    current = token
    for step in range(1, 4):
        now = NOW + step * 1000
        _, nxt = make_token(device, now)
        result = await store.rotate_refresh_token(current.token_hash, nxt, now)
        assert result.outcome is RotateOutcome.OK
        assert result.device == replace(device, last_used_at_ms=now)
        assert await store.get_device(device.device_id) == result.device
        current = nxt


@pytest_twisted.ensureDeferred
async def test_rotate_unknown_is_invalid(store: Store) -> None:
    user = await new_account(store)
    device, _ = await new_device(store, user)
    result = await store.rotate_refresh_token(hash_refresh_token("nope"), make_token(device)[1], NOW)
    assert result.outcome is RotateOutcome.INVALID and result.device is None
    assert await store.get_device(device.device_id) == device


@pytest_twisted.ensureDeferred
async def test_rotate_expired_is_invalid_and_writes_nothing(store: Store) -> None:
    user = await new_account(store)
    device, token = await new_device(store, user, ttl=1000)
    _, new = make_token(device, NOW + 1000)
    result = await store.rotate_refresh_token(token.token_hash, new, token.expires_at_ms)  # exclusive end
    assert result.outcome is RotateOutcome.INVALID
    assert await store.get_device(device.device_id) == device  # not touched, not revoked
    assert (await store.rotate_refresh_token(new.token_hash, make_token(device)[1], NOW)).outcome is (
        RotateOutcome.INVALID
    )  # ``new`` was not stored


@pytest_twisted.ensureDeferred
async def test_rotate_just_before_expiry_is_ok(store: Store) -> None:
    user = await new_account(store)
    device, token = await new_device(store, user, ttl=1000)
    result = await store.rotate_refresh_token(token.token_hash, make_token(device)[1], token.expires_at_ms - 1)
    assert result.outcome is RotateOutcome.OK


@pytest_twisted.ensureDeferred
async def test_rotate_on_revoked_device_is_invalid(store: Store) -> None:
    user = await new_account(store)
    device, token = await new_device(store, user)
    assert await store.revoke_device(device.device_id, NOW + 1)
    _, new = make_token(device, NOW + 2)
    result = await store.rotate_refresh_token(token.token_hash, new, NOW + 2)
    assert result.outcome is RotateOutcome.INVALID
    assert await store.get_device(device.device_id) == replace(device, revoked_at_ms=NOW + 1)
    assert (await store.rotate_refresh_token(new.token_hash, make_token(device)[1], NOW + 3)).outcome is (
        RotateOutcome.INVALID
    )


@pytest_twisted.ensureDeferred
async def test_reuse_revokes_the_family(store: Store) -> None:
    user = await new_account(store)
    device, t1 = await new_device(store, user)
    other_device, other_token = await new_device(store, user)
    _, t2 = make_token(device, NOW + 10)
    assert (await store.rotate_refresh_token(t1.token_hash, t2, NOW + 10)).outcome is RotateOutcome.OK
    _, t3 = make_token(device, NOW + 20)
    result = await store.rotate_refresh_token(t1.token_hash, t3, NOW + 20)  # t1 replayed
    revoked = replace(device, last_used_at_ms=NOW + 10, revoked_at_ms=NOW + 20)
    assert result.outcome is RotateOutcome.REUSED and result.device == revoked
    assert await store.get_device(device.device_id) == revoked
    # the live token of the family is dead, ``t3`` was never stored, another replay is just invalid
    for h in (t2.token_hash, t3.token_hash, t1.token_hash):
        assert (await store.rotate_refresh_token(h, make_token(device)[1], NOW + 30)).outcome is RotateOutcome.INVALID
    # other devices of the user are untouched
    assert await store.get_device(other_device.device_id) == other_device
    ok = await store.rotate_refresh_token(other_token.token_hash, make_token(other_device)[1], NOW + 40)
    assert ok.outcome is RotateOutcome.OK


@pytest_twisted.ensureDeferred
async def test_spent_and_expired_is_invalid_not_reused(store: Store) -> None:
    """Adapter contract: expiry is checked before reuse, so a stale replay revokes nothing."""
    user = await new_account(store)
    device, t1 = await new_device(store, user, ttl=1000)
    _, t2 = make_token(device, NOW + 10, ttl=DAY)
    assert (await store.rotate_refresh_token(t1.token_hash, t2, NOW + 10)).outcome is RotateOutcome.OK
    late = t1.expires_at_ms + 5
    assert (await store.rotate_refresh_token(t1.token_hash, make_token(device)[1], late)).outcome is (
        RotateOutcome.INVALID
    )
    assert (await store.get_device(device.device_id)) == replace(device, last_used_at_ms=NOW + 10)
    assert (await store.rotate_refresh_token(t2.token_hash, make_token(device)[1], late)).outcome is RotateOutcome.OK


@pytest_twisted.ensureDeferred
async def test_concurrent_rotation_has_exactly_one_winner(store: Store) -> None:
    user = await new_account(store)
    for _ in range(5):  # races are won by chance: run a few
        device, token = await new_device(store, user)
        news = [make_token(device, NOW + 1)[1] for _ in range(8)]
        results = await defer.gatherResults(
            [defer.ensureDeferred(store.rotate_refresh_token(token.token_hash, n, NOW + 1)) for n in news]
        )
        outcomes = [r.outcome for r in results]
        assert outcomes.count(RotateOutcome.OK) == 1, outcomes
        assert RotateOutcome.REUSED in outcomes, outcomes  # the losers replayed a spent token
        assert set(outcomes) <= {RotateOutcome.OK, RotateOutcome.REUSED, RotateOutcome.INVALID}
        # which revoked the family, the winner's new token included
        got = await store.get_device(device.device_id)
        assert got is not None and got.revoked
        winner = news[outcomes.index(RotateOutcome.OK)]
        result = await store.rotate_refresh_token(winner.token_hash, make_token(device)[1], NOW + 2)
        assert result.outcome is RotateOutcome.INVALID


@pytest_twisted.ensureDeferred
async def test_concurrent_rotations_of_different_devices_all_succeed(store: Store) -> None:
    user = await new_account(store)
    pairs = [await new_device(store, user) for _ in range(6)]
    results = await defer.gatherResults(
        [
            defer.ensureDeferred(store.rotate_refresh_token(t.token_hash, make_token(d, NOW + 1)[1], NOW + 1))
            for d, t in pairs
        ]
    )
    assert [r.outcome for r in results] == [RotateOutcome.OK] * len(pairs)


@pytest_twisted.ensureDeferred
async def test_revoke_device(store: Store) -> None:
    user = await new_account(store)
    device, token = await new_device(store, user)
    other, other_token = await new_device(store, user)
    assert await store.revoke_device(device.device_id, NOW + 5) is True
    assert await store.get_device(device.device_id) == replace(device, revoked_at_ms=NOW + 5)
    assert await store.revoke_device(device.device_id, NOW + 6) is False  # already revoked: unchanged
    assert await store.get_device(device.device_id) == replace(device, revoked_at_ms=NOW + 5)
    assert await store.revoke_device(new_id(), NOW) is False
    result = await store.rotate_refresh_token(token.token_hash, make_token(device)[1], NOW + 7)
    assert result.outcome is RotateOutcome.INVALID
    assert await store.get_device(other.device_id) == other
    result = await store.rotate_refresh_token(other_token.token_hash, make_token(other)[1], NOW + 8)
    assert result.outcome is RotateOutcome.OK


# -- contacts and blocks --------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_contacts(store: Store) -> None:
    owner, zoe, adam, mia = [await new_account(store, n) for n in ("owner", "zoe", "adam", "mia")]
    assert await store.list_contacts(owner.user_id) == []
    assert await store.count_contacts(owner.user_id) == 0
    for c in (zoe, adam, mia):
        await store.add_contact(owner.user_id, c.user_id, NOW)
    await store.add_contact(owner.user_id, zoe.user_id, NOW + 1)  # idempotent
    assert await store.list_contacts(owner.user_id) == [adam, mia, zoe]
    assert await store.count_contacts(owner.user_id) == 3
    assert await store.list_contacts(zoe.user_id) == []  # one direction only
    await store.remove_contact(owner.user_id, mia.user_id)
    await store.remove_contact(owner.user_id, mia.user_id)  # idempotent
    await store.remove_contact(owner.user_id, new_id())  # never a contact
    assert await store.list_contacts(owner.user_id) == [adam, zoe]
    assert await store.count_contacts(owner.user_id) == 2


@pytest_twisted.ensureDeferred
async def test_contacts_show_current_profiles(store: Store) -> None:
    owner, friend = await new_account(store, "owner"), await new_account(store, "friend", "Old")
    await store.add_contact(owner.user_id, friend.user_id, NOW)
    updated = await store.update_profile(friend.user_id, {"display_name": "New"}, NOW + 1)
    assert await store.list_contacts(owner.user_id) == [updated]


@pytest_twisted.ensureDeferred
async def test_contact_with_unknown_user_is_not_found(store: Store) -> None:
    """Adapter contract: contacts and blocks reference accounts."""
    owner = await new_account(store)
    with pytest.raises(NotFound):
        await store.add_contact(owner.user_id, new_id(), NOW)
    with pytest.raises(NotFound):
        await store.block(owner.user_id, new_id(), NOW)
    assert await store.count_contacts(owner.user_id) == 0
    assert await store.list_blocked(owner.user_id) == []


@pytest_twisted.ensureDeferred
async def test_blocks(store: Store) -> None:
    me, a, b, c = [await new_account(store) for _ in range(4)]
    assert await store.list_blocked(me.user_id) == []
    for x in (c, a, b):
        await store.block(me.user_id, x.user_id, NOW)
    await store.block(me.user_id, a.user_id, NOW + 1)  # idempotent
    assert await store.list_blocked(me.user_id) == sorted([a.user_id, b.user_id, c.user_id])
    assert await store.is_blocked(me.user_id, a.user_id)
    assert not await store.is_blocked(a.user_id, me.user_id)  # one direction only
    await store.unblock(me.user_id, a.user_id)
    await store.unblock(me.user_id, a.user_id)  # idempotent
    await store.unblock(me.user_id, new_id())
    assert not await store.is_blocked(me.user_id, a.user_id)
    assert await store.list_blocked(me.user_id) == sorted([b.user_id, c.user_id])


@pytest_twisted.ensureDeferred
async def test_concurrent_calls_on_one_store(store: Store) -> None:
    """200 concurrent is_blocked, get_account and block/unblock calls on one store instance (more
    callers than a pool has connections): every call answers, and correctly."""
    me, blocked, other = [await new_account(store) for _ in range(3)]
    await store.block(me.user_id, blocked.user_id, NOW)
    reads: list[defer.Deferred[Any]] = []
    expected: list[Any] = []
    for i in range(200):
        target = blocked if i % 2 else other
        reads.append(defer.ensureDeferred(store.is_blocked(me.user_id, target.user_id)))
        expected.append(target is blocked)
        reads.append(defer.ensureDeferred(store.get_account(me.user_id)))
        expected.append(me)
    writes = [defer.ensureDeferred(store.block(other.user_id, me.user_id, NOW + i)) for i in range(20)]
    results = await defer.DeferredList(reads + writes, consumeErrors=True)
    assert [r.value for ok, r in results if not ok] == []
    assert [r for _, r in results][: len(reads)] == expected
    assert await store.is_blocked(other.user_id, me.user_id)


# -- signing keys -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_signing_keys_newest_first_and_strictly_after(store: Store) -> None:
    keys = [make_key(f"k{i}", NOW + i * 1000) for i in (2, 0, 3, 1)]
    for k in keys:
        await store.add_signing_key(k)
    got = await store.list_signing_keys(NOW - 1)
    assert [k.kid for k in got] == ["k3", "k2", "k1", "k0"]
    assert got[0] == keys[2]  # the JWK comes back as the same dict
    assert [k.kid for k in await store.list_signing_keys(NOW + 1000)] == ["k3", "k2"]
    assert await store.list_signing_keys(NOW + 3000) == []


@pytest_twisted.ensureDeferred
async def test_duplicate_kid_conflicts(store: Store) -> None:
    await store.add_signing_key(make_key("k1", NOW))
    with pytest.raises(Conflict):
        await store.add_signing_key(make_key("k1", NOW + 1))
    assert [k.created_at_ms for k in await store.list_signing_keys(0)] == [NOW]


@pytest_twisted.ensureDeferred
async def test_delete_signing_keys_strictly_before(store: Store) -> None:
    for i in range(5):
        await store.add_signing_key(make_key(f"k{i}", NOW + i))
    assert await store.delete_signing_keys(NOW + 2) == 2
    assert await store.delete_signing_keys(NOW + 2) == 0
    assert [k.kid for k in await store.list_signing_keys(0)] == ["k4", "k3", "k2"]
    assert await store.delete_signing_keys(NOW + 100) == 3
    assert await store.list_signing_keys(0) == []


# -- lifecycle ----------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart_and_migrations_are_idempotent(backend: Backend) -> None:
    first = await backend.open()
    account = await new_account(first)
    await first.add_signing_key(make_key("k1", NOW))
    # more instances on the same database, started together, and a restart
    more = await defer.gatherResults([defer.ensureDeferred(backend.open()) for _ in range(3)])
    await first.stop()
    await first.start()
    for s in (first, *more):
        assert await s.get_account(account.user_id) == account
        assert [k.kid for k in await s.list_signing_keys(0)] == ["k1"]


# -- properties (Hypothesis) -----------------------------------------------------------------------------
# pytest-twisted runs ``@given`` coroutine tests itself; the ``store`` fixture is shared by the
# examples of one test item, so every example works in a namespace of fresh accounts.
PROPERTY_SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

PEOPLE = 4
pair = st.tuples(st.integers(0, PEOPLE - 1), st.integers(0, PEOPLE - 1))
relation_op = st.tuples(st.sampled_from(["add", "remove", "block", "unblock"]), pair)


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@PROPERTY_SETTINGS
@given(ops=st.lists(relation_op, max_size=30))
@pytest_twisted.ensureDeferred
async def test_contacts_and_blocks_match_a_model(store: Store, ops: list[tuple[str, tuple[int, int]]]) -> None:
    people = [await new_account(store) for _ in range(PEOPLE)]
    ids = [p.user_id for p in people]
    contacts: set[tuple[int, int]] = set()
    blocks: set[tuple[int, int]] = set()
    for op, (i, j) in ops:
        if op == "add":
            await store.add_contact(ids[i], ids[j], NOW)
            contacts.add((i, j))
        elif op == "remove":
            await store.remove_contact(ids[i], ids[j])
            contacts.discard((i, j))
        elif op == "block":
            await store.block(ids[i], ids[j], NOW)
            blocks.add((i, j))
        else:
            await store.unblock(ids[i], ids[j])
            blocks.discard((i, j))
    for i in range(PEOPLE):
        mine = sorted((people[j] for (o, j) in contacts if o == i), key=lambda a: a.username)
        assert await store.list_contacts(ids[i]) == mine
        assert await store.count_contacts(ids[i]) == len(mine)
        assert await store.list_blocked(ids[i]) == sorted(ids[j] for (o, j) in blocks if o == i)
        for j in range(PEOPLE):
            assert await store.is_blocked(ids[i], ids[j]) == ((i, j) in blocks)


name_tail = st.text(alphabet="ab_9", max_size=4)
display_tail = st.text(alphabet="aB_%\\ é", max_size=5)


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@PROPERTY_SETTINGS
@given(
    people=st.lists(st.tuples(name_tail, display_tail), min_size=1, max_size=6, unique_by=lambda p: p[0]),
    query=st.text(alphabet="aAb_%\\ é9", max_size=4),
    limit=st.integers(1, 7),
)
@pytest_twisted.ensureDeferred
async def test_search_matches_a_model(store: Store, people: list[tuple[str, str]], query: str, limit: int) -> None:
    ns = uuid.uuid4().hex[:8]  # no other example's names start with it
    accounts = [await new_account(store, f"{ns}{u}", f"{ns}{d}") for u, d in people]
    prefix = (ns + query).lower()
    matching = [a for a in accounts if a.username.startswith(prefix) or a.display_name.lower().startswith(prefix)]
    expected = sorted(matching, key=lambda a: a.username)[:limit]
    assert await store.search_accounts(prefix, limit) == expected


rotation_op = st.one_of(
    st.tuples(st.just("rotate"), st.integers(0, 0)),  # spend the newest token
    st.tuples(st.just("replay"), st.integers(0, 5)),  # spend the n-th newest-but-one token again
    st.tuples(st.just("revoke"), st.integers(0, 0)),
    st.tuples(st.just("advance"), st.integers(0, 1500)),  # ms; tokens live for 1000 ms
)


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@PROPERTY_SETTINGS
@given(ops=st.lists(rotation_op, max_size=15))
@pytest_twisted.ensureDeferred
async def test_rotation_matches_a_model(store: Store, ops: list[tuple[str, int]]) -> None:
    ttl = 1000
    user = await new_account(store)
    device, first = await new_device(store, user, ttl=ttl)
    now = NOW
    # model: every token issued, newest last, with when it was spent; the device's state
    tokens: list[RefreshToken] = [first]
    spent: dict[str, int] = {}
    revoked_at: int | None = None
    last_used = 0
    for op, n in ops:
        if op == "advance":
            now += n
            continue
        if op == "revoke":
            assert await store.revoke_device(device.device_id, now) == (revoked_at is None)
            revoked_at = revoked_at if revoked_at is not None else now
            continue
        old = tokens[-1] if op == "rotate" else tokens[max(0, len(tokens) - 2 - n)]
        _, new = make_token(device, now, ttl)
        result = await store.rotate_refresh_token(old.token_hash, new, now)
        if revoked_at is not None or now >= old.expires_at_ms:
            expected = RotateOutcome.INVALID
        elif old.token_hash in spent:
            expected = RotateOutcome.REUSED
            revoked_at = now
        else:
            expected = RotateOutcome.OK
            spent[old.token_hash] = now
            tokens.append(new)
            last_used = now
        assert result.outcome is expected, (op, n, now, revoked_at)
        model_device = replace(device, last_used_at_ms=last_used, revoked_at_ms=revoked_at)
        if expected is RotateOutcome.OK:
            assert result.device == model_device
        assert await store.get_device(device.device_id) == model_device
