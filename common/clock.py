"""Time as a port, so tests control it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FixedClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self._now = now_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms

    def set(self, now_ms: int) -> None:
        self._now = now_ms


class ReactorClock:
    """Wall time taken from a Twisted reactor (or ``task.Clock``): ``seconds()`` * 1000."""

    def __init__(self, reactor: object) -> None:
        self._reactor = reactor

    def now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)  # type: ignore[attr-defined]
