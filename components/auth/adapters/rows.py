"""Row ⇄ record mapping shared by the SQL adapters (SQLite and PostgreSQL use the same columns)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import InvalidArgument
from components.auth.domain import PROFILE_FIELDS, Account, Device, SigningKey

ACCOUNT_COLUMNS = "user_id, username, display_name, password_hash, created_at_ms, bio, avatar_media_id, updated_at_ms"
DEVICE_COLUMNS = "device_id, user_id, name, created_at_ms, last_used_at_ms, revoked_at_ms"
KEY_COLUMNS = "kid, algorithm, private_pem, public_jwk, created_at_ms"
ACCOUNT_INSERT_COLUMNS = (
    "user_id, username, display_name, display_name_lower, password_hash, bio, avatar_media_id,"
    " created_at_ms, updated_at_ms"
)


def account_insert_values(a: Account) -> tuple[Any, ...]:
    """Values for ``ACCOUNT_INSERT_COLUMNS``."""
    return (
        a.user_id,
        a.username.lower(),
        a.display_name,
        a.display_name.lower(),
        a.password_hash,
        a.bio,
        a.avatar_media_id,
        a.created_at_ms,
        a.updated_at_ms,
    )


def escape_like(prefix: str) -> str:
    """``prefix`` as a LIKE pattern matching itself literally (escape character ``\\``)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def account(row: Sequence[Any]) -> Account:
    return Account(
        user_id=row[0],
        username=row[1],
        display_name=row[2],
        password_hash=row[3],
        created_at_ms=row[4],
        bio=row[5],
        avatar_media_id=row[6],
        updated_at_ms=row[7],
    )


def device(row: Sequence[Any]) -> Device:
    return Device(
        device_id=row[0],
        user_id=row[1],
        name=row[2],
        created_at_ms=row[3],
        last_used_at_ms=row[4],
        revoked_at_ms=row[5],
    )


def signing_key(row: Sequence[Any]) -> SigningKey:
    return SigningKey(
        kid=row[0], algorithm=row[1], private_pem=row[2], public_jwk=json.loads(row[3]), created_at_ms=row[4]
    )


def profile_assignments(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column -> value for ``update_profile``; only the known profile fields are accepted."""
    unknown = set(fields) - set(PROFILE_FIELDS)
    if unknown:
        raise InvalidArgument(f"not a profile field: {', '.join(sorted(unknown))}")
    out = dict(fields)
    if "display_name" in out:
        out["display_name_lower"] = str(out["display_name"]).lower()
    if "bio" in out and out["bio"] is None:
        out["bio"] = ""
    return out
