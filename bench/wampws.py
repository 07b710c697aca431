"""A minimal WAMP v2 client over a minimal WebSocket client, on plain asyncio (no Twisted,
no autobahn), light enough to hold thousands of sessions per process.

WebSocket (RFC 6455, client side): the opening handshake with ``Sec-WebSocket-Protocol:
wamp.2.json``, masked client frames, ping → pong, close handshake, fragmented messages.
WAMP (JSON serializer): HELLO/WELCOME/ABORT, CHALLENGE/AUTHENTICATE (ticket), CALL/RESULT/ERROR,
SUBSCRIBE/SUBSCRIBED, EVENT, PUBLISH/PUBLISHED (acknowledged), GOODBYE. Client pings (heartbeats)
are matched to their pongs; the server's pings are answered and counted. One ``asyncio.Protocol``
per session: no task per connection, so an idle session costs only its buffers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "wamp.2.json"

HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE, ERROR = 1, 2, 3, 4, 5, 6, 8
PUBLISH, PUBLISHED, SUBSCRIBE, SUBSCRIBED, EVENT, CALL, RESULT = 16, 17, 32, 33, 36, 48, 50

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

ROLES: dict[str, Any] = {"caller": {"features": {}}, "subscriber": {"features": {}}, "publisher": {"features": {}}}

EventHandler = Callable[[list[Any], dict[str, Any]], None]


class WampError(Exception):
    """An ERROR answer or an ABORT: ``uri`` is the error URI (e.g. ``messenger.error.rate_limited``)."""

    def __init__(self, uri: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(uri, *(args or []))
        self.uri = uri
        self.args_ = args or []
        self.kwargs = kwargs or {}


class SessionLost(Exception):
    """The connection ended (or never got as far as a session)."""


def mask_payload(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``key`` (one big-integer XOR: fast in CPython)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = random.randbytes(4)
    return header + key + mask_payload(payload, key)


class WampSession(asyncio.Protocol):
    """One WebSocket connection carrying one WAMP session. Create with :func:`open_session`."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        realm: str,
        authmethods: list[str],
        ticket: str | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path, self.realm = host, port, path, realm
        self.authmethods = authmethods
        self.ticket = ticket
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshaken = False
        self._key = base64.b64encode(random.randbytes(16)).decode()
        self._fragments: list[bytes] = []
        self._frag_opcode = 0
        self.welcome: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()  # result: why it ended
        self._goodbye: asyncio.Future[None] = loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subs: dict[int, EventHandler] = {}
        self._next_id = 0
        self.closing = False  # we started the close: a loss is not a drop
        self.close_reason = ""
        self.session_id: int | None = None
        self.server_pings = 0  # pings the server sent (answered with a pong)
        self._pings: dict[bytes, asyncio.Future[None]] = {}  # our pings waiting for their pong

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        request = (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            "\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._handshaken:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > 16384:
                    self._fail("handshake: response too long")
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            problem = self._check_handshake(head)
            if problem:
                self._fail(f"handshake: {problem}")
                return
            self._handshaken = True
            details: dict[str, Any] = {"authmethods": self.authmethods, "roles": ROLES}
            self._send([HELLO, self.realm, details])
        self._parse_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        if not self.lost.done():
            self.lost.set_result(reason)
        error = SessionLost(reason)
        if not self.welcome.done():
            self.welcome.set_exception(error)
            self.welcome.exception()  # mark retrieved: a lost join may have no waiter
        if not self._goodbye.done():
            self._goodbye.set_result(None)
        for fut in [*self._pending.values(), *self._pings.values()]:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # a lost ping may have no waiter
        self._pending.clear()
        self._pings.clear()
        self._subs.clear()

    # ---------------------------------------------------------------- WebSocket

    def _check_handshake(self, head: str) -> str | None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            return f"status {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key.encode() + WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            return "bad Sec-WebSocket-Accept"
        if headers.get("sec-websocket-protocol") != SUBPROTOCOL:
            return f"subprotocol {headers.get('sec-websocket-protocol')!r}"
        return None

    def _parse_frames(self) -> None:
        buf = self._buf
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, hdr = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            masked = b1 & 0x80
            if masked:
                hdr += 4
            if n - pos < hdr + length:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + length])
            if masked:
                payload = mask_payload(payload, bytes(buf[pos + hdr - 4 : pos + hdr]))
            pos += hdr + length
            self._on_frame(bool(b0 & 0x80), b0 & 0x0F, payload)
            if self.transport is None or self.transport.is_closing():
                break
        del buf[:pos]

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.server_pings += 1
            self._write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            fut = self._pings.pop(payload, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.close_reason:
                self.close_reason = f"websocket close {code} {payload[2:].decode(errors='replace')}".strip()
            self._write(frame(OP_CLOSE, payload[:2]))  # echo the code: close handshake
            if self.transport is not None:
                self.transport.close()
        elif opcode in (OP_TEXT, OP_BINARY) and fin and not self._fragments:
            self._on_message(payload)
        elif opcode in (OP_TEXT, OP_BINARY):
            self._frag_opcode, self._fragments = opcode, [payload]
        elif opcode == OP_CONT:
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                self._on_message(whole)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _send(self, msg: list[Any]) -> None:
        self._write(frame(OP_TEXT, json.dumps(msg, separators=(",", ":")).encode()))

    def _fail(self, reason: str) -> None:
        self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------------- WAMP

    def _on_message(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            kind = msg[0]
        except (ValueError, IndexError, TypeError):
            self._fail("protocol: undecodable message")
            return
        if kind == EVENT:
            handler = self._subs.get(msg[1])
            if handler is not None:
                handler(msg[4] if len(msg) > 4 else [], msg[5] if len(msg) > 5 else {})
        elif kind == RESULT:
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                args = msg[3] if len(msg) > 3 else []
                kwargs = msg[4] if len(msg) > 4 else {}
                fut.set_result(kwargs if kwargs or len(args) != 1 else args[0])
        elif kind == ERROR:
            fut = self._pending.pop(msg[2], None)
            if fut is not None and not fut.done():
                fut.set_exception(WampError(msg[4], msg[5] if len(msg) > 5 else [], msg[6] if len(msg) > 6 else {}))
        elif kind == PUBLISHED:
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])
        elif kind == SUBSCRIBED:
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])
        elif kind == WELCOME:
            self.session_id = msg[1]
            if not self.welcome.done():
                self.welcome.set_result(msg[2])
        elif kind == CHALLENGE:
            if msg[1] == "ticket" and self.ticket is not None:
                self._send([AUTHENTICATE, self.ticket, {}])
            else:
                self._fail(f"unsupported challenge {msg[1]!r}")
        elif kind == ABORT:
            details = msg[1] if isinstance(msg[1], dict) else {}
            self.close_reason = f"abort {msg[2]}"
            if not self.welcome.done():
                self.welcome.set_exception(WampError(msg[2], [details.get("message", "")]))
            if self.transport is not None:
                self.transport.close()
        elif kind == GOODBYE:
            if self.closing:
                if not self._goodbye.done():
                    self._goodbye.set_result(None)
            else:
                self.close_reason = f"goodbye {msg[2]}"
                self._send([GOODBYE, {}, "wamp.close.goodbye_and_out"])

    def _request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    @property
    def is_open(self) -> bool:
        return not self.lost.done()

    def call_nowait(self, procedure: str, **kwargs: Any) -> asyncio.Future[Any]:
        """Send a CALL and answer the future of its result (kwargs, or the single positional)."""
        return self._request(lambda rid: [CALL, rid, {}, procedure, [], kwargs])

    def publish_nowait(self, topic: str, args: list[Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Send an acknowledged PUBLISH and answer the future of its PUBLISHED (the publication id)."""
        return self._request(lambda rid: [PUBLISH, rid, {"acknowledge": True}, topic, args, kwargs])

    def _request(self, message: Callable[[int], list[Any]]) -> asyncio.Future[Any]:
        """Send ``message(request_id)``; its answer settles the returned future."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.lost.done():
            fut.set_exception(SessionLost(self.lost.result()))
            return fut
        rid = self._request_id()
        self._pending[rid] = fut
        self._send(message(rid))
        return fut

    def ping(self) -> asyncio.Future[None]:
        """Send a WebSocket ping (a client heartbeat); the future is done when its pong arrives."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.lost.done():
            fut.set_exception(SessionLost(self.lost.result()))
            fut.exception()
            return fut
        payload = random.randbytes(8)
        self._pings[payload] = fut
        self._write(frame(OP_PING, payload))
        return fut

    async def call(self, procedure: str, within: float = 30.0, **kwargs: Any) -> Any:
        return await asyncio.wait_for(self.call_nowait(procedure, **kwargs), within)

    async def subscribe(self, topic: str, handler: EventHandler, within: float = 30.0) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.lost.done():
            raise SessionLost(self.lost.result())
        rid = self._request_id()
        self._pending[rid] = fut
        self._send([SUBSCRIBE, rid, {}, topic])
        sub_id = await asyncio.wait_for(fut, within)
        self._subs[sub_id] = handler
        return sub_id

    async def close(self, within: float = 3.0) -> None:
        """GOODBYE, then the WebSocket close handshake; the server closes TCP (else we abort)."""
        if self.transport is None or self.lost.done():
            return
        self.closing = True
        try:
            if self.welcome.done() and not self.welcome.exception():
                self._send([GOODBYE, {}, "wamp.close.normal"])
                await asyncio.wait_for(asyncio.shield(self._goodbye), within)
            self._write(frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            await asyncio.wait_for(asyncio.shield(self.lost), within)
        except TimeoutError:
            pass
        finally:
            if not self.lost.done() and self.transport is not None:
                self.transport.abort()


async def open_session(
    host: str,
    port: int,
    path: str = "/ws",
    realm: str = "messenger",
    *,
    authmethods: list[str] | None = None,
    ticket: str | None = None,
    source: str | None = None,
    within: float = 30.0,
) -> WampSession:
    """Connect (from ``source`` when given: bind before connect), handshake and join."""
    loop = asyncio.get_running_loop()
    methods = authmethods or (["ticket"] if ticket else ["anonymous"])
    session = WampSession(host, port, path, realm, methods, ticket)
    local_addr = (source, 0) if source else None
    try:
        async with asyncio.timeout(within):
            await loop.create_connection(lambda: session, host, port, local_addr=local_addr)
            await session.welcome
    except BaseException:
        if session.transport is not None:
            session.transport.abort()
        raise
    return session
