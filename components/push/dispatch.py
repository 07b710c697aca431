"""A bounded work queue with a concurrency limit and delayed retries, on a Twisted reactor
(``task.Clock`` in tests).

Every piece of push work (resolving a notice, one send) is a *job*: an async callable that
answers ``None`` (done) or :class:`Retry` (run this job again after a delay). A job holds one
slot of ``max_pending`` from :meth:`Dispatcher.submit` until it is done, also while it waits for
a retry, so memory stays bounded however long a provider is down; when every slot is taken,
new work is dropped (counted and logged), never queued without bound. At most ``concurrency``
jobs run at once. Nothing here ever blocks or fails its caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="messenger.push")

QUEUE_DEPTH = Gauge("messenger_push_queue_jobs", "Push jobs queued, running or waiting for a retry")
DROPPED = Counter("messenger_push_dropped_total", "Push jobs dropped because the queue was full")


@dataclass(frozen=True)
class Retry:
    delay_s: float
    job: Job


Job = Callable[[], Awaitable[Retry | None]]


class Dispatcher:
    def __init__(self, reactor: Any, *, max_pending: int = 10_000, concurrency: int = 8) -> None:
        if max_pending < 1 or concurrency < 1:
            raise ValueError("max_pending and concurrency must be positive")
        self._reactor = reactor
        self.max_pending = max_pending
        self.concurrency = concurrency
        self._ready: deque[Job] = deque()
        self._timers: set[Any] = set()
        self.pending = 0  # jobs holding a slot: ready, running or waiting for a retry
        self.running = 0
        self.dropped = 0
        self._idle: list[defer.Deferred[None]] = []
        self._stopped = False

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and the job is dropped) when the queue is full or stopped."""
        if self._stopped or self.pending >= self.max_pending:
            self.dropped += 1
            DROPPED.inc()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warn("push queue full ({n} jobs): {dropped} dropped so far", n=self.pending, dropped=self.dropped)
            return False
        self.pending += 1
        QUEUE_DEPTH.set(self.pending)
        self._ready.append(job)
        self._pump()
        return True

    def _pump(self) -> None:
        while self.running < self.concurrency and self._ready and not self._stopped:
            job = self._ready.popleft()
            self.running += 1
            d = defer.ensureDeferred(_run(job))
            d.addCallbacks(self._finished, self._failed)

    def _finished(self, result: Retry | None) -> None:
        self.running -= 1
        if isinstance(result, Retry) and not self._stopped:
            timer = self._reactor.callLater(max(0.0, result.delay_s), self._requeue, result.job)
            self._timers.add(timer)
        else:
            self._release()
        self._pump()

    def _failed(self, failure: Failure) -> None:
        log.warn("push job failed: {e}", e=failure.getErrorMessage())
        self.running -= 1
        self._release()
        self._pump()

    def _requeue(self, job: Job) -> None:
        self._timers = {t for t in self._timers if t.active()}
        self._ready.append(job)
        self._pump()

    def _release(self) -> None:
        self.pending -= 1
        QUEUE_DEPTH.set(self.pending)
        if self.pending == 0:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def idle(self) -> defer.Deferred[None]:
        """Fires when no job is queued, running or waiting (tests, shutdown)."""
        if self.pending == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def stop(self) -> None:
        """Drop what waits (queued and retry timers); running jobs finish by themselves."""
        self._stopped = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        dropped = len(self._ready) + len(self._timers)
        self._timers.clear()
        self._ready.clear()
        self.pending = self.running
        QUEUE_DEPTH.set(self.pending)
        if dropped:
            log.info("push queue stopped: {n} waiting jobs dropped", n=dropped)


async def _run(job: Job) -> Retry | None:
    return await job()
