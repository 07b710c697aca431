"""Wiring of the chat component: configuration → adapters → service → WAMP.

- ``embedded`` (default): SQLite file ``chat.sqlite3`` under the data folder, in-process rate limits.
- ``distributed``: Cassandra (``MESSENGER_CASSANDRA`` = ``host[:port][,host...]``, keyspace from
  ``extra.cassandra_keyspace``), Redis rate limits (``MESSENGER_REDIS_URL``); new updates and
  ephemeral events are published on per-user Redis channels (every shard's delivery listens)
  instead of being handed to ``messenger.internal.deliver`` on this session's router.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from common import config
from common.adapters.memory import FallbackRateLimiter, MemoryRateLimiter
from common.clock import Clock, SystemClock
from common.httpserver import http_root
from common.lifecycle import start_all, stop_all, until_up
from common.wampkit import BackendSession
from components.chat.service import ChatLimits, ChatService, Notifier
from components.chat.wamp import ChatWamp, WampDirectory, WampMedia, WampNotifier, WampPusher

log = Logger(namespace="messenger.chat")


class ChatComponent(BackendSession):
    clock: Clock = SystemClock()

    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def _build(self, extra: dict[str, Any]) -> tuple[Any, Any, Notifier, list[Any]]:
        """Store, rate limiter and notifier for the profile, and everything to start and stop."""
        from twisted.internet import reactor

        if config.profile(extra) == config.EMBEDDED:
            from components.chat.adapters.sqlite import SqliteChatStore

            store: Any = SqliteChatStore(config.data_dir(extra) / "chat.sqlite3")
            return store, MemoryRateLimiter(self.clock), WampNotifier(self), [store]
        from common.adapters.redis import RedisClient, RedisRateLimiter
        from components.chat.adapters.cassandra import CassandraChatStore
        from components.chat.adapters.redis_notifier import RedisNotifier

        hosts, port = config.cassandra_location(extra)
        store = CassandraChatStore(hosts, port, str(extra.get("cassandra_keyspace", "messenger")), reactor)
        redis = RedisClient.from_url(config.required_env(extra, "redis_url_env", "MESSENGER_REDIS_URL"))
        # sending must not stop while Redis is away: the send limit then holds per process
        limiter = FallbackRateLimiter(RedisRateLimiter(redis), MemoryRateLimiter(self.clock), "message sending")
        return store, limiter, RedisNotifier(redis), [store, redis]

    async def _start(self) -> None:
        from twisted.internet import reactor

        extra: dict[str, Any] = dict(self.config.extra or {})
        store, limiter, notifier, self._closeables = await self._build(extra)
        await until_up("chat storage", lambda: start_all(self._closeables))
        limits = extra.get("limits") or {}
        service = ChatService(
            store,
            WampDirectory(self),
            notifier,
            limiter,
            self.clock,
            ChatLimits(**{k: int(v) for k, v in limits.items() if k in ChatLimits.__dataclass_fields__}),
            media=WampMedia(self),
            # extra.push_notices false: no push component is deployed, hand nothing over
            pusher=WampPusher(self, reactor) if extra.get("push_notices", True) else None,
        )
        edge = ChatWamp(service)
        await self.register_procedures(edge.procedures(), backend_only=edge.backend_only)
        http = extra.get("http") or {}
        http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
        log.info("chat component ready ({profile})", profile=config.profile(extra))

    def onLeave(self, details: Any) -> None:
        stop_all(getattr(self, "_closeables", []))
        super().onLeave(details)
