"""HMAC tokens of the embedded profile's media URLs (pure).

A token binds the method, the blob key, the content type and the exact size (uploads) and the
expiry: ``sig = HMAC-SHA256(secret, "PUT\\n<key>\\n<content type>\\n<size>\\n<expires>")``,
URL-safe base64. The server recomputes it from the request and compares in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign(secret: bytes, method: str, key: str, content_type: str, size: int | None, expires: int) -> str:
    text = "\n".join((method.upper(), key, content_type, "" if size is None else str(size), str(expires)))
    mac = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(
    secret: bytes, sig: str, method: str, key: str, content_type: str, size: int | None, expires: int, now_s: float
) -> bool:
    if expires < now_s:
        return False
    return hmac.compare_digest(sign(secret, method, key, content_type, size, expires), sig)
