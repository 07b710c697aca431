"""Pure rules of media objects: what may be uploaded, what the bytes really are, who may see it.

Imports no Twisted, WAMP, driver or image library (thumbnails are in ``imaging.py``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from common.errors import Conflict, InvalidArgument, NotFound, PayloadTooLarge

SIZE_MAX_DEFAULT = 50 * 1024 * 1024  # 50 MiB
FILENAME_MAX = 255
THUMBNAIL_SIDE = 320
SNIFF_BYTES = 64  # the ranged read of ``complete``: enough for every signature below
UPLOAD_TTL_S = 600
DOWNLOAD_TTL_S = 3600

PENDING, COMPLETE = "pending", "complete"

OCTET_STREAM = "application/octet-stream"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
# ISO base media files (MP4, QuickTime, M4A) share the ``ftyp`` box: one family
_FTYP_FAMILY = frozenset({"video/mp4", "video/quicktime", "audio/mp4"})
ALLOWED_TYPES = frozenset(
    IMAGE_TYPES
    | _FTYP_FAMILY
    | {"video/webm", "audio/mpeg", "audio/ogg", "audio/wav", "application/pdf", "application/zip", OCTET_STREAM}
)

_MEDIA_ID = re.compile(r"^[0-9a-f]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True)
class Media:
    media_id: str
    owner_id: str
    content_type: str
    size: int
    created_at_ms: int
    filename: str | None = None
    state: str = PENDING
    width: int | None = None
    height: int | None = None
    has_thumbnail: bool = False
    chats: frozenset[str] = field(default_factory=frozenset)

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE


# -- blob keys: the upload lands under ``up/``; ``complete`` moves validated bytes to ``obj/`` ------------
def upload_key(media_id: str) -> str:
    return f"up/{media_id}"


def object_key(media_id: str) -> str:
    return f"obj/{media_id}"


def thumbnail_key(media_id: str) -> str:
    return f"thumb/{media_id}"


BLOB_KEY = re.compile(r"^(up|obj|thumb)/[0-9a-f]{32}$")


def new_media_id() -> str:
    return uuid.uuid4().hex


# -- validation ----------------------------------------------------------------------------------
def validate_media_id(value: Any) -> str:
    if not isinstance(value, str) or not _MEDIA_ID.match(value):
        raise InvalidArgument("media_id is not a valid media id")
    return value


def validate_content_type(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("content_type must be a string")
    ct = value.split(";", 1)[0].strip().lower()
    if ct not in ALLOWED_TYPES:
        raise InvalidArgument(f"content_type {value[:64]!r} is not accepted; one of {', '.join(sorted(ALLOWED_TYPES))}")
    return ct


def validate_size(value: Any, size_max: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("size must be an integer (bytes)")
    if value <= 0:
        raise InvalidArgument("size must be at least 1 byte")
    if value > size_max:
        raise PayloadTooLarge(f"size must be at most {size_max} bytes", size_max=size_max)
    return value


def validate_filename(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > FILENAME_MAX or _CONTROL.search(value):
        raise InvalidArgument(f"filename must be 1-{FILENAME_MAX} characters without control characters or slashes")
    return value.strip()


def validate_media_ids(value: Any, most: int = 10) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > most:
        raise InvalidArgument(f"media_ids must be a list of 1-{most} media ids")
    out: list[str] = []
    for v in value:
        mid = validate_media_id(v)
        if mid not in out:
            out.append(mid)
    return out


# -- sniffing ------------------------------------------------------------------------------------
def sniff(head: bytes) -> str | None:
    """The type the first bytes of a file announce (``None``: none we know)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"PK\x03\x04"):
        return "application/zip"
    return None


def check_declared_type(declared: str, head: bytes) -> None:
    """The uploaded bytes must be what was declared (``application/octet-stream`` is anything)."""
    if declared == OCTET_STREAM:
        return
    found = sniff(head)
    if found == declared or (found in _FTYP_FAMILY and declared in _FTYP_FAMILY):
        return
    raise InvalidArgument(
        f"the uploaded bytes are not {declared} (they look like {found or 'something else'}); upload again",
        detected=found,
    )


# -- sizes ---------------------------------------------------------------------------------------
def thumbnail_size(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """The thumbnail's size: longest side ``side`` (never enlarged), aspect kept, at least 1 px."""
    if width <= 0 or height <= 0:
        raise InvalidArgument("an image has no pixels")
    longest = max(width, height)
    if longest <= side:
        return width, height
    scale = side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose declared dimensions would take too much memory to decode."""
    if width <= 0 or height <= 0:
        raise InvalidArgument("an image has no pixels")
    if width * height > max_pixels:
        raise InvalidArgument(f"image too large to process ({width}x{height} > {max_pixels} pixels)")


# -- state and access ----------------------------------------------------------------------------
def owned(media: Media | None, user_id: str) -> Media:
    """The media if ``user_id`` owns it; anyone else learns nothing (``not_found``)."""
    if media is None or media.owner_id != user_id:
        raise NotFound("no such media")
    return media


def completed(media: Media, *, fields: dict[str, Any]) -> Media:
    return replace(media, state=COMPLETE, **fields)


def require_complete(media: Media) -> Media:
    if not media.complete:
        raise Conflict("the media is not complete yet: upload the bytes and call messenger.media.complete")
    return media


def summary(media: Media) -> dict[str, Any]:
    """What a message carries about an attachment (no URLs: they expire; ``media.get`` makes them)."""
    return {
        "media_id": media.media_id,
        "content_type": media.content_type,
        "size": media.size,
        "filename": media.filename,
        "width": media.width,
        "height": media.height,
        "has_thumbnail": media.has_thumbnail,
    }


def descriptor(media: Media, url: str, thumbnail_url: str | None, expires_in: int) -> dict[str, Any]:
    """The answer of ``complete`` and ``get``."""
    return {
        "media_id": media.media_id,
        "content_type": media.content_type,
        "size": media.size,
        "filename": media.filename,
        "url": url,
        "thumbnail_url": thumbnail_url,
        "width": media.width,
        "height": media.height,
        "expires_in": expires_in,
    }
