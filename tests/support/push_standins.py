"""Loopback stand-ins of the push providers, speaking the real protocols, for tests.

- :class:`FcmStandin`: an OAuth2 token endpoint (JWT-bearer grant, RFC 7523: the assertion is
  verified with the service account's public key) and FCM HTTP v1
  ``POST /v1/projects/{project}/messages:send`` (checks the Bearer token, records the message,
  answers ``{name}``; can be told to answer 404 ``UNREGISTERED``, 503 or 429 for a token, or to
  be slow);
- :class:`WebPushStandin`: a push service (RFC 8030) that checks the VAPID ``Authorization``
  (RFC 8292: ES256 JWT, ``aud`` = origin, ``k`` = the application server key), the
  ``Content-Encoding: aes128gcm`` and ``TTL`` headers, and **decrypts** the payload (RFC 8291)
  with the subscription's private key and auth secret, made here like a browser makes them.

Each runs ``http.server`` in a daemon thread on 127.0.0.1; what arrives is recorded with its
``time.perf_counter()`` arrival time.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    at: float  # time.perf_counter() on arrival
    path: str
    headers: dict[str, str]
    body: Any  # FCM: the request JSON; Web Push: the decrypted payload (JSON)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a node stopped while pushing) is no test failure."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Server:
    """One ThreadingHTTPServer in a daemon thread; ``handle(method, path, headers, body)``
    answers ``(status, headers, body bytes)``."""

    def __init__(self, handle: Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, out_headers, out = handle("POST", self.path, headers, body)
                except Exception as e:  # a check failed: the test sees it in .errors
                    outer.errors.append(f"{self.path}: {type(e).__name__}: {e}")
                    status, out_headers, out = 400, {"Content-Type": "text/plain"}, str(e).encode()
                self.send_response(status)
                for k, v in out_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.errors: list[str] = []
        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"standin:{self.port}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode()


class FcmStandin:
    """OAuth2 token endpoint + FCM HTTP v1 on one loopback port."""

    def __init__(self, workdir: Path, project_id: str = "standin-project") -> None:
        self.project_id = project_id
        self.client_email = f"push@{project_id}.iam.gserviceaccount.com"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._server = _Server(self._handle)
        self.url = f"http://127.0.0.1:{self._server.port}"
        self.token_uri = f"{self.url}/token"
        self.issued: set[str] = set()
        self.token_requests = 0
        self.messages: list[Received] = []
        # per registration token: list of answers to give, in order ("unregistered", "unavailable",
        # "quota": 429 with Retry-After 1); when empty, 200
        self.answers: dict[str, list[str]] = {}
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self.service_account_file = workdir / "service-account.json"
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.service_account_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": project_id,
                    "private_key_id": secrets.token_hex(20),
                    "private_key": pem,
                    "client_email": self.client_email,
                    "client_id": "1234567890",
                    "auth_uri": f"{self.url}/auth",
                    "token_uri": self.token_uri,
                }
            )
        )

    @property
    def errors(self) -> list[str]:
        return self._server.errors

    def start(self) -> FcmStandin:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path == "/token":
            return self._token(headers, body)
        if path == f"/v1/projects/{self.project_id}/messages:send":
            return self._send(headers, body)
        return _json(404, {"error": {"code": 404, "message": f"no such path {path}", "status": "NOT_FOUND"}})

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert headers.get("content-type", "").startswith("application/x-www-form-urlencoded"), headers
        form = urllib.parse.parse_qs(body.decode())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"], form
        claims = jwt.decode(
            form["assertion"][0],
            self._key.public_key(),
            algorithms=["RS256"],
            # google-auth signs for Google's token endpoint whatever the file's token_uri (as Google checks)
            audience=[GOOGLE_TOKEN_AUDIENCE, self.token_uri],
            issuer=self.client_email,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
        assert FCM_SCOPE in str(claims.get("scope", "")).split(), claims
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued.add(token)
            self.token_requests += 1
        return _json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _send(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        arrived = time.perf_counter()
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.issued:
            return _json(401, {"error": {"code": 401, "message": "bad token", "status": "UNAUTHENTICATED"}})
        request = json.loads(body)
        message = request["message"]
        assert isinstance(message.get("token"), str), request
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            queue = self.answers.get(message["token"]) or []
            answer = queue.pop(0) if queue else "ok"
            self.messages.append(Received(arrived, "/messages:send", headers, {**request, "answered": answer}))
        if answer == "unregistered":
            return _json(
                404,
                {
                    "error": {
                        "code": 404,
                        "message": "Requested entity was not found.",
                        "status": "NOT_FOUND",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                "errorCode": "UNREGISTERED",
                            }
                        ],
                    }
                },
            )
        if answer == "unavailable":
            return _json(503, {"error": {"code": 503, "message": "try later", "status": "UNAVAILABLE"}})
        if answer == "quota":
            return _json(
                429,
                {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}},
                {"Retry-After": "1"},
            )
        return _json(200, {"name": f"projects/{self.project_id}/messages/{secrets.token_hex(8)}"})

    def delivered(self, token: str) -> list[Received]:
        """Messages to ``token`` that were answered 200."""
        with self._lock:
            return [m for m in self.messages if m.body["message"]["token"] == token and m.body["answered"] == "ok"]

    def attempts(self, token: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.body["message"]["token"] == token]


@dataclass
class Subscription:
    """A browser's push subscription: the private half stays here."""

    sub_id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer next (else 201)

    @property
    def p256dh(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    def as_json(self) -> dict[str, Any]:
        """What ``PushSubscription.toJSON()`` gives a web app."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth_secret)},
        }


def rfc8291_decrypt(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """Decrypt an ``aes128gcm`` Web Push message (RFC 8188 framing, RFC 8291 keys)."""
    salt, rs, idlen = body[:16], struct.unpack("!I", body[16:20])[0], body[20]
    as_public_raw = body[21 : 21 + idlen]
    records = body[21 + idlen :]
    assert idlen == 65 and rs >= 18, (idlen, rs)
    as_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public_raw)
    ua_public_raw = private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ecdh_secret = private_key.exchange(ec.ECDH(), as_public)
    key_info = b"WebPush: info\x00" + ua_public_raw + as_public_raw
    ikm = HKDF(algorithm=hashes.SHA256(), length=32, salt=auth_secret, info=key_info).derive(ecdh_secret)
    cek = HKDF(algorithm=hashes.SHA256(), length=16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(algorithm=hashes.SHA256(), length=12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
    out = b""
    chunks = [records[i : i + rs] for i in range(0, len(records), rs)]
    for seq, chunk in enumerate(chunks):
        iv = (int.from_bytes(nonce, "big") ^ seq).to_bytes(12, "big")
        plain = AESGCM(cek).decrypt(iv, chunk, None).rstrip(b"\x00")
        last = seq == len(chunks) - 1
        assert plain[-1:] == (b"\x02" if last else b"\x01"), "bad padding delimiter"
        out += plain[:-1]
    return out


class WebPushStandin:
    """A push service on one loopback port: ``POST /push/<sub_id>``."""

    def __init__(self, vapid_public_key: str) -> None:
        self.vapid_public_key = vapid_public_key  # the application server key subscriptions were made with
        self._server = _Server(self._handle)
        self.origin = f"http://127.0.0.1:{self._server.port}"
        self.subscriptions: dict[str, Subscription] = {}
        self._lock = threading.Lock()

    @property
    def errors(self) -> list[str]:
        return self._server.errors

    def start(self) -> WebPushStandin:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def subscribe(self) -> Subscription:
        sub_id = secrets.token_hex(8)
        sub = Subscription(
            sub_id, f"{self.origin}/push/{sub_id}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
        )
        with self._lock:
            self.subscriptions[sub_id] = sub
        return sub

    def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        arrived = time.perf_counter()
        sub = self.subscriptions.get(path.rsplit("/", 1)[-1]) if path.startswith("/push/") else None
        if sub is None:
            return 404, {}, b""
        # RFC 8292: Authorization: vapid t=<JWT>, k=<application server key>
        scheme, _, params = headers.get("authorization", "").partition(" ")
        assert scheme.lower() == "vapid", headers.get("authorization")
        parts = dict(p.strip().split("=", 1) for p in params.split(","))
        assert parts["k"] == self.vapid_public_key, "VAPID key is not the one the subscription was made with"
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(parts["k"]))
        claims = jwt.decode(
            parts["t"], key, algorithms=["ES256"], audience=self.origin, options={"require": ["exp", "aud", "sub"]}
        )
        assert claims["exp"] <= time.time() + 24 * 3600, "VAPID exp more than 24 h ahead"
        assert headers.get("content-encoding") == "aes128gcm", headers
        ttl = headers.get("ttl")
        assert ttl is not None and ttl.isdigit(), headers
        payload = json.loads(rfc8291_decrypt(body, sub.private_key, sub.auth_secret))
        with self._lock:
            status = sub.answers.pop(0) if sub.answers else 201
            sub.received.append(Received(arrived, path, headers, {**payload, "answered": status}))
        return status, ({"Location": f"{self.origin}/message/{secrets.token_hex(6)}"} if status == 201 else {}), b""

    def delivered(self, sub: Subscription) -> list[Received]:
        with self._lock:
            return [r for r in sub.received if r.body["answered"] == 201]


def vapid_keypair() -> tuple[str, str]:
    """(private key as base64url raw scalar, public key as base64url uncompressed point)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(private), b64url(public)
