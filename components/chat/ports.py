"""Ports of the chat component. One contract suite (``tests/contract/test_chat_store.py``) runs
against every adapter: ``adapters/sqlite.py`` (embedded) and ``adapters/cassandra.py``
(distributed). See ``docs/design/messaging.md``.

Every method is a coroutine; a dependency failure surfaces as ``common.errors.Unavailable``.
Update ``data`` must be JSON-serializable and comes back as it round-trips through JSON
(tuples become lists). Adapters that cannot write a change and its updates atomically
(Cassandra) complete interrupted writes themselves, from ``start()`` and periodically.
Stores never decide rules (who may do what): the service does, with ``domain``; stores make
each change and the updates it causes durable together, and allocate ``seq`` and
``update_id`` without gaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from components.chat.domain import Chat, Message, Receipts, Update


@dataclass(frozen=True)
class UpdateDraft:
    """An update for one user's stream; the store assigns its ``update_id`` (the user's next).

    ``dedupe_key``: if the user already has an update with this key, nothing is stored and the
    existing update is answered instead (a retried or recovered write never appears twice)."""

    user_id: str
    type: str
    chat_id: str | None
    at_ms: int
    data: dict[str, Any] = field(hash=False)
    dedupe_key: str | None = None


@dataclass(frozen=True)
class MessageDraft:
    """A message before the store gives it a ``seq``."""

    message_id: str
    chat_id: str
    sender_id: str
    client_msg_id: str
    text: str | None
    sent_at_ms: int
    reply_to: int | None = None
    media: tuple[Any, ...] = field(default=(), hash=False)  # summaries from the media component

    def accepted(self, seq: int) -> Message:
        """The message this draft becomes when the store gives it ``seq`` (version 1)."""
        return Message(
            message_id=self.message_id,
            chat_id=self.chat_id,
            seq=seq,
            sender_id=self.sender_id,
            client_msg_id=self.client_msg_id,
            text=self.text,
            sent_at_ms=self.sent_at_ms,
            reply_to=self.reply_to,
            media=tuple(self.media),
        )


@dataclass(frozen=True)
class Appended:
    message: Message
    updates: list[Update]  # empty when ``duplicate``
    duplicate: bool  # (sender, client_msg_id) was seen before: ``message`` is the first one


class ChatStore(Protocol):
    # -- chats ---------------------------------------------------------------------------------
    async def create_chat(self, chat: Chat, updates: list[UpdateDraft]) -> tuple[Chat, bool, list[Update]]:
        """Store a new chat (``version`` 1, ``last_seq`` 0), a receipts row (0, 0) for every
        member, and ``updates``, atomically. If ``chat_id`` exists already, store nothing and
        answer ``(existing chat, False, [])``; else ``(chat, True, stored updates)``."""
        ...

    async def get_chat(self, chat_id: str) -> Chat | None: ...

    async def update_chat(self, chat: Chat, expected_version: int, updates: list[UpdateDraft]) -> list[Update]:
        """Replace the chat row (title, owner, members, updated_at: the caller passes "now") if its stored version is
        ``expected_version``, storing it with ``version = expected_version + 1``; members no longer
        in ``chat.members`` lose their receipts row, new members get one at the *stored*
        ``(last_seq, last_seq)`` of the moment of the change (nothing unread from before they joined); plus
        ``updates``; atomically. ``last_seq`` and ``last_message`` are the store's own and are not
        taken from ``chat``. Raises ``Conflict`` if the version differs (the caller re-reads and
        retries) and ``NotFound`` if there is no such chat."""
        ...

    async def list_user_chats(self, user_id: str) -> list[tuple[Chat, Receipts]]:
        """Every chat the user is a member of, with the user's receipts (any order)."""
        ...

    # -- messages ------------------------------------------------------------------------------
    async def append_message(self, draft: MessageDraft) -> Appended:
        """Accept a message, atomically (or recoverably, see the design):

        - if ``(draft.sender_id, draft.client_msg_id)`` was accepted before (in any chat), store
          nothing and answer that message with ``duplicate=True``;
        - otherwise give it ``seq = chat.last_seq + 1`` (``NotFound`` if no such chat), store it
          (``version`` 1), set the chat's ``last_seq``, ``last_message`` (``message.to_dict()``)
          and ``updated_at_ms = draft.sent_at_ms``, move the sender's receipts to
          ``(seq, seq)``, and append a ``message.new`` update (``data = message.to_dict()``,
          ``at_ms = sent_at_ms``, dedupe key ``msg:<chat_id>:<seq>``) for every member of the
          chat as stored at that moment.
        Concurrent appends to one chat get distinct, consecutive seqs. Appending does not bump
        the chat's ``version`` (only ``update_chat`` does), so messages never make a membership
        change conflict. The caller checks that the sender is a member."""
        ...

    async def get_message(self, chat_id: str, message_id: str) -> Message | None: ...

    async def update_message(self, message: Message, expected_version: int, updates: list[UpdateDraft]) -> list[Update]:
        """Replace text, media, reactions, edited_at and deleted of a stored message if its
        version is ``expected_version`` (storing ``expected_version + 1``), plus ``updates``.
        If it is the chat's last message, the chat's ``last_message`` follows. ``Conflict`` on a
        version mismatch, ``NotFound`` if there is no such message."""
        ...

    async def history(self, chat_id: str, lo: int, hi: int) -> list[Message]:
        """Messages with ``lo <= seq <= hi``, newest first (``hi`` may lie beyond the last seq)."""
        ...

    # -- receipts ------------------------------------------------------------------------------
    async def get_receipts(self, chat_id: str, user_id: str) -> Receipts | None:
        """None if the user is not a member."""
        ...

    async def set_receipts(
        self, chat_id: str, user_id: str, new: Receipts, expected: Receipts, updates: list[UpdateDraft]
    ) -> list[Update]:
        """Compare-and-set of one member's receipts, plus ``updates``. ``Conflict`` if the stored
        receipts are not ``expected`` (the caller re-reads and retries); ``NotFound`` if the user
        is not a member."""
        ...

    # -- update stream -------------------------------------------------------------------------
    async def append_updates(self, updates: list[UpdateDraft]) -> list[Update]:
        """Store updates that go with no other change (ids assigned per user, in list order)."""
        ...

    async def get_updates(self, user_id: str, lo: int, hi: int) -> list[Update]:
        """The user's updates with ``lo <= update_id <= hi``, ascending (``hi`` may lie beyond the last)."""
        ...

    async def last_update_id(self, user_id: str) -> int:
        """0 for a user with no updates."""
        ...

    # -- per-member settings -------------------------------------------------------------------
    async def set_mute(self, chat_id: str, user_id: str, until_ms: int | None) -> None:
        """Mute the chat's push notifications for the user until ``until_ms`` (ms since the
        epoch), or unmute (None). Idempotent. The caller checks that the user is a member."""
        ...

    async def mutes(self, chat_id: str) -> dict[str, int]:
        """``{user_id: until_ms}`` of the chat's users with a mute set (expired ones may be
        included: the caller compares with now)."""
        ...
