"""The delivery component: turns stored updates into events on ``messenger.user.<user_id>``,
in order per user; relays ephemeral events (typing); keeps presence from session join/leave.

Presence (who is online) lives in memory; ``last_seen`` is also written to a
:class:`components.delivery.ports.PresenceStore` so it survives a restart:

- ``embedded`` (default): SQLite file ``presence.sqlite3`` under the data folder;
- ``distributed``: Redis (``MESSENGER_REDIS_URL``, or the variable named by ``extra.redis_url_env``).

How updates arrive:

- ``embedded``: chat calls ``messenger.internal.deliver`` / ``deliver_ephemeral`` on the one
  router (shared registration, ``invoke: first``);
- ``distributed``: chat publishes them on per-user Redis channels; this session watches the
  channels of the users connected to *its* router (first session joins: subscribe; last one
  leaves: unsubscribe; :mod:`components.delivery.adapters.redis_feed`), so every router shard
  a user is connected to publishes to that user's devices on it. The internal procedures stay
  registered (nothing calls them there).

Either way durable updates go through the :class:`Sequencer` (in order, gaps healed from the
store) and are published on the local router to ``messenger.user.<user_id>``.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.wamp.types import RegisterOptions
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from common import config
from common.clock import Clock, SystemClock
from common.errors import InvalidArgument
from common.httpserver import http_root
from common.lifecycle import start_all, until_up
from common.wampkit import BackendSession, Caller
from components.delivery.domain import PresenceBook, Sequencer
from components.delivery.ports import PresenceStore
from realms import uris

log = Logger(namespace="messenger.delivery")
STREAM_IDLE_MS = 10 * 60_000  # forget a user's ordering state after 10 idle minutes
STREAM_PRUNE_EVERY_S = 60.0
GAP_WAIT_S = 0.25  # how long an early update waits for the missing ones before they are fetched
PRESENCE_MAX_IDS = 200


class DeliveryComponent(BackendSession):
    clock: Clock = SystemClock()

    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    def _build(self, extra: dict[str, Any]) -> tuple[PresenceStore, Any, list[Any]]:
        """The presence store and the notification feed (None: updates come by RPC) for the
        profile, and everything to start (in order) and stop."""
        if config.profile(extra) == config.EMBEDDED:
            from components.delivery.adapters.sqlite import SqlitePresenceStore

            sqlite = SqlitePresenceStore(config.data_dir(extra) / "presence.sqlite3")
            return sqlite, None, [sqlite]
        from common.adapters.redis import RedisClient
        from components.delivery.adapters.redis import RedisPresenceStore
        from components.delivery.adapters.redis_feed import RedisFeed

        url = config.required_env(extra, "redis_url_env", "MESSENGER_REDIS_URL")
        client = RedisClient.from_url(url)
        store = RedisPresenceStore(client)
        feed = RedisFeed.from_url(url, self.on_notification)
        return store, feed, [client, store, feed]  # the store does not own its client

    async def _start(self) -> None:
        from twisted.internet import reactor

        self._reactor: Any = reactor
        extra: dict[str, Any] = dict(self.config.extra or {})
        self.sequencer = Sequencer()
        self.presence = PresenceBook()
        self._gap_timers: dict[str, Any] = {}
        self.store, self._feed, self._closeables = self._build(extra)
        await until_up("presence storage", lambda: start_all(self._closeables))
        await self.register(self.on_updates, uris.INTERNAL_DELIVER, options=RegisterOptions(invoke="first"))
        await self.register(self.on_ephemeral, uris.INTERNAL_DELIVER_EPHEMERAL, options=RegisterOptions(invoke="first"))
        await self.subscribe(self.on_session_join, "wamp.session.on_join")
        await self.subscribe(self.on_session_leave, "wamp.session.on_leave")
        await self.register_procedures({uris.PRESENCE_GET: self.presence_get})
        await self._seed_presence()
        http = extra.get("http") or {}
        http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
        # per-user ordering state is kept only for users active lately
        self._pruner = task.LoopingCall(self._prune)
        self._pruner.clock = reactor
        self._pruner.start(STREAM_PRUNE_EVERY_S, now=False)
        log.info("delivery component ready ({profile})", profile=config.profile(extra))

    def _prune(self) -> None:
        self.sequencer.forget_idle(self.clock.now_ms() - STREAM_IDLE_MS)

    def onLeave(self, details: Any) -> None:
        pruner = getattr(self, "_pruner", None)
        if pruner is not None and pruner.running:
            pruner.stop()
        for timer in getattr(self, "_gap_timers", {}).values():
            if timer.active():
                timer.cancel()
        for thing in getattr(self, "_closeables", []):
            defer.ensureDeferred(thing.stop())
        super().onLeave(details)

    # -- durable updates ---------------------------------------------------------------------
    def on_updates(self, updates: list[dict[str, Any]] | None = None, **_: Any) -> None:
        now = self.clock.now_ms()
        for u in updates or []:
            user_id = u.pop("user_id", None)
            if not isinstance(user_id, str):
                continue
            self._send(user_id, self.sequencer.offer(user_id, u, now))
            self._watch_gap(user_id)

    def _send(self, user_id: str, envelopes: list[dict[str, Any]]) -> None:
        topic = uris.user_topic(user_id)
        for env in envelopes:
            self.publish(topic, **env)

    def _watch_gap(self, user_id: str) -> None:
        if self.sequencer.gap(user_id) is None or user_id in self._gap_timers:
            return
        self._gap_timers[user_id] = self._reactor.callLater(
            GAP_WAIT_S, lambda: defer.ensureDeferred(self._heal(user_id))
        )

    async def _heal(self, user_id: str) -> None:
        self._gap_timers.pop(user_id, None)
        gap = self.sequencer.gap(user_id)
        if gap is None:
            return
        lo, hi = gap
        try:
            result = await self.call(uris.INTERNAL_CHAT_UPDATES, user_id=user_id, lo=lo, hi=hi)
            released = self.sequencer.fill(user_id, result["updates"], self.clock.now_ms())
        except Exception as e:  # the chat store is down: let the client heal through sync
            log.warn("could not fill updates {lo}..{hi} of {user}: {e}", lo=lo, hi=hi, user=user_id, e=e)
            released = self.sequencer.skip_gap(user_id)
        self._send(user_id, released)
        self._watch_gap(user_id)

    # -- from the Redis feed (distributed) --------------------------------------------------------
    def on_notification(self, user_id: str, payload: bytes) -> None:
        """A JSON list of envelopes for ``user_id``: durable ones (with an ``update_id``) go
        through the sequencer, ephemeral ones straight to the user's topic."""
        try:
            envelopes = json.loads(payload)
        except ValueError:
            log.warn("unreadable notification for {user}", user=user_id)
            return
        if not isinstance(envelopes, list):
            return
        durable: list[dict[str, Any]] = []
        for env in envelopes:
            if not isinstance(env, dict):
                continue
            if isinstance(env.get("update_id"), int):
                durable.append({**env, "user_id": user_id})
            else:
                self.publish(uris.user_topic(user_id), **env)
        if durable:
            self.on_updates(durable)

    def _watch(self, user_id: str) -> None:
        if self._feed is not None:
            self._feed.watch(user_id)

    def _unwatch(self, user_id: str) -> None:
        if self._feed is not None:
            self._feed.unwatch(user_id)

    # -- ephemeral ---------------------------------------------------------------------------
    def on_ephemeral(self, user_ids: list[str] | None = None, envelope: dict[str, Any] | None = None, **_: Any) -> None:
        if not envelope:
            return
        for user_id in user_ids or []:
            self.publish(uris.user_topic(user_id), **envelope)

    # -- presence ----------------------------------------------------------------------------
    async def _seed_presence(self) -> None:
        try:
            ids = await self.call("wamp.session.list", [uris.ROLE_USER])
            for sid in ids:
                info = await self.call("wamp.session.get", sid)
                if info and info.get("authid") and self.presence.join(sid, info["authid"]):
                    self._watch(info["authid"])
        except Exception as e:
            log.warn("could not seed presence: {e}", e=e)

    def on_session_join(self, info: dict[str, Any], *args: Any) -> None:
        if info.get("authrole") == uris.ROLE_USER and info.get("authid") and info.get("session") is not None:
            if self.presence.join(info["session"], info["authid"]):
                self._watch(info["authid"])
                defer.ensureDeferred(self._announce(info["authid"]))

    def on_session_leave(self, session_id: Any, *args: Any) -> None:
        now = self.clock.now_ms()
        user_id = self.presence.leave(session_id, now)
        if user_id is not None:
            self._unwatch(user_id)
            self._save_last_seen(user_id, now)  # in the background: the event does not wait for it
            defer.ensureDeferred(self._announce(user_id))

    def _save_last_seen(self, user_id: str, at_ms: int) -> None:
        def failed(f: Failure) -> None:
            log.warn("last_seen of {user} not stored: {e}", user=user_id, e=f.value)

        defer.ensureDeferred(self.store.set_last_seen(user_id, at_ms)).addErrback(failed)

    async def _announce(self, user_id: str) -> None:
        try:
            result = await self.call(uris.INTERNAL_CHAT_PARTNERS, user_id=user_id)
        except Exception as e:
            log.warn("presence of {user} not announced: {e}", user=user_id, e=e)
            return
        envelope = {
            "type": "presence",
            "update_id": None,
            "chat_id": None,
            "at": self.clock.now_ms(),
            "data": {"user_id": user_id, **self.presence.get(user_id)},
        }
        for partner in result["user_ids"]:
            self.publish(uris.user_topic(partner), **envelope)

    async def presence_get(self, caller: Caller, user_ids: Any) -> Any:
        caller.user_id  # noqa: B018 - users only
        if not isinstance(user_ids, list) or len(user_ids) > PRESENCE_MAX_IDS:
            raise InvalidArgument(f"user_ids must be a list of at most {PRESENCE_MAX_IDS} user ids")
        if not all(isinstance(u, str) and len(u) <= 64 for u in user_ids):
            raise InvalidArgument("user_ids[] must be user ids")
        presence = {u: self.presence.get(u) for u in user_ids}
        # last_seen from memory when this process saw the user leave, else from the store
        missing = [u for u, p in presence.items() if p["last_seen"] is None]
        if missing:
            try:
                stored = await self.store.get_last_seen(missing)
            except Exception as e:  # best effort: online state is still right, last_seen stays unknown
                log.warn("could not read last_seen: {e}", e=e)
                stored = {}
            for u, at_ms in stored.items():
                presence[u]["last_seen"] = at_ms
        return {"presence": presence}
