"""Use cases of accounts and login. Takes ports and a clock; knows nothing of WAMP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.clock import Clock
from common.errors import Conflict, InvalidArgument, NotFound, RateLimited, Unauthenticated
from common.ports import RateLimiter
from components.auth import domain
from components.auth.domain import Account, Device, RefreshToken, RotateOutcome
from components.auth.ports import AccountStore, AuthEvents, PasswordHasher
from components.auth.tokens import KeyRing

WRONG_CREDENTIALS = "wrong username or password"
MAX_REFRESH_TOKEN_LENGTH = 256


@dataclass(frozen=True)
class Limit:
    count: int
    window_ms: int


@dataclass(frozen=True)
class AuthSettings:
    refresh_ttl_s: int = 30 * 24 * 3600
    login_per_ip: Limit = Limit(100, 60_000)
    login_per_username: Limit = Limit(10, 5 * 60_000)
    register_per_ip: Limit = Limit(30, 10 * 60_000)
    refresh_per_ip: Limit = Limit(300, 60_000)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuthSettings:
        def lim(name: str, default: Limit) -> Limit:
            v = d.get(name)
            return Limit(int(v[0]), int(v[1])) if v else default

        base = cls()
        return cls(
            refresh_ttl_s=int(d.get("refresh_ttl_s", base.refresh_ttl_s)),
            login_per_ip=lim("login_per_ip", base.login_per_ip),
            login_per_username=lim("login_per_username", base.login_per_username),
            register_per_ip=lim("register_per_ip", base.register_per_ip),
            refresh_per_ip=lim("refresh_per_ip", base.refresh_per_ip),
        )


@dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for."""

    user_id: str
    device_id: str
    expires_at_s: int


class AuthService:
    def __init__(
        self,
        accounts: AccountStore,
        keys: KeyRing,
        hasher: PasswordHasher,
        limiter: RateLimiter,
        events: AuthEvents,
        clock: Clock,
        settings: AuthSettings | None = None,
    ) -> None:
        self.accounts = accounts
        self.keys = keys
        self.hasher = hasher
        self.limiter = limiter
        self.events = events
        self.clock = clock
        self.settings = settings or AuthSettings()

    async def _limit(self, key: str, limit: Limit, what: str) -> None:
        retry_after = await self.limiter.hit(key, limit.count, limit.window_ms)
        if retry_after > 0:
            raise RateLimited(f"too many {what}; retry in {(retry_after + 999) // 1000} s", retry_after_ms=retry_after)

    # -- registration and login ------------------------------------------------------------
    async def register(self, username: Any, password: Any, display_name: Any, client_ip: str) -> dict[str, Any]:
        name = domain.validate_username(username)
        pw = domain.validate_password(password)
        shown = name if display_name is None else domain.validate_display_name(display_name)
        await self._limit(f"register:ip:{client_ip}", self.settings.register_per_ip, "registrations from this address")
        if await self.accounts.get_account_by_username(name) is not None:
            raise Conflict("username is taken")
        now = self.clock.now_ms()
        account = Account(
            user_id=domain.new_id(),
            username=name,
            display_name=shown,
            password_hash=await self.hasher.hash(pw),
            created_at_ms=now,
            updated_at_ms=now,
        )
        await self.accounts.create_account(account)  # Conflict if a concurrent register won
        return {"user_id": account.user_id}

    async def _new_session(self, user_id: str, device_id: str, refresh_token: str) -> dict[str, Any]:
        if self.keys.current_kid is None:
            await self.keys.ensure_current_key()
        access, expires_in = self.keys.issue(user_id, device_id)
        return {
            "user_id": user_id,
            "device_id": device_id,
            "access_token": access,
            "refresh_token": refresh_token,
            "expires_in": expires_in,
        }

    def _refresh_record(self, token: str, device_id: str, user_id: str, now: int) -> RefreshToken:
        return RefreshToken(
            token_hash=domain.hash_refresh_token(token),
            device_id=device_id,
            user_id=user_id,
            created_at_ms=now,
            expires_at_ms=now + self.settings.refresh_ttl_s * 1000,
        )

    async def login(self, username: Any, password: Any, device_name: Any, client_ip: str) -> dict[str, Any]:
        name = domain.validate_username(username)
        if not isinstance(password, str) or len(password) > domain.PASSWORD_MAX:
            raise InvalidArgument(f"password must be a string of at most {domain.PASSWORD_MAX} characters")
        dev_name = domain.validate_device_name(device_name)
        await self._limit(f"login:ip:{client_ip}", self.settings.login_per_ip, "login attempts from this address")
        await self._limit(f"login:user:{name}", self.settings.login_per_username, "login attempts for this user")
        account = await self.accounts.get_account_by_username(name)
        ok = await self.hasher.verify(account.password_hash if account else None, password)
        if account is None or not ok:
            raise Unauthenticated(WRONG_CREDENTIALS)
        await self.limiter.reset(f"login:user:{name}")
        now = self.clock.now_ms()
        device = Device(
            device_id=domain.new_id(), user_id=account.user_id, name=dev_name, created_at_ms=now, last_used_at_ms=now
        )
        refresh = domain.new_refresh_token()
        await self.accounts.create_device(device, self._refresh_record(refresh, device.device_id, account.user_id, now))
        return await self._new_session(account.user_id, device.device_id, refresh)

    async def refresh(self, refresh_token: Any, client_ip: str) -> dict[str, Any]:
        if not isinstance(refresh_token, str) or not 1 <= len(refresh_token) <= MAX_REFRESH_TOKEN_LENGTH:
            raise InvalidArgument("refresh_token must be a non-empty string")
        await self._limit(f"refresh:ip:{client_ip}", self.settings.refresh_per_ip, "refreshes from this address")
        now = self.clock.now_ms()
        new_token = domain.new_refresh_token()
        # device and user of the new record are filled in by the store from the spent token
        placeholder = self._refresh_record(new_token, "", "", now)
        result = await self.accounts.rotate_refresh_token(domain.hash_refresh_token(refresh_token), placeholder, now)
        if result.outcome is RotateOutcome.REUSED:
            if result.device is not None:
                self.events.device_revoked(result.device.user_id, result.device.device_id)
            raise Unauthenticated("refresh token was already used; the device has been signed out")
        if result.outcome is not RotateOutcome.OK or result.device is None:
            raise Unauthenticated("refresh token is invalid or expired")
        return await self._new_session(result.device.user_id, result.device.device_id, new_token)

    async def logout(self, user_id: str, device_id: str | None) -> dict[str, Any]:
        if device_id:
            device = await self.accounts.get_device(device_id)
            if device is not None and device.user_id == user_id:
                await self.accounts.revoke_device(device_id, self.clock.now_ms())
                self.events.device_revoked(user_id, device_id)
        return {}

    async def authenticate(self, ticket: Any) -> Principal:
        """Turn an access token into a principal, or raise Unauthenticated. Never yields a
        principal for an expired, tampered, wrong-algorithm, wrong-audience or revoked token."""
        if self.keys.needs_reload_for(ticket):
            await self.keys.reload()
        claims = self.keys.verify(ticket)
        device = await self.accounts.get_device(claims.device_id)
        if device is None or device.revoked or device.user_id != claims.user_id:
            raise Unauthenticated("access token was revoked")
        return Principal(user_id=claims.user_id, device_id=claims.device_id, expires_at_s=claims.expires_at_s)

    # -- profiles ---------------------------------------------------------------------------
    async def _account(self, user_id: str) -> Account:
        account = await self.accounts.get_account(user_id)
        if account is None:
            raise NotFound("no such user")
        return account

    async def me(self, user_id: str) -> dict[str, Any]:
        return (await self._account(user_id)).profile()

    async def update_profile(self, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        fields = domain.validate_profile_changes(changes)
        account = await self.accounts.update_profile(user_id, fields, self.clock.now_ms())
        if account is None:
            raise NotFound("no such user")
        return account.profile()

    async def get_users(self, user_ids: Any) -> dict[str, Any]:
        ids = domain.validate_user_ids(user_ids)
        accounts = await self.accounts.get_accounts(ids) if ids else []
        return {"users": [a.profile() for a in accounts]}

    async def search(self, query: Any, limit: Any) -> dict[str, Any]:
        prefix, n = domain.validate_search(query, limit)
        return {"users": [a.profile() for a in await self.accounts.search_accounts(prefix, n)]}

    # -- contacts and blocks ----------------------------------------------------------------
    async def _other_user(self, user_id: str, other: Any, what: str) -> str:
        other_id = domain.validate_user_id(other)
        if other_id == user_id:
            raise InvalidArgument(f"you cannot {what} yourself")
        await self._account(other_id)
        return other_id

    async def add_contact(self, user_id: str, other: Any) -> dict[str, Any]:
        other_id = await self._other_user(user_id, other, "add")
        if await self.accounts.count_contacts(user_id) >= domain.CONTACTS_MAX:
            raise InvalidArgument(f"at most {domain.CONTACTS_MAX} contacts")
        await self.accounts.add_contact(user_id, other_id, self.clock.now_ms())
        return {}

    async def remove_contact(self, user_id: str, other: Any) -> dict[str, Any]:
        await self.accounts.remove_contact(user_id, domain.validate_user_id(other))
        return {}

    async def list_contacts(self, user_id: str) -> dict[str, Any]:
        return {"contacts": [a.profile() for a in await self.accounts.list_contacts(user_id)]}

    async def block(self, user_id: str, other: Any) -> dict[str, Any]:
        other_id = await self._other_user(user_id, other, "block")
        await self.accounts.block(user_id, other_id, self.clock.now_ms())
        return {}

    async def unblock(self, user_id: str, other: Any) -> dict[str, Any]:
        await self.accounts.unblock(user_id, domain.validate_user_id(other))
        return {}

    async def list_blocked(self, user_id: str) -> dict[str, Any]:
        return {"user_ids": await self.accounts.list_blocked(user_id)}

    async def existing(self, user_ids: Any) -> dict[str, Any]:
        """Which of ``user_ids`` are accounts (other components validate references with it)."""
        ids = domain.validate_user_ids(user_ids, max_items=domain.USER_EXISTING_MAX)
        accounts = await self.accounts.get_accounts(ids) if ids else []
        return {"user_ids": [a.user_id for a in accounts]}

    async def is_blocked(self, blocker_id: Any, blocked_id: Any) -> dict[str, Any]:
        a = domain.validate_user_id(blocker_id, "blocker_id")
        b = domain.validate_user_id(blocked_id, "blocked_id")
        return {"blocked": await self.accounts.is_blocked(a, b)}
