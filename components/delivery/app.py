"""The delivery component: turns stored updates into events on ``messenger.user.<user_id>``,
in order per user; relays ephemeral events (typing); keeps presence from session join/leave.

One delivery session *leads* on each router (shard): the one that holds the registration of
``messenger.internal.delivery.leader`` (invoke ``single``); sessions of other components
processes on the same router stand by and retry every ``LEADER_RETRY_S``, so every event is
published once per router however many processes run. Only the leader does what follows.

Presence: the leader counts its router's user sessions (``domain.PresenceBook``) and records
in a :class:`~components.delivery.ports.PresenceDirectory` which users its shard has, with a
heartbeat that expires (``PRESENCE_TTL_MS``): a user is online while a live shard has them; the
users of a shard that died go offline when its heartbeat expires, and one leader announces
them (``reap``). ``last_seen`` is written to a :class:`~components.delivery.ports.PresenceStore`.

- ``embedded`` (default): in-memory directory (one router), ``last_seen`` in SQLite
  (``presence.sqlite3`` under the data folder);
- ``distributed``: both in Redis (``MESSENGER_REDIS_URL``, or the variable named by
  ``extra.redis_url_env``).

How updates arrive:

- ``embedded``: chat calls ``messenger.internal.deliver`` / ``deliver_ephemeral`` on the one
  router (shared registration, ``invoke: first``);
- ``distributed``: chat publishes them on per-user Redis channels; the leader watches the
  channels of the users connected to *its* router (first session joins: subscribe; last one
  leaves: unsubscribe; :mod:`components.delivery.adapters.redis_feed`), so every router shard
  a user is connected to publishes to that user's devices on it. Presence announcements and
  device sign-outs (an envelope ``{"internal": "messenger.internal.device_revoked", ...}``
  from auth) travel the same channels, so they reach every shard the user is on.

Either way durable updates go through the :class:`Sequencer` (in order, gaps healed from the
store) and are published on the local router to ``messenger.user.<user_id>``.
"""

from __future__ import annotations

import inspect
import json
import uuid
from typing import Any

from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import RegisterOptions
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from common import config
from common.clock import Clock, SystemClock
from common.errors import InvalidArgument
from common.httpserver import http_root
from common.lifecycle import start_all, stop_all, until_up
from common.wampkit import BackendSession, Caller
from components.delivery.domain import PresenceBook, Sequencer
from components.delivery.ports import PresenceDirectory, PresenceStore
from realms import uris

log = Logger(namespace="messenger.delivery")
STREAM_IDLE_MS = 10 * 60_000  # forget a user's ordering state after 10 idle minutes
STREAM_PRUNE_EVERY_S = 60.0
GAP_WAIT_S = 0.25  # how long an early update waits for the missing ones before they are fetched
PRESENCE_MAX_IDS = 200
LEADER_RETRY_S = 2.0  # a standby session tries to take the lead this often
PRESENCE_TTL_MS = 15_000  # a shard whose heartbeat is older is dead: its users go offline
HEARTBEAT_EVERY_S = 3.0
REAP_EVERY_S = 5.0
# the three presence timings can be set in extra.presence: ttl_ms, heartbeat_every_s, reap_every_s


class DeliveryComponent(BackendSession):
    clock: Clock = SystemClock()

    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    def _build(self, extra: dict[str, Any]) -> tuple[PresenceStore, PresenceDirectory, Any, Any, list[Any]]:
        """The presence store and directory, the notification feed and the users' channels for
        the profile (None, None: updates come by RPC and announcements go to the local
        router), and everything to start (in order) and stop."""
        if config.profile(extra) == config.EMBEDDED:
            from components.delivery.adapters.memory import MemoryPresenceDirectory
            from components.delivery.adapters.sqlite import SqlitePresenceStore

            sqlite = SqlitePresenceStore(config.data_dir(extra) / "presence.sqlite3")
            return sqlite, MemoryPresenceDirectory(self.clock), None, None, [sqlite]
        from common.adapters.redis import RedisClient, UserChannels
        from components.delivery.adapters.redis import RedisPresenceDirectory, RedisPresenceStore
        from components.delivery.adapters.redis_feed import RedisFeed

        url = config.required_env(extra, "redis_url_env", "MESSENGER_REDIS_URL")
        client = RedisClient.from_url(url)
        store = RedisPresenceStore(client)
        directory = RedisPresenceDirectory(client)
        feed = RedisFeed.from_url(url, self.on_notification)
        # the store and the directory do not own their client
        return store, directory, feed, UserChannels(client), [client, store, directory, feed]

    async def _start(self) -> None:
        from twisted.internet import reactor

        self._reactor: Any = reactor
        extra: dict[str, Any] = dict(self.config.extra or {})
        self._profile = config.profile(extra)
        timing = extra.get("presence") or {}
        self._ttl_ms = int(timing.get("ttl_ms", PRESENCE_TTL_MS))
        self._heartbeat_s = float(timing.get("heartbeat_every_s", HEARTBEAT_EVERY_S))
        self._reap_s = float(timing.get("reap_every_s", REAP_EVERY_S))
        self.sequencer = Sequencer()
        self.presence = PresenceBook()
        self.shard_id = uuid.uuid4().hex
        self.leading = False
        self._gap_timers: dict[str, Any] = {}
        self._loops: list[task.LoopingCall] = []
        self.store, self.directory, self._feed, self._channels, self._closeables = self._build(extra)
        await until_up("presence storage", lambda: start_all(self._closeables))
        http = extra.get("http") or {}
        http_root(int(http.get("port", 0)), http.get("interface", "127.0.0.1"))
        if not await self._try_lead():
            log.info("delivery component ready ({profile}, standby)", profile=self._profile)
            self._every(LEADER_RETRY_S, self._retry_lead)

    # -- leading one router ----------------------------------------------------------------------
    async def _try_lead(self) -> bool:
        try:
            await self.register(lambda: self.shard_id, uris.INTERNAL_DELIVERY_LEADER)
        except ApplicationError as e:
            if e.error == ApplicationError.PROCEDURE_ALREADY_EXISTS:
                return False
            raise
        await self._lead()
        return True

    async def _retry_lead(self) -> None:
        if self.leading or not self.is_attached():
            return
        try:
            await self._try_lead()
        except Exception as e:
            log.warn("could not take the lead: {e}", e=e)

    async def _lead(self) -> None:
        self.leading = True
        await self._beat()  # before any join: a shard's users count only while it is alive
        await self.register(self.on_updates, uris.INTERNAL_DELIVER, options=RegisterOptions(invoke="first"))
        await self.register(self.on_ephemeral, uris.INTERNAL_DELIVER_EPHEMERAL, options=RegisterOptions(invoke="first"))
        await self.subscribe(self.on_session_join, "wamp.session.on_join")
        await self.subscribe(self.on_session_leave, "wamp.session.on_leave")
        await self.register_procedures({uris.PRESENCE_GET: self.presence_get})
        await self.register_procedures(
            {uris.INTERNAL_PRESENCE_ONLINE: self.presence_online},
            backend_only=frozenset({uris.INTERNAL_PRESENCE_ONLINE}),
        )
        await self._seed_presence()
        self._every(STREAM_PRUNE_EVERY_S, self._prune)
        self._every(self._heartbeat_s, self._beat)
        self._every(self._reap_s, self._reap)
        log.info(
            "delivery component ready ({profile}, leader of shard {shard})", profile=self._profile, shard=self.shard_id
        )

    def _every(self, seconds: float, fn: Any) -> None:
        """Run ``fn`` (plain or async) every ``seconds`` until the session leaves; a failure is
        logged, the loop goes on."""

        def run() -> defer.Deferred[Any]:
            d = defer.maybeDeferred(fn)
            d.addCallback(lambda r: defer.ensureDeferred(r) if inspect.iscoroutine(r) else r)
            d.addErrback(lambda f: log.warn("{fn} failed: {e}", fn=fn.__name__, e=f.value))
            return d

        loop = task.LoopingCall(run)
        loop.clock = self._reactor
        loop.start(seconds, now=False)
        self._loops.append(loop)

    def _prune(self) -> None:
        self.sequencer.forget_idle(self.clock.now_ms() - STREAM_IDLE_MS)

    def onLeave(self, details: Any) -> None:
        for loop in getattr(self, "_loops", []):
            if loop.running:
                loop.stop()
        for timer in getattr(self, "_gap_timers", {}).values():
            if timer.active():
                timer.cancel()
        stop_all(getattr(self, "_closeables", []))
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
        through the sequencer, internal ones (device sign-out) to the router, ephemeral ones
        straight to the user's topic."""
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
            if "internal" in env:
                self._internal(user_id, env)
            elif isinstance(env.get("update_id"), int):
                durable.append({**env, "user_id": user_id})
            else:
                self.publish(uris.user_topic(user_id), **env)
        if durable:
            self.on_updates(durable)

    def _internal(self, user_id: str, env: dict[str, Any]) -> None:
        if env["internal"] == uris.EVENT_DEVICE_REVOKED and isinstance(env.get("device_id"), str):
            # the in-router component of this shard closes the device's sessions here
            self.publish(uris.EVENT_DEVICE_REVOKED, user_id=user_id, device_id=env["device_id"])

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
                if info and info.get("authid"):
                    self.on_session_join(info, announce=False)
        except Exception as e:
            log.warn("could not seed presence: {e}", e=e)

    def on_session_join(self, info: dict[str, Any], *args: Any, announce: bool = True) -> None:
        if info.get("authrole") == uris.ROLE_USER and info.get("authid") and info.get("session") is not None:
            user_id = info["authid"]
            if self.presence.join(info["session"], user_id):
                self._watch(user_id)
                defer.ensureDeferred(self._went_online(user_id, announce))

    def on_session_leave(self, session_id: Any, *args: Any) -> None:
        now = self.clock.now_ms()
        user_id = self.presence.leave(session_id, now)
        if user_id is not None:
            self._unwatch(user_id)
            self._save_last_seen(user_id, now)  # in the background: the event does not wait for it
            defer.ensureDeferred(self._went_offline(user_id, now))

    async def _went_online(self, user_id: str, announce: bool) -> None:
        try:
            came_online = await self.directory.join(self.shard_id, user_id)
        except Exception as e:
            log.warn("presence of {user} not recorded: {e}", user=user_id, e=e)
            return
        if came_online and announce:
            await self._announce(user_id, online=True, last_seen=None)

    async def _went_offline(self, user_id: str, now: int) -> None:
        try:
            offline = await self.directory.leave(self.shard_id, user_id)
        except Exception as e:
            log.warn("presence of {user} not recorded: {e}", user=user_id, e=e)
            return
        if offline and not self.presence.get(user_id)["online"]:  # not back on this shard meanwhile
            await self._announce(user_id, online=False, last_seen=now)

    async def _beat(self) -> None:
        alive = await self.directory.heartbeat(self.shard_id, self._ttl_ms)
        if not alive and self.presence.online_users():
            # the heartbeat lapsed (Redis restarted or was unreachable): record our users again;
            # their partners were never told they left, so nothing is announced
            log.info("presence of shard {shard} lapsed: recording its users again", shard=self.shard_id)
            for user_id in self.presence.users():
                await self.directory.join(self.shard_id, user_id)

    async def _reap(self) -> None:
        gone = await self.directory.reap()
        now = self.clock.now_ms()
        for user_id in dict.fromkeys(gone):
            if self.presence.get(user_id)["online"]:
                continue  # connected here after all (e.g. reseeded by this leader)
            log.info("{user} offline: their shard stopped beating", user=user_id)
            self._save_last_seen(user_id, now)
            await self._announce(user_id, online=False, last_seen=now)

    def _save_last_seen(self, user_id: str, at_ms: int) -> None:
        def failed(f: Failure) -> None:
            log.warn("last_seen of {user} not stored: {e}", user=user_id, e=f.value)

        defer.ensureDeferred(self.store.set_last_seen(user_id, at_ms)).addErrback(failed)

    async def _announce(self, user_id: str, *, online: bool, last_seen: int | None) -> None:
        """Tell the user's chat partners, on every shard, that the user came or went."""
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
            "data": {"user_id": user_id, "online": online, "last_seen": last_seen},
        }
        for partner in result["user_ids"]:
            if self._channels is not None:
                self._channels.fire(partner, [envelope])  # every shard the partner is on
            else:
                self.publish(uris.user_topic(partner), **envelope)

    async def presence_get(self, caller: Caller, user_ids: Any) -> Any:
        caller.user_id  # noqa: B018 - users only
        if not isinstance(user_ids, list) or len(user_ids) > PRESENCE_MAX_IDS:
            raise InvalidArgument(f"user_ids must be a list of at most {PRESENCE_MAX_IDS} user ids")
        if not all(isinstance(u, str) and len(u) <= 64 for u in user_ids):
            raise InvalidArgument("user_ids[] must be user ids")
        local = {u: self.presence.get(u) for u in user_ids}
        try:
            online = await self.directory.online(user_ids)
        except Exception as e:  # best effort: what this shard knows
            log.warn("could not read presence: {e}", e=e)
            online = {u for u, p in local.items() if p["online"]}
        try:
            stored = await self.store.get_last_seen(user_ids)
        except Exception as e:  # best effort: online state is still right, last_seen from memory
            log.warn("could not read last_seen: {e}", e=e)
            stored = {}
        presence = {}
        for u in user_ids:
            seen = [t for t in (stored.get(u), local[u]["last_seen"]) if t is not None]
            presence[u] = {"online": u in online, "last_seen": max(seen) if seen else None}
        return {"presence": presence}

    async def presence_online(self, caller: Caller, user_ids: Any) -> Any:
        """Backend only (push): which of ``user_ids`` have a joined session on any shard."""
        if not isinstance(user_ids, list) or len(user_ids) > PRESENCE_MAX_IDS:
            raise InvalidArgument(f"user_ids must be a list of at most {PRESENCE_MAX_IDS} user ids")
        if not all(isinstance(u, str) and len(u) <= 64 for u in user_ids):
            raise InvalidArgument("user_ids[] must be user ids")
        try:
            online = await self.directory.online(user_ids)
        except Exception as e:  # best effort: what this shard knows
            log.warn("could not read presence: {e}", e=e)
            online = set()
        online |= {u for u in user_ids if self.presence.get(u)["online"]}
        return {"online": sorted(online)}
