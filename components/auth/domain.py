"""Pure rules of accounts, devices and tokens. Imports no Twisted, WAMP or driver."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from common.errors import InvalidArgument

USERNAME_RE = re.compile(r"^[a-z0-9_]{3,32}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128
DISPLAY_NAME_MAX = 64
BIO_MAX = 512
DEVICE_NAME_MAX = 64
MEDIA_ID_MAX = 64
SEARCH_QUERY_MAX = 64
SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX = 20, 100
USER_GET_MAX = 100
USER_EXISTING_MAX = 200
CONTACTS_MAX = 5000
REFRESH_TOKEN_BYTES = 32
ID_RE = re.compile(r"^[0-9a-f]{32}$")

PROFILE_FIELDS = ("display_name", "bio", "avatar_media_id")


def new_id() -> str:
    """An opaque id: 32 lowercase hex characters (valid inside a strict WAMP URI)."""
    return uuid.uuid4().hex


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> str:
    """Refresh tokens are stored only as their SHA-256 (they are random, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    user_id: str
    username: str
    display_name: str
    password_hash: str
    created_at_ms: int
    bio: str = ""
    avatar_media_id: str | None = None
    updated_at_ms: int = 0

    def profile(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "display_name": self.display_name,
            "bio": self.bio,
            "avatar_media_id": self.avatar_media_id,
        }


@dataclass(frozen=True)
class Device:
    device_id: str
    user_id: str
    name: str
    created_at_ms: int
    last_used_at_ms: int = 0
    revoked_at_ms: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms is not None


@dataclass(frozen=True)
class RefreshToken:
    token_hash: str
    device_id: str
    user_id: str
    created_at_ms: int
    expires_at_ms: int
    used_at_ms: int | None = None


class RotateOutcome(Enum):
    OK = "ok"
    INVALID = "invalid"  # unknown, expired, or its device is revoked
    REUSED = "reused"  # already spent: the whole device family was revoked


@dataclass(frozen=True)
class RotateResult:
    outcome: RotateOutcome
    device: Device | None = None


@dataclass(frozen=True)
class SigningKey:
    """A JWT signing key. ``private_pem`` is PKCS#8, encrypted (AES-256) with the node's key secret."""

    kid: str
    algorithm: str
    private_pem: str
    public_jwk: dict[str, Any] = field(hash=False)
    created_at_ms: int


# -- validation ----------------------------------------------------------------------------
def _require_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    return value


def validate_username(value: Any) -> str:
    """Canonical (lower-case) username: 3-32 of [a-z0-9_], compared case-insensitively."""
    s = _require_str("username", value).lower()
    if not USERNAME_RE.match(s):
        raise InvalidArgument("username must be 3-32 characters of a-z, 0-9 and _")
    return s


def validate_password(value: Any) -> str:
    s = _require_str("password", value)
    if not PASSWORD_MIN <= len(s) <= PASSWORD_MAX:
        raise InvalidArgument(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
    if "\x00" in s:
        raise InvalidArgument("password must not contain NUL characters")
    return s


def _clean_text(name: str, value: Any, max_len: int, *, allow_empty: bool) -> str:
    s = _require_str(name, value).strip()
    if len(s) > max_len:
        raise InvalidArgument(f"{name} must be at most {max_len} characters")
    if not allow_empty and not s:
        raise InvalidArgument(f"{name} must not be empty")
    if any(ord(c) < 32 and c not in "\n\t" for c in s) or "\x7f" in s:
        raise InvalidArgument(f"{name} must not contain control characters")
    return s


def validate_display_name(value: Any) -> str:
    s = _clean_text("display_name", value, DISPLAY_NAME_MAX, allow_empty=False)
    if "\n" in s or "\t" in s:
        raise InvalidArgument("display_name must be a single line")
    return s


def validate_bio(value: Any) -> str:
    return _clean_text("bio", value, BIO_MAX, allow_empty=True)


def validate_device_name(value: Any) -> str:
    if value is None:
        return "unnamed device"
    s = _clean_text("device_name", value, DEVICE_NAME_MAX, allow_empty=False)
    return s.replace("\n", " ").replace("\t", " ")


def validate_media_id(value: Any) -> str | None:
    if value is None:
        return None
    s = _require_str("avatar_media_id", value)
    if not 1 <= len(s) <= MEDIA_ID_MAX or not re.match(r"^[A-Za-z0-9_-]+$", s):
        raise InvalidArgument("avatar_media_id is not a valid media id")
    return s


def validate_user_id(value: Any, name: str = "user_id") -> str:
    s = _require_str(name, value)
    if not ID_RE.match(s):
        raise InvalidArgument(f"{name} is not a valid user id")
    return s


def validate_user_ids(value: Any, max_items: int = USER_GET_MAX) -> list[str]:
    if not isinstance(value, list):
        raise InvalidArgument("user_ids must be a list of user ids")
    if len(value) > max_items:
        raise InvalidArgument(f"user_ids holds at most {max_items} ids")
    out: list[str] = []
    for v in value:
        uid = validate_user_id(v, "user_ids[]")
        if uid not in out:
            out.append(uid)
    return out


def validate_search(query: Any, limit: Any) -> tuple[str, int]:
    q = _require_str("query", query).strip().lower()
    if not q:
        raise InvalidArgument("query must not be empty")
    if len(q) > SEARCH_QUERY_MAX:
        raise InvalidArgument(f"query must be at most {SEARCH_QUERY_MAX} characters")
    return q, validate_limit(limit, SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX)


def validate_limit(value: Any, default: int, maximum: int) -> int:
    """``None`` means the default; larger values are capped at ``maximum``."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("limit must be an integer")
    if value < 1:
        raise InvalidArgument("limit must be at least 1")
    return min(value, maximum)


def validate_profile_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Only the given fields change; ``bio`` and ``avatar_media_id`` may be set to None to clear."""
    out: dict[str, Any] = {}
    if "display_name" in changes:
        out["display_name"] = validate_display_name(changes["display_name"])
    if "bio" in changes:
        out["bio"] = "" if changes["bio"] is None else validate_bio(changes["bio"])
    if "avatar_media_id" in changes:
        out["avatar_media_id"] = validate_media_id(changes["avatar_media_id"])
    if not out:
        raise InvalidArgument("nothing to update: give display_name, bio or avatar_media_id")
    return out
