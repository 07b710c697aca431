"""Cassandra adapter of :class:`TokenStore` (the distributed profile).

One table, ``push_tokens``, partitioned by user: ``tokens_of`` reads one partition per user,
``remove_device`` reads the user's partition and deletes that device's rows (a user has few).
Plain writes only (no LWT): a registration is an upsert of one row and is idempotent, so every
statement is retried under ``CircuitBreaker("cassandra-push")``. The schema lives in the same
keyspace as chat's tables, with its own ``push_schema_version`` bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer

from common.adapters.cassandra import CassandraTables, Row
from common.resilience import CircuitBreaker
from components.push.domain import PushToken

# Ordered, append-only. ``{ks}`` is the keyspace.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS {ks}.push_tokens (
            user_id text, token_key text, device_id text, platform text, target text, created_at_ms bigint,
            PRIMARY KEY (user_id, token_key))""",
    ),
    # 2: who holds a token (a device's token moves to whoever registered it last); tokens stored
    # before this migration have no row here until they are registered again
    (
        """CREATE TABLE IF NOT EXISTS {ks}.push_token_owners (
            token_key text, user_id text, PRIMARY KEY (token_key, user_id))""",
    ),
)

STATEMENTS: dict[str, str] = {
    "put": "INSERT INTO {ks}.push_tokens (user_id, token_key, device_id, platform, target, created_at_ms)"
    " VALUES (?, ?, ?, ?, ?, ?)",
    "get": "SELECT token_key FROM {ks}.push_tokens WHERE user_id = ? AND token_key = ?",
    "delete": "DELETE FROM {ks}.push_tokens WHERE user_id = ? AND token_key = ?",
    "own": "INSERT INTO {ks}.push_token_owners (token_key, user_id) VALUES (?, ?)",
    "disown": "DELETE FROM {ks}.push_token_owners WHERE token_key = ? AND user_id = ?",
    "owners": "SELECT user_id FROM {ks}.push_token_owners WHERE token_key = ?",
    "of_user": "SELECT user_id, token_key, device_id, platform, target, created_at_ms FROM {ks}.push_tokens"
    " WHERE user_id = ?",
}


def _token(row: Row) -> PushToken:
    return PushToken(
        user_id=row["user_id"],
        device_id=row["device_id"] or "",
        platform=row["platform"],
        token=row["target"],  # "token" is a CQL keyword
        key=row["token_key"],
        created_at_ms=int(row["created_at_ms"] or 0),
    )


class CassandraTokenStore(CassandraTables):
    def __init__(
        self,
        hosts: list[str],
        port: int,
        keyspace: str,
        reactor: Any,
        *,
        replication: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 2.8,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(
            "push",
            hosts,
            port,
            keyspace,
            reactor,
            migrations=MIGRATIONS,
            statements=STATEMENTS,
            replication=replication,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            breaker=breaker,
        )

    # -- TokenStore ----------------------------------------------------------------------------------
    async def put(self, token: PushToken) -> None:
        await self.call("own", (token.key, token.user_id))  # first: an owner row without a token is harmless
        await self.call(
            "put", (token.user_id, token.key, token.device_id, token.platform, token.token, token.created_at_ms)
        )

    async def remove(self, user_id: str, key: str) -> bool:
        existed = bool(await self.call("get", (user_id, key)))
        await self._forget(user_id, key)
        return existed

    async def _forget(self, user_id: str, key: str) -> None:
        await self.call("delete", (user_id, key))
        await self.call("disown", (key, user_id))

    async def remove_device(self, user_id: str, device_id: str) -> int:
        mine = await self.call("of_user", (user_id,))
        gone = [r["token_key"] for r in mine if r["device_id"] == device_id]
        for key in gone:
            await self._forget(user_id, key)
        return len(gone)

    async def owners_of(self, key: str) -> set[str]:
        return {r["user_id"] for r in await self.call("owners", (key,))}

    async def tokens_of(self, user_ids: list[str]) -> list[PushToken]:
        ids = list(dict.fromkeys(user_ids))
        try:
            results = await defer.gatherResults(
                [defer.ensureDeferred(self.call("of_user", (u,))) for u in ids], consumeErrors=True
            )
        except defer.FirstError as e:
            error = e.subFailure.value
            raise (error if error is not None else e) from None
        return [_token(row) for rows in results for row in rows]
