"""Redis adapter of :class:`PresenceStore` (the distributed profile), via txredisapi.

Every user's last-seen time is one field of one hash, ``<prefix>presence:last_seen``
(``HMGET`` reads any number of users in one round trip). ``set_last_seen`` keeps the larger of
the stored and the given value atomically, in a small Lua script. Both run through the
:class:`common.adapters.redis.RedisClient`'s circuit breaker, so a Redis that is down or slow
answers ``Unavailable`` fast; both are idempotent, so the breaker may retry them.

The store does not own its client: ``start()`` starts it (idempotent, shared clients are fine)
and ``stop()`` leaves it to whoever made it (``RedisClient.stop()``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from common.adapters.redis import DEFAULT_PREFIX, RedisClient
from components.delivery.ports import check_at_ms

# KEYS[1]: the hash; ARGV[1]: the user id; ARGV[2]: at_ms as a canonical decimal (no sign, no
# leading zeros). Values are compared as digit strings, not Lua numbers (doubles): exact up to
# 2**63 - 1 and independent of the server's locale.
_SET_MAX_SCRIPT = """
local function larger(a, b)
  if #a ~= #b then
    return #a > #b
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x > y
    end
  end
  return false
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and not larger(ARGV[2], cur) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# fields per HMGET: keeps one command (and its reply) small however many ids are asked for
_CHUNK = 1000


class RedisPresenceStore:
    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.key = f"{prefix}presence:last_seen"

    async def start(self) -> None:
        """Start the client; if Redis is not reachable yet it keeps reconnecting in the
        background and calls answer ``Unavailable`` meanwhile."""
        await self._client.start()

    async def stop(self) -> None:
        """Nothing to release: the client is stopped by its owner."""

    async def set_last_seen(self, user_id: str, at_ms: int) -> None:
        args = [user_id, str(check_at_ms(at_ms))]
        # idempotent: max() of the same value twice is the same value
        await self._client.call(lambda c: c.eval(_SET_MAX_SCRIPT, keys=[self.key], args=args), idempotent=True)

    async def get_last_seen(self, user_ids: list[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(user_ids))
        found: dict[str, int] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            values = await self._client.call(self._hmget(chunk), idempotent=True)
            found.update((user_id, int(v)) for user_id, v in zip(chunk, values, strict=True) if v is not None)
        return found

    def _hmget(self, fields: list[str]) -> Callable[[Any], Awaitable[list[Any]]]:
        return lambda c: c.hmget(self.key, fields)
