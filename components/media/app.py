"""Wiring of the media component: configuration → adapters → service → WAMP.

- ``embedded`` (default): files under ``<data folder>/media``, records in ``media.sqlite3``;
  uploads and downloads over HTTP through this process's HTTP server (``extra.http``, path
  ``/media/``), which the router proxies under ``/media/`` of the client port; URLs start with
  ``extra.public_url`` (default ``http://127.0.0.1:8080``) and are signed with a random secret
  kept in ``<data folder>/media_secret``.
- ``distributed``: an S3-compatible store through boto3 (``MESSENGER_S3_ENDPOINT`` (empty: AWS),
  ``MESSENGER_S3_REGION``, ``MESSENGER_S3_BUCKET``, ``MESSENGER_S3_ACCESS_KEY``,
  ``MESSENGER_S3_SECRET_KEY``; ``extra.s3`` may rename the variables or set ``prefix`` and
  ``addressing_style``), records in Cassandra (``MESSENGER_CASSANDRA``, keyspace
  ``extra.cassandra_keyspace``).

``extra.limits``: ``size_max`` (bytes, default 50 MiB), ``max_pixels``, ``upload_ttl_s``,
``download_ttl_s``, ``thumbnails_at_once``. Thumbnails are made in a thread pool of that size.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from common import config
from common.adapters.memory import FallbackRateLimiter, MemoryRateLimiter
from common.clock import Clock, SystemClock
from common.httpserver import http_root, mount
from common.lifecycle import start_all, stop_all, until_up
from common.wampkit import BackendSession
from components.media.imaging import Thumbnail, make_thumbnail
from components.media.service import MediaLimits, MediaService
from components.media.wamp import MediaWamp, WampChats

log = Logger(namespace="messenger.media")
SWEEP_EVERY_S = 600.0
SWEEP_GRACE_S = 3600  # after an upload URL expires, before its unfinished bytes are removed


class MediaComponent(BackendSession):
    clock: Clock = SystemClock()

    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    def _limiter(self, extra: dict[str, Any]) -> tuple[Any, list[Any]]:
        """Upload limits per user: in-process (embedded), Redis (distributed), the in-process
        window while Redis is away."""
        if config.profile(extra) == config.EMBEDDED:
            return MemoryRateLimiter(self.clock), []
        from common.adapters.redis import RedisClient, RedisRateLimiter

        redis = RedisClient.from_url(config.required_env(extra, "redis_url_env", "MESSENGER_REDIS_URL"))
        limiter = FallbackRateLimiter(RedisRateLimiter(redis), MemoryRateLimiter(self.clock), "uploads")
        return limiter, [redis]

    def _build(self, extra: dict[str, Any]) -> tuple[Any, Any]:
        from twisted.internet import reactor

        http = extra.get("http") or {}
        if config.profile(extra) == config.EMBEDDED:
            from components.media.adapters.files import FileBlobStore, MediaHttpResource
            from components.media.adapters.sqlite import SqliteMediaStore

            folder = config.data_dir(extra)
            blobs = FileBlobStore(
                folder / "media",
                config.local_secret(folder, "media_secret"),
                str(extra.get("public_url") or "http://127.0.0.1:8080"),
            )
            root = http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
            mount(root, b"media", MediaHttpResource(blobs))
            return SqliteMediaStore(folder / "media.sqlite3"), blobs
        from components.media.adapters.cassandra import CassandraMediaStore
        from components.media.adapters.s3 import S3BlobStore

        s3 = extra.get("s3") or {}

        def env(key: str, default_env: str) -> str | None:
            return config.secret_from_env(s3, key, default_env)

        s3_store = S3BlobStore(
            config.required_env(s3, "bucket_env", "MESSENGER_S3_BUCKET"),
            endpoint_url=env("endpoint_env", "MESSENGER_S3_ENDPOINT"),
            region=env("region_env", "MESSENGER_S3_REGION") or "us-east-1",
            access_key=env("access_key_env", "MESSENGER_S3_ACCESS_KEY"),
            secret_key=env("secret_key_env", "MESSENGER_S3_SECRET_KEY"),
            prefix=str(s3.get("prefix", "")),
            addressing_style=str(s3.get("addressing_style", "path")),
            reactor=reactor,
        )
        hosts, port = config.cassandra_location(extra)
        store = CassandraMediaStore(hosts, port, str(extra.get("cassandra_keyspace", "messenger")), reactor)
        return store, s3_store

    async def _start(self) -> None:
        from twisted.internet import reactor

        extra: dict[str, Any] = dict(self.config.extra or {})
        if config.profile(extra) == config.DISTRIBUTED and not config.secret_from_env(
            extra.get("s3") or {}, "bucket_env", "MESSENGER_S3_BUCKET"
        ):
            # the other components of this process keep working; media calls answer no_such_procedure
            # (message.send with media_ids: unavailable)
            log.error("media component disabled: no S3 bucket configured (MESSENGER_S3_BUCKET, see the README)")
            return
        store, blobs = self._build(extra)
        limiter, more = self._limiter(extra)
        self._closeables = [store, blobs, *more]
        await until_up("media storage", lambda: start_all(self._closeables))
        limits_cfg = extra.get("limits") or {}
        limits = MediaLimits(**{k: int(v) for k, v in limits_cfg.items() if k in MediaLimits.__dataclass_fields__})
        pool = ThreadPool(minthreads=0, maxthreads=max(1, limits.thumbnails_at_once), name="media-thumbnails")
        pool.start()
        self._pool = pool

        async def thumbnailer(data: bytes, max_pixels: int) -> Thumbnail:
            thumb: Thumbnail = await deferToThreadPool(reactor, pool, make_thumbnail, data, max_pixels=max_pixels)
            return thumb

        service = MediaService(store, blobs, WampChats(self), thumbnailer, self.clock, limiter, limits)
        if hasattr(blobs, "sweep"):  # the embedded file store: uploads never completed go after a while
            older_than = limits.upload_ttl_s + SWEEP_GRACE_S

            async def sweep() -> None:
                try:
                    gone = await blobs.sweep(older_than)
                except Exception as e:
                    log.warn("media sweep failed: {e}", e=e)
                    return
                if gone:
                    log.info("media sweep: {n} uploads never completed removed", n=gone)

            self._sweeper = task.LoopingCall(lambda: defer.ensureDeferred(sweep()))
            self._sweeper.clock = reactor
            self._sweeper.start(SWEEP_EVERY_S, now=True)
        edge = MediaWamp(service)
        await self.register_procedures(edge.procedures(), backend_only=edge.backend_only)
        http = extra.get("http") or {}
        http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
        log.info("media component ready ({profile})", profile=config.profile(extra))

    def onLeave(self, details: Any) -> None:
        stop_all(getattr(self, "_closeables", []))
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.stop()
        sweeper = getattr(self, "_sweeper", None)
        if sweeper is not None and sweeper.running:
            sweeper.stop()
        super().onLeave(details)
