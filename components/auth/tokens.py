"""JWT access tokens signed with rotating Ed25519 keys (RFC 8725 practice).

- Algorithm pinned to EdDSA on verification; ``none``, HS256-with-the-public-key and any
  other algorithm are refused before a key is even looked up.
- Every token carries ``kid`` (header), ``iss``, ``aud``, ``sub``, ``exp``, ``iat``, ``jti``
  and ``did`` (the device id). Time checks use the injected clock, so tests control them.
- Keys rotate every ``rotation_interval_s``. A key stays published (JWKS) and accepted
  until the last token it signed has expired. With several auth instances, rotation is
  serialised by a lock (Redis in the distributed profile) and re-checked under the lock,
  so it happens once; other instances pick up a new key on their next refresh or when
  they meet an unknown ``kid``.
- Private keys are stored PKCS#8-encrypted (AES-256) with the deployment's key secret.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.clock import Clock
from common.errors import Conflict, Unauthenticated
from common.ports import Lock
from components.auth.domain import SigningKey
from components.auth.ports import KeyStore

ALGORITHM = "EdDSA"
ROTATION_LOCK = "auth:signing-key-rotation"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti", "did")
MAX_TOKEN_LENGTH = 4096


class KeySecretMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class TokenPolicy:
    issuer: str = "messenger"
    audience: str = "messenger"
    access_ttl_s: int = 15 * 60
    rotation_interval_s: int = 24 * 3600
    leeway_s: int = 30
    key_retention_s: int = 30 * 24 * 3600  # rows older than this are deleted


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    device_id: str
    jti: str
    issued_at_s: int
    expires_at_s: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_signing_key(secret: bytes, now_ms: int) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    public_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = f"{now_ms // 1000:x}-{secrets.token_hex(4)}"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret),
    ).decode("ascii")
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public_raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}
    return SigningKey(kid=kid, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk, created_at_ms=now_ms)


class KeyRing:
    def __init__(self, store: KeyStore, lock: Lock, clock: Clock, secret: bytes, policy: TokenPolicy) -> None:
        self._store = store
        self._lock = lock
        self._clock = clock
        self._secret = secret
        self.policy = policy
        self._keys: list[SigningKey] = []  # newest first, only those still accepted
        self._public: dict[str, Ed25519PublicKey] = {}
        self._private: dict[str, Ed25519PrivateKey] = {}
        self._last_reload_ms = -(10**12)

    # -- key management ---------------------------------------------------------------------
    def _lookback_ms(self) -> int:
        p = self.policy
        return (2 * p.rotation_interval_s + p.access_ttl_s + p.leeway_s) * 1000

    def _accepted(self, keys: list[SigningKey], now_ms: int) -> list[SigningKey]:
        """Newest key, plus older ones that may still have signed an unexpired token."""
        grace_ms = (self.policy.access_ttl_s + self.policy.leeway_s) * 1000
        kept = keys[:1]
        for older, newer in zip(keys[1:], keys, strict=False):
            if now_ms < newer.created_at_ms + grace_ms:
                kept.append(older)
            else:
                break
        return kept

    async def reload(self) -> None:
        now = self._clock.now_ms()
        keys = await self._store.list_signing_keys(now - self._lookback_ms())
        self._keys = self._accepted(keys, now)
        self._public = {}
        for k in self._keys:
            self._public[k.kid] = _public_from_jwk(k.public_jwk)
        self._last_reload_ms = now

    def _current_is_fresh(self, now_ms: int) -> bool:
        return bool(self._keys) and now_ms - self._keys[0].created_at_ms < self.policy.rotation_interval_s * 1000

    async def ensure_current_key(self) -> bool:
        """Rotate if the newest key is older than the rotation interval. True if this call rotated."""
        now = self._clock.now_ms()
        if self._current_is_fresh(now):
            return False
        await self.reload()
        if self._current_is_fresh(now):
            return False
        token = await self._lock.acquire(ROTATION_LOCK, ttl_ms=30_000)
        if token is None:
            return False  # another instance is rotating; we pick its key up on the next reload
        try:
            await self.reload()  # re-check under the lock
            if self._current_is_fresh(now):
                return False
            key = generate_signing_key(self._secret, now)
            try:
                await self._store.add_signing_key(key)
            except Conflict:
                return False
            await self._store.delete_signing_keys(now - self.policy.key_retention_s * 1000)
            await self.reload()
            return True
        finally:
            await self._lock.release(ROTATION_LOCK, token)

    def check_secret(self) -> None:
        """Fail loudly at start if the configured key secret cannot decrypt the current key
        (e.g. instances configured with different MESSENGER_KEY_SECRET values)."""
        if self._keys:
            try:
                self._private_key(self._keys[0])
            except ValueError:
                raise KeySecretMismatch(
                    f"the key secret does not decrypt signing key {self._keys[0].kid}: every auth instance "
                    "must use the same key secret (MESSENGER_KEY_SECRET, or the data folder's key_secret)"
                ) from None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(k.public_jwk) for k in self._keys]}

    @property
    def current_kid(self) -> str | None:
        return self._keys[0].kid if self._keys else None

    def _private_key(self, key: SigningKey) -> Ed25519PrivateKey:
        pk = self._private.get(key.kid)
        if pk is None:
            loaded = serialization.load_pem_private_key(key.private_pem.encode("ascii"), password=self._secret)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError(f"signing key {key.kid} is not Ed25519")
            pk = self._private[key.kid] = loaded
        return pk

    # -- tokens -----------------------------------------------------------------------------
    def issue(self, user_id: str, device_id: str) -> tuple[str, int]:
        if not self._keys:
            raise RuntimeError("no signing key loaded; call ensure_current_key() first")
        key = self._keys[0]
        now_s = self._clock.now_ms() // 1000
        ttl = self.policy.access_ttl_s
        claims = {
            "iss": self.policy.issuer,
            "aud": self.policy.audience,
            "sub": user_id,
            "did": device_id,
            "iat": now_s,
            "nbf": now_s,
            "exp": now_s + ttl,
            "jti": secrets.token_urlsafe(12),
        }
        token = jwt.encode(claims, self._private_key(key), algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, ttl

    def needs_reload_for(self, token: Any) -> bool:
        """True if the token names a kid we do not know and we have not reloaded in the last second."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except Exception:
            return False
        return isinstance(kid, str) and kid not in self._public and self._clock.now_ms() - self._last_reload_ms > 1000

    def verify(self, token: Any) -> AccessClaims:
        """Check signature, algorithm, kid, issuer, audience and times. Raises Unauthenticated."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("access token missing or malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("access token malformed") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("access token algorithm not accepted")
        kid = header.get("kid")
        public = self._public.get(kid) if isinstance(kid, str) else None
        if public is None:
            raise Unauthenticated("access token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key=public,
                algorithms=[ALGORITHM],
                audience=self.policy.audience,
                issuer=self.policy.issuer,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": list(REQUIRED_CLAIMS),
                },
            )
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"access token rejected: {type(e).__name__}") from None
        now_s = self._clock.now_ms() // 1000
        leeway = self.policy.leeway_s
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise Unauthenticated("access token times malformed")
        if now_s >= exp + leeway:
            raise Unauthenticated("access token expired")
        if iat > now_s + leeway or claims.get("nbf", iat) > now_s + leeway:
            raise Unauthenticated("access token not yet valid")
        sub, did, jti = claims.get("sub"), claims.get("did"), claims.get("jti")
        if not (isinstance(sub, str) and isinstance(did, str) and isinstance(jti, str) and sub and did and jti):
            raise Unauthenticated("access token claims malformed")
        return AccessClaims(user_id=sub, device_id=did, jti=jti, issued_at_s=iat, expires_at_s=exp)


def _public_from_jwk(jwk: dict[str, Any]) -> Ed25519PublicKey:
    x = jwk["x"]
    raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    return Ed25519PublicKey.from_public_bytes(raw)


def jwks_json(ring: KeyRing) -> bytes:
    return json.dumps(ring.jwks(), sort_keys=True).encode("utf-8")
