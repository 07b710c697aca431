"""WAMP edge of the auth component: unpack arguments, find the caller, call the service."""

from __future__ import annotations

import ipaddress
from typing import Any

from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer
from twisted.logger import Logger

from common.errors import MessengerError, Unauthenticated
from common.metrics import AUTH_DECISIONS
from common.wampkit import Caller, Handler, to_application_error
from components.auth.service import AuthService
from realms import uris

log = Logger(namespace="messenger.auth")
_UNSET: Any = object()


class PublishingEvents:
    """AuthEvents published on the router. Publication waits one reactor turn, so the
    result of the call that caused it (logout) reaches the caller before its session closes.

    With ``channels`` (the distributed profile: :class:`common.adapters.redis.UserChannels`)
    a sign-out also goes to the user's Redis channel, which the delivery component of every
    router shard the user is connected to turns into the same event on its router."""

    def __init__(self, session: Any, reactor: Any, channels: Any = None) -> None:
        self._session = session
        self._reactor = reactor
        self._channels = channels

    def device_revoked(self, user_id: str, device_id: str) -> None:
        self._reactor.callLater(0, self._publish_revoked, user_id, device_id)

    def _publish_revoked(self, user_id: str, device_id: str) -> None:
        self._session.publish(uris.EVENT_DEVICE_REVOKED, user_id=user_id, device_id=device_id)
        if self._channels is not None:
            self._channels.fire(user_id, [{"internal": uris.EVENT_DEVICE_REVOKED, "device_id": device_id}])


def peer_ip(session_info: dict[str, Any] | None, trusted_proxies: frozenset[str]) -> str:
    """The client's IP from ``wamp.session.get`` transport details ("tcp4:1.2.3.4:5678")."""
    transport = (session_info or {}).get("transport") or {}
    peer = str(transport.get("peer") or "unknown")
    ip = peer
    if peer.startswith(("tcp4:", "tcp6:")):
        ip = peer[5:].rsplit(":", 1)[0]
    elif peer.startswith("unix"):
        ip = "unix"
    if ip in trusted_proxies:
        headers = transport.get("http_headers_received") or {}
        forwarded = headers.get("x-forwarded-for") or headers.get("X-Forwarded-For")
        if forwarded:
            candidate = str(forwarded).split(",")[-1].strip()
            try:
                ip = str(ipaddress.ip_address(candidate))
            except ValueError:
                pass
    return ip


class AuthWamp:
    def __init__(self, service: AuthService, session: Any, trusted_proxies: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.session = session
        self.trusted_proxies = trusted_proxies

    def procedures(self) -> dict[str, Handler]:
        return {
            uris.AUTH_REGISTER: self.register,
            uris.AUTH_LOGIN: self.login,
            uris.AUTH_REFRESH: self.refresh,
            uris.AUTH_LOGOUT: self.logout,
            uris.AUTH_JWKS: self.jwks,
            uris.USER_ME: self.me,
            uris.USER_UPDATE_PROFILE: self.update_profile,
            uris.USER_GET: self.get,
            uris.USER_SEARCH: self.search,
            uris.USER_BLOCK: self.block,
            uris.USER_UNBLOCK: self.unblock,
            uris.USER_LIST_BLOCKED: self.list_blocked,
            uris.CONTACTS_ADD: self.contacts_add,
            uris.CONTACTS_REMOVE: self.contacts_remove,
            uris.CONTACTS_LIST: self.contacts_list,
            uris.INTERNAL_USER_BLOCKED: self.is_blocked,
            uris.INTERNAL_USERS_EXISTING: self.existing,
            uris.INTERNAL_USERS_PROFILES: self.profiles,
        }

    backend_only = frozenset({uris.INTERNAL_USER_BLOCKED, uris.INTERNAL_USERS_EXISTING, uris.INTERNAL_USERS_PROFILES})

    async def _session_info(self, caller: Caller) -> dict[str, Any] | None:
        if caller.session_id is None:
            return None
        try:
            info: dict[str, Any] | None = await self.session.call("wamp.session.get", caller.session_id)
            return info
        except ApplicationError:
            return None

    async def _client_ip(self, caller: Caller) -> str:
        return peer_ip(await self._session_info(caller), self.trusted_proxies)

    # -- guest ------------------------------------------------------------------------------
    async def register(self, caller: Caller, username: Any, password: Any, display_name: Any = None) -> Any:
        return await self.service.register(username, password, display_name, await self._client_ip(caller))

    async def login(self, caller: Caller, username: Any, password: Any, device_name: Any = None) -> Any:
        return await self.service.login(username, password, device_name, await self._client_ip(caller))

    async def refresh(self, caller: Caller, refresh_token: Any) -> Any:
        return await self.service.refresh(refresh_token, await self._client_ip(caller))

    # -- user -------------------------------------------------------------------------------
    async def logout(self, caller: Caller) -> Any:
        user_id = caller.user_id
        info = await self._session_info(caller)
        device_id = ((info or {}).get("authextra") or {}).get("device_id")
        return await self.service.logout(user_id, device_id)

    async def jwks(self, caller: Caller) -> Any:
        return self.service.keys.jwks()

    async def me(self, caller: Caller) -> Any:
        return await self.service.me(caller.user_id)

    async def update_profile(
        self, caller: Caller, display_name: Any = _UNSET, bio: Any = _UNSET, avatar_media_id: Any = _UNSET
    ) -> Any:
        given = {"display_name": display_name, "bio": bio, "avatar_media_id": avatar_media_id}
        return await self.service.update_profile(caller.user_id, {k: v for k, v in given.items() if v is not _UNSET})

    async def get(self, caller: Caller, user_ids: Any) -> Any:
        caller.user_id  # noqa: B018 - users only
        return await self.service.get_users(user_ids)

    async def search(self, caller: Caller, query: Any, limit: Any = None) -> Any:
        caller.user_id  # noqa: B018
        return await self.service.search(query, limit)

    async def block(self, caller: Caller, user_id: Any) -> Any:
        return await self.service.block(caller.user_id, user_id)

    async def unblock(self, caller: Caller, user_id: Any) -> Any:
        return await self.service.unblock(caller.user_id, user_id)

    async def list_blocked(self, caller: Caller) -> Any:
        return await self.service.list_blocked(caller.user_id)

    async def contacts_add(self, caller: Caller, user_id: Any) -> Any:
        return await self.service.add_contact(caller.user_id, user_id)

    async def contacts_remove(self, caller: Caller, user_id: Any) -> Any:
        return await self.service.remove_contact(caller.user_id, user_id)

    async def contacts_list(self, caller: Caller) -> Any:
        return await self.service.list_contacts(caller.user_id)

    # -- backend ----------------------------------------------------------------------------
    async def is_blocked(self, caller: Caller, blocker_id: Any, blocked_id: Any) -> Any:
        return await self.service.is_blocked(blocker_id, blocked_id)

    async def existing(self, caller: Caller, user_ids: Any) -> Any:
        return await self.service.existing(user_ids)

    async def profiles(self, caller: Caller, user_ids: Any) -> Any:
        return await self.service.get_users(user_ids)

    # -- the router's dynamic ticket authenticator ---------------------------------------------
    def authenticator(self, realm: Any, authid: Any, details: Any) -> defer.Deferred[Any]:
        """Called by Crossbar as ``authenticate(realm, authid, details)`` for ticket joins.
        The authid a client claims is ignored: the token says who it is."""
        return defer.ensureDeferred(self._authenticate(details))

    async def _authenticate(self, details: Any) -> dict[str, Any]:
        ticket = details.get("ticket") if isinstance(details, dict) else None
        try:
            principal = await self.service.authenticate(ticket)
        except Unauthenticated as e:
            AUTH_DECISIONS.labels(result="denied").inc()
            raise to_application_error(e) from None
        except MessengerError as e:
            AUTH_DECISIONS.labels(result="error").inc()
            raise to_application_error(e) from None
        AUTH_DECISIONS.labels(result="accepted").inc()
        return {
            "role": uris.ROLE_USER,
            "authid": principal.user_id,
            "extra": {"device_id": principal.device_id, "token_expires_at": principal.expires_at_s},
        }
