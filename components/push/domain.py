"""Rules of push notifications (pure: no Twisted, WAMP or HTTP).

- validating what a client registers (an FCM registration token, a browser PushSubscription);
- what a notification says (title, body, collapse key) for a new message;
- how a provider's answer is judged (sent, token gone, retry later, failed) and when to retry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from common.errors import InvalidArgument

FCM = "fcm"
WEBPUSH = "webpush"
PLATFORMS = (FCM, WEBPUSH)

# FCM registration tokens are opaque: ~150-250 characters of [A-Za-z0-9_:-] in practice
# (e.g. "dX8...:APA91b..."). Anything of another shape is a client bug, not a token.
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{32,4096}$")
ENDPOINT_MAX = 2048
_B64URL = re.compile(r"^[A-Za-z0-9_\-]+={0,2}$")
TOKENS_PER_USER_MAX = 50  # registering one more drops the user's oldest

TITLE_MAX = 64
BODY_MAX = 120
MEDIA_BODY = "📷 Photo"
DEFAULT_TITLE = "New message"
_ID = re.compile(r"^[0-9a-f]{32}$")


# -- registration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PushToken:
    """One registered push target of one device of one user.

    ``token``: the FCM registration token, or the subscription as canonical JSON
    (``{"endpoint", "keys": {"p256dh", "auth"}}``). ``key``: what identifies the target on its
    platform (hash of the FCM token / of the Web Push endpoint), unique per user."""

    user_id: str
    device_id: str
    platform: str
    token: str
    key: str
    created_at_ms: int

    def subscription(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.token)
        return value


def validate_platform(value: Any, enabled: frozenset[str] | None = None) -> str:
    if value not in PLATFORMS:
        raise InvalidArgument(f"platform must be one of {', '.join(PLATFORMS)}")
    if enabled is not None and value not in enabled:
        on = ", ".join(sorted(enabled)) or "none"
        raise InvalidArgument(f"push platform {value!r} is not enabled on this server (enabled: {on})")
    return str(value)


def validate_fcm_token(value: Any) -> str:
    if not isinstance(value, str) or not _FCM_TOKEN.match(value):
        raise InvalidArgument("token must be an FCM registration token (32-4096 of A-Z a-z 0-9 _ : -)")
    return value


def b64url_decode(value: str) -> bytes:
    if not _B64URL.match(value):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_endpoint(value: Any) -> str:
    """An https URL (http only to a loopback host, for local stand-ins), no credentials."""
    if not isinstance(value, str) or not 0 < len(value) <= ENDPOINT_MAX:
        raise InvalidArgument(f"token.endpoint must be a URL of at most {ENDPOINT_MAX} characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidArgument("token.endpoint is not a valid URL") from None
    if not host or parts.username is not None or parts.password is not None or any(c.isspace() for c in value):
        raise InvalidArgument("token.endpoint is not a valid URL")
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(host)):
        return value
    raise InvalidArgument("token.endpoint must be an https URL")


def validate_p256dh(value: Any) -> str:
    """The browser's P-256 public key: base64url of a 65-byte uncompressed point on the curve."""
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = b64url_decode(value) if isinstance(value, str) else b""
        if len(raw) != 65 or raw[0] != 0x04:
            raise ValueError("not an uncompressed point")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except (ValueError, binascii.Error):
        raise InvalidArgument("token.keys.p256dh must be a base64url uncompressed P-256 public key") from None
    return str(value)


def validate_auth_secret(value: Any) -> str:
    try:
        raw = b64url_decode(value) if isinstance(value, str) else b""
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 16:
        raise InvalidArgument("token.keys.auth must be 16 bytes in base64url")
    return str(value)


def validate_subscription(value: Any) -> dict[str, Any]:
    """A browser PushSubscription (``toJSON()``): ``{endpoint, keys: {p256dh, auth}}``; other
    members (``expirationTime``) are ignored. Answers the canonical subscription."""
    if not isinstance(value, dict):
        raise InvalidArgument("token must be a PushSubscription: {endpoint, keys: {p256dh, auth}}")
    endpoint = validate_endpoint(value.get("endpoint"))
    keys = value.get("keys")
    if not isinstance(keys, dict):
        raise InvalidArgument("token.keys must be {p256dh, auth}")
    return {
        "endpoint": endpoint,
        "keys": {"p256dh": validate_p256dh(keys.get("p256dh")), "auth": validate_auth_secret(keys.get("auth"))},
    }


def token_key(platform: str, identity: str) -> str:
    return hashlib.sha256(f"{platform}\n{identity}".encode()).hexdigest()


def new_token(user_id: str, device_id: str, platform: str, token: Any, now_ms: int) -> PushToken:
    """Validate what a client registers and make the record to store."""
    if platform == FCM:
        value = validate_fcm_token(token)
        return PushToken(user_id, device_id, FCM, value, token_key(FCM, value), now_ms)
    sub = validate_subscription(token)
    text = json.dumps(sub, sort_keys=True, separators=(",", ":"))
    return PushToken(user_id, device_id, WEBPUSH, text, token_key(WEBPUSH, sub["endpoint"]), now_ms)


def key_to_unregister(platform: str, token: Any) -> str:
    """What identifies the token a client unregisters (a subscription needs only its endpoint)."""
    if platform == FCM:
        return token_key(FCM, validate_fcm_token(token))
    if not isinstance(token, dict):
        raise InvalidArgument("token must be the PushSubscription that was registered")
    return token_key(WEBPUSH, validate_endpoint(token.get("endpoint")))


# -- what to show ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notice:
    """A new message that some recipients may need a push for (``messenger.internal.push.notify``)."""

    chat_id: str
    chat_kind: str
    chat_title: str | None
    sender_id: str
    sender_name: str | None
    message_id: str
    seq: int
    text_preview: str | None
    has_media: bool
    recipients: tuple[str, ...]


RECIPIENTS_MAX = 1000


def _opt_str(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidArgument(f"{name} must be a string of at most {limit} characters")
    return value


def _id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidArgument(f"{name} is not a valid id")
    return value


def parse_notice(raw: dict[str, Any]) -> Notice:
    seq = raw.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidArgument("seq must be a positive integer")
    recipients = raw.get("recipients")
    if not isinstance(recipients, list) or len(recipients) > RECIPIENTS_MAX:
        raise InvalidArgument(f"recipients must be a list of at most {RECIPIENTS_MAX} user ids")
    kind = raw.get("chat_kind")
    if kind not in ("direct", "group"):
        raise InvalidArgument("chat_kind must be direct or group")
    return Notice(
        chat_id=_id(raw.get("chat_id"), "chat_id"),
        chat_kind=str(kind),
        chat_title=_opt_str(raw.get("chat_title"), "chat_title", 256),
        sender_id=_id(raw.get("sender_id"), "sender_id"),
        sender_name=_opt_str(raw.get("sender_name"), "sender_name", 256),
        message_id=_id(raw.get("message_id"), "message_id"),
        seq=seq,
        text_preview=_opt_str(raw.get("text_preview"), "text_preview", 8192),
        has_media=bool(raw.get("has_media")),
        recipients=tuple(dict.fromkeys(_id(u, "recipients[]") for u in recipients)),
    )


@dataclass(frozen=True)
class Content:
    """What one push says, the same for every platform."""

    title: str
    body: str
    collapse_key: str  # per chat: a newer push of the chat replaces the older one
    data: dict[str, str]  # for the app: what to open


def truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def collapse_key(chat_id: str) -> str:
    """Chat ids are 32 hex characters: valid as FCM collapse key, Android tag and Web Push
    ``Topic`` (at most 32 characters of the base64url alphabet)."""
    return chat_id


def content_for(notice: Notice, sender_name: str | None) -> Content:
    name = truncate(sender_name or notice.sender_name or "", TITLE_MAX) or DEFAULT_TITLE
    text = (notice.text_preview or "").strip()
    what = text if text else (MEDIA_BODY if notice.has_media else "")
    if notice.chat_kind == "group":
        title = truncate(notice.chat_title or "", TITLE_MAX) or name
        body = truncate(f"{name}: {what}", BODY_MAX)
    else:
        title = name
        body = truncate(what, BODY_MAX)
    data = {
        "type": "message.new",
        "chat_id": notice.chat_id,
        "message_id": notice.message_id,
        "seq": str(notice.seq),
        "sender_id": notice.sender_id,
    }
    return Content(title=title, body=body, collapse_key=collapse_key(notice.chat_id), data=data)


def fcm_arguments(token: str, content: Content) -> dict[str, Any]:
    """Keyword arguments of pyfcm's ``parse_payload`` for one FCM HTTP v1 message."""
    return {
        "fcm_token": token,
        "notification_title": content.title,
        "notification_body": content.body,
        "data_payload": dict(content.data),
        "android_config": {
            "collapse_key": content.collapse_key,
            "priority": "high",
            "notification": {"tag": content.collapse_key},
        },
        "apns_config": {"headers": {"apns-collapse-id": content.collapse_key}},
    }


def webpush_payload(content: Content) -> bytes:
    """The JSON the service worker gets (encrypted with aes128gcm)."""
    body = {"title": content.title, "body": content.body, "tag": content.collapse_key, **content.data}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


# -- provider answers and retries ----------------------------------------------------------------
class Verdict(Enum):
    SENT = "sent"
    GONE = "gone"  # the token is dead: delete it
    RETRY = "retry"  # transient: try again later
    FAILED = "failed"  # permanent for this push (bad request, auth): log, drop


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str = ""
    retry_after_s: float | None = None


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by these providers)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def judge_fcm(status: int, body: Any, retry_after: str | None) -> Outcome:
    """FCM HTTP v1 answer -> outcome. Token gone: HTTP 404 or error code ``UNREGISTERED``."""
    if 200 <= status < 300:
        return Outcome(Verdict.SENT)
    code = ""
    if isinstance(body, dict):
        error = body.get("error") or {}
        for detail in error.get("details") or []:
            if isinstance(detail, dict) and detail.get("errorCode"):
                code = str(detail["errorCode"])
        code = code or str(error.get("status") or "")
    if status == 404 or code == "UNREGISTERED":
        return Outcome(Verdict.GONE, code or "404")
    if status == 429 or status >= 500 or code in ("UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"):
        return Outcome(Verdict.RETRY, f"{status} {code}".strip(), retry_after_seconds(retry_after))
    return Outcome(Verdict.FAILED, f"{status} {code}".strip())


def judge_webpush(status: int, retry_after: str | None) -> Outcome:
    """RFC 8030 push service answer -> outcome. Subscription gone: 404 or 410."""
    if 200 <= status < 300:
        return Outcome(Verdict.SENT)
    if status in (404, 410):
        return Outcome(Verdict.GONE, str(status))
    if status == 429 or status >= 500:
        return Outcome(Verdict.RETRY, str(status), retry_after_seconds(retry_after))
    return Outcome(Verdict.FAILED, str(status))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # sends per push at most (the first one included)
    base_s: float = 0.5
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after_s: float | None, rand: float) -> float | None:
        """Seconds to wait after failed send number ``attempt`` (1-based), or None: give up.
        Exponential with full jitter in [0.5, 1) of the step; a provider's Retry-After is a floor
        (capped at ``max_s``: a push that late is stale anyway)."""
        if attempt >= self.attempts:
            return None
        step = min(self.max_s, self.base_s * (2 ** (attempt - 1)))
        delay = step * (0.5 + rand / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        return delay
