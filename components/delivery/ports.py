"""Ports of the delivery component. Adapters of :class:`PresenceStore`: ``adapters/sqlite.py``
(embedded) and ``adapters/redis.py`` (distributed). One contract suite runs against both:
``tests/contract/test_presence_store.py``.

Every method is a coroutine; a dependency failure surfaces as ``common.errors.Unavailable``.
Presence itself (who is online) lives in memory (``domain.PresenceBook``); only ``last_seen``
is durable, so it survives a restart of the delivery component.
"""

from __future__ import annotations

from typing import Protocol

MAX_AT_MS = (1 << 63) - 1
"""The largest ``at_ms`` a store keeps (a signed 64-bit integer)."""


class PresenceStore(Protocol):
    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Get ready to serve (open the file and apply migrations / connect). A dependency that
        is down at start-up raises ``Unavailable`` (the caller retries with
        ``common.lifecycle.until_up``) or, for a client that reconnects by itself, is left to
        answer ``Unavailable`` per call until it is back."""
        ...

    async def stop(self) -> None:
        """Release what ``start`` took. Safe to call twice."""
        ...

    # -- last seen -----------------------------------------------------------------------------
    async def set_last_seen(self, user_id: str, at_ms: int) -> None:
        """Store ``max(stored, at_ms)`` as the user's last-seen time, atomically: it never moves
        backwards, whatever the order in which concurrent writes land (so a retried or late
        write is harmless). ``at_ms`` is an ``int`` in ``0..MAX_AT_MS`` (``ValueError`` else)."""
        ...

    async def get_last_seen(self, user_ids: list[str]) -> dict[str, int]:
        """``{user_id: last_seen_ms}`` for the users among ``user_ids`` with a stored value;
        unknown users are left out. Any number of ids (duplicates allowed) in one call."""
        ...


def check_at_ms(at_ms: int) -> int:
    """``at_ms`` if it is a valid last-seen time, else ``ValueError`` (shared by the adapters)."""
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or not 0 <= at_ms <= MAX_AT_MS:
        raise ValueError(f"at_ms must be an int in 0..{MAX_AT_MS}, not {at_ms!r}")
    return at_ms


class PresenceDirectory(Protocol):
    """Who is online across router shards. Each shard's delivery session records the users
    with at least one session on *its* router; a shard proves it is alive with a heartbeat that
    expires (``ttl_ms``), so the users of a shard that died go offline by themselves.

    A user is online while at least one live shard (heartbeat not expired) has them. Adapters:
    ``adapters/memory.py`` (embedded: one process) and ``adapters/redis.py`` (distributed).
    Contract suite: ``tests/contract/test_presence_directory.py``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def heartbeat(self, shard_id: str, ttl_ms: int) -> bool:
        """Mark ``shard_id`` alive for ``ttl_ms`` more. False if it was not alive before (new,
        or its heartbeat lapsed and it may have been reaped): the caller joins its users
        again."""
        ...

    async def join(self, shard_id: str, user_id: str) -> bool:
        """``user_id`` has sessions on ``shard_id``. True if the user just came online (no other
        live shard had them and this shard had not recorded them yet)."""
        ...

    async def leave(self, shard_id: str, user_id: str) -> bool:
        """``user_id`` has no more sessions on ``shard_id``. True if the user just went offline
        (this shard had them and no other live shard has them)."""
        ...

    async def online(self, user_ids: list[str]) -> set[str]:
        """The users among ``user_ids`` that are online."""
        ...

    async def reap(self) -> list[str]:
        """Forget the shards whose heartbeat expired; answers the users that went offline with
        them (a user on several dead shards may be answered once per shard). Atomic: when several
        instances reap at once, each dead shard's users are answered to one of them."""
        ...
