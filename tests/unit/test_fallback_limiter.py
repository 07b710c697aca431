"""The send limiter falls back to a per-process window while the shared (Redis) one is down."""

from __future__ import annotations

import pytest_twisted

from common.adapters.memory import FallbackRateLimiter, MemoryRateLimiter
from common.clock import FixedClock
from common.errors import Unavailable


class Flaky:
    def __init__(self) -> None:
        self.down = False
        self.hits = 0

    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        if self.down:
            raise Unavailable("redis is down")
        self.hits += 1
        return 0 if self.hits <= limit else window_ms

    async def reset(self, key: str) -> None:
        self.hits = 0


@pytest_twisted.ensureDeferred
async def test_limits_still_hold_per_process_while_the_shared_limiter_is_unavailable() -> None:
    shared = Flaky()
    limiter = FallbackRateLimiter(shared, MemoryRateLimiter(FixedClock()), "test")
    assert await limiter.hit("k", 2, 1000) == 0
    shared.down = True
    assert [await limiter.hit("k", 2, 1000) for _ in range(3)] == [0, 0, 1000]
    shared.down = False
    assert await limiter.hit("k", 2, 1000) == 0  # the shared count again
    assert shared.hits == 2
