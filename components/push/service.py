"""Use cases of push notifications. Takes ports, a dispatcher (bounded queue) and a clock;
knows nothing of WAMP or HTTP.

- ``register`` / ``unregister``: a device's push targets (validated, nothing stored on bad input);
- ``device_revoked``: a signed-out device's targets are dropped;
- ``notify``: a new message -> (in the queue) which recipients are offline -> their tokens ->
  one send job per token; tokens the provider says are gone are deleted, transient failures
  retry with exponential backoff and jitter a bounded number of times.

Work runs in bounded queues (:class:`~components.push.dispatch.Dispatcher`): one for resolving
notices (``NOTICES``) and one per platform, so a provider that hangs or is down uses up only
its own platform's slots and never delays the other platform's pushes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from twisted.logger import Logger

from common.clock import Clock
from components.push import domain as d
from components.push.dispatch import Dispatcher, Job, Retry
from components.push.domain import Content, Notice, PushToken, RetryPolicy, Verdict
from components.push.ports import Presence, Profiles, Sender, TokenStore

log = Logger(namespace="messenger.push")

NOTICES = "notices"  # the queue that resolves notices (the others are named by platform)
PUSHES = Counter("messenger_push_sends_total", "Push sends by platform and result", ["platform", "result"])
NAME_TTL_MS = 60_000
NAME_CACHE_MAX = 10_000


class PushService:
    def __init__(
        self,
        store: TokenStore,
        presence: Presence,
        profiles: Profiles,
        senders: dict[str, Sender],
        queues: dict[str, Dispatcher],
        clock: Clock,
        policy: RetryPolicy | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.presence = presence
        self.profiles = profiles
        self.senders = dict(senders)
        missing = {NOTICES, *senders} - set(queues)
        if missing:
            raise ValueError(f"no queue for {', '.join(sorted(missing))}")
        self.queues = dict(queues)
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.rand = rand
        self._names: dict[str, tuple[str | None, int]] = {}

    @property
    def enabled(self) -> frozenset[str]:
        return frozenset(self.senders)

    # -- registration ----------------------------------------------------------------------------
    async def register(self, user_id: str, device_id: str | None, platform: Any, token: Any) -> dict[str, Any]:
        p = d.validate_platform(platform, self.enabled)
        record = d.new_token(user_id, device_id or "", p, token, self.clock.now_ms())
        mine = await self.store.tokens_of([user_id])
        others = sorted((t for t in mine if t.key != record.key), key=lambda t: (t.created_at_ms, t.key))
        for old in others[: max(0, len(others) - (d.TOKENS_PER_USER_MAX - 1))]:
            await self.store.remove(user_id, old.key)
        # a device's token belongs to whoever registered it last: the user signed in before on
        # this device (app reinstalled, or no sign-out) must not get this user's pushes on it
        for previous in await self.store.owners_of(record.key) - {user_id}:
            await self.store.remove(previous, record.key)
        await self.store.put(record)
        return {}

    async def unregister(self, user_id: str, platform: Any, token: Any) -> dict[str, Any]:
        p = d.validate_platform(platform)  # a disabled platform's tokens may still be removed
        await self.store.remove(user_id, d.key_to_unregister(p, token))
        return {}

    async def device_revoked(self, user_id: str, device_id: str) -> int:
        return await self.store.remove_device(user_id, device_id)

    # -- notifications ---------------------------------------------------------------------------
    def notify(self, raw: dict[str, Any]) -> bool:
        """Validate a notice and queue it; answers at once (False: nothing to do, or dropped)."""
        notice = d.parse_notice(raw)
        if not notice.recipients or not self.senders:
            return False
        return self.queues[NOTICES].submit(lambda: self._fan_out(notice))

    async def _fan_out(self, notice: Notice) -> Retry | None:
        recipients = [u for u in notice.recipients if u != notice.sender_id]
        try:
            online = await self.presence.online(recipients)
        except Exception as e:  # a push too many beats a push missed
            log.warn("presence unknown ({e}); pushing to every recipient", e=e)
            online = set()
        offline = [u for u in recipients if u not in online]
        if not offline:
            return None
        tokens = [t for t in await self.store.tokens_of(offline) if t.platform in self.senders]
        if not tokens:
            return None
        content = d.content_for(notice, await self._sender_name(notice))
        for token in tokens:
            self.queues[token.platform].submit(self._send_job(token, content, 1))
        return None

    async def _sender_name(self, notice: Notice) -> str | None:
        if notice.sender_name:
            return notice.sender_name
        now = self.clock.now_ms()
        cached = self._names.get(notice.sender_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            name = (await self.profiles.display_names([notice.sender_id])).get(notice.sender_id)
        except Exception as e:
            log.warn("sender name unknown ({e})", e=e)
            return None
        if len(self._names) >= NAME_CACHE_MAX:
            self._names.clear()
        self._names[notice.sender_id] = (name, now + NAME_TTL_MS)
        return name

    def _send_job(self, token: PushToken, content: Content, attempt: int) -> Job:
        async def run() -> Retry | None:
            outcome = await self.senders[token.platform].send(token, content)
            PUSHES.labels(platform=token.platform, result=outcome.verdict.value).inc()
            if outcome.verdict is Verdict.SENT:
                return None
            if outcome.verdict is Verdict.GONE:
                log.info(
                    "{platform} token of {user} is gone ({detail}): deleted",
                    platform=token.platform,
                    user=token.user_id,
                    detail=outcome.detail,
                )
                await self.store.remove(token.user_id, token.key)
                return None
            if outcome.verdict is Verdict.RETRY:
                delay = self.policy.delay(attempt, outcome.retry_after_s, self.rand())
                if delay is not None:
                    return Retry(delay, self._send_job(token, content, attempt + 1))
                log.warn(
                    "{platform} push to {user} dropped after {n} attempts ({detail})",
                    platform=token.platform,
                    user=token.user_id,
                    n=attempt,
                    detail=outcome.detail,
                )
                return None
            log.warn(
                "{platform} push to {user} failed: {detail}",
                platform=token.platform,
                user=token.user_id,
                detail=outcome.detail,
            )
            return None

        return run
