"""WAMP edge of the chat component: unpack, call the service, and the WAMP-side ports
(accounts directory over RPC, notifier publishing to delivery)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.errors import InvalidArgument, Unavailable
from common.wampkit import Caller, Handler
from components.chat import domain as d
from components.chat.domain import Update
from components.chat.service import ChatService
from realms import uris

log = Logger(namespace="messenger.chat")


class WampDirectory:
    def __init__(self, session: Any) -> None:
        self._session = session

    async def existing(self, user_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(user_ids), 200):
            result = await self._session.call(uris.INTERNAL_USERS_EXISTING, user_ids=user_ids[i : i + 200])
            found.update(result["user_ids"])
        return found

    async def is_blocked(self, blocker_id: str, blocked_id: str) -> bool:
        result = await self._session.call(uris.INTERNAL_USER_BLOCKED, blocker_id=blocker_id, blocked_id=blocked_id)
        return bool(result["blocked"])


class WampMedia:
    def __init__(self, session: Any) -> None:
        self._session = session

    async def attach(self, owner_id: str, chat_id: str, media_ids: list[str]) -> list[dict[str, Any]]:
        try:
            result = await self._session.call(
                uris.INTERNAL_MEDIA_ATTACH, owner_id=owner_id, chat_id=chat_id, media_ids=media_ids
            )
        except ApplicationError as e:
            if e.error == ApplicationError.NO_SUCH_PROCEDURE:
                raise Unavailable("the media component is not running; retry later") from None
            raise  # messenger.error.* from media: the caller sees it as is
        media: list[dict[str, Any]] = result["media"]
        return media


class WampNotifier:
    """Hands stored updates to delivery (``{updates: [{user_id, type, update_id, chat_id, at,
    data}, ...]}``) and ephemeral events (``{user_ids, envelope}``), without waiting: the
    caller's answer never depends on delivery. A failed hand-over loses nothing durable; the
    clients heal the gap with ``sync.get_updates``."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def _fire(self, uri: str, **kwargs: Any) -> None:
        d = self._session.call(uri, **kwargs)
        d.addErrback(lambda f: log.debug("hand-over to delivery failed: {e}", e=f.getErrorMessage()))

    def updates(self, updates: list[Update]) -> None:
        self._fire(uris.INTERNAL_DELIVER, updates=[{"user_id": u.user_id, **u.envelope()} for u in updates])

    def ephemeral(self, user_ids: list[str], envelope: dict[str, Any]) -> None:
        self._fire(uris.INTERNAL_DELIVER_EPHEMERAL, user_ids=user_ids, envelope=envelope)


class WampPusher:
    """Passes new messages to ``messenger.internal.push.notify_many`` (shared registration,
    roundrobin), in the background and without waiting for the answer beyond logging it: the
    send has been answered already. Notices are batched: one call per ``batch_s`` (or per
    ``batch_max`` notices), not one per message (measured: the per-message call cost the
    embedded node ~0.2 ms of CPU per message). A missing, slow or failing push component costs
    nothing but a log line (the first failure, then every 1000th)."""

    def __init__(
        self, session: Any, reactor: Any, timeout_s: float = 5.0, batch_s: float = 0.02, batch_max: int = 200
    ) -> None:
        self._session = session
        self._reactor = reactor
        self._timeout_s = timeout_s
        self._batch_s = batch_s
        self._batch_max = batch_max
        self._pending: list[dict[str, Any]] = []
        self._flush_call: Any = None
        self.failures = 0

    def message_new(self, notice: Awaitable[dict[str, Any] | None]) -> None:
        defer.ensureDeferred(self._collect(notice)).addErrback(self._failed)

    async def _collect(self, notice: Awaitable[dict[str, Any] | None]) -> None:
        payload = await notice
        if payload is None:
            return
        self._pending.append(payload)
        if len(self._pending) >= self._batch_max:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self._reactor.callLater(self._batch_s, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        batch, self._pending = self._pending, []
        if batch:
            defer.ensureDeferred(self._hand_over(batch)).addErrback(self._failed)

    async def _hand_over(self, batch: list[dict[str, Any]]) -> None:
        d = self._session.call(uris.INTERNAL_PUSH_NOTIFY_MANY, notices=batch)
        d.addTimeout(self._timeout_s, self._reactor)
        await d

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log.warn("hand-over to push failed ({n} so far): {e}", n=self.failures, e=failure.getErrorMessage())


class ChatWamp:
    def __init__(self, service: ChatService) -> None:
        self.s = service

    def procedures(self) -> dict[str, Handler]:
        return {
            uris.CHAT_CREATE_DIRECT: self.create_direct,
            uris.CHAT_CREATE_GROUP: self.create_group,
            uris.CHAT_GET: self.get,
            uris.CHAT_LIST: self.list_chats,
            uris.CHAT_ADD_MEMBERS: self.add_members,
            uris.CHAT_REMOVE_MEMBER: self.remove_member,
            uris.CHAT_LEAVE: self.leave,
            uris.CHAT_UPDATE: self.update,
            uris.CHAT_TYPING: self.typing,
            uris.MESSAGE_SEND: self.send,
            uris.MESSAGE_HISTORY: self.history,
            uris.MESSAGE_EDIT: self.edit,
            uris.MESSAGE_DELETE: self.delete,
            uris.MESSAGE_REACT: self.react,
            uris.MESSAGE_MARK_DELIVERED: self.mark_delivered,
            uris.MESSAGE_MARK_READ: self.mark_read,
            uris.SYNC_GET_UPDATES: self.get_updates,
            uris.CHAT_MUTE: self.mute,
            uris.INTERNAL_CHAT_UPDATES: self.internal_updates,
            uris.INTERNAL_CHAT_PARTNERS: self.internal_partners,
            uris.INTERNAL_CHAT_IS_MEMBER: self.internal_is_member,
        }

    backend_only = frozenset({uris.INTERNAL_CHAT_UPDATES, uris.INTERNAL_CHAT_PARTNERS, uris.INTERNAL_CHAT_IS_MEMBER})

    async def create_direct(self, caller: Caller, user_id: Any) -> Any:
        return await self.s.create_direct(caller.user_id, user_id)

    async def create_group(self, caller: Caller, title: Any, member_ids: Any) -> Any:
        return await self.s.create_group(caller.user_id, title, member_ids)

    async def get(self, caller: Caller, chat_id: Any) -> Any:
        return await self.s.get(caller.user_id, chat_id)

    async def list_chats(self, caller: Caller, limit: Any = None, cursor: Any = None) -> Any:
        return await self.s.list_chats(caller.user_id, limit, cursor)

    async def add_members(self, caller: Caller, chat_id: Any, user_ids: Any) -> Any:
        return await self.s.add_members(caller.user_id, chat_id, user_ids)

    async def remove_member(self, caller: Caller, chat_id: Any, user_id: Any) -> Any:
        return await self.s.remove_member(caller.user_id, chat_id, user_id)

    async def leave(self, caller: Caller, chat_id: Any) -> Any:
        return await self.s.leave(caller.user_id, chat_id)

    async def update(self, caller: Caller, chat_id: Any, title: Any) -> Any:
        return await self.s.update(caller.user_id, chat_id, title)

    async def typing(self, caller: Caller, chat_id: Any) -> Any:
        return await self.s.typing(caller.user_id, chat_id)

    async def mute(self, caller: Caller, chat_id: Any, until: Any) -> Any:
        return await self.s.mute(caller.user_id, chat_id, until)

    async def send(
        self,
        caller: Caller,
        chat_id: Any,
        client_msg_id: Any,
        text: Any = None,
        reply_to: Any = None,
        media_ids: Any = None,
    ) -> Any:
        return await self.s.send(caller.user_id, chat_id, client_msg_id, text, reply_to, media_ids)

    async def history(self, caller: Caller, chat_id: Any, before_seq: Any = None, limit: Any = None) -> Any:
        return await self.s.history(caller.user_id, chat_id, before_seq, limit)

    async def edit(self, caller: Caller, chat_id: Any, message_id: Any, text: Any) -> Any:
        return await self.s.edit(caller.user_id, chat_id, message_id, text)

    async def delete(self, caller: Caller, chat_id: Any, message_id: Any) -> Any:
        return await self.s.delete(caller.user_id, chat_id, message_id)

    async def react(self, caller: Caller, chat_id: Any, message_id: Any, emoji: Any = None) -> Any:
        return await self.s.react(caller.user_id, chat_id, message_id, emoji)

    async def mark_delivered(self, caller: Caller, chat_id: Any, up_to_seq: Any) -> Any:
        return await self.s.mark(caller.user_id, chat_id, up_to_seq, d.RECEIPT_DELIVERED)

    async def mark_read(self, caller: Caller, chat_id: Any, up_to_seq: Any) -> Any:
        return await self.s.mark(caller.user_id, chat_id, up_to_seq, d.RECEIPT_READ)

    async def get_updates(self, caller: Caller, since_update_id: Any = None, limit: Any = None) -> Any:
        return await self.s.get_updates(caller.user_id, since_update_id, limit)

    # -- backend -----------------------------------------------------------------------------
    async def internal_updates(self, caller: Caller, user_id: Any, lo: Any, hi: Any) -> Any:
        uid = d.validate_id(user_id, "user_id")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
            raise InvalidArgument("lo and hi must be integers")
        hi = min(hi, lo + d.PAGE_MAX - 1)
        updates = await self.s.updates_between(uid, lo, hi)
        return {"updates": [u.envelope() for u in updates]}

    async def internal_partners(self, caller: Caller, user_id: Any) -> Any:
        return {"user_ids": await self.s.partners(d.validate_id(user_id, "user_id"))}

    async def internal_is_member(self, caller: Caller, chat_id: Any, user_id: Any) -> Any:
        cid, uid = d.validate_id(chat_id, "chat_id"), d.validate_id(user_id, "user_id")
        return {"member": await self.s.is_member(cid, uid)}
