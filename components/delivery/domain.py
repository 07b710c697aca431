"""Pure rules of delivery: in-order release of each user's updates, and presence bookkeeping.
Imports no Twisted, WAMP or driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Envelope = dict[str, Any]


@dataclass
class _Stream:
    next_id: int
    held: dict[int, Envelope] = field(default_factory=dict)
    touched_ms: int = 0


class Sequencer:
    """Releases each user's durable updates in ``update_id`` order, none twice.

    Notifications of concurrent changes can arrive out of order; an update ahead of the next
    expected id is held until the missing ones arrive or are fetched from the store (``gap``).
    The first update seen for a user starts that user's stream (a client that missed anything
    before it notices the gap itself and calls ``sync.get_updates``)."""

    def __init__(self, max_held_per_user: int = 1000) -> None:
        self._streams: dict[str, _Stream] = {}
        self._max_held = max_held_per_user

    def offer(self, user_id: str, envelope: Envelope, now_ms: int) -> list[Envelope]:
        uid = int(envelope["update_id"])
        stream = self._streams.get(user_id)
        if stream is None:
            stream = self._streams[user_id] = _Stream(next_id=uid)
        stream.touched_ms = now_ms
        if uid < stream.next_id or uid in stream.held:
            return []  # already released (or held): never twice
        stream.held[uid] = envelope
        released = self._drain(stream)
        if len(stream.held) > self._max_held:  # a gap that never fills: skip ahead, the client syncs
            stream.next_id = min(stream.held)
            released += self._drain(stream)
        return released

    def gap(self, user_id: str) -> tuple[int, int] | None:
        """The missing ids ``lo..hi`` before the first held update, if any."""
        stream = self._streams.get(user_id)
        if stream is None or not stream.held:
            return None
        return stream.next_id, min(stream.held) - 1

    def fill(self, user_id: str, envelopes: list[Envelope], now_ms: int) -> list[Envelope]:
        """Missing updates fetched from the store; answers what can now be released."""
        released: list[Envelope] = []
        for env in sorted(envelopes, key=lambda e: int(e["update_id"])):
            released += self.offer(user_id, env, now_ms)
        return released

    def skip_gap(self, user_id: str) -> list[Envelope]:
        """Give up on a gap the store could not fill: release what is held."""
        stream = self._streams.get(user_id)
        if stream is None or not stream.held:
            return []
        stream.next_id = min(stream.held)
        return self._drain(stream)

    def forget_idle(self, before_ms: int) -> int:
        idle = [u for u, s in self._streams.items() if s.touched_ms < before_ms and not s.held]
        for u in idle:
            del self._streams[u]
        return len(idle)

    def __len__(self) -> int:
        return len(self._streams)

    @staticmethod
    def _drain(stream: _Stream) -> list[Envelope]:
        out: list[Envelope] = []
        while stream.next_id in stream.held:
            out.append(stream.held.pop(stream.next_id))
            stream.next_id += 1
        return out


class PresenceBook:
    """Online while at least one session is joined; ``last_seen`` when the last one leaves."""

    def __init__(self) -> None:
        self._sessions: dict[int, str] = {}
        self._count: dict[str, int] = {}
        self._last_seen: dict[str, int] = {}

    def join(self, session_id: int, user_id: str) -> bool:
        """True if the user just came online."""
        if session_id in self._sessions:
            return False
        self._sessions[session_id] = user_id
        self._count[user_id] = self._count.get(user_id, 0) + 1
        return self._count[user_id] == 1

    def leave(self, session_id: int, now_ms: int) -> str | None:
        """The user who just went offline, if this was their last session."""
        user_id = self._sessions.pop(session_id, None)
        if user_id is None:
            return None
        self._count[user_id] -= 1
        if self._count[user_id] > 0:
            return None
        del self._count[user_id]
        self._last_seen[user_id] = now_ms
        return user_id

    def get(self, user_id: str) -> dict[str, Any]:
        return {"online": user_id in self._count, "last_seen": self._last_seen.get(user_id)}

    def online_users(self) -> int:
        return len(self._count)

    def users(self) -> list[str]:
        """The users with at least one session."""
        return list(self._count)
