"""Rate limiter and lock on Redis (distributed profile), via txredisapi.

One :class:`RedisClient` per process owns the connection pool and a
``CircuitBreaker("redis", reactor)``; :class:`RedisRateLimiter` and :class:`RedisLock`
share it. Every call goes through the breaker, so a Redis that is down or too slow
answers :class:`common.errors.Unavailable` instead of hanging.

How txredisapi behaves when Redis is down, and what this module does about it:

- a lazy pool with ``reconnect=True`` keeps reconnecting in the background, but a command
  issued while no connection is up waits on the pool's queue *forever* (until a connection
  comes back); with ``reconnect=False`` it fails at once with ``ConnectionError`` but never
  reconnects after the first failure;
- so the pool is built with ``reconnect=True`` (it recovers by itself) and the client tracks
  whether a connection is up: while none is (a connection attempt failed or the last
  connection was lost), a call fails at once and the breaker turns that into
  ``Unavailable``; only while the very first connection is still being set up does a call
  wait for it, at most ``connect_timeout_s``;
- the pool's reconnect backoff (1 s growing to 10 s by default) is shortened to
  ``reconnect_initial_delay_s`` .. ``reconnect_max_delay_s`` so the component is back within
  a couple of seconds of Redis; ``replyTimeout`` (shorter than the breaker's call timeout)
  fails the command and drops a connection whose server stopped answering;
- txredisapi stops reconnecting for good when AUTH or SELECT fails on a new connection, which
  includes a reply timeout against a hung server: the pool would stay dead after the server
  is back. The factory here ignores that ``stopTrying()`` and keeps retrying with backoff;
- one connection is enough (the default ``poolsize=1``): txredisapi pipelines non-blocking
  commands on one connection anyway, and with more, a hung server costs one timeout per
  connection before every call fails fast.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from common.errors import Unavailable
from common.resilience import CircuitBreaker

T = TypeVar("T")

DEFAULT_PREFIX = "messenger:"
# per-user pub/sub channel: chat publishes a user's new updates there, the delivery component
# of every router shard the user is connected to subscribes (docs/design/scale-out.md, step 2)
USER_CHANNEL_PREFIX = f"{DEFAULT_PREFIX}u:"


def user_channel(user_id: str) -> str:
    return USER_CHANNEL_PREFIX + user_id


class UserChannels:
    """Publishes envelopes to users' channels: the payload is a JSON list of envelopes. Every
    router shard's delivery component forwards them to the user's devices on that shard.
    Fire-and-forget: nothing waits for Redis; a failure is logged (a lost durable update is a
    gap that delivery or the client heals from the store)."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    def fire(self, user_id: str, envelopes: list[dict[str, Any]]) -> defer.Deferred[Any]:
        channel = user_channel(user_id)
        payload = json.dumps(envelopes, separators=(",", ":"))

        def failed(f: Failure) -> None:
            log.debug("notification to {channel} not published: {e}", channel=channel, e=f.getErrorMessage())

        # not idempotent for the breaker: a retried PUBLISH could arrive twice (typing would show twice)
        d = defer.ensureDeferred(self._client.call(lambda c: c.publish(channel, payload)))
        d.addErrback(failed)
        return d


log = Logger()

# Error replies that mean "Redis can't serve right now", not "the command was wrong".
_OUTAGE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")


class RedisCommandError(RuntimeError):
    """Redis answered a command with an error reply (a bug, not an outage)."""


@dataclass(frozen=True)
class _Answer(Generic[T]):
    value: T | None = None
    error: txredisapi.ResponseError | None = None


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """Passes ``connect`` through and reports failed attempts."""

    def __init__(self, inner: Any, on_failure: Callable[[Failure], None]) -> None:
        self._inner = inner
        self._on_failure = on_failure

    def connect(self, protocol_factory: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self._inner.connect(protocol_factory)

        def failed(f: Failure) -> Failure:
            if not f.check(defer.CancelledError):
                self._on_failure(f)
            return f

        d.addErrback(failed)
        return d


class _PoolFactory(txredisapi.RedisFactory):
    """txredisapi's factory, telling its client when the pool gains or loses connections."""

    def __init__(self, client: RedisClient, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client = client
        # Lazy pools never hand this Deferred to anyone; an auth/SELECT failure would errback
        # it and log "Unhandled error in Deferred" when it is garbage-collected.
        self.deferred.addErrback(lambda _: None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._client._connection_up()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.size:
            self._client._connection_down("connection lost")

    def connectionError(self, why: str) -> None:
        self._client._connection_down(why)
        super().connectionError(why)

    def stopTrying(self) -> defer.Deferred[None]:
        # txredisapi gives up reconnecting for good when AUTH or SELECT fails on a new
        # connection -- even when they merely time out against a hung server, which would leave
        # the pool dead after the server comes back. Keep retrying with backoff instead (the
        # breaker answers Unavailable meanwhile); RedisClient.stop() uses disconnect().
        return defer.succeed(None)


@dataclass(frozen=True)
class RedisLocation:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisLocation:
        """``redis://[[user]:password@]host[:port][/db]``."""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (expected redis://)")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
        except ValueError:
            raise ValueError(f"bad Redis database number in {url!r}") from None
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class RedisClient:
    """A lazy txredisapi connection pool to one Redis database, plus its circuit breaker."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        dbid: int = 0,
        *,
        password: str | None = None,
        username: str | None = None,
        reactor: Any = None,
        poolsize: int = 1,
        connect_timeout_s: float = 1.0,
        reply_timeout_s: float = 1.5,
        reconnect_initial_delay_s: float = 0.1,
        reconnect_max_delay_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.host = host
        self.port = port
        self.dbid = dbid
        self._password = password
        self._username = username
        self._reactor = reactor
        self._poolsize = poolsize
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._reconnect_initial_delay_s = reconnect_initial_delay_s
        self._reconnect_max_delay_s = reconnect_max_delay_s
        # the reply timeout fires first: it fails the command and drops the hung connection
        self.breaker = breaker or CircuitBreaker(
            "redis", reactor, call_timeout_s=max(connect_timeout_s, reply_timeout_s) + 0.5
        )
        self._factory: _PoolFactory | None = None
        self._handler: Any = None
        self._down = False  # True once an attempt failed or the pool emptied, until a connection is up
        self._closed = False
        self._waiters: list[defer.Deferred[None]] = []

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisClient:
        """``redis://[[user]:password@]host[:port][/db]``."""
        loc = RedisLocation.parse(url)
        kwargs.setdefault("password", loc.password)
        kwargs.setdefault("username", loc.username)
        return cls(loc.host, loc.port, loc.db, **kwargs)

    def __repr__(self) -> str:
        return f"<RedisClient {self.host}:{self.port}/{self.dbid} connected={self.connected}>"

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    async def start(self, timeout_s: float | None = None) -> bool:
        """Start connecting and wait (at most ``timeout_s``, default ``connect_timeout_s``) for a
        first connection or a failed attempt. Answers whether a connection is up; if not, the
        pool keeps trying in the background and calls answer ``Unavailable`` meanwhile."""
        self._ensure_connecting()
        if not self.connected and not self._down:
            await self._wait_for_outcome(self._connect_timeout_s if timeout_s is None else timeout_s)
        if not self.connected:
            log.warn("Redis at {host}:{port} is not reachable yet", host=self.host, port=self.port)
        return self.connected

    async def stop(self) -> None:
        """Close every connection and stop reconnecting. Calls afterwards answer ``Unavailable``."""
        self._closed = True
        self._notify()
        factory, self._factory = self._factory, None
        if factory is None:
            return
        d: defer.Deferred[Any] = factory.disconnect()
        d.addTimeout(5.0, self._reactor)
        try:
            await d
        except Exception as e:  # closing is best effort
            log.warn("Redis pool did not close cleanly: {e!r}", e=e)

    def disconnect(self) -> defer.Deferred[None]:
        """:meth:`stop` as a Deferred (for Twisted shutdown triggers)."""
        return defer.ensureDeferred(self.stop())

    # -- calls ---------------------------------------------------------------------------------
    async def call(self, fn: Callable[[Any], Awaitable[T]], *, idempotent: bool = False) -> T:
        """Run ``fn(connection)`` under the breaker. A txredisapi connection handler is passed
        in; ``fn`` answers what its command's Deferred gives.

        Raises ``Unavailable`` when Redis is down or slow, :class:`RedisCommandError` when Redis
        answered with an error reply."""
        if self._closed:
            raise Unavailable("redis client is stopped")

        async def attempt() -> _Answer[T]:
            conn = await self._connection()
            try:
                return _Answer(value=await fn(conn))
            except txredisapi.ResponseError as e:
                if str(e).startswith(_OUTAGE_REPLIES):
                    raise  # an outage: counts against the breaker
                return _Answer(error=e)  # Redis answered: not a dependency failure

        answer = await self.breaker.call(attempt, idempotent=idempotent)
        if answer.error is not None:
            raise RedisCommandError(str(answer.error)) from answer.error
        return answer.value  # type: ignore[return-value]

    # -- connection state ------------------------------------------------------------------------
    def _ensure_connecting(self) -> None:
        if self._factory is not None or self._closed:
            return
        factory = _PoolFactory(
            self,
            f"{self.host}:{self.port}",
            self.dbid,
            self._poolsize,
            True,  # isLazy
            txredisapi.ConnectionHandler,
            "utf-8",
            self._password,
            self._reply_timeout_s,
            True,  # convertNumbers
            self._username,
        )
        factory.reconnect = True
        factory.initialDelay = self._reconnect_initial_delay_s
        factory.maxDelay = self._reconnect_max_delay_s
        endpoint = _WatchedEndpoint(
            HostnameEndpoint(self._reactor, self.host, self.port, timeout=self._connect_timeout_s),
            lambda f: self._connection_down(f.getErrorMessage()),
        )
        self._factory = factory
        self._handler = factory.handler
        factory.startConnecting(endpoint)

    async def _connection(self) -> Any:
        self._ensure_connecting()
        if not self.connected and not self._down and not self._closed:
            # the first connection is still being set up
            await self._wait_for_outcome(self._connect_timeout_s)
        if not self.connected:
            raise txredisapi.ConnectionError(f"not connected to Redis at {self.host}:{self.port}")
        return self._handler

    def _connection_up(self) -> None:
        self._down = False
        self._notify()

    def _connection_down(self, why: str) -> None:
        if self._closed or self.connected:
            return
        if not self._down:
            log.info("Redis at {host}:{port} is down: {why}", host=self.host, port=self.port, why=why)
        self._down = True
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    async def _wait_for_outcome(self, timeout_s: float) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        d.addTimeout(timeout_s, self._reactor)
        try:
            await d
        except defer.TimeoutError:
            pass
        finally:
            if d in self._waiters:
                self._waiters.remove(d)


# -- rate limiter ------------------------------------------------------------------------------

_HIT_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if n <= tonumber(ARGV[1]) then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
if ttl < 1 then
  ttl = 1
end
return ttl
"""


class RedisRateLimiter:
    """Fixed window per key (the window starts with the first hit), counted atomically by a
    Lua script (INCR, PEXPIRE on the first hit, PTTL when over the limit)."""

    def __init__(self, client: RedisClient, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = f"{prefix}rl:"

    def key(self, key: str) -> str:
        return self._prefix + key

    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        k = self.key(key)
        # not idempotent: a retried hit that had been counted would count twice
        ttl = await self._client.call(lambda c: c.eval(_HIT_SCRIPT, keys=[k], args=[int(limit), int(window_ms)]))
        return 0 if int(ttl) <= 0 else min(int(ttl), window_ms)

    async def reset(self, key: str) -> None:
        k = self.key(key)
        await self._client.call(lambda c: c.delete(k), idempotent=True)


# -- lock --------------------------------------------------------------------------------------

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock:
    """``SET name token NX PX ttl``; released by a compare-and-delete Lua script."""

    def __init__(self, client: RedisClient, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = f"{prefix}lock:"

    def key(self, name: str) -> str:
        return self._prefix + name

    async def acquire(self, name: str, ttl_ms: int) -> str | None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        k, token = self.key(name), secrets.token_urlsafe(18)
        # not idempotent: a retry after a lost reply would find the lock taken by ourselves
        reply = await self._client.call(lambda c: c.set(k, token, pexpire=int(ttl_ms), only_if_not_exists=True))
        return token if reply == "OK" else None

    async def release(self, name: str, token: str) -> None:
        k = self.key(name)
        await self._client.call(lambda c: c.eval(_RELEASE_SCRIPT, keys=[k], args=[token]), idempotent=True)
