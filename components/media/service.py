"""Use cases of media objects. Takes ports, a clock and a thumbnailer; knows nothing of WAMP,
HTTP or drivers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet import defer

from common.clock import Clock
from common.errors import Conflict, Forbidden, InvalidArgument, NotFound, RateLimited
from common.ports import RateLimiter
from components.media import domain as d
from components.media.domain import Media
from components.media.imaging import MAX_PIXELS_DEFAULT, Thumbnail
from components.media.ports import BlobStore, MediaStore


class Chats(Protocol):
    """What the media component asks the chat component."""

    async def is_member(self, chat_id: str, user_id: str) -> bool: ...


Thumbnailer = Callable[[bytes, int], Awaitable[Thumbnail]]
"""``(image bytes, max_pixels) -> Thumbnail``, run off the reactor thread by the caller's choice."""


@dataclass(frozen=True)
class MediaLimits:
    size_max: int = d.SIZE_MAX_DEFAULT
    max_pixels: int = MAX_PIXELS_DEFAULT
    upload_ttl_s: int = d.UPLOAD_TTL_S
    download_ttl_s: int = d.DOWNLOAD_TTL_S
    thumbnails_at_once: int = 2  # images decoded at the same time (each holds its bytes in memory)
    uploads_per_window: int = 30  # create_upload per user and window
    upload_window_ms: int = 60_000


class MediaService:
    def __init__(
        self,
        store: MediaStore,
        blobs: BlobStore,
        chats: Chats,
        thumbnailer: Thumbnailer,
        clock: Clock,
        limiter: RateLimiter,
        limits: MediaLimits | None = None,
    ) -> None:
        self.limiter = limiter
        self.store = store
        self.blobs = blobs
        self.chats = chats
        self.thumbnailer = thumbnailer
        self.clock = clock
        self.limits = limits or MediaLimits()
        self._decoding = defer.DeferredSemaphore(self.limits.thumbnails_at_once)

    def _describe(self, media: Media) -> dict[str, Any]:
        ttl = self.limits.download_ttl_s
        thumb = self.blobs.download_url(d.thumbnail_key(media.media_id), ttl) if media.has_thumbnail else None
        return d.descriptor(media, self.blobs.download_url(d.object_key(media.media_id), ttl), thumb, ttl)

    # -- user --------------------------------------------------------------------------------
    async def create_upload(self, user_id: str, content_type: Any, size: Any, filename: Any) -> dict[str, Any]:
        ctype = d.validate_content_type(content_type)
        n = d.validate_size(size, self.limits.size_max)
        name = d.validate_filename(filename)
        retry_after = await self.limiter.hit(
            f"upload:{user_id}", self.limits.uploads_per_window, self.limits.upload_window_ms
        )
        if retry_after > 0:
            raise RateLimited(f"too many uploads; retry in {retry_after} ms", retry_after_ms=retry_after)
        media = Media(d.new_media_id(), user_id, ctype, n, self.clock.now_ms(), filename=name)
        await self.store.create(media)
        url, headers = self.blobs.upload_target(d.upload_key(media.media_id), ctype, n, self.limits.upload_ttl_s)
        return {
            "media_id": media.media_id,
            "upload_url": url,
            "upload_method": "PUT",
            "upload_headers": headers,
            "expires_in": self.limits.upload_ttl_s,
        }

    async def complete(self, user_id: str, media_id: Any) -> dict[str, Any]:
        mid = d.validate_media_id(media_id)
        media = d.owned(await self.store.get(mid), user_id)
        if media.complete:
            return self._describe(media)  # a retry
        key = d.upload_key(mid)
        info = await self.blobs.stat(key)
        if info is None:
            raise Conflict("nothing was uploaded for this media yet: PUT the bytes to upload_url first")
        if info.size != media.size:
            raise InvalidArgument(f"the upload has {info.size} bytes, {media.size} were declared; upload again")
        d.check_declared_type(media.content_type, await self.blobs.read(key, d.SNIFF_BYTES))
        width = height = None
        has_thumbnail = False
        if media.content_type in d.IMAGE_TYPES:
            async with self._decoding:  # bounded: at most N images in memory and in decoders
                data = await self.blobs.read(key, media.size + 1)
                if len(data) != media.size:
                    raise InvalidArgument("the upload changed while it was checked; upload again")
                thumb = await self.thumbnailer(data, self.limits.max_pixels)
                del data
            await self.blobs.put(d.thumbnail_key(mid), thumb.data, thumb.content_type)
            width, height, has_thumbnail = thumb.width, thumb.height, True
        if not await self.blobs.promote(key, d.object_key(mid), info.etag, media.content_type):
            raise Conflict("the upload changed while it was checked; call complete again")
        done = replace(media, state=d.COMPLETE, width=width, height=height, has_thumbnail=has_thumbnail)
        return self._describe(await self.store.complete(done))

    async def get(self, user_id: str, media_id: Any) -> dict[str, Any]:
        mid = d.validate_media_id(media_id)
        media = await self.store.get(mid)
        if media is None:
            raise NotFound("no such media")
        if media.owner_id != user_id and not await self._member_of_any(media.chats, user_id):
            raise Forbidden("this media was not shared with you")
        return self._describe(d.require_complete(media))

    async def _member_of_any(self, chat_ids: frozenset[str], user_id: str) -> bool:
        for chat_id in sorted(chat_ids):
            if await self.chats.is_member(chat_id, user_id):
                return True
        return False

    # -- backend -----------------------------------------------------------------------------
    async def attach(self, owner_id: str, chat_id: str, media_ids: Any) -> dict[str, Any]:
        """Check that every media is complete and the owner's, record that it was posted in
        ``chat_id`` and answer what messages carry about them, in the order given."""
        ids = d.validate_media_ids(media_ids)
        found: list[Media] = []
        for mid in ids:
            media = await self.store.get(mid)
            if media is None:
                raise InvalidArgument(f"no such media: {mid}")
            if media.owner_id != owner_id:
                raise Forbidden(f"media {mid} is not yours")
            if not media.complete:
                raise InvalidArgument(f"media {mid} is not complete: call messenger.media.complete first")
            found.append(media)
        await self.store.add_chat(ids, chat_id)
        return {"media": [d.summary(m) for m in found]}
