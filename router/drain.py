"""Graceful drain of a router shard (docs/design/scale-out.md, step 5).

An operator (``scripts/drain``) POSTs ``/drain`` on the router's private web transport
(``router_metrics``, 127.0.0.1). From then on:

- the public health check (``GET /healthz``, ``router/web.py``) answers 503, so the balancer marks the
  shard down and sends it no new connections;
- after ``grace_s`` (time for the balancer to notice; default 5 s = HAProxy ``fall 2`` x
  ``inter 2s`` + margin) the in-router component (``router/component.py``) closes the shard's
  client sessions (roles ``user`` and ``guest``) with ``wamp.session.kill`` and the reason
  ``messenger.close.shard_draining``, paced at ``rate_per_s`` so that the other shards are not
  stampeded and the clients come back spread out; a client session that joins from then on is
  closed at once with the same reason. Backend sessions are never touched.

The web resource and the component run in the same router worker process (one reactor
thread), so the shared state is this module's ``STATE``.

``GET /drain`` answers ``{"draining", "closing", "sessions_left", ...}``; ``DELETE /drain``
cancels a drain (health check back to 200; sessions already closed stay closed).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource

from realms import uris

log = Logger(namespace="messenger.router.drain")

CLOSE_REASON = "messenger.close.shard_draining"
CLOSE_MESSAGE = "shard draining, reconnect"
CLIENT_ROLES = frozenset({uris.ROLE_USER, uris.ROLE_GUEST})
DEFAULT_RATE_PER_S = 500.0
DEFAULT_GRACE_S = 5.0
MAX_GRACE_S = 600.0
TICK_S = 0.02
BURST_S = 0.1  # the pacer never releases more than this much of the rate at once

DRAINING = Gauge("messenger_router_draining", "1 while this router shard is draining")
DRAIN_CLOSED = Counter("messenger_drain_sessions_closed_total", "Client sessions closed by a drain")


# -- pacing (pure) ------------------------------------------------------------------------------


@dataclass
class Pacer:
    """Token bucket: ``rate_per_s`` closes per second, at most ``burst`` at once (after a stall of
    the reactor the drain does not catch up in one go). Starts with one token, so the first
    session is closed at once. Times are the caller's (monotonic seconds)."""

    rate_per_s: float
    now: float
    burst: float = 0.0
    tokens: float = 1.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if self.burst <= 0:
            self.burst = max(1.0, self.rate_per_s * BURST_S)

    def take(self, now: float, wanted: int) -> int:
        """How many of ``wanted`` closes may happen at ``now``; those are spent."""
        elapsed = max(0.0, now - self.now)
        self.now = max(self.now, now)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_s)
        n = max(0, min(wanted, int(self.tokens + 1e-6)))  # 1e-6: float time steps
        self.tokens -= n
        return n


def drain_seconds(sessions: int, rate_per_s: float) -> float:
    """The time a paced drain of ``sessions`` takes (the first close is immediate)."""
    return max(0, sessions - 1) / rate_per_s


# -- shared state -------------------------------------------------------------------------------


class Drainable(Protocol):
    def begin(self) -> None: ...

    def cancel(self) -> None: ...

    def report(self) -> dict[str, Any]: ...


class DrainState:
    """Whether this router worker is draining; the component's drainer attaches to it."""

    def __init__(self) -> None:
        self.draining = False
        self.started_at: float | None = None  # wall clock, for the report
        self.rate_per_s = DEFAULT_RATE_PER_S
        self.grace_s = DEFAULT_GRACE_S
        self.drainer: Drainable | None = None

    def start(self, rate_per_s: float, grace_s: float) -> bool:
        """Start draining; answers False (and changes nothing) when already draining."""
        if self.draining:
            return False
        self.draining = True
        self.started_at = time.time()
        self.rate_per_s = rate_per_s
        self.grace_s = grace_s
        DRAINING.set(1)
        log.info("drain started: {rate}/s after {grace} s", rate=rate_per_s, grace=grace_s)
        if self.drainer is not None:
            self.drainer.begin()
        else:
            log.warn("drain started but the router component has not joined yet")
        return True

    def cancel(self) -> bool:
        if not self.draining:
            return False
        self.draining = False
        self.started_at = None
        DRAINING.set(0)
        log.info("drain cancelled")
        if self.drainer is not None:
            self.drainer.cancel()
        return True

    def attach(self, drainer: Drainable) -> None:
        self.drainer = drainer
        if self.draining:
            drainer.begin()

    def detach(self, drainer: Drainable) -> None:
        if self.drainer is drainer:
            drainer.cancel()
            self.drainer = None

    def report(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "draining": self.draining,
            "rate_per_s": self.rate_per_s,
            "grace_s": self.grace_s,
            "started_at": self.started_at,
        }
        if self.drainer is not None:
            body.update(self.drainer.report())
        else:
            body.update(closing=False, sessions_left=None, closed=0, awaiting_goodbye=0)
        return body


STATE = DrainState()


# -- the closing loop (driven by the in-router component) -----------------------------------------


class Drainer:
    """Closes client sessions while ``state`` is draining. ``candidates()`` lists the ids of the
    client sessions joined now (oldest first), ``joined(sid)`` tells whether one still is, and
    ``kill(sid)`` closes one (a Deferred). The sessions to close are taken once when closing
    begins (so a tick costs O(its batch), not O(sessions)); later joins are closed as they come."""

    def __init__(
        self,
        state: DrainState,
        candidates: Callable[[], Iterable[int]],
        joined: Callable[[int], bool],
        kill: Callable[[int], Deferred[Any]],
        clock: Any = None,
        tick_s: float = TICK_S,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.state = state
        self.candidates = candidates
        self.joined = joined
        self.kill = kill
        self.clock = clock  # IReactorTime (the reactor, or task.Clock in tests)
        self.tick_s = tick_s
        self.closing = False
        self.closed = 0  # kills the router accepted
        self._queue: deque[int] = deque()
        self._sent: set[int] = set()  # killed, not left yet (the client owes the GOODBYE reply)
        self._pacer: Pacer | None = None
        self._loop: task.LoopingCall | None = None
        self._grace: Any = None  # IDelayedCall

    # called by the state
    def begin(self) -> None:
        if self.closing or self._grace is not None:
            return
        self.closed = 0
        if self.state.grace_s > 0:
            self._grace = self.clock.callLater(self.state.grace_s, self._open)
        else:
            self._open()

    def cancel(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        self._stop_loop()
        self._queue.clear()
        self.closing = False

    def report(self) -> dict[str, Any]:
        return {
            "closing": self.closing,
            "sessions_left": sum(1 for _ in self.candidates()),
            "closed": self.closed,
            "awaiting_goodbye": len(self._sent),
        }

    # called by the component
    def on_join(self, sid: int, role: str | None) -> None:
        """A client session joining while closing is closed at once (not paced: it came in
        through a balancer that has not noticed yet, or directly)."""
        if self.closing and role in CLIENT_ROLES:
            self._close(sid)

    def on_leave(self, sid: int) -> None:
        self._sent.discard(sid)

    # internals
    def _open(self) -> None:
        self._grace = None
        self.closing = True
        self._queue = deque(self.candidates())
        self._pacer = Pacer(self.state.rate_per_s, self.clock.seconds())
        log.info("drain: closing {n} client sessions at {rate}/s", n=len(self._queue), rate=self._pacer.rate_per_s)
        self._start_loop()

    def _start_loop(self) -> None:
        if self._loop is not None and self._loop.running:
            return
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        d = self._loop.start(self.tick_s, now=True)
        d.addErrback(lambda f: log.failure("drain loop failed", f))

    def _stop_loop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        if not self.closing or self._pacer is None:
            return
        while self._queue and not self.joined(self._queue[0]):
            self._queue.popleft()  # left by itself meanwhile
        if not self._queue:
            self._stop_loop()
            log.info("drain: every client session closed ({closed})", closed=self.closed)
            return
        n = self._pacer.take(self.clock.seconds(), len(self._queue))
        while n > 0 and self._queue:
            sid = self._queue.popleft()
            if self.joined(sid):
                self._close(sid)
                n -= 1

    def _close(self, sid: int) -> None:
        if sid in self._sent:
            return
        self._sent.add(sid)
        try:
            d = self.kill(sid)
        except Exception as e:
            self._failed(sid, str(e))
            return
        d.addCallbacks(lambda _: self._done(), lambda f: self._failed(sid, f.getErrorMessage()))

    def _done(self) -> None:
        self.closed += 1
        DRAIN_CLOSED.inc()

    def _failed(self, sid: int, why: str) -> None:
        # usually the session left meanwhile (no_such_session); if it is still joined it goes
        # back in the queue and a later tick closes it again
        log.debug("drain: kill {sid} failed: {why}", sid=sid, why=why)
        self._sent.discard(sid)
        if self.closing and self.joined(sid):
            self._queue.append(sid)
            self._start_loop()


# -- the HTTP resource on the private transport -------------------------------------------------


def _number(request: Any, name: bytes, default: float, low: float, high: float) -> float:
    raw = (getattr(request, "args", None) or {}).get(name)
    if not raw:
        return default
    value = float(raw[0].decode())  # ValueError -> 400
    if not low <= value <= high:
        raise ValueError(f"{name.decode()} must be within [{low}, {high}]")
    return value


class DrainResource(Resource):
    isLeaf = True

    def __init__(self, state: DrainState, rate_per_s: float, grace_s: float) -> None:
        super().__init__()
        self.state = state
        self.rate_per_s = rate_per_s
        self.grace_s = grace_s

    def _answer(self, request: Any, code: int, body: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()

    def render_GET(self, request: Any) -> bytes:
        return self._answer(request, 200, self.state.report())

    def render_POST(self, request: Any) -> bytes:
        try:
            rate = _number(request, b"rate", self.rate_per_s, 0.001, 1e6)
            grace = _number(request, b"grace", self.grace_s, 0.0, MAX_GRACE_S)
        except ValueError as e:
            return self._answer(request, 400, {"error": str(e)})
        started = self.state.start(rate, grace)
        return self._answer(request, 202 if started else 200, self.state.report())

    def render_DELETE(self, request: Any) -> bytes:
        self.state.cancel()
        return self._answer(request, 200, self.state.report())


def drain_resource(extra: dict[str, Any]) -> Resource:
    """Web service ``resource`` factory (``router_metrics`` transport, path ``drain``).
    ``extra``: ``rate_per_s`` (default 500) and ``grace_s`` (default 5), the defaults of a POST;
    a POST may override them with ``?rate=`` and ``?grace=``."""
    return DrainResource(
        STATE,
        float(extra.get("rate_per_s", DEFAULT_RATE_PER_S)),
        float(extra.get("grace_s", DEFAULT_GRACE_S)),
    )
