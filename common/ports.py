"""Ports shared by several components. Adapters: ``common/adapters/memory.py`` (embedded) and
``common/adapters/redis.py`` (distributed); contract suite: ``tests/contract/test_ratelimit_lock.py``."""

from __future__ import annotations

from typing import Protocol


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        """Count one hit on ``key`` in a fixed window of ``window_ms``.

        Answer 0 when the hit is within ``limit`` for the current window, else the
        milliseconds until the window ends (> 0, <= ``window_ms``)."""
        ...

    async def reset(self, key: str) -> None: ...


class Lock(Protocol):
    async def acquire(self, name: str, ttl_ms: int) -> str | None:
        """A token if the lock was free (it expires by itself after ``ttl_ms``), else None."""
        ...

    async def release(self, name: str, token: str) -> None:
        """Release only if still held with ``token``."""
        ...
