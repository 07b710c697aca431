"""Start-up helpers shared by components."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from common.errors import Unavailable

log = Logger(namespace="messenger.lifecycle")


async def until_up(what: str, fn: Callable[[], Awaitable[Any]], max_delay_s: float = 5.0) -> None:
    """Retry a start-up step while its dependency is unavailable (backoff up to ``max_delay_s``)."""
    from twisted.internet import reactor

    delay = 0.2
    while True:
        try:
            await fn()
            return
        except Unavailable as e:
            log.warn("{what} unavailable ({e}); retrying in {delay:.1f} s", what=what, e=e, delay=delay)
            await task.deferLater(reactor, delay, lambda: None)
            delay = min(max_delay_s, delay * 2)


async def start_all(things: list[Any]) -> None:
    for thing in things:
        await thing.start()


def stop_all(things: list[Any]) -> None:
    """Stop each without waiting (a session leaving cannot wait); errors are the things' own."""
    for thing in things:
        defer.ensureDeferred(thing.stop())
