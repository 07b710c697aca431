"""The Postgres adapter when the server misbehaves: killed backends, nothing listening, a silent
or vanished server, more callers than connections, calls timing out while others wait for their
connection, statements the server rejects, instances migrating at once.

The server itself is never stopped (others share it): a dead server is simulated with a TCP
relay in front of it that can refuse, drop or freeze connections, and killed connections with
``pg_terminate_backend`` limited to this test's ``application_name``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import pytest_twisted
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, protocol, task
from twisted.internet import reactor as _reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from common.errors import MessengerError, Unavailable
from common.resilience import CircuitBreaker
from components.auth.adapters.postgres import MIGRATIONS, PostgresAccountStore, StoreFault
from components.auth.domain import Account, Device, RefreshToken, RotateOutcome, new_id
from tests.contract.conftest import drop_schema
from tests.support.node import free_port
from tests.support.relay import Relay

pytestmark = pytest.mark.postgres

reactor: Any = _reactor  # zope interfaces confuse mypy without its plugin

NOW = 1_700_000_000_000


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def within(seconds: float, d: defer.Deferred[Any]) -> Any:
    """``d``'s result, or ``defer.TimeoutError`` after ``seconds``: a broken pool fails the test
    instead of hanging it (with a lock held that the schema's clean-up would wait for)."""
    d.addTimeout(seconds, reactor)
    return await d


def account(username: str | None = None) -> Account:
    username = username or f"u{uuid.uuid4().hex[:12]}"
    return Account(new_id(), username, username.capitalize(), "hash", NOW)


def with_params(dsn: str, **params: Any) -> str:
    return make_dsn(**{**parse_dsn(dsn), **{k: str(v) for k, v in params.items()}})


@pytest.fixture
def schema(pg_admin: psycopg2.extensions.connection) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex}"
    yield name
    drop_schema(pg_admin, name)


@pytest.fixture
def app_name() -> str:
    """This test's connections' ``application_name``, so only they get killed."""
    return f"auth-test-{uuid.uuid4().hex[:10]}"


def terminate(admin: psycopg2.extensions.connection, app_name: str) -> int:
    with admin.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = %s",
            (app_name,),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


def backend_pids(admin: psycopg2.extensions.connection, app_name: str) -> set[int]:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,))
        return {r[0] for r in cur.fetchall()}


def fast_breaker(call_timeout_s: float = 1.0) -> CircuitBreaker:
    return CircuitBreaker("postgres-test", reactor, reset_timeout_s=0.3, call_timeout_s=call_timeout_s)


@pytest_twisted.async_yield_fixture
async def relay(pg_dsn: str) -> AsyncIterator[Relay]:
    params = parse_dsn(pg_dsn)
    r = Relay(params.get("host", "127.0.0.1"), int(params.get("port", 5432)))
    r.up()
    yield r
    r.thaw()
    await r.down()


# -- killed backends ----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_recovers_after_its_backends_are_terminated(
    pg_dsn: str, pg_admin: psycopg2.extensions.connection, schema: str, app_name: str
) -> None:
    store = PostgresAccountStore(
        with_params(pg_dsn, application_name=app_name), reactor, schema=schema, max_connections=4
    )
    await store.start()
    try:
        alice = account()
        await store.create_account(alice)
        # open all four connections
        await defer.gatherResults([defer.ensureDeferred(store.get_account(alice.user_id)) for _ in range(8)])
        before = backend_pids(pg_admin, app_name)
        assert len(before) == store.pool_size == 4

        for round_ in range(2):
            assert terminate(pg_admin, app_name) >= 1
            unavailable = 0
            for _ in range(6):  # reads: at most one Unavailable, then they work again
                try:
                    assert await store.get_account(alice.user_id) == alice
                except Unavailable:
                    unavailable += 1
            assert unavailable <= 1, round_
            bob = account()
            try:  # a write right after another kill: at most one Unavailable too
                terminate(pg_admin, app_name)
                await store.create_account(bob)
            except Unavailable:
                await store.create_account(bob)
            assert await store.get_account(bob.user_id) == bob
            assert store.pool_size <= 4

        after = backend_pids(pg_admin, app_name)
        assert after and not (after & before)  # fresh connections replaced the killed ones
    finally:
        await store.stop()
    for _ in range(100):  # stop() closed them all; the backends exit soon after
        if not backend_pids(pg_admin, app_name):
            break
        await sleep(0.02)
    assert backend_pids(pg_admin, app_name) == set()


@pytest_twisted.ensureDeferred
async def test_a_call_whose_backend_is_killed_fails_cleanly_and_rolls_back(
    pg_dsn: str, pg_admin: psycopg2.extensions.connection, schema: str, app_name: str
) -> None:
    """A rotation stuck on a lock when its backend dies: Unavailable, nothing written, retry works."""
    store = PostgresAccountStore(with_params(pg_dsn, application_name=app_name), reactor, schema=schema)
    await store.start()
    blocker = psycopg2.connect(with_params(pg_dsn, options=f"-c search_path={schema}"))
    try:
        user = account()
        await store.create_account(user)
        device = Device(new_id(), user.user_id, "phone", NOW)
        token = RefreshToken("h0", device.device_id, user.user_id, NOW, NOW + 60_000)
        await store.create_device(device, token)
        new = RefreshToken("h1", device.device_id, user.user_id, NOW + 1, NOW + 60_000)

        with blocker.cursor() as cur:  # hold the device's row lock in an open transaction
            cur.execute("SELECT 1 FROM devices WHERE device_id = %s FOR UPDATE", (device.device_id,))
        pending = defer.ensureDeferred(store.rotate_refresh_token("h0", new, NOW + 1))
        for _ in range(100):
            await sleep(0.01)
            with pg_admin.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (app_name,),
                )
                row = cur.fetchone()
            if row and row[0]:
                break
        else:
            pytest.fail("the rotation never waited for the lock")
        terminate(pg_admin, app_name)
        with pytest.raises(Unavailable):
            await pending
        blocker.rollback()

        result = await store.rotate_refresh_token("h0", new, NOW + 2)  # the killed attempt left no trace
        assert result.outcome is RotateOutcome.OK
    finally:
        blocker.close()
        await store.stop()


# -- nothing there, or nothing answering ---------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_start_with_nothing_listening_is_unavailable_fast(pg_dsn: str) -> None:
    store = PostgresAccountStore(with_params(pg_dsn, port=free_port()), reactor)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await store.start()
    assert time.monotonic() - started < 3.0
    with pytest.raises(Unavailable):  # not started: calls fail the same way, at once
        await store.get_account(new_id())
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_is_unavailable_within_the_timeout(pg_dsn: str) -> None:
    silent: Any = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    try:
        store = PostgresAccountStore(
            with_params(pg_dsn, port=silent.getHost().port), reactor, connect_timeout_s=1.0, breaker=fast_breaker()
        )
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.start()
        assert time.monotonic() - started < 2.5
        assert store.pool_size == 0
    finally:
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_recovers_by_itself_after_the_server_was_gone(
    pg_dsn: str, schema: str, app_name: str, relay: Relay
) -> None:
    """The relay goes away (like a restarting server): calls fail fast, the breaker opens, and when
    the server is back the store works again without anybody restarting it."""
    dsn = with_params(pg_dsn, host="127.0.0.1", port=relay.listen_port, application_name=app_name)
    store = PostgresAccountStore(dsn, reactor, schema=schema, breaker=fast_breaker())
    try:
        await store.start()
        alice = account()
        await store.create_account(alice)

        await relay.down()
        started = time.monotonic()
        for _ in range(5):
            with pytest.raises(Unavailable):
                await store.get_account(alice.user_id)
        with pytest.raises(Unavailable):
            await store.create_account(account())
        assert time.monotonic() - started < 3.0
        assert store.breaker.state == "open"

        relay.up()
        await sleep(0.35)  # the breaker's reset timeout
        assert await store.get_account(alice.user_id) == alice
        bob = account()
        await store.create_account(bob)
        assert [a.user_id for a in await store.get_accounts([bob.user_id, alice.user_id])] == [
            bob.user_id,
            alice.user_id,
        ]
        assert store.breaker.state == "closed"
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_frozen_connection_times_out_and_is_replaced(
    pg_dsn: str, schema: str, app_name: str, relay: Relay
) -> None:
    """Bytes stop flowing (a cut network, a hung server): each call ends by its timeout, the stuck
    connections are closed, and fresh ones work once the path is clear."""
    dsn = with_params(pg_dsn, host="127.0.0.1", port=relay.listen_port, application_name=app_name)
    breaker = CircuitBreaker("postgres-test", reactor, reset_timeout_s=0.3, call_timeout_s=0.4, retries=1)
    store = PostgresAccountStore(dsn, reactor, schema=schema, connect_timeout_s=0.4, breaker=breaker)
    try:
        await store.start()
        alice = account()
        await store.create_account(alice)

        relay.freeze()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.get_account(alice.user_id)
        with pytest.raises(Unavailable):
            await store.create_account(account())
        assert time.monotonic() - started < 2.5
        assert store.pool_size <= 1

        relay.thaw()
        await sleep(0.35)
        assert await store.get_account(alice.user_id) == alice
    finally:
        await store.stop()


# -- the pool and the migrations ----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_more_callers_than_connections_all_get_served(pg_dsn: str, schema: str) -> None:
    store = PostgresAccountStore(pg_dsn, reactor, schema=schema, max_connections=3)
    await store.start()
    try:
        assert store.pool_size == 1
        people = [account() for _ in range(10)]
        await defer.gatherResults([defer.ensureDeferred(store.create_account(p)) for p in people])
        got = await defer.gatherResults([defer.ensureDeferred(store.get_account(p.user_id)) for p in people * 3])
        assert got == people * 3
        assert store.pool_size == 3
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_instances_starting_together_migrate_once(
    pg_dsn: str, pg_admin: psycopg2.extensions.connection, schema: str
) -> None:
    stores = [PostgresAccountStore(pg_dsn, reactor, schema=schema) for _ in range(4)]
    try:
        await defer.gatherResults([defer.ensureDeferred(s.start()) for s in stores])
        with pg_admin.cursor() as cur:
            cur.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
            assert [r[0] for r in cur.fetchall()] == list(range(1, len(MIGRATIONS) + 1))
        alice = account()
        await stores[0].create_account(alice)
        assert await stores[3].get_account(alice.user_id) == alice
    finally:
        for s in stores:
            await s.stop()


# -- concurrency --------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_many_concurrent_calls_on_one_store_all_succeed(pg_dsn: str, schema: str) -> None:
    """200 concurrent is_blocked and 200 get_account on one store (4 connections): every call
    answers, correctly, and the breaker never hears of a failure."""
    store = PostgresAccountStore(pg_dsn, reactor, schema=schema, max_connections=4)
    await store.start()
    try:
        alice, bob, carol = account(), account(), account()
        for a in (alice, bob, carol):
            await store.create_account(a)
        await store.block(alice.user_id, bob.user_id, NOW)
        calls: list[defer.Deferred[Any]] = []
        expected: list[Any] = []
        for i in range(200):
            blocked = (bob if i % 2 else carol).user_id
            calls.append(defer.ensureDeferred(store.is_blocked(alice.user_id, blocked)))
            expected.append(blocked == bob.user_id)
            calls.append(defer.ensureDeferred(store.get_account(alice.user_id)))
            expected.append(alice)
        results = await within(30, defer.DeferredList(calls, consumeErrors=True))
        errors = [r.value for ok, r in results if not ok]
        assert errors == []
        assert [r for _, r in results] == expected
        assert store.breaker.state == "closed"
        assert store.pool_size <= 4
    finally:
        await store.stop()


async def slow_statements(store: PostgresAccountStore, n: int, seconds: float) -> list[Any]:
    async def sleep_on_server(cur: Any) -> Any:
        await cur.execute("SELECT pg_sleep(%s)", (seconds,))
        return cur.fetchall()

    calls = [defer.ensureDeferred(store._read(sleep_on_server)) for _ in range(n)]
    outcomes = await within(30, defer.DeferredList(calls, consumeErrors=True))
    return [r.value if not ok else None for ok, r in outcomes]


@pytest_twisted.ensureDeferred
async def test_waiting_for_a_connection_does_not_count_against_the_breaker(pg_dsn: str, schema: str) -> None:
    """Overload is not an outage: 12 calls of 0.1 s on one connection queue for 1.2 s, over the
    breaker's 0.5 s call timeout, and every one is served; the breaker stays closed. (Before, the
    wait counted: the later calls timed out and opened the breaker for everyone.)"""
    breaker = CircuitBreaker("postgres-test", reactor, call_timeout_s=0.5, retries=0)
    store = PostgresAccountStore(pg_dsn, reactor, schema=schema, max_connections=1, breaker=breaker)
    await store.start()
    try:
        assert await slow_statements(store, 12, 0.1) == [None] * 12
        assert store.breaker.state == "closed"
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_call_waiting_too_long_for_a_connection_answers_busy_and_leaves_the_breaker_closed(
    pg_dsn: str, schema: str
) -> None:
    breaker = CircuitBreaker("postgres-test", reactor, call_timeout_s=2.0, retries=0)
    store = PostgresAccountStore(
        pg_dsn, reactor, schema=schema, max_connections=1, queue_timeout_s=0.35, breaker=breaker
    )
    await store.start()
    try:
        outcomes = await slow_statements(store, 10, 0.1)
        busy = [e for e in outcomes if e is not None]
        assert 3 <= outcomes.count(None) <= 5
        assert busy and all(isinstance(e, Unavailable) and "busy" in str(e) for e in busy), busy[:2]
        assert store.breaker.state == "closed"
        alice = account()
        await store.create_account(alice)  # and the store works on
        assert await store.get_account(alice.user_id) == alice
    finally:
        await store.stop()


async def two_accounts_with_blocks_locked(store: PostgresAccountStore, locker: Any) -> tuple[Any, Any]:
    """Two new accounts; then ``locker`` holds the blocks table, so is_blocked's SELECT waits."""
    alice, bob = account(), account()
    await store.create_account(alice)
    await store.create_account(bob)
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE blocks IN ACCESS EXCLUSIVE MODE")
    return alice, bob


@pytest_twisted.ensureDeferred
async def test_a_call_timing_out_mid_statement_does_not_hand_its_busy_connection_on(pg_dsn: str, schema: str) -> None:
    """The cause of "postgres is unavailable: ProgrammingError" under load: a call cancelled by its
    timeout released its connection (statement still running) to the next waiter, whose statement
    then failed with psycopg2's "asynchronous query is underway" and opened the breaker."""
    breaker = CircuitBreaker("postgres-test", reactor, call_timeout_s=0.5, retries=0)
    store = PostgresAccountStore(pg_dsn, reactor, schema=schema, max_connections=1, breaker=breaker)
    await store.start()
    locker = psycopg2.connect(with_params(pg_dsn, options=f"-c search_path={schema}"))
    try:
        alice, bob = await two_accounts_with_blocks_locked(store, locker)
        stuck = defer.ensureDeferred(store.is_blocked(alice.user_id, bob.user_id))
        await sleep(0.25)
        waiting = [defer.ensureDeferred(store.get_account(alice.user_id)) for _ in range(5)]  # for the one connection
        with pytest.raises(Unavailable, match="TimeoutError"):
            await within(5, stuck)
        assert await within(5, defer.gatherResults(waiting)) == [alice] * 5
        assert store.breaker.state == "closed"
        locker.rollback()
        assert await store.is_blocked(alice.user_id, bob.user_id) is False
    finally:
        locker.close()
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_timeouts_among_many_concurrent_calls_fail_only_themselves(pg_dsn: str, schema: str) -> None:
    """Under a burst, calls cancelled mid-statement (a lock holds them) fail with their timeout
    and nothing else: the calls that were not stuck all answer, and none fails with anything
    but a timeout (no ProgrammingError, no deep recursion through the pool's waiters)."""
    breaker = CircuitBreaker("postgres-test", reactor, call_timeout_s=0.6, retries=0, failure_threshold=1000)
    store = PostgresAccountStore(pg_dsn, reactor, schema=schema, max_connections=4, breaker=breaker)
    await store.start()
    locker = psycopg2.connect(with_params(pg_dsn, options=f"-c search_path={schema}"))
    try:
        alice, bob = await two_accounts_with_blocks_locked(store, locker)
        stuck = [defer.ensureDeferred(store.is_blocked(alice.user_id, bob.user_id)) for _ in range(4)]
        await sleep(0.3)  # every connection is now busy with a statement that will time out
        others = [defer.ensureDeferred(store.get_account(alice.user_id)) for _ in range(300)]
        results = await within(5, defer.DeferredList(stuck, consumeErrors=True))
        assert all(not ok and isinstance(r.value, Unavailable) and "TimeoutError" in str(r.value) for ok, r in results)
        outcomes = await within(10, defer.DeferredList(others, consumeErrors=True))
        failures = [r.value for ok, r in outcomes if not ok]
        assert failures == []  # they waited for a turn outside the breaker, then were served
        assert all(r == alice for ok, r in outcomes if ok)
        locker.rollback()
    finally:
        locker.close()
        await store.stop()


# -- statements the server rejects -------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_rejected_statement_is_an_internal_error_not_an_outage(pg_dsn: str, schema: str) -> None:
    """A statement the server rejects as wrong is a bug here: StoreFault (messenger.error.internal),
    logged with its SQL but not its parameters, never retried, and the breaker stays closed."""
    breaker = CircuitBreaker("postgres-test", reactor, failure_threshold=2)
    store = PostgresAccountStore(pg_dsn, reactor, schema=schema, breaker=breaker)
    await store.start()
    logged: list[str] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_level") is not None and "rejected a statement" in (event.get("log_format") or ""):
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        alice, bob = account(), account()
        await store.create_account(alice)
        await store.create_account(bob)
        for _ in range(5):
            with pytest.raises(StoreFault) as caught:  # DataError: bigint out of range
                await store.block(alice.user_id, bob.user_id, 10**30)
            assert isinstance(caught.value, MessengerError) and caught.value.code == "internal"
        for _ in range(3):
            with pytest.raises(StoreFault):  # ProgrammingError: a syntax error (no public call has one)
                await store._fetch("SELEC 1 FROM blocks WHERE blocker_id = %s", ("secret-param",))
        assert store.breaker.state == "closed"
        assert await store.get_account(alice.user_id) == alice
        assert await store.is_blocked(alice.user_id, bob.user_id) is False
        assert len(logged) == 8
        assert "out of range" in logged[0] and "SQL: INSERT INTO blocks" in logged[0]
        assert "SyntaxError" in logged[-1] and "SQL: SELEC 1 FROM blocks" in logged[-1]
        assert not any(str(10**30) in line or "secret-param" in line for line in logged)
    finally:
        globalLogPublisher.removeObserver(observe)
        await store.stop()
