"""Wiring of the auth component: configuration → adapters → service → WAMP.

Started by Crossbar as a container component (``components.auth.app.AuthComponent``);
``config.extra`` selects the profile:

- ``embedded`` (default): SQLite file under the data folder, in-process rate limits and lock,
  key secret generated into the data folder.
- ``distributed``: PostgreSQL (``MESSENGER_PG_DSN``), Redis (``MESSENGER_REDIS_URL``) for rate
  limits and the key-rotation lock, key secret from ``MESSENGER_KEY_SECRET``.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.wamp.types import RegisterOptions
from twisted.internet import defer, task
from twisted.logger import Logger

from common import config
from common.adapters.memory import MemoryLock, MemoryRateLimiter
from common.clock import Clock, SystemClock
from common.errors import Unavailable
from common.httpserver import JsonResource, http_root, mount
from common.lifecycle import start_all, stop_all, until_up
from common.wampkit import BackendSession
from components.auth.adapters.argon2 import Argon2Hasher
from components.auth.service import AuthService, AuthSettings
from components.auth.tokens import KeyRing, TokenPolicy, jwks_json
from components.auth.wamp import AuthWamp, PublishingEvents
from realms import uris

log = Logger(namespace="messenger.auth")


class AuthComponent(BackendSession):
    clock: Clock = SystemClock()

    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def _build(self, extra: dict[str, Any]) -> tuple[Any, Any, Any, Any, list[Any]]:
        """(account store, rate limiter, lock, users' Redis channels or None, things to stop)."""
        from twisted.internet import reactor

        prof = config.profile(extra)
        if prof == config.EMBEDDED:
            from components.auth.adapters.sqlite import SqliteAccountStore

            store: Any = SqliteAccountStore(config.data_dir(extra) / "accounts.sqlite3")
            return store, MemoryRateLimiter(self.clock), MemoryLock(self.clock), None, [store]
        from common.adapters.redis import RedisClient, RedisLock, RedisRateLimiter, UserChannels
        from components.auth.adapters.postgres import PostgresAccountStore

        pool = extra.get("postgres_pool") or {}  # max_connections (per router session), queue_timeout_s
        pg = PostgresAccountStore(
            config.required_env(extra, "postgres_dsn_env", "MESSENGER_PG_DSN"),
            reactor,
            max_connections=int(pool.get("max_connections", 6)),
            queue_timeout_s=float(pool.get("queue_timeout_s", 10.0)),
        )
        redis = RedisClient.from_url(config.required_env(extra, "redis_url_env", "MESSENGER_REDIS_URL"))
        return pg, RedisRateLimiter(redis), RedisLock(redis), UserChannels(redis), [pg, redis]

    async def _start(self) -> None:
        from twisted.internet import reactor

        extra: dict[str, Any] = dict(self.config.extra or {})
        prof = config.profile(extra)
        store, limiter, lock, channels, self._closeables = await self._build(extra)
        await until_up("auth storage", lambda: start_all(self._closeables))

        if prof == config.EMBEDDED:
            secret = config.local_secret(config.data_dir(extra), "key_secret")
        else:
            secret = config.required_env(extra, "key_secret_env", "MESSENGER_KEY_SECRET").encode()
        tokens = extra.get("tokens") or {}
        policy = TokenPolicy(**{k: v for k, v in tokens.items() if k in TokenPolicy.__dataclass_fields__})
        ring = KeyRing(store, lock, self.clock, secret, policy)
        await until_up("signing keys", ring.ensure_current_key)
        # another instance held the rotation lock (several shards' sessions start together): wait
        # for its key, or this session refuses every token signed with it until a reload
        for _ in range(300):
            if ring.current_kid is not None:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
            await until_up("signing keys", ring.reload)
        else:
            await until_up("signing keys", ring.ensure_current_key)
        await ring.reload()
        ring.check_secret()

        argon = extra.get("argon2") or {}
        weak = os.environ.get("MESSENGER_BENCHMARK_WEAK_HASHING") == "1"
        if weak:
            log.warn("MESSENGER_BENCHMARK_WEAK_HASHING=1: password hashing may be below the OWASP minimum")
        hasher = Argon2Hasher(
            **{k: int(v) for k, v in argon.items() if k in ("memory_kib", "time_cost", "parallelism")},
            weak_for_benchmarks=weak,
        )
        service = AuthService(
            store,
            ring,
            hasher,
            limiter,
            PublishingEvents(self, reactor, channels),
            self.clock,
            AuthSettings.from_dict(extra.get("limits") or {}),
        )
        edge = AuthWamp(service, self, frozenset(extra.get("trusted_proxies") or ()))
        await self.register_procedures(edge.procedures(), backend_only=edge.backend_only)
        await self.register(
            edge.authenticator, uris.INTERNAL_AUTHENTICATE, options=RegisterOptions(invoke="roundrobin")
        )

        # rotation check (cheap when nothing is due); also picks up keys other instances made
        self._rotation = task.LoopingCall(lambda: defer.ensureDeferred(self._rotate(ring)))
        self._rotation.clock = reactor
        self._rotation.start(float(extra.get("key_check_interval_s", 60)), now=False)

        http = extra.get("http") or {}
        root = http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
        mount(root, b".well-known/jwks.json", JsonResource(lambda: jwks_json(ring), cache_seconds=60))
        log.info("auth component ready ({profile}, key {kid})", profile=prof, kid=ring.current_kid)

    async def _rotate(self, ring: KeyRing) -> None:
        try:
            if not await ring.ensure_current_key():
                await ring.reload()
        except Unavailable as e:
            log.warn("key rotation check skipped: {e}", e=e)

    def onLeave(self, details: Any) -> None:
        rotation = getattr(self, "_rotation", None)
        if rotation is not None and rotation.running:
            rotation.stop()
        stop_all(getattr(self, "_closeables", []))
        super().onLeave(details)
