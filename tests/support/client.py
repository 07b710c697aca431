"""A WAMP client for tests: autobahn over a real WebSocket to the real node."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import ComponentConfig, SubscribeOptions
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint


class JoinFailed(Exception):
    def __init__(self, reason: str, message: str | None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Client(ApplicationSession):
    """One session. ``events`` collects what arrives on subscribed topics."""

    def __init__(self, config: ComponentConfig, authmethods: list[str], ticket: str | None, authid: str | None):
        super().__init__(config)
        self._authmethods = authmethods
        self._ticket = ticket
        self._authid = authid
        self.joined: defer.Deferred[Client] = defer.Deferred()
        self.left: defer.Deferred[Any] = defer.Deferred()
        self.disconnected: defer.Deferred[None] = defer.Deferred()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.close_reason: str | None = None
        self._waiters: list[tuple[Any, defer.Deferred[Any]]] = []

    def onConnect(self) -> None:
        self.join(self.config.realm, authmethods=self._authmethods, authid=self._authid)

    def onChallenge(self, challenge: Any) -> str:
        return self._ticket or ""

    def onJoin(self, details: Any) -> None:
        self.details = details
        self.joined.callback(self)

    def onLeave(self, details: Any) -> None:
        self.close_reason = details.reason
        if not self.joined.called:
            self.joined.errback(JoinFailed(details.reason, details.message))
        if not self.left.called:
            self.left.callback(details)
        self.disconnect()

    def onDisconnect(self) -> None:
        if not self.joined.called:
            self.joined.errback(JoinFailed("disconnected", None))
        if not self.left.called:
            self.left.callback(None)
        if not self.disconnected.called:
            self.disconnected.callback(None)

    # -- helpers ----------------------------------------------------------------------------
    async def listen(self, topic: str, match: str | None = None) -> Any:
        def on_event(*args: Any, **kwargs: Any) -> None:
            self.events.append((topic, kwargs))
            for pred, d in list(self._waiters):
                if pred(kwargs):
                    self._waiters.remove((pred, d))
                    d.callback(kwargs)

        options = SubscribeOptions(match=match) if match else None
        return await self.subscribe(on_event, topic, options=options)

    def wait_event(self, pred: Any, timeout: float = 5.0) -> defer.Deferred[Any]:
        for _, kw in self.events:
            if pred(kw):
                return defer.succeed(kw)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((pred, d))
        d.addTimeout(timeout, reactor)
        return d

    async def close(self) -> None:
        if self.is_attached():
            self.leave()
        if self._transport is not None and not self.disconnected.called:
            try:
                await self.disconnected.addTimeout(5, reactor)
            except defer.TimeoutError:
                pass


async def connect(
    url: str,
    *,
    ticket: str | None = None,
    authid: str | None = None,
    serializer: str = "json",
    realm: str = "messenger",
) -> Client:
    """Join as guest (no ticket) or as a user (ticket = access token). Raises JoinFailed."""
    from autobahn.wamp import serializer as ser

    serializers = {
        "json": ser.JsonSerializer(),
        "msgpack": ser.MsgPackSerializer(),
        "cbor": ser.CBORSerializer(),
    }
    authmethods = ["ticket"] if ticket is not None else ["anonymous"]
    client = Client(ComponentConfig(realm=realm), authmethods, ticket, authid)

    def make(config: ComponentConfig | None = None) -> Client:
        return client

    factory = WampWebSocketClientFactory(make, url=url, serializers=[serializers[serializer]])
    factory.setProtocolOptions(maxMessagePayloadSize=0, autoPingInterval=0)
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    endpoint = TCP4ClientEndpoint(reactor, host, int(port), timeout=5)
    await endpoint.connect(factory)  # type: ignore[arg-type]
    return await client.joined.addTimeout(10, reactor)


async def call_error(d: Any) -> ApplicationError:
    """Await a call that must fail; answer its ApplicationError."""
    try:
        result = await d
    except ApplicationError as e:
        return e
    raise AssertionError(f"call succeeded unexpectedly: {result!r}")
