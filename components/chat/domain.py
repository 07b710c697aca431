"""Pure rules of chats, messages, receipts and the per-user update stream.

Imports no Twisted, WAMP or driver. See ``docs/design/messaging.md`` for the design.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from common.errors import Forbidden, InvalidArgument, NotFound

TEXT_MAX = 4096
TITLE_MAX = 128
GROUP_MAX_MEMBERS = 200
CLIENT_MSG_ID_MAX = 64
EMOJI_MAX = 16
MEDIA_PER_MESSAGE_MAX = 10
PAGE_MAX = 100
HISTORY_DEFAULT = 50
UPDATES_DEFAULT = 100
CHAT_LIST_DEFAULT = 50
SEARCH_DEFAULT = 20
BUCKET_SIZE = 1024  # messages (and updates) per Cassandra partition: docs/design/messaging.md

DIRECT, GROUP = "direct", "group"

# durable update types (carry an update_id) and ephemeral ones (never stored)
MESSAGE_NEW = "message.new"
MESSAGE_EDITED = "message.edited"
MESSAGE_DELETED = "message.deleted"
MESSAGE_REACTION = "message.reaction"
RECEIPT_DELIVERED = "receipt.delivered"
RECEIPT_READ = "receipt.read"
CHAT_CREATED = "chat.created"
CHAT_UPDATED = "chat.updated"
CHAT_MEMBER_ADDED = "chat.member_added"
CHAT_MEMBER_REMOVED = "chat.member_removed"
TYPING = "typing"
PRESENCE = "presence"
DURABLE_TYPES = frozenset(
    {
        MESSAGE_NEW,
        MESSAGE_EDITED,
        MESSAGE_DELETED,
        MESSAGE_REACTION,
        RECEIPT_DELIVERED,
        RECEIPT_READ,
        CHAT_CREATED,
        CHAT_UPDATED,
        CHAT_MEMBER_ADDED,
        CHAT_MEMBER_REMOVED,
    }
)
EPHEMERAL_TYPES = frozenset({TYPING, PRESENCE})

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def new_id() -> str:
    return uuid.uuid4().hex


def direct_chat_id(a: str, b: str) -> str:
    """The one chat of a pair of users, whoever creates it: ``create_direct`` is idempotent."""
    lo, hi = sorted((a, b))
    return hashlib.sha256(f"direct:{lo}:{hi}".encode()).hexdigest()[:32]


# -- buckets -------------------------------------------------------------------------------------
def bucket_of(n: int) -> int:
    return n // BUCKET_SIZE


def buckets_between(lo: int, hi: int) -> list[int]:
    """Buckets holding the ids ``lo..hi`` (inclusive), ascending."""
    if hi < lo:
        return []
    return list(range(bucket_of(lo), bucket_of(hi) + 1))


# -- records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    user_id: str
    joined_at_ms: int


@dataclass(frozen=True)
class Chat:
    chat_id: str
    type: str
    title: str | None
    owner_id: str | None
    members: tuple[Member, ...]
    created_at_ms: int
    updated_at_ms: int
    last_seq: int = 0
    last_message: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    version: int = 1  # bumped by every stored change of the chat row (optimistic concurrency)

    @property
    def member_ids(self) -> list[str]:
        return [m.user_id for m in self.members]

    def has_member(self, user_id: str) -> bool:
        return any(m.user_id == user_id for m in self.members)


@dataclass(frozen=True)
class Receipts:
    """One member's position in one chat."""

    last_delivered_seq: int = 0
    last_read_seq: int = 0


@dataclass(frozen=True)
class Message:
    message_id: str
    chat_id: str
    seq: int
    sender_id: str
    client_msg_id: str
    text: str | None
    sent_at_ms: int
    reply_to: int | None = None
    # attachments as the media component summarized them when the message was sent
    # (``{media_id, content_type, size, filename, width, height, has_thumbnail}``; no URLs, they expire)
    media: tuple[Any, ...] = field(default=(), hash=False)
    edited_at_ms: int | None = None
    deleted: bool = False
    reactions: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    version: int = 1  # bumped by every stored change (edit, delete, reaction)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        """The inverse of :meth:`to_dict` (``version`` is not part of the dict: 1)."""
        return cls(
            message_id=d["message_id"],
            chat_id=d["chat_id"],
            seq=d["seq"],
            sender_id=d["sender_id"],
            client_msg_id=d["client_msg_id"],
            text=d["text"],
            sent_at_ms=d["sent_at"],
            reply_to=d["reply_to"],
            media=tuple(d["media"]),
            edited_at_ms=d["edited_at"],
            deleted=d["deleted"],
            reactions={emoji: tuple(users) for emoji, users in d["reactions"].items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "client_msg_id": self.client_msg_id,
            "text": self.text,
            "reply_to": self.reply_to,
            "media": list(self.media),
            "sent_at": self.sent_at_ms,
            "edited_at": self.edited_at_ms,
            "deleted": self.deleted,
            "reactions": {emoji: list(users) for emoji, users in sorted(self.reactions.items())},
        }


@dataclass(frozen=True)
class Update:
    """One durable entry of a user's update stream."""

    user_id: str
    update_id: int
    type: str
    chat_id: str | None
    at_ms: int
    data: dict[str, Any] = field(hash=False)

    def envelope(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "update_id": self.update_id,
            "chat_id": self.chat_id,
            "at": self.at_ms,
            "data": self.data,
        }


def ephemeral_envelope(type_: str, chat_id: str | None, at_ms: int, data: dict[str, Any]) -> dict[str, Any]:
    if type_ not in EPHEMERAL_TYPES:
        raise ValueError(f"{type_} is not an ephemeral type")
    return {"type": type_, "update_id": None, "chat_id": chat_id, "at": at_ms, "data": data}


def chat_view(chat: Chat, receipts: Receipts) -> dict[str, Any]:
    """A chat as one member sees it. Sending marks read for the sender, so there are never own
    messages above the read mark and ``last_seq - last_read_seq`` counts exactly the unread."""
    return {
        "chat_id": chat.chat_id,
        "type": chat.type,
        "title": chat.title,
        "owner_id": chat.owner_id,
        "member_ids": chat.member_ids,
        "last_message": chat.last_message,
        "unread_count": max(0, chat.last_seq - receipts.last_read_seq),
        "last_read_seq": receipts.last_read_seq,
        "last_delivered_seq": receipts.last_delivered_seq,
        "updated_at": chat.updated_at_ms,
    }


# -- validation ----------------------------------------------------------------------------------
def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer")
    return value


def validate_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _HEX32.match(value):
        raise InvalidArgument(f"{name} is not a valid id")
    return value


def validate_client_msg_id(value: Any) -> str:
    if not isinstance(value, str) or not _CLIENT_ID.match(value):
        raise InvalidArgument("client_msg_id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


def validate_text(value: Any, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidArgument("text must not be empty")
        return None
    if not isinstance(value, str):
        raise InvalidArgument("text must be a string")
    if len(value) > TEXT_MAX:
        raise InvalidArgument(f"text must be at most {TEXT_MAX} characters")
    if not value.strip():
        if required:
            raise InvalidArgument("text must not be empty")
        return None
    return value


def validate_media_ids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MEDIA_PER_MESSAGE_MAX:
        raise InvalidArgument(f"media_ids must be a list of at most {MEDIA_PER_MESSAGE_MAX} media ids")
    out: list[str] = []
    for v in value:
        if not isinstance(v, str) or not re.match(r"^[A-Za-z0-9_-]{1,64}$", v):
            raise InvalidArgument("media_ids[] is not a valid media id")
        if v not in out:
            out.append(v)
    return tuple(out)


def validate_content(text: Any, media_ids: Any) -> tuple[str | None, tuple[str, ...]]:
    """A message has text or media (or both)."""
    media = validate_media_ids(media_ids)
    body = validate_text(text, required=not media)
    return body, media


def validate_reply_to(value: Any, last_seq: int) -> int | None:
    if value is None:
        return None
    seq = _int("reply_to", value)
    if not 1 <= seq <= last_seq:
        raise InvalidArgument("reply_to must be the seq of a message in this chat")
    return seq


def validate_title(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("title must be a string")
    s = value.strip()
    if not 1 <= len(s) <= TITLE_MAX:
        raise InvalidArgument(f"title must be 1-{TITLE_MAX} characters")
    if any(ord(c) < 32 for c in s):
        raise InvalidArgument("title must not contain control characters")
    return s


def validate_user_list(value: Any, name: str = "member_ids", max_items: int = GROUP_MAX_MEMBERS) -> list[str]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{name} must be a list of user ids")
    if len(value) > max_items:
        raise InvalidArgument(f"{name} holds at most {max_items} ids")
    out: list[str] = []
    for v in value:
        uid = validate_id(v, f"{name}[]")
        if uid not in out:
            out.append(uid)
    return out


def validate_emoji(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= EMOJI_MAX or value.strip() != value or not value:
        raise InvalidArgument(f"emoji must be 1-{EMOJI_MAX} characters without spaces, or None")
    if any(ord(c) < 32 for c in value):
        raise InvalidArgument("emoji must not contain control characters")
    return value


def validate_limit(value: Any, default: int, maximum: int = PAGE_MAX) -> int:
    if value is None:
        return default
    n = _int("limit", value)
    if n < 1:
        raise InvalidArgument("limit must be at least 1")
    return min(n, maximum)


def validate_since(value: Any) -> int:
    if value is None:
        return 0
    n = _int("since_update_id", value)
    if n < 0:
        raise InvalidArgument("since_update_id must be 0 or more")
    return n


MUTE_UNTIL_MAX = 253_402_300_799_999  # 9999-12-31: "muted for ever" is a far date
PUSH_PREVIEW_MAX = 200


def validate_mute_until(value: Any, now_ms: int) -> int | None:
    """A mute's end (ms since the epoch), or None to unmute; an end in the past unmutes."""
    if value is None:
        return None
    n = _int("until", value)
    if n < 0 or n > MUTE_UNTIL_MAX:
        raise InvalidArgument("until must be a time in ms since the epoch, or null to unmute")
    return n if n > now_ms else None


def push_notice(chat: Chat, message: Message, mutes: dict[str, int], now_ms: int) -> dict[str, Any] | None:
    """What ``messenger.internal.push.notify`` gets for a new message: every member but the
    sender whose mute has not run out; None when nobody is left."""
    recipients = [u for u in chat.member_ids if u != message.sender_id and mutes.get(u, 0) <= now_ms]
    if not recipients:
        return None
    text = message.text
    return {
        "chat_id": chat.chat_id,
        "chat_kind": chat.type,
        "chat_title": chat.title if chat.type == GROUP else None,
        "sender_id": message.sender_id,
        "message_id": message.message_id,
        "seq": message.seq,
        "text_preview": text[:PUSH_PREVIEW_MAX] if text else None,
        "has_media": bool(message.media),
        "recipients": recipients,
    }


# -- paging --------------------------------------------------------------------------------------
def history_range(before_seq: Any, last_seq: int, limit: int) -> tuple[int, int]:
    """Seqs ``lo..hi`` (inclusive) of a history page, newest first, ``seq < before_seq``.
    Messages are never removed (a delete leaves a tombstone), so a chat's seqs have no holes
    and a page is an exact range."""
    if before_seq is None:
        hi = last_seq
    else:
        b = _int("before_seq", before_seq)
        if b < 1:
            raise InvalidArgument("before_seq must be at least 1")
        hi = min(b - 1, last_seq)
    lo = max(1, hi - limit + 1)
    return lo, hi


def updates_range(since: int, last_update_id: int, limit: int) -> tuple[int, int, bool]:
    """Update ids ``lo..hi`` after ``since``, and whether more follow."""
    lo = since + 1
    hi = min(since + limit, last_update_id)
    return lo, hi, last_update_id > hi


def encode_cursor(updated_at_ms: int, chat_id: str) -> str:
    raw = json.dumps([updated_at_ms, chat_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: Any) -> tuple[int, str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise InvalidArgument("cursor is not valid")
    try:
        at, chat_id = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidArgument("cursor is not valid") from None
    if isinstance(at, bool) or not isinstance(at, int) or not isinstance(chat_id, str) or not _HEX32.match(chat_id):
        raise InvalidArgument("cursor is not valid")
    return at, chat_id


# -- membership rules ----------------------------------------------------------------------------
def require_member(chat: Chat | None, user_id: str) -> Chat:
    """Non-members learn nothing about a chat: the answer is the same as for no chat at all."""
    if chat is None or not chat.has_member(user_id):
        raise NotFound("no such chat")
    return chat


def require_group(chat: Chat) -> None:
    if chat.type != GROUP:
        raise InvalidArgument("only group chats can do that")


def new_group(chat_id: str, owner_id: str, title: str, others: list[str], now_ms: int) -> Chat:
    members = [owner_id] + [u for u in others if u != owner_id]
    if len(members) > GROUP_MAX_MEMBERS:
        raise InvalidArgument(f"a group holds at most {GROUP_MAX_MEMBERS} members")
    return Chat(
        chat_id=chat_id,
        type=GROUP,
        title=title,
        owner_id=owner_id,
        members=tuple(Member(u, now_ms) for u in members),
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


def new_direct(a: str, b: str, now_ms: int) -> Chat:
    if a == b:
        raise InvalidArgument("a direct chat needs another user")
    return Chat(
        chat_id=direct_chat_id(a, b),
        type=DIRECT,
        title=None,
        owner_id=None,
        members=(Member(a, now_ms), Member(b, now_ms)),
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


def add_members(chat: Chat, actor: str, user_ids: list[str], now_ms: int) -> tuple[Chat, list[str]]:
    """Any member may add members to a group. Answers the chat and who was really added."""
    require_group(chat)
    if not chat.has_member(actor):
        raise NotFound("no such chat")
    added = [u for u in user_ids if not chat.has_member(u)]
    if len(chat.members) + len(added) > GROUP_MAX_MEMBERS:
        raise InvalidArgument(f"a group holds at most {GROUP_MAX_MEMBERS} members")
    members = chat.members + tuple(Member(u, now_ms) for u in added)
    return replace(chat, members=members, updated_at_ms=now_ms if added else chat.updated_at_ms), added


def remove_member(chat: Chat, actor: str, target: str, now_ms: int) -> Chat:
    """The owner removes others; anyone may remove themself (leave). When the owner leaves,
    the longest-standing remaining member becomes owner."""
    require_group(chat)
    if not chat.has_member(actor):
        raise NotFound("no such chat")
    if not chat.has_member(target):
        raise NotFound("no such member")
    if actor != target and actor != chat.owner_id:
        raise Forbidden("only the owner removes other members")
    members = tuple(m for m in chat.members if m.user_id != target)
    owner = chat.owner_id
    if target == chat.owner_id:
        owner = (
            min(members, key=lambda m: (m.joined_at_ms, chat.member_ids.index(m.user_id))).user_id if members else None
        )
    return replace(chat, members=members, owner_id=owner, updated_at_ms=now_ms)


def rename(chat: Chat, actor: str, title: str, now_ms: int) -> Chat:
    require_group(chat)
    if not chat.has_member(actor):
        raise NotFound("no such chat")
    if actor != chat.owner_id:
        raise Forbidden("only the owner renames the group")
    return replace(chat, title=title, updated_at_ms=now_ms)


# -- message rules -------------------------------------------------------------------------------
def require_own_live_message(message: Message | None, user_id: str) -> Message:
    if message is None:
        raise NotFound("no such message")
    if message.sender_id != user_id:
        raise Forbidden("only the sender may change a message")
    if message.deleted:
        raise NotFound("the message was deleted")
    return message


def edit(message: Message, text: str, now_ms: int) -> Message:
    return replace(message, text=text, edited_at_ms=now_ms)


def delete(message: Message, now_ms: int) -> Message:
    """Deleted for everyone: text, media and reactions are gone; the tombstone stays in history."""
    return replace(message, text=None, media=(), reactions={}, deleted=True, edited_at_ms=now_ms)


def react(message: Message, user_id: str, emoji: str | None) -> Message:
    """One reaction per user per message; ``None`` removes the user's reaction."""
    if message.deleted:
        raise NotFound("the message was deleted")
    reactions: dict[str, tuple[str, ...]] = {}
    for e, users in message.reactions.items():
        kept = tuple(u for u in users if u != user_id)
        if kept:
            reactions[e] = kept
    if emoji is not None:
        reactions[emoji] = (*reactions.get(emoji, ()), user_id)
    return replace(message, reactions=reactions)


# -- receipts ------------------------------------------------------------------------------------
def advance_receipts(current: Receipts, kind: str, up_to_seq: Any, last_seq: int) -> Receipts | None:
    """Receipts only move forward; read implies delivered. ``None`` when nothing changes.
    ``up_to_seq`` beyond the chat's last seq is an error; at or below the current mark is a
    no-op (a late or repeated mark from a client is not an error)."""
    n = _int("up_to_seq", up_to_seq)
    if n < 1 or n > last_seq:
        raise InvalidArgument(f"up_to_seq must be between 1 and the chat's last seq ({last_seq})")
    if kind == RECEIPT_READ:
        new = Receipts(
            last_delivered_seq=max(current.last_delivered_seq, n), last_read_seq=max(current.last_read_seq, n)
        )
    elif kind == RECEIPT_DELIVERED:
        new = Receipts(last_delivered_seq=max(current.last_delivered_seq, n), last_read_seq=current.last_read_seq)
    else:
        raise ValueError(kind)
    return None if new == current else new
