"""The one error family of the messenger.

Pure Python: domain code raises these; the WAMP edge (``common.wampkit``) maps each
to its ``messenger.error.<code>`` URI in one place.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MessengerError(Exception):
    """Base of every error a client may see. ``code`` is the last URI component."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra: dict[str, Any] = extra

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(MessengerError):
    code = "invalid_argument"


class Unauthenticated(MessengerError):
    code = "unauthenticated"


class Forbidden(MessengerError):
    code = "forbidden"


class NotFound(MessengerError):
    code = "not_found"


class Conflict(MessengerError):
    code = "conflict"


class RateLimited(MessengerError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message, retry_after_ms=int(retry_after_ms))
        self.retry_after_ms = int(retry_after_ms)


class PayloadTooLarge(MessengerError):
    code = "payload_too_large"


class Unavailable(MessengerError):
    """A dependency is down or too slow; the call is safe to retry."""

    code = "unavailable"


ERROR_CLASSES: tuple[type[MessengerError], ...] = (
    InvalidArgument,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    PayloadTooLarge,
    Unavailable,
)
