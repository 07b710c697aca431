"""WAMP edge of the media component: unpack, call the service; and the chat port over RPC."""

from __future__ import annotations

from typing import Any

from autobahn.wamp.exception import ApplicationError

from common.errors import InvalidArgument, Unavailable
from common.wampkit import Caller, Handler
from components.media.service import MediaService
from realms import uris

ID_MAX = 64


class WampChats:
    def __init__(self, session: Any) -> None:
        self._session = session

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        try:
            result = await self._session.call(uris.INTERNAL_CHAT_IS_MEMBER, chat_id=chat_id, user_id=user_id)
        except ApplicationError as e:
            if e.error == ApplicationError.NO_SUCH_PROCEDURE:
                raise Unavailable("the chat component is not running; retry later") from None
            raise
        return bool(result["member"])


class MediaWamp:
    def __init__(self, service: MediaService) -> None:
        self.s = service

    def procedures(self) -> dict[str, Handler]:
        return {
            uris.MEDIA_CREATE_UPLOAD: self.create_upload,
            uris.MEDIA_COMPLETE: self.complete,
            uris.MEDIA_GET: self.get,
            uris.INTERNAL_MEDIA_ATTACH: self.attach,
        }

    backend_only = frozenset({uris.INTERNAL_MEDIA_ATTACH})

    async def create_upload(self, caller: Caller, content_type: Any, size: Any, filename: Any = None) -> Any:
        return await self.s.create_upload(caller.user_id, content_type, size, filename)

    async def complete(self, caller: Caller, media_id: Any) -> Any:
        return await self.s.complete(caller.user_id, media_id)

    async def get(self, caller: Caller, media_id: Any) -> Any:
        return await self.s.get(caller.user_id, media_id)

    async def attach(self, caller: Caller, owner_id: Any, chat_id: Any, media_ids: Any) -> Any:
        for name, value in (("owner_id", owner_id), ("chat_id", chat_id)):
            if not isinstance(value, str) or not 0 < len(value) <= ID_MAX:
                raise InvalidArgument(f"{name} is not a valid id")
        return await self.s.attach(owner_id, chat_id, media_ids)
