"""Wiring of the push component: configuration → adapters → service → WAMP.

- ``embedded`` (default): tokens in SQLite (``push.sqlite3`` under the data folder);
- ``distributed``: tokens in Cassandra (``MESSENGER_CASSANDRA``, keyspace ``extra.cassandra_keyspace``).

Platforms (``extra.push``; each is enabled only when configured, else ``register`` for it answers
``messenger.error.invalid_argument`` "not enabled" and no push goes out on it):

- FCM: service account JSON file from env ``MESSENGER_FCM_SERVICE_ACCOUNT`` or
  ``push.fcm.service_account_file``; project id from env ``MESSENGER_FCM_PROJECT_ID``,
  ``push.fcm.project_id`` or the file's ``project_id``; API base URL ``push.fcm.base_url``
  (default ``https://fcm.googleapis.com``; the OAuth token endpoint is the file's ``token_uri``);
- Web Push: VAPID private key from env ``MESSENGER_VAPID_PRIVATE_KEY`` (PEM, or base64url raw /
  DER), subject (``mailto:`` or ``https:`` URL) from env ``MESSENGER_VAPID_SUBJECT`` or
  ``push.webpush.subject``; ``push.webpush.ttl_s`` (default 86400).
- Queues (one for resolving notices, one per platform), ``push.queue``: ``max_pending`` (10000
  jobs per queue, then new work is dropped), ``concurrency`` (8 at once per queue, = HTTP worker
  threads per platform), ``attempts`` (5 sends per push at most), ``backoff_base_s`` (0.5),
  ``backoff_max_s`` (60).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from common import config
from common.clock import Clock, SystemClock
from common.httpserver import http_root
from common.lifecycle import start_all, stop_all, until_up
from common.wampkit import BackendSession
from components.push.dispatch import Dispatcher
from components.push.domain import FCM, WEBPUSH, RetryPolicy
from components.push.ports import Sender
from components.push.service import NOTICES, PushService
from components.push.wamp import PushWamp, WampPresence, WampProfiles
from realms import uris

log = Logger(namespace="messenger.push")


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class HttpPool(ThreadPool):
    """Worker threads for blocking HTTP (requests). Daemon threads: a request stuck until its
    timeout never keeps the process from exiting, and stopping never blocks the reactor."""

    threadFactory = _DaemonThread


class PushComponent(BackendSession):
    clock: Clock = SystemClock()

    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    def _store(self, extra: dict[str, Any], reactor: Any) -> Any:
        if config.profile(extra) == config.EMBEDDED:
            from components.push.adapters.sqlite import SqliteTokenStore

            return SqliteTokenStore(config.data_dir(extra) / "push.sqlite3")
        from components.push.adapters.cassandra import CassandraTokenStore

        hosts, port = config.cassandra_location(extra)
        return CassandraTokenStore(hosts, port, str(extra.get("cassandra_keyspace", "messenger")), reactor)

    def _senders(
        self, push: dict[str, Any], reactor: Any, pools: dict[str, HttpPool]
    ) -> tuple[dict[str, Sender], str | None]:
        senders: dict[str, Sender] = {}
        vapid_public: str | None = None
        fcm = push.get("fcm") or {}
        account = os.environ.get("MESSENGER_FCM_SERVICE_ACCOUNT") or fcm.get("service_account_file")
        if account:
            try:
                from components.push.adapters.fcm import FCM_BASE_URL, FcmSender

                project = os.environ.get("MESSENGER_FCM_PROJECT_ID") or fcm.get("project_id")
                if not project:
                    with open(account) as f:
                        project = json.load(f).get("project_id")
                sender = FcmSender(
                    str(account), project, reactor, pools[FCM], base_url=str(fcm.get("base_url") or FCM_BASE_URL)
                )
                senders[FCM] = sender
                log.info("push: fcm enabled ({url})", url=sender.endpoint)
            except Exception as e:
                log.error("push: fcm disabled, its configuration is unusable: {e}", e=e)
        else:
            log.info("push: fcm disabled (no service account configured)")
        webpush = push.get("webpush") or {}
        key = os.environ.get("MESSENGER_VAPID_PRIVATE_KEY") or webpush.get("vapid_private_key")
        subject = os.environ.get("MESSENGER_VAPID_SUBJECT") or webpush.get("subject")
        if key and subject:
            try:
                from components.push.adapters.webpush import WebPushSender

                wp = WebPushSender(
                    str(key), str(subject), reactor, pools[WEBPUSH], ttl_s=int(webpush.get("ttl_s", 86_400))
                )
                senders[WEBPUSH] = wp
                vapid_public = wp.public_key
                log.info("push: webpush enabled")
            except Exception as e:
                log.error("push: webpush disabled, its VAPID key is unusable: {e}", e=e)
        else:
            log.info("push: webpush disabled (needs MESSENGER_VAPID_PRIVATE_KEY and a VAPID subject)")
        return senders, vapid_public

    async def _start(self) -> None:
        from twisted.internet import reactor

        extra: dict[str, Any] = dict(self.config.extra or {})
        push: dict[str, Any] = dict(extra.get("push") or {})
        queue = push.get("queue") or {}
        concurrency = int(queue.get("concurrency", 8))
        max_pending = int(queue.get("max_pending", 10_000))
        # one HTTP thread pool and one queue per platform: a provider that hangs holds only its own
        self._pools = {p: HttpPool(minthreads=0, maxthreads=concurrency, name=f"push-{p}") for p in (FCM, WEBPUSH)}
        for pool in self._pools.values():
            pool.start()
        store = self._store(extra, reactor)
        self._closeables = [store]
        await until_up("push token storage", lambda: start_all(self._closeables))
        senders, vapid_public = self._senders(push, reactor, self._pools)
        self.queues = {
            name: Dispatcher(reactor, max_pending=max_pending, concurrency=concurrency) for name in (NOTICES, *senders)
        }
        policy = RetryPolicy(
            attempts=int(queue.get("attempts", 5)),
            base_s=float(queue.get("backoff_base_s", 0.5)),
            max_s=float(queue.get("backoff_max_s", 60.0)),
        )
        self.service = PushService(
            store, WampPresence(self), WampProfiles(self), senders, self.queues, self.clock, policy
        )
        edge = PushWamp(self.service, self, vapid_public)
        await self.register_procedures(edge.procedures(), backend_only=edge.backend_only)
        await self.subscribe(edge.on_device_revoked, uris.EVENT_DEVICE_REVOKED)
        http = extra.get("http") or {}
        http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
        log.info(
            "push component ready ({profile}; platforms: {platforms})",
            profile=config.profile(extra),
            platforms=", ".join(sorted(senders)) or "none",
        )

    def onLeave(self, details: Any) -> None:
        for queue in getattr(self, "queues", {}).values():
            queue.stop()
        stop_all(getattr(self, "_closeables", []))
        for pool in getattr(self, "_pools", {}).values():
            # stop() joins the workers, one of which may wait for an HTTP timeout: not on the reactor
            threading.Thread(target=pool.stop, name="push-pool-stop", daemon=True).start()
        super().onLeave(details)
