"""Small helpers for the integration tests."""

from __future__ import annotations

import secrets
from typing import Any

from tests.support.client import Client, connect
from tests.support.node import Node

PASSWORD = "correct horse battery"


def new_username(prefix: str = "u") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


async def register(node: Node, username: str | None = None, password: str = PASSWORD, **kw: Any) -> dict[str, Any]:
    guest = await connect(node.url)
    try:
        name = username or new_username()
        result: dict[str, Any] = await guest.call("messenger.auth.register", username=name, password=password, **kw)
        result["username"] = name
        return result
    finally:
        await guest.close()


async def login(node: Node, username: str, password: str = PASSWORD, **kw: Any) -> dict[str, Any]:
    guest = await connect(node.url)
    try:
        result: dict[str, Any] = await guest.call("messenger.auth.login", username=username, password=password, **kw)
        return result
    finally:
        await guest.close()


async def user_session(node: Node, serializer: str = "json") -> tuple[Client, dict[str, Any]]:
    """A new user, logged in, with a joined user session. Answers (session, login result)."""
    reg = await register(node)
    tokens = await login(node, reg["username"])
    tokens["username"] = reg["username"]
    client = await connect(node.url, ticket=tokens["access_token"], serializer=serializer)
    return client, tokens
