"""Ports of the push component. The token store has one contract suite
(``tests/contract/test_push_token_store.py``) run against every adapter: ``adapters/sqlite.py``
(embedded) and ``adapters/cassandra.py`` (distributed). Every method is a coroutine; a dependency
failure surfaces as ``common.errors.Unavailable``."""

from __future__ import annotations

from typing import Protocol

from components.push.domain import Content, Outcome, PushToken


class TokenStore(Protocol):
    async def put(self, token: PushToken) -> None:
        """Store ``token``, replacing the user's token with the same ``key`` (device, token and
        time follow the newest registration). Idempotent."""
        ...

    async def remove(self, user_id: str, key: str) -> bool:
        """Delete the user's token with ``key``; True if there was one."""
        ...

    async def remove_device(self, user_id: str, device_id: str) -> int:
        """Delete every token of one device of the user; answers how many."""
        ...

    async def tokens_of(self, user_ids: list[str]) -> list[PushToken]:
        """Every token of these users (any order)."""
        ...

    async def owners_of(self, key: str) -> set[str]:
        """The users holding a token with ``key`` (one device's token registered by someone
        else before: that user must stop getting pushes on it)."""
        ...


class Presence(Protocol):
    async def online(self, user_ids: list[str]) -> set[str]:
        """Those of ``user_ids`` that have at least one joined session (on any router shard)."""
        ...


class Profiles(Protocol):
    async def display_names(self, user_ids: list[str]) -> dict[str, str]:
        """Display names of the users that exist."""
        ...


class Sender(Protocol):
    """One push platform (FCM, Web Push). ``send`` never raises for what the provider answers:
    a connection error or timeout is a ``RETRY`` outcome."""

    async def send(self, token: PushToken, content: Content) -> Outcome: ...
