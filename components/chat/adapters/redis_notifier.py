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

from typing import Any

from common.adapters.redis import RedisClient, UserChannels
from components.chat.domain import Update


class RedisNotifier:
    def __init__(self, client: RedisClient) -> None:
        self._channels = UserChannels(client)

    def updates(self, updates: list[Update]) -> None:
        per_user: dict[str, list[dict[str, Any]]] = {}
        for u in sorted(updates, key=lambda u: u.update_id):
            per_user.setdefault(u.user_id, []).append(u.envelope())
        for user_id, envelopes in per_user.items():
            self._channels.fire(user_id, envelopes)

    def ephemeral(self, user_ids: list[str], envelope: dict[str, Any]) -> None:
        for user_id in dict.fromkeys(user_ids):
            self._channels.fire(user_id, [envelope])
