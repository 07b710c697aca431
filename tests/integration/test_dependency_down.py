"""PostgreSQL stopped under a running distributed node: fast `unavailable`, then recovery by itself."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from twisted.internet import reactor, task

from realms import uris
from tests.integration.helpers import user_session
from tests.support.client import JoinFailed, call_error, connect
from tests.support.node import Node
from tests.support.pg import PrivatePostgres

pytestmark = [pytest.mark.node, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def pg():
    server = PrivatePostgres()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def pg_node(tmp_path_factory, pg, distributed_env):
    env, extra = distributed_env(pg_dsn=pg.dsn)
    node = Node(tmp_path_factory.mktemp("pgdown"), profile="distributed", env=env, extra=extra).start()
    yield node
    node.stop()


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_postgres_down_answers_unavailable_fast_and_recovers(pg, pg_node):
    user, tokens = await user_session(pg_node)
    assert (await user.call(uris.USER_ME))["user_id"] == tokens["user_id"]

    pg.stop("immediate")
    slowest = 0.0
    for _ in range(5):
        started = time.monotonic()
        err = await call_error(user.call(uris.USER_ME))
        slowest = max(slowest, time.monotonic() - started)
        assert err.error == "messenger.error.unavailable", err
    assert slowest < 4.0, f"unavailable took {slowest:.2f} s"
    # once the breaker is open the answer is immediate
    started = time.monotonic()
    err = await call_error(user.call(uris.USER_SEARCH, query="ab"))
    assert err.error == "messenger.error.unavailable"
    assert time.monotonic() - started < 0.5
    # a join needs the device check: refused, not hung
    with pytest.raises(JoinFailed) as info:
        await connect(pg_node.url, ticket=tokens["access_token"])
    assert info.value.reason == "messenger.error.unavailable"

    pg.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert (await user.call(uris.USER_ME))["user_id"] == tokens["user_id"]
            break
        except ApplicationError as e:
            assert e.error == "messenger.error.unavailable"
            assert time.monotonic() < deadline, "no recovery within 15 s"
            await sleep(0.5)
    recovered_in = time.monotonic() - (deadline - 15)
    again = await connect(pg_node.url, ticket=tokens["access_token"])
    assert (await again.call(uris.USER_ME))["user_id"] == tokens["user_id"]
    print(f"recovered {recovered_in:.1f} s after Postgres came back; slowest unavailable {slowest:.2f} s")
    await again.close()
    await user.close()
