"""Web Push sender on pywebpush: VAPID (RFC 8292, ``Authorization: vapid t=<ES256 JWT>,k=<key>``,
``aud`` = the endpoint's origin) and payload encryption (RFC 8291, ``aes128gcm``), with
``TTL``, ``Topic`` (collapse per chat) and ``Urgency`` headers. Blocking HTTP runs on a bounded
thread pool, never on the reactor; the answer is judged by :func:`domain.judge_webpush`."""

from __future__ import annotations

import threading
from typing import Any

import requests
from py_vapid import Vapid
from pywebpush import WebPushException, webpush
from twisted.internet.threads import deferToThreadPool

from components.push.domain import Content, Outcome, PushToken, Verdict, judge_webpush, webpush_payload


def load_vapid_key(value: str) -> Any:
    """A VAPID private key: PEM, base64url DER, or base64url raw 32-byte P-256 scalar."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return Vapid.from_pem(text.encode())
    return Vapid.from_string(text)


def vapid_public_key(vapid: Any) -> str:
    """The application server key a browser subscribes with (base64url, uncompressed point)."""
    from cryptography.hazmat.primitives import serialization
    from py_vapid.utils import b64urlencode

    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return str(b64urlencode(raw))


class WebPushSender:
    def __init__(
        self,
        private_key: str,
        subject: str,
        reactor: Any,
        pool: Any,
        *,
        ttl_s: int = 86_400,
        timeout_s: float = 10.0,
    ) -> None:
        self._vapid = load_vapid_key(private_key)
        self.public_key = vapid_public_key(self._vapid)
        self._subject = subject
        self._reactor = reactor
        self._pool = pool
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _post(self, subscription: dict[str, Any], content: Content) -> tuple[int, str | None]:
        try:
            response: Any = webpush(
                subscription,
                data=webpush_payload(content).decode(),
                vapid_private_key=self._vapid,
                vapid_claims={"sub": self._subject},  # aud (the endpoint's origin) and exp are added
                content_encoding="aes128gcm",
                ttl=self._ttl_s,
                timeout=self._timeout_s,
                headers={"Topic": content.collapse_key, "Urgency": "high"},
                requests_session=self._session(),
            )
        except WebPushException as e:
            if e.response is None:
                raise
            return int(e.response.status_code), e.response.headers.get("Retry-After")
        return int(response.status_code), response.headers.get("Retry-After")

    async def send(self, token: PushToken, content: Content) -> Outcome:
        try:
            status, retry_after = await deferToThreadPool(
                self._reactor, self._pool, self._post, token.subscription(), content
            )
        except Exception as e:  # connection refused, timeout
            return Outcome(Verdict.RETRY, f"{type(e).__name__}: {e}"[:300])
        return judge_webpush(status, retry_after)
