"""Ports of the media component. Contract suites: ``tests/contract/test_blob_store.py`` (the
embedded file store and S3 on moto) and ``tests/contract/test_media_store.py`` (SQLite and
Cassandra).

Every method is a coroutine unless noted; a dependency failure surfaces as
``common.errors.Unavailable``. Keys are ``domain.BLOB_KEY`` (``up/<id>``, ``obj/<id>``, ``thumb/<id>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from components.media.domain import Media


@dataclass(frozen=True)
class BlobInfo:
    size: int
    content_type: str | None
    etag: str  # changes whenever the bytes are replaced


class BlobStore(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def upload_target(self, key: str, content_type: str, size: int, expires_s: int) -> tuple[str, dict[str, str]]:
        """(URL, headers) for one HTTP PUT of exactly ``size`` bytes of ``content_type`` to ``key``,
        valid ``expires_s`` seconds (no I/O). The store refuses other types, lengths or methods
        where it can (the embedded store always; S3 through the signed headers)."""
        ...

    def download_url(self, key: str, expires_s: int) -> str:
        """A URL for HTTP GET of ``key``, valid ``expires_s`` seconds (no I/O)."""
        ...

    async def stat(self, key: str) -> BlobInfo | None:
        """Size, stored content type and etag of ``key``; None if there is nothing there."""
        ...

    async def read(self, key: str, length: int) -> bytes:
        """The first ``length`` bytes of ``key`` (fewer if it is shorter; a ranged read).
        ``NotFound`` if there is nothing there."""
        ...

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def promote(self, src: str, dst: str, etag: str, content_type: str) -> bool:
        """Move ``src`` to ``dst`` (stored with ``content_type``) only if ``src`` still has
        ``etag`` (nothing replaced it since it was checked). False if it changed or is gone."""
        ...

    async def delete(self, key: str) -> None:
        """Idempotent."""
        ...


class MediaStore(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create(self, media: Media) -> None:
        """Store a new pending media object."""
        ...

    async def get(self, media_id: str) -> Media | None: ...

    async def complete(self, media: Media) -> Media:
        """Record ``media`` (state complete, width, height, has_thumbnail) if the stored one is
        still pending; answer the stored object (the first completion wins). ``NotFound`` if
        there is no such media."""
        ...

    async def add_chat(self, media_ids: list[str], chat_id: str) -> None:
        """Record that these media were posted in ``chat_id`` (idempotent)."""
        ...
