"""Ports of the auth component. Adapters: ``adapters/sqlite.py`` (embedded),
``adapters/postgres.py`` (distributed). Rate limits and locks: ``common/ports.py``.
One contract suite per port: ``tests/contract/``.

All methods are coroutines (adapters may await Twisted Deferreds inside them).
A dependency failure surfaces as :class:`common.errors.Unavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from components.auth.domain import Account, Device, RefreshToken, RotateResult, SigningKey


class AccountStore(Protocol):
    # -- accounts --------------------------------------------------------------------------
    async def create_account(self, account: Account) -> None:
        """Insert. Raises ``Conflict`` if the (lower-case) username is taken."""
        ...

    async def get_account(self, user_id: str) -> Account | None: ...

    async def get_account_by_username(self, username: str) -> Account | None:
        """``username`` is already lower-case."""
        ...

    async def get_accounts(self, user_ids: Sequence[str]) -> list[Account]:
        """Known accounts among ``user_ids``, in the order given; unknown ids left out."""
        ...

    async def update_profile(self, user_id: str, fields: Mapping[str, Any], now_ms: int) -> Account | None:
        """Set the given profile fields (display_name, bio, avatar_media_id); None if no such user."""
        ...

    async def search_accounts(self, prefix: str, limit: int) -> list[Account]:
        """Accounts whose username, or lower-cased display name, starts with ``prefix``
        (lower-case; ``%``, ``_`` and ``\\`` are literal), ordered by username, at most ``limit``."""
        ...

    # -- devices and refresh tokens -------------------------------------------------------
    async def create_device(self, device: Device, token: RefreshToken) -> None:
        """Insert a device and its first refresh token atomically."""
        ...

    async def get_device(self, device_id: str) -> Device | None: ...

    async def rotate_refresh_token(self, old_hash: str, new: RefreshToken, now_ms: int) -> RotateResult:
        """Atomically spend ``old_hash`` and store ``new`` (same device, same user).

        - unknown hash, expired token or revoked device: ``INVALID``, nothing written;
        - a token already spent: revoke its device (``revoked_at_ms = now_ms``) and all of the
          device's tokens, ``REUSED`` with the (now revoked) device; ``new`` is not stored;
        - otherwise mark it used at ``now_ms``, store ``new`` (its ``device_id`` and ``user_id``
          are ignored: the stored token takes them from the spent one), set the device's
          ``last_used_at_ms``, and answer ``OK`` with the device.
        Concurrent calls with the same hash: exactly one gets ``OK``.
        """
        ...

    async def revoke_device(self, device_id: str, now_ms: int) -> bool:
        """Revoke a device and all its tokens. False if unknown or already revoked."""
        ...

    # -- contacts and blocks ----------------------------------------------------------------
    async def add_contact(self, owner_id: str, contact_id: str, now_ms: int) -> None:
        """Idempotent."""
        ...

    async def remove_contact(self, owner_id: str, contact_id: str) -> None:
        """Idempotent."""
        ...

    async def list_contacts(self, owner_id: str) -> list[Account]:
        """Contacts' accounts ordered by username."""
        ...

    async def count_contacts(self, owner_id: str) -> int: ...

    async def block(self, blocker_id: str, blocked_id: str, now_ms: int) -> None:
        """Idempotent."""
        ...

    async def unblock(self, blocker_id: str, blocked_id: str) -> None:
        """Idempotent."""
        ...

    async def is_blocked(self, blocker_id: str, blocked_id: str) -> bool: ...

    async def list_blocked(self, blocker_id: str) -> list[str]:
        """Blocked user ids, sorted."""
        ...


class KeyStore(Protocol):
    async def add_signing_key(self, key: SigningKey) -> None:
        """Insert. Raises ``Conflict`` on a duplicate kid."""
        ...

    async def list_signing_keys(self, created_after_ms: int) -> list[SigningKey]:
        """Keys created strictly after ``created_after_ms``, newest first."""
        ...

    async def delete_signing_keys(self, created_before_ms: int) -> int:
        """Delete keys created strictly before; answer how many."""
        ...


class PasswordHasher(Protocol):
    async def hash(self, password: str) -> str: ...

    async def verify(self, encoded: str | None, password: str) -> bool:
        """``encoded=None`` (unknown user) costs the same as a real check and answers False."""
        ...

    def needs_rehash(self, encoded: str) -> bool: ...


class AuthEvents(Protocol):
    """What the auth service tells the rest of the system (the WAMP layer publishes it)."""

    def device_revoked(self, user_id: str, device_id: str) -> None:
        """A device's tokens were revoked: its open sessions must be closed."""
        ...
