"""Redis adapter of the chat service's :class:`~components.chat.service.Notifier` (distributed
profile): one ``PUBLISH`` per recipient on ``messenger:u:<user_id>`` whose payload is a JSON
list of envelopes (the user's new durable updates in ``update_id`` order, or one ephemeral
envelope). Every router shard's delivery component subscribes to the channels of the users
connected to it and publishes to its own router (docs/design/scale-out.md, step 2).

Fire-and-forget: nothing waits for Redis, a failure is only logged. A lost notification loses
nothing durable: delivery heals the gap from the store, or the client through
``sync.get_updates``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.adapters.redis import RedisClient, user_channel
from components.chat.domain import Update

log = Logger(namespace="messenger.chat")


class RedisNotifier:
    def __init__(self, client: RedisClient) -> None:
        self._client = client

    def updates(self, updates: list[Update]) -> None:
        per_user: dict[str, list[dict[str, Any]]] = {}
        for u in sorted(updates, key=lambda u: u.update_id):
            per_user.setdefault(u.user_id, []).append(u.envelope())
        for user_id, envelopes in per_user.items():
            self._fire(user_id, envelopes)

    def ephemeral(self, user_ids: list[str], envelope: dict[str, Any]) -> None:
        for user_id in dict.fromkeys(user_ids):
            self._fire(user_id, [envelope])

    def _fire(self, user_id: str, envelopes: list[dict[str, Any]]) -> None:
        channel = user_channel(user_id)
        payload = json.dumps(envelopes, separators=(",", ":"))

        def failed(f: Failure) -> None:
            log.debug("notification to {channel} not published: {e}", channel=channel, e=f.getErrorMessage())

        # not idempotent for the breaker: a retried PUBLISH could arrive twice (typing would show twice)
        d = defer.ensureDeferred(self._client.call(lambda c: c.publish(channel, payload)))
        d.addErrback(failed)
