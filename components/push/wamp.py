"""WAMP edge of the push component: unpack, find the caller's device, call the service; and the
WAMP-side ports (presence from delivery, display names from auth)."""

from __future__ import annotations

from typing import Any

from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer
from twisted.logger import Logger

from common.errors import InvalidArgument, Unauthenticated
from common.wampkit import Caller, Handler
from components.push.service import PushService
from realms import uris

log = Logger(namespace="messenger.push")
CALL_TIMEOUT_S = 5.0
NOTICES_PER_CALL_MAX = 500
PRESENCE_CHUNK = 200
PROFILES_CHUNK = 100


async def _call(session: Any, uri: str, **kwargs: Any) -> Any:
    d: defer.Deferred[Any] = session.call(uri, **kwargs)
    from twisted.internet import reactor

    d.addTimeout(CALL_TIMEOUT_S, reactor)
    return await d


class WampPresence:
    """Asks delivery (``messenger.internal.presence.online``, answered from its presence
    directory: every router shard's users)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    async def online(self, user_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(user_ids), PRESENCE_CHUNK):
            result = await _call(
                self._session, uris.INTERNAL_PRESENCE_ONLINE, user_ids=user_ids[i : i + PRESENCE_CHUNK]
            )
            found.update(result["online"])
        return found


class WampProfiles:
    def __init__(self, session: Any) -> None:
        self._session = session

    async def display_names(self, user_ids: list[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        for i in range(0, len(user_ids), PROFILES_CHUNK):
            result = await _call(self._session, uris.INTERNAL_USERS_PROFILES, user_ids=user_ids[i : i + PROFILES_CHUNK])
            names.update((u["user_id"], u["display_name"]) for u in result["users"])
        return names


class PushWamp:
    def __init__(self, service: PushService, session: Any, vapid_public_key: str | None = None) -> None:
        self.s = service
        self.session = session
        self.vapid_public_key = vapid_public_key

    def procedures(self) -> dict[str, Handler]:
        return {
            uris.PUSH_REGISTER: self.register,
            uris.PUSH_UNREGISTER: self.unregister,
            uris.PUSH_CONFIG: self.config,
            uris.INTERNAL_PUSH_NOTIFY: self.notify,
            uris.INTERNAL_PUSH_NOTIFY_MANY: self.notify_many,
        }

    backend_only = frozenset({uris.INTERNAL_PUSH_NOTIFY, uris.INTERNAL_PUSH_NOTIFY_MANY})

    async def _device_id(self, caller: Caller) -> str:
        """The calling session's device (``authextra.device_id``, set at the ticket join)."""
        try:
            info = await self.session.call("wamp.session.get", caller.session_id)
        except ApplicationError:
            info = None
        device_id = ((info or {}).get("authextra") or {}).get("device_id")
        if not isinstance(device_id, str) or not device_id:
            raise Unauthenticated("this session has no device; log in again")
        return device_id

    async def register(self, caller: Caller, platform: Any, token: Any) -> Any:
        user_id = caller.user_id
        return await self.s.register(user_id, await self._device_id(caller), platform, token)

    async def unregister(self, caller: Caller, platform: Any, token: Any) -> Any:
        return await self.s.unregister(caller.user_id, platform, token)

    async def config(self, caller: Caller) -> Any:
        caller.user_id  # noqa: B018 - users only
        return {"platforms": sorted(self.s.enabled), "vapid_public_key": self.vapid_public_key}

    async def notify(
        self,
        caller: Caller,
        chat_id: Any,
        chat_kind: Any,
        sender_id: Any,
        message_id: Any,
        seq: Any,
        recipients: Any,
        chat_title: Any = None,
        sender_name: Any = None,
        text_preview: Any = None,
        has_media: Any = False,
    ) -> Any:
        queued = self.s.notify(
            {
                "chat_id": chat_id,
                "chat_kind": chat_kind,
                "chat_title": chat_title,
                "sender_id": sender_id,
                "sender_name": sender_name,
                "message_id": message_id,
                "seq": seq,
                "text_preview": text_preview,
                "has_media": has_media,
                "recipients": recipients,
            }
        )
        return {"queued": queued}

    async def notify_many(self, caller: Caller, notices: Any) -> Any:
        """Several notices in one call; a malformed one is skipped (and counted), not the rest."""
        if not isinstance(notices, list) or len(notices) > NOTICES_PER_CALL_MAX:
            raise InvalidArgument(f"notices must be a list of at most {NOTICES_PER_CALL_MAX} notices")
        queued = rejected = 0
        for raw in notices:
            try:
                queued += bool(self.s.notify(raw if isinstance(raw, dict) else {}))
            except InvalidArgument as e:
                rejected += 1
                log.warn("push notice rejected: {e}", e=e.message)
        return {"queued": queued, "rejected": rejected}

    def on_device_revoked(self, user_id: Any = None, device_id: Any = None, **_: Any) -> defer.Deferred[Any] | None:
        if not isinstance(user_id, str) or not isinstance(device_id, str):
            return None
        return defer.ensureDeferred(self.s.device_revoked(user_id, device_id))
