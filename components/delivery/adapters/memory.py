"""In-process adapter of :class:`~components.delivery.ports.PresenceDirectory` (the embedded
profile: one router, one delivery process). Same rules as the Redis adapter, with the clock
deciding when a shard's heartbeat expired."""

from __future__ import annotations

from common.clock import Clock


class MemoryPresenceDirectory:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._expires: dict[str, int] = {}  # shard -> heartbeat expiry (ms)
        self._shards_of: dict[str, set[str]] = {}  # user -> shards
        self._users_of: dict[str, set[str]] = {}  # shard -> users

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _alive(self, shard_id: str) -> bool:
        return self._expires.get(shard_id, -1) > self._clock.now_ms()

    def _online_elsewhere(self, user_id: str, shard_id: str | None) -> bool:
        return any(s != shard_id and self._alive(s) for s in self._shards_of.get(user_id, ()))

    async def heartbeat(self, shard_id: str, ttl_ms: int) -> bool:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        was_alive = self._alive(shard_id)
        self._expires[shard_id] = self._clock.now_ms() + ttl_ms
        return was_alive

    async def join(self, shard_id: str, user_id: str) -> bool:
        elsewhere = self._online_elsewhere(user_id, shard_id)
        shards = self._shards_of.setdefault(user_id, set())
        known_here = shard_id in shards and self._alive(shard_id)
        shards.add(shard_id)
        self._users_of.setdefault(shard_id, set()).add(user_id)
        return not elsewhere and not known_here

    async def leave(self, shard_id: str, user_id: str) -> bool:
        shards = self._shards_of.get(user_id, set())
        if shard_id not in shards:
            return False
        shards.discard(shard_id)
        self._users_of.get(shard_id, set()).discard(user_id)
        offline = not self._online_elsewhere(user_id, None)
        if not shards:
            del self._shards_of[user_id]
        return offline

    async def online(self, user_ids: list[str]) -> set[str]:
        return {u for u in user_ids if self._online_elsewhere(u, None)}

    async def reap(self) -> list[str]:
        gone: list[str] = []
        for shard_id in [s for s in self._expires if not self._alive(s)]:
            del self._expires[shard_id]
            for user_id in sorted(self._users_of.pop(shard_id, set())):
                shards = self._shards_of.get(user_id, set())
                shards.discard(shard_id)
                if not self._online_elsewhere(user_id, None):
                    gone.append(user_id)
                if not shards:
                    self._shards_of.pop(user_id, None)
        return gone
