"""Retry with backoff, call timeouts and a circuit breaker around every dependency.

Adapters wrap each call to Postgres, Redis or Cassandra in ``CircuitBreaker.call``:
a dependency that is down answers :class:`common.errors.Unavailable` fast instead of
hanging, and the breaker lets one trial call through after ``reset_timeout_s`` so the
component recovers by itself when the dependency is back.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer, task

from common.errors import MessengerError, Unavailable
from common.metrics import DEPENDENCY_ERRORS, DEPENDENCY_STATE

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        reactor: Any,
        *,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        call_timeout_s: float = 3.0,
        retries: int = 2,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 0.5,
    ) -> None:
        self.name = name
        self._reactor = reactor
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.call_timeout_s = call_timeout_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        DEPENDENCY_STATE.labels(dependency=name).set(0)

    # -- state -------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        self.state = state
        DEPENDENCY_STATE.labels(dependency=self.name).set({CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[state])

    def _admit(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == OPEN and self._reactor.seconds() - self._opened_at >= self.reset_timeout_s:
            self._set_state(HALF_OPEN)
        if self.state == HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return
        raise Unavailable(f"{self.name} is unavailable; retry later")

    def _success(self) -> None:
        self._failures = 0
        self._trial_running = False
        if self.state != CLOSED:
            self._set_state(CLOSED)

    def _failure(self) -> None:
        DEPENDENCY_ERRORS.labels(dependency=self.name).inc()
        self._trial_running = False
        self._failures += 1
        if self.state == HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._reactor.seconds()
            self._set_state(OPEN)

    # -- calls -------------------------------------------------------------------------
    async def _once(self, fn: Callable[[], Awaitable[T]]) -> T:
        d: defer.Deferred[Any] = defer.ensureDeferred(_as_coroutine(fn))
        d.addTimeout(self.call_timeout_s, self._reactor)
        result: T = await d
        return result

    async def call(self, fn: Callable[[], Awaitable[T]], *, idempotent: bool = False) -> T:
        """Run ``fn`` under the breaker.

        ``idempotent`` calls are retried with jittered exponential backoff; others run once,
        since a write that timed out may have happened.
        """
        attempts = 1 + (self.retries if idempotent else 0)
        last: BaseException | None = None
        for attempt in range(attempts):
            self._admit()
            try:
                result = await self._once(fn)
            except MessengerError:
                self._success()  # the dependency answered; the request was wrong
                raise
            except Exception as e:
                last = e
                self._failure()
                if attempt + 1 < attempts and self.state == CLOSED:
                    delay = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
                    await task.deferLater(self._reactor, delay * (0.5 + random.random() / 2), lambda: None)
                    continue
                break
            else:
                self._success()
                return result
        raise Unavailable(f"{self.name} is unavailable: {type(last).__name__}") from last


async def _as_coroutine(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()
