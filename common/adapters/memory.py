"""In-process rate limiter and lock for the embedded profile (a single process).

Both implement the ports of ``common.ports`` (``RateLimiter``, ``Lock``) and
keep their state in dictionaries whose expired entries are pruned every
``prune_every`` calls, so memory stays bounded by the live keys.
"""

from __future__ import annotations

import secrets
from typing import Any, Generic, TypeVar

from twisted.logger import Logger

from common.clock import Clock
from common.errors import Unavailable

log = Logger(namespace="messenger.limits")

DEFAULT_PRUNE_EVERY = 1024
V = TypeVar("V")


class _Expiring(Generic[V]):
    """A dict of ``key -> (value, expires_at_ms)`` whose expired entries are dropped every
    ``prune_every`` operations, so memory stays bounded by what is live."""

    def __init__(self, clock: Clock, *, prune_every: int = DEFAULT_PRUNE_EVERY) -> None:
        if prune_every < 1:
            raise ValueError("prune_every must be >= 1")
        self._clock = clock
        self._prune_every = prune_every
        self._calls = 0
        self._entries: dict[str, tuple[V, int]] = {}

    def __len__(self) -> int:
        """Entries currently held, expired or not (for tests and metrics)."""
        return len(self._entries)

    def prune(self, now_ms: int | None = None) -> None:
        """Forget every entry that has expired."""
        now = self._clock.now_ms() if now_ms is None else now_ms
        expired = [k for k, (_, expires_at) in self._entries.items() if now >= expires_at]
        for k in expired:
            del self._entries[k]

    def _tick(self, now: int) -> None:
        self._calls += 1
        if self._calls >= self._prune_every:
            self._calls = 0
            self.prune(now)


class MemoryRateLimiter(_Expiring[int]):
    """Fixed window per key; a window starts with the first hit on the key.
    Entries: key -> (hits in the current window, window end in ms)."""

    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        now = self._clock.now_ms()
        self._tick(now)
        entry = self._entries.get(key)
        if entry is None or now >= entry[1]:
            count, ends_at = 1, now + window_ms
        else:
            count, ends_at = entry[0] + 1, entry[1]
        self._entries[key] = (count, ends_at)
        if count <= limit:
            return 0
        return max(1, min(window_ms, ends_at - now))

    async def reset(self, key: str) -> None:
        self._entries.pop(key, None)


class MemoryLock(_Expiring[str]):
    """Named locks with a time to live: name -> (token, expires_at_ms)."""

    async def acquire(self, name: str, ttl_ms: int) -> str | None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        now = self._clock.now_ms()
        self._tick(now)
        held = self._entries.get(name)
        if held is not None and now < held[1]:
            return None
        token = secrets.token_urlsafe(18)
        self._entries[name] = (token, now + ttl_ms)
        return token

    async def release(self, name: str, token: str) -> None:
        held = self._entries.get(name)
        if held is not None and secrets.compare_digest(held[0].encode(), token.encode()):
            del self._entries[name]


class FallbackRateLimiter:
    """A shared limiter (Redis) that falls back to a per-process one while the shared one is
    ``Unavailable``: for limits that must not stop the service when Redis is away (sending
    messages); the limit then holds per process instead of across processes."""

    def __init__(self, primary: Any, fallback: MemoryRateLimiter, name: str) -> None:
        self._primary = primary
        self._fallback = fallback
        self._name = name
        self._degraded = False

    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        try:
            answer: int = await self._primary.hit(key, limit, window_ms)
        except Unavailable as e:
            if not self._degraded:
                log.warn("{name} limits per process while the shared limiter is unavailable: {e}", name=self._name, e=e)
            self._degraded = True
            return await self._fallback.hit(key, limit, window_ms)
        if self._degraded:
            log.info("{name} limits shared again", name=self._name)
            self._degraded = False
        return answer

    async def reset(self, key: str) -> None:
        await self._fallback.reset(key)
        await self._primary.reset(key)
