"""Use cases of chats and messages. Takes ports and a clock; knows nothing of WAMP or drivers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from common.clock import Clock
from common.errors import Conflict, Forbidden, InvalidArgument, NotFound, RateLimited
from common.ports import RateLimiter
from components.chat import domain as d
from components.chat.domain import Chat, Message, Receipts, Update
from components.chat.ports import ChatStore, MessageDraft, UpdateDraft

T = TypeVar("T")
ChatChange = Callable[[Chat], tuple[Chat, str, list[str]]]
CAS_ATTEMPTS = 8


class Directory(Protocol):
    """What the chat component asks the accounts component."""

    async def existing(self, user_ids: list[str]) -> set[str]:
        """The ids among ``user_ids`` that belong to accounts."""
        ...

    async def is_blocked(self, blocker_id: str, blocked_id: str) -> bool: ...


class Notifier(Protocol):
    """Hands stored updates and ephemeral events to delivery."""

    def updates(self, updates: list[Update]) -> None: ...

    def ephemeral(self, user_ids: list[str], envelope: dict[str, Any]) -> None: ...


class MediaCatalog(Protocol):
    """What the chat component asks the media component."""

    async def attach(self, owner_id: str, chat_id: str, media_ids: list[str]) -> list[dict[str, Any]]:
        """Summaries of the given media, in order, after checking that each is complete and
        ``owner_id``'s (else ``invalid_argument`` / ``forbidden``); records that they were posted
        in ``chat_id``."""
        ...


class Pusher(Protocol):
    """Hands new messages to the push component, in the background: the send never waits for it,
    and a push component that is missing, slow or failing never fails or slows a send."""

    def message_new(self, notice: Awaitable[dict[str, Any] | None]) -> None:
        """Await ``notice`` off the caller's path; if it answers a notice, pass it on."""
        ...


MUTES_TTL_MS = 10_000
MUTES_CACHE_MAX = 10_000


@dataclass(frozen=True)
class ChatLimits:
    send_per_window: int = 40  # 20/s with a burst of 40: 40 per 2 s windows
    send_window_ms: int = 2000
    typing_window_ms: int = 3000


class ChatService:
    def __init__(
        self,
        store: ChatStore,
        directory: Directory,
        notifier: Notifier,
        limiter: RateLimiter,
        clock: Clock,
        limits: ChatLimits | None = None,
        media: MediaCatalog | None = None,
        pusher: Pusher | None = None,
    ) -> None:
        self.store = store
        self.media = media
        self.directory = directory
        self.notifier = notifier
        self.limiter = limiter
        self.clock = clock
        self.limits = limits or ChatLimits()
        self.pusher = pusher
        self._mutes: dict[str, tuple[int, dict[str, int]]] = {}  # chat id -> (valid until ms, mutes)

    # -- helpers -----------------------------------------------------------------------------
    async def _member_chat(self, user_id: str, chat_id: Any) -> Chat:
        cid = d.validate_id(chat_id, "chat_id")
        return d.require_member(await self.store.get_chat(cid), user_id)

    async def _view(self, user_id: str, chat: Chat) -> dict[str, Any]:
        receipts = await self.store.get_receipts(chat.chat_id, user_id) or Receipts()
        return d.chat_view(chat, receipts)

    def _drafts(self, user_ids: list[str], type_: str, chat_id: str, data: dict[str, Any]) -> list[UpdateDraft]:
        now = self.clock.now_ms()
        return [UpdateDraft(u, type_, chat_id, now, data) for u in user_ids]

    async def _retry(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Re-read and retry an optimistic change that lost a race."""
        for _ in range(CAS_ATTEMPTS - 1):
            try:
                return await attempt()
            except Conflict:
                continue
        return await attempt()

    async def _limit(self, key: str, count: int, window_ms: int, what: str) -> None:
        retry_after = await self.limiter.hit(key, count, window_ms)
        if retry_after > 0:
            raise RateLimited(f"too many {what}; retry in {retry_after} ms", retry_after_ms=retry_after)

    def _publish(self, updates: list[Update]) -> None:
        if updates:
            self.notifier.updates(updates)

    # -- chats -------------------------------------------------------------------------------
    async def create_direct(self, user_id: str, other: Any) -> dict[str, Any]:
        other_id = d.validate_id(other, "user_id")
        if other_id == user_id:
            raise InvalidArgument("a direct chat needs another user")
        if other_id not in await self.directory.existing([other_id]):
            raise NotFound("no such user")
        if await self.directory.is_blocked(other_id, user_id):
            raise Forbidden("this user does not accept messages from you")
        chat = d.new_direct(user_id, other_id, self.clock.now_ms())
        data = d.chat_view(chat, Receipts())
        stored, _, updates = await self.store.create_chat(
            chat, self._drafts(chat.member_ids, d.CHAT_CREATED, chat.chat_id, data)
        )
        self._publish(updates)
        return await self._view(user_id, stored)

    async def create_group(self, user_id: str, title: Any, member_ids: Any) -> dict[str, Any]:
        name = d.validate_title(title)
        others = [u for u in d.validate_user_list(member_ids) if u != user_id]
        missing = set(others) - await self.directory.existing(others) if others else set()
        if missing:
            raise NotFound(f"no such user: {', '.join(sorted(missing))}")
        chat = d.new_group(d.new_id(), user_id, name, others, self.clock.now_ms())
        data = d.chat_view(chat, Receipts())
        stored, _, updates = await self.store.create_chat(
            chat, self._drafts(chat.member_ids, d.CHAT_CREATED, chat.chat_id, data)
        )
        self._publish(updates)
        return await self._view(user_id, stored)

    async def get(self, user_id: str, chat_id: Any) -> dict[str, Any]:
        """The chat, plus every other member's receipts (``receipts``: user id ->
        ``{last_delivered_seq, last_read_seq}``), so a client can show delivered/read ticks
        for messages older than its session (live changes come as receipt events)."""
        chat = await self._member_chat(user_id, chat_id)
        view = await self._view(user_id, chat)
        receipts: dict[str, dict[str, int]] = {}
        for other in chat.member_ids:
            if other != user_id:
                r = await self.store.get_receipts(chat.chat_id, other) or Receipts()
                receipts[other] = {"last_delivered_seq": r.last_delivered_seq, "last_read_seq": r.last_read_seq}
        view["receipts"] = receipts
        return view

    async def list_chats(self, user_id: str, limit: Any, cursor: Any) -> dict[str, Any]:
        n = d.validate_limit(limit, d.CHAT_LIST_DEFAULT)
        after = d.decode_cursor(cursor)
        rows = sorted(await self.store.list_user_chats(user_id), key=lambda cr: (-cr[0].updated_at_ms, cr[0].chat_id))
        if after is not None:
            rows = [cr for cr in rows if (-cr[0].updated_at_ms, cr[0].chat_id) > (-after[0], after[1])]
        page = rows[:n]
        next_cursor = (
            d.encode_cursor(page[-1][0].updated_at_ms, page[-1][0].chat_id) if len(rows) > n and page else None
        )
        return {"chats": [d.chat_view(c, r) for c, r in page], "next_cursor": next_cursor}

    async def _change_chat(
        self, user_id: str, chat_id: Any, change: Callable[[Chat], tuple[Chat, str, list[str]]]
    ) -> Chat:
        """Apply ``change(chat) -> (new chat, update type, extra recipients)`` with optimistic retries."""

        async def attempt() -> tuple[Chat, list[Update]]:
            chat = await self._member_chat(user_id, chat_id)
            new, type_, extra = change(chat)
            if new == chat:
                return chat, []
            recipients = list(dict.fromkeys([*new.member_ids, *extra]))
            data = d.chat_view(new, Receipts())
            updates = await self.store.update_chat(
                new, chat.version, self._drafts(recipients, type_, new.chat_id, data)
            )
            return new, updates

        new, updates = await self._retry(attempt)
        self._publish(updates)
        return new

    async def add_members(self, user_id: str, chat_id: Any, user_ids: Any) -> dict[str, Any]:
        wanted = d.validate_user_list(user_ids, "user_ids")
        missing = set(wanted) - await self.directory.existing(wanted) if wanted else set()
        if missing:
            raise NotFound(f"no such user: {', '.join(sorted(missing))}")
        now = self.clock.now_ms()
        chat = await self._change_chat(
            user_id, chat_id, lambda c: (d.add_members(c, user_id, wanted, now)[0], d.CHAT_MEMBER_ADDED, [])
        )
        return await self._view(user_id, chat)

    async def remove_member(self, user_id: str, chat_id: Any, target: Any) -> dict[str, Any]:
        target_id = d.validate_id(target, "user_id")
        now = self.clock.now_ms()
        chat = await self._change_chat(
            user_id,
            chat_id,
            lambda c: (d.remove_member(c, user_id, target_id, now), d.CHAT_MEMBER_REMOVED, [target_id]),
        )
        return {} if target_id == user_id else await self._view(user_id, chat)

    async def leave(self, user_id: str, chat_id: Any) -> dict[str, Any]:
        return await self.remove_member(user_id, chat_id, user_id)

    async def update(self, user_id: str, chat_id: Any, title: Any) -> dict[str, Any]:
        name = d.validate_title(title)
        now = self.clock.now_ms()
        chat = await self._change_chat(
            user_id, chat_id, lambda c: (d.rename(c, user_id, name, now), d.CHAT_UPDATED, [])
        )
        return await self._view(user_id, chat)

    async def typing(self, user_id: str, chat_id: Any) -> dict[str, Any]:
        chat = await self._member_chat(user_id, chat_id)
        await self._limit(f"typing:{user_id}:{chat.chat_id}", 1, self.limits.typing_window_ms, "typing events")
        others = [u for u in chat.member_ids if u != user_id]
        if others:
            envelope = d.ephemeral_envelope(d.TYPING, chat.chat_id, self.clock.now_ms(), {"user_id": user_id})
            self.notifier.ephemeral(others, envelope)
        return {}

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        chat = await self.store.get_chat(chat_id)
        return chat is not None and user_id in chat.member_ids

    async def partners(self, user_id: str) -> list[str]:
        """Users sharing at least one chat with ``user_id`` (presence goes to them)."""
        out: dict[str, None] = {}
        for chat, _ in await self.store.list_user_chats(user_id):
            for u in chat.member_ids:
                if u != user_id:
                    out[u] = None
        return list(out)

    # -- messages ----------------------------------------------------------------------------
    async def send(
        self, user_id: str, chat_id: Any, client_msg_id: Any, text: Any, reply_to: Any, media_ids: Any
    ) -> dict[str, Any]:
        cid = d.validate_id(chat_id, "chat_id")
        client_id = d.validate_client_msg_id(client_msg_id)
        body, media_ids_ = d.validate_content(text, media_ids)
        if media_ids_ and self.media is None:
            raise InvalidArgument("media attachments are not available (no media component)")
        await self._limit(f"send:{user_id}", self.limits.send_per_window, self.limits.send_window_ms, "messages")
        chat = d.require_member(await self.store.get_chat(cid), user_id)
        reply = d.validate_reply_to(reply_to, chat.last_seq)
        if chat.type == d.DIRECT:
            other = next(u for u in chat.member_ids if u != user_id)
            if await self.directory.is_blocked(other, user_id):
                raise Forbidden("this user does not accept messages from you")
        # checked and recorded as posted here before the message is stored: a message never
        # carries media its members cannot fetch (a failed append leaves only that record)
        media = tuple(await self.media.attach(user_id, cid, list(media_ids_))) if media_ids_ and self.media else ()
        draft = MessageDraft(
            message_id=d.new_id(),
            chat_id=cid,
            sender_id=user_id,
            client_msg_id=client_id,
            text=body,
            sent_at_ms=self.clock.now_ms(),
            reply_to=reply,
            media=media,
        )
        appended = await self.store.append_message(draft)
        self._publish(appended.updates)
        m = appended.message
        if self.pusher is not None and not appended.duplicate:
            self.pusher.message_new(self._push_notice(chat, m))
        return {"message_id": m.message_id, "chat_id": m.chat_id, "seq": m.seq, "sent_at": m.sent_at_ms}

    async def _push_notice(self, chat: Chat, message: Message) -> dict[str, Any] | None:
        if len(chat.members) < 2:
            return None
        return d.push_notice(chat, message, await self._chat_mutes(chat.chat_id), self.clock.now_ms())

    async def _chat_mutes(self, chat_id: str) -> dict[str, int]:
        """The chat's mutes, read at most every ``MUTES_TTL_MS`` per process (a mute set through
        another instance applies within that time; one set here at once)."""
        now = self.clock.now_ms()
        hit = self._mutes.get(chat_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        mutes = await self.store.mutes(chat_id)
        if len(self._mutes) >= MUTES_CACHE_MAX:
            self._mutes.clear()
        self._mutes[chat_id] = (now + MUTES_TTL_MS, mutes)
        return mutes

    async def mute(self, user_id: str, chat_id: Any, until: Any) -> dict[str, Any]:
        chat = await self._member_chat(user_id, chat_id)
        end = d.validate_mute_until(until, self.clock.now_ms())
        await self.store.set_mute(chat.chat_id, user_id, end)
        self._mutes.pop(chat.chat_id, None)
        return {"chat_id": chat.chat_id, "muted_until": end}

    async def history(self, user_id: str, chat_id: Any, before_seq: Any, limit: Any) -> dict[str, Any]:
        n = d.validate_limit(limit, d.HISTORY_DEFAULT)
        chat = await self._member_chat(user_id, chat_id)
        lo, hi = d.history_range(before_seq, chat.last_seq, n)
        messages = await self.store.history(chat.chat_id, lo, hi) if hi >= lo else []
        return {"messages": [m.to_dict() for m in messages]}

    async def _change_message(
        self, user_id: str, chat_id: Any, message_id: Any, type_: str, change: Callable[[Message], Message]
    ) -> dict[str, Any]:
        mid = d.validate_id(message_id, "message_id")

        async def attempt() -> tuple[Message, list[Update]]:
            chat = await self._member_chat(user_id, chat_id)
            message = await self.store.get_message(chat.chat_id, mid)
            if message is None:
                raise NotFound("no such message")
            new = change(message)
            if new == message:
                return message, []
            drafts = self._drafts(chat.member_ids, type_, chat.chat_id, new.to_dict())
            return new, await self.store.update_message(new, message.version, drafts)

        new, updates = await self._retry(attempt)
        self._publish(updates)
        return new.to_dict()

    async def edit(self, user_id: str, chat_id: Any, message_id: Any, text: Any) -> dict[str, Any]:
        body = d.validate_text(text, required=True)
        assert body is not None
        now = self.clock.now_ms()
        return await self._change_message(
            user_id,
            chat_id,
            message_id,
            d.MESSAGE_EDITED,
            lambda m: d.edit(d.require_own_live_message(m, user_id), body, now),
        )

    async def delete(self, user_id: str, chat_id: Any, message_id: Any) -> dict[str, Any]:
        now = self.clock.now_ms()
        return await self._change_message(
            user_id,
            chat_id,
            message_id,
            d.MESSAGE_DELETED,
            lambda m: d.delete(d.require_own_live_message(m, user_id), now),
        )

    async def react(self, user_id: str, chat_id: Any, message_id: Any, emoji: Any) -> dict[str, Any]:
        e = d.validate_emoji(emoji)
        return await self._change_message(
            user_id, chat_id, message_id, d.MESSAGE_REACTION, lambda m: d.react(m, user_id, e)
        )

    async def mark(self, user_id: str, chat_id: Any, up_to_seq: Any, kind: str) -> dict[str, Any]:
        async def attempt() -> tuple[Receipts, list[Update]]:
            chat = await self._member_chat(user_id, chat_id)
            current = await self.store.get_receipts(chat.chat_id, user_id)
            if current is None:
                raise NotFound("no such chat")
            new = d.advance_receipts(current, kind, up_to_seq, chat.last_seq)
            if new is None:
                return current, []
            drafts: list[UpdateDraft] = []
            if new.last_delivered_seq != current.last_delivered_seq:
                drafts += self._drafts(
                    chat.member_ids,
                    d.RECEIPT_DELIVERED,
                    chat.chat_id,
                    {"user_id": user_id, "up_to_seq": new.last_delivered_seq},
                )
            if new.last_read_seq != current.last_read_seq:
                drafts += self._drafts(
                    chat.member_ids, d.RECEIPT_READ, chat.chat_id, {"user_id": user_id, "up_to_seq": new.last_read_seq}
                )
            return new, await self.store.set_receipts(chat.chat_id, user_id, new, current, drafts)

        receipts, updates = await self._retry(attempt)
        self._publish(updates)
        return {"last_delivered_seq": receipts.last_delivered_seq, "last_read_seq": receipts.last_read_seq}

    # -- sync --------------------------------------------------------------------------------
    async def get_updates(self, user_id: str, since: Any, limit: Any) -> dict[str, Any]:
        after = d.validate_since(since)
        n = d.validate_limit(limit, d.UPDATES_DEFAULT)
        last = await self.store.last_update_id(user_id)
        if after >= last:
            return {"updates": [], "last_update_id": last, "has_more": False}
        lo, hi, more = d.updates_range(after, last, n)
        updates = await self.store.get_updates(user_id, lo, hi)
        return {
            "updates": [u.envelope() for u in updates],
            "last_update_id": updates[-1].update_id if updates else after,
            "has_more": more,
        }

    async def updates_between(self, user_id: str, lo: int, hi: int) -> list[Update]:
        """For delivery's gap healing (backend only)."""
        return await self.store.get_updates(user_id, lo, hi)
