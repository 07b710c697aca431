"""A TCP relay a test can take down, bring back, or freeze (bytes are held): stands between a
component and a real server (Postgres, Cassandra) to make the dependency flap."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.protocols import portforward

reactor: Any = _reactor  # zope interfaces confuse mypy without its plugin


class _Client(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        assert self.peer is not None
        relay: Relay = self.peer.factory  # type: ignore[assignment]
        relay.forward(self, data)


class _ClientFactory(portforward.ProxyClientFactory):
    protocol = _Client
    noisy = False


class _Server(portforward.ProxyServer):
    clientProtocolFactory = _ClientFactory
    factory: Relay

    def connectionMade(self) -> None:
        self.factory.servers.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.servers.discard(self)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        self.factory.forward(self, data)


class Relay(portforward.ProxyFactory):
    """Listens on 127.0.0.1 (``listen_port``, kept across ``down``/``up``) and relays to host:port."""

    protocol = _Server
    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.servers: set[_Server] = set()
        self.listen_port = 0
        self._listening: Any = None
        self._held: list[tuple[portforward.Proxy, bytes]] | None = None

    def forward(self, source: portforward.Proxy, data: bytes) -> None:
        if self._held is not None:
            self._held.append((source, data))
        elif source.peer is not None:
            peer: Any = source.peer.transport
            peer.write(data)

    def up(self) -> None:
        self._listening = reactor.listenTCP(self.listen_port, self, interface="127.0.0.1")
        self.listen_port = self._listening.getHost().port

    async def down(self) -> None:
        """Nothing listens any more, and every relayed connection is cut."""
        if self._listening is not None:
            await self._listening.stopListening()
            self._listening = None
        for s in list(self.servers):
            for t in (s.transport, s.peer.transport if s.peer else None):
                if t is not None:
                    t.abortConnection()

    def freeze(self) -> None:
        self._held = []

    def thaw(self) -> None:
        held, self._held = self._held or [], None
        for source, data in held:
            self.forward(source, data)
