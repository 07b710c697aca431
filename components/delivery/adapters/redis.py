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


# -- presence across shards --------------------------------------------------------------------
#
# Keys (prefix P = "<prefix>presence:"):
#   P hb:<shard>   heartbeat, expires after the shard's ttl (PX)
#   P shards       set of shards that ever beat and were not reaped yet
#   P u:<user>     set of shards that have the user
#   P s:<shard>    set of users a shard has (what to clean when it dies)
# The scripts compute key names from ARGV (one Redis, not a Cluster: presence keys of one user
# and of one shard would need hash tags there). Each script is one atomic step, so concurrent
# reapers or a join racing a reap see a consistent state.

_LIVE_FN = """
local function live_elsewhere(p, user, except)
  for _, s in ipairs(redis.call('SMEMBERS', p .. 'u:' .. user)) do
    if s ~= except and redis.call('EXISTS', p .. 'hb:' .. s) == 1 then
      return true
    end
  end
  return false
end
"""

# ARGV: prefix, shard, ttl_ms
_HEARTBEAT_SCRIPT = """
local existed = redis.call('EXISTS', ARGV[1] .. 'hb:' .. ARGV[2])
redis.call('SET', ARGV[1] .. 'hb:' .. ARGV[2], '1', 'PX', ARGV[3])
redis.call('SADD', ARGV[1] .. 'shards', ARGV[2])
return existed
"""

# ARGV: prefix, shard, user
_JOIN_SCRIPT = (
    _LIVE_FN
    + """
local p, shard, user = ARGV[1], ARGV[2], ARGV[3]
local elsewhere = live_elsewhere(p, user, shard)
local added = redis.call('SADD', p .. 'u:' .. user, shard)
redis.call('SADD', p .. 's:' .. shard, user)
if elsewhere then
  return 0
end
if added == 0 and redis.call('EXISTS', p .. 'hb:' .. shard) == 1 then
  return 0
end
return 1
"""
)

# ARGV: prefix, shard, user
_LEAVE_SCRIPT = (
    _LIVE_FN
    + """
local p, shard, user = ARGV[1], ARGV[2], ARGV[3]
local removed = redis.call('SREM', p .. 'u:' .. user, shard)
redis.call('SREM', p .. 's:' .. shard, user)
if removed == 0 then
  return 0
end
if live_elsewhere(p, user, '') then
  return 0
end
return 1
"""
)

# ARGV: prefix, users...
_ONLINE_SCRIPT = (
    _LIVE_FN
    + """
local out = {}
for i = 2, #ARGV do
  if live_elsewhere(ARGV[1], ARGV[i], '') then
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

# ARGV: prefix
_REAP_SCRIPT = (
    _LIVE_FN
    + """
local p = ARGV[1]
local gone = {}
for _, shard in ipairs(redis.call('SMEMBERS', p .. 'shards')) do
  if redis.call('EXISTS', p .. 'hb:' .. shard) == 0 then
    for _, user in ipairs(redis.call('SMEMBERS', p .. 's:' .. shard)) do
      redis.call('SREM', p .. 'u:' .. user, shard)
      if not live_elsewhere(p, user, '') then
        gone[#gone + 1] = user
      end
    end
    redis.call('DEL', p .. 's:' .. shard)
    redis.call('SREM', p .. 'shards', shard)
  end
end
return gone
"""
)


class RedisPresenceDirectory:
    """:class:`~components.delivery.ports.PresenceDirectory` on Redis: every method is one Lua
    script (one round trip, atomic). Does not own its client."""

    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.prefix = f"{prefix}presence:"

    async def start(self) -> None:
        await self._client.start()

    async def stop(self) -> None:
        """Nothing to release: the client is stopped by its owner."""

    async def _eval(self, script: str, args: list[Any], *, idempotent: bool) -> Any:
        return await self._client.call(
            lambda c: c.eval(script, keys=[], args=[self.prefix, *args]), idempotent=idempotent
        )

    async def heartbeat(self, shard_id: str, ttl_ms: int) -> bool:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        # not idempotent for the breaker: a retry would answer "was alive" for a new shard
        return int(await self._eval(_HEARTBEAT_SCRIPT, [shard_id, int(ttl_ms)], idempotent=False)) == 1

    async def join(self, shard_id: str, user_id: str) -> bool:
        return int(await self._eval(_JOIN_SCRIPT, [shard_id, user_id], idempotent=False)) == 1

    async def leave(self, shard_id: str, user_id: str) -> bool:
        return int(await self._eval(_LEAVE_SCRIPT, [shard_id, user_id], idempotent=False)) == 1

    async def online(self, user_ids: list[str]) -> set[str]:
        ids = list(dict.fromkeys(user_ids))
        found: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            flags = await self._eval(_ONLINE_SCRIPT, chunk, idempotent=True)
            found.update(u for u, flag in zip(chunk, flags, strict=True) if int(flag) == 1)
        return found

    async def reap(self) -> list[str]:
        # not idempotent: a retry after a lost reply would answer nothing
        gone = await self._eval(_REAP_SCRIPT, [], idempotent=False)
        return [str(u) for u in gone or []]
