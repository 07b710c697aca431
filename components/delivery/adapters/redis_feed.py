"""The per-user Redis notification feed of one delivery session (distributed profile).

Chat publishes each user's new updates (and ephemeral events) on ``messenger:u:<user_id>``
(:func:`common.adapters.redis.user_channel`); the delivery session of each router shard
watches the users connected to that shard: :meth:`RedisFeed.watch` when a user's first session
joins, :meth:`RedisFeed.unwatch` when the last one leaves. Payloads are handed to
``on_message(user_id, payload)`` as they arrive.

One dedicated connection in subscribe mode, spoken in plain RESP (a dozen lines; txredisapi's
subscriber mixes subscription replies into its command queue and does not re-subscribe):

- it reconnects by itself with a short backoff (``ClientService``), and on every new connection
  sends ``AUTH`` (when the URL has a password) and ``SUBSCRIBE`` for every watched user, so
  what was watched while Redis was away is subscribed as soon as it is back;
- a ``PING`` every ``ping_every_s``; a connection that received nothing for ``dead_after_s``
  (a hung server, a silently dropped link) is aborted and made again;
- notifications published while no connection was up are lost: the delivery's sequencer
  heals the gap from the store when the next one arrives, and clients heal through
  ``sync.get_updates``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.adapters.redis import USER_CHANNEL_PREFIX, RedisLocation, user_channel

log = Logger(namespace="messenger.delivery")

OnMessage = Callable[[str, bytes], None]
_SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE command when (re)subscribing everything


class IncompleteReply(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


class RespError(Exception):
    """An error reply from Redis."""


def encode_command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse_reply(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buf`` at ``pos``: ``(value, next_pos)``. Raises :class:`IncompleteReply`
    when more bytes are needed. Error replies are answered as :class:`RespError` values."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise IncompleteReply
    kind, line, pos = buf[pos : pos + 1], buf[pos + 1 : end], end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return RespError(line.decode(errors="replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise IncompleteReply
        return buf[pos : pos + n], pos + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse_reply(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"not a RESP reply: {kind!r}")


class _Subscriber(Protocol):
    def __init__(self, feed: RedisFeed) -> None:
        self._feed = feed
        self._buf = b""
        self._last_rx = 0.0
        self._pinger: task.LoopingCall | None = None
        self._out: Any = None  # the transport (zope interfaces do not type-check well)

    def connectionMade(self) -> None:
        reactor = self._feed._reactor
        self._out = self.transport
        self._last_rx = reactor.seconds()
        if self._feed._password is not None:
            auth = [self._feed._username, self._feed._password] if self._feed._username else [self._feed._password]
            self.send("AUTH", *auth)
        self._feed._connected(self)
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._pinger.start(self._feed._ping_every_s, now=False)

    def send(self, *args: str) -> None:
        if self._out is not None:
            self._out.write(encode_command(*args))

    def _ping(self) -> None:
        if self._feed._reactor.seconds() - self._last_rx > self._feed._dead_after_s:
            log.warn("Redis subscriber connection silent; reconnecting")
            self._out.abortConnection()
            return
        self.send("PING")

    def dataReceived(self, data: bytes) -> None:
        self._last_rx = self._feed._reactor.seconds()
        self._buf += data
        pos = 0
        try:
            while pos < len(self._buf):
                reply, pos = parse_reply(self._buf, pos)
                self._handle(reply)
        except IncompleteReply:
            pass
        except ValueError as e:
            log.warn("Redis subscriber got garbage ({e}); reconnecting", e=e)
            self._buf = b""
            self._out.abortConnection()
            return
        self._buf = self._buf[pos:]

    def _handle(self, reply: Any) -> None:
        if isinstance(reply, RespError):  # AUTH refused, or the like: try again later
            log.warn("Redis subscriber error reply: {e}", e=reply)
            self._out.loseConnection()
        elif isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self._feed._deliver(reply[1], reply[2])
        # subscribe/unsubscribe confirmations, pong, +OK: nothing to do

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._feed._lost(self)


class _SubscriberFactory(Factory):
    noisy = False

    def __init__(self, feed: RedisFeed) -> None:
        self._feed = feed

    def buildProtocol(self, addr: Any) -> _Subscriber:
        return _Subscriber(self._feed)


class RedisFeed:
    """Watches users' notification channels on one subscriber connection that heals itself."""

    def __init__(
        self,
        host: str,
        port: int,
        on_message: OnMessage,
        *,
        password: str | None = None,
        username: str | None = None,
        reactor: Any = None,
        connect_timeout_s: float = 1.0,
        reconnect_initial_delay_s: float = 0.1,
        reconnect_max_delay_s: float = 2.0,
        ping_every_s: float = 5.0,
        dead_after_s: float = 12.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.host = host
        self.port = port
        self._on_message = on_message
        self._password = password
        self._username = username
        self._reactor = reactor
        self._ping_every_s = ping_every_s
        self._dead_after_s = dead_after_s
        self._watched: set[str] = set()
        self._conn: _Subscriber | None = None
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout_s)
        factory: Any = _SubscriberFactory(self)
        self._service = ClientService(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(initialDelay=reconnect_initial_delay_s, maxDelay=reconnect_max_delay_s),
            clock=reactor,
        )

    @classmethod
    def from_url(cls, url: str, on_message: OnMessage, **kwargs: Any) -> RedisFeed:
        """``redis://[[user]:password@]host[:port][/db]`` (pub/sub ignores the database number)."""
        loc = RedisLocation.parse(url)
        kwargs.setdefault("password", loc.password)
        kwargs.setdefault("username", loc.username)
        return cls(loc.host, loc.port, on_message, **kwargs)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def watched(self) -> frozenset[str]:
        return frozenset(self._watched)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 1.0) -> bool:
        """Start connecting; wait at most ``timeout_s`` for a first connection. Never fails: while
        Redis is away the feed keeps trying in the background. Answers whether it is connected."""
        if not self._service.running:
            self._service.startService()
        d = self._service.whenConnected(failAfterFailures=1)
        d.addTimeout(timeout_s, self._reactor)
        try:
            await d
        except Exception:
            log.warn("Redis subscriber at {host}:{port} not connected yet", host=self.host, port=self.port)
        return self.connected

    async def stop(self) -> None:
        if self._service.running:
            await self._service.stopService()
        self._conn = None

    # -- watching ----------------------------------------------------------------------------------
    def watch(self, user_id: str) -> None:
        if user_id in self._watched:
            return
        self._watched.add(user_id)
        if self._conn is not None:
            self._conn.send("SUBSCRIBE", user_channel(user_id))

    def unwatch(self, user_id: str) -> None:
        if user_id not in self._watched:
            return
        self._watched.discard(user_id)
        if self._conn is not None:
            self._conn.send("UNSUBSCRIBE", user_channel(user_id))

    # -- from the protocol -----------------------------------------------------------------------
    def _connected(self, conn: _Subscriber) -> None:
        self._conn = conn
        channels = [user_channel(u) for u in self._watched]
        for i in range(0, len(channels), _SUBSCRIBE_CHUNK):
            conn.send("SUBSCRIBE", *channels[i : i + _SUBSCRIBE_CHUNK])
        log.info("Redis subscriber connected ({n} users watched)", n=len(channels))

    def _lost(self, conn: _Subscriber) -> None:
        if self._conn is conn:
            self._conn = None

    def _deliver(self, channel: bytes, payload: bytes) -> None:
        name = channel.decode(errors="replace")
        if not name.startswith(USER_CHANNEL_PREFIX):
            return
        user_id = name[len(USER_CHANNEL_PREFIX) :]
        if user_id not in self._watched:
            return  # a notification in flight while unsubscribing
        try:
            self._on_message(user_id, payload)
        except Exception:
            log.failure("notification for {user} not handled", user=user_id)
