"""Users with devices, listening on their topics, for the messaging tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor, task

from realms import uris
from tests.integration.helpers import login, register
from tests.support.client import Client, connect


@dataclass
class User:
    user_id: str
    username: str
    devices: list[Client] = field(default_factory=list)
    tokens: list[dict[str, Any]] = field(default_factory=list)

    @property
    def d(self) -> Client:
        return self.devices[0]

    def durable(self, device: int = 0) -> list[dict[str, Any]]:
        return [kw for _, kw in self.devices[device].events if kw.get("update_id") is not None]

    def of_type(self, type_: str, device: int = 0) -> list[dict[str, Any]]:
        return [kw for _, kw in self.devices[device].events if kw.get("type") == type_]


async def new_user(node: Any, devices: int = 1, prefix: str = "u") -> User:
    reg = await register(node)
    user = User(reg["user_id"], reg["username"])
    for _ in range(devices):
        await add_device(node, user)
    return user


async def add_device(node: Any, user: User) -> Client:
    tokens = await login(node, user.username)
    client = await connect(node.url, ticket=tokens["access_token"])
    await client.listen(uris.user_topic(user.user_id))
    user.devices.append(client)
    user.tokens.append(tokens)
    return client


async def wait_for(pred: Any, within: float = 5.0, what: str = "condition") -> None:
    waited = 0.0
    while not pred():
        if waited >= within:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


async def close_all(*users: User) -> None:
    for u in users:
        for c in u.devices:
            await c.close()
