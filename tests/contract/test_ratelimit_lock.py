"""Contract suite of the ``RateLimiter`` and ``Lock`` ports (``components.auth.ports``).

Every contract test runs against the memory adapter (``common.adapters.memory``, driven by a
``FixedClock``) and the Redis adapter (``common.adapters.redis``, real time, short windows and
a unique key prefix per test). The test bodies only move time through ``env.advance(ms)``:
it advances the ``FixedClock`` for memory and sleeps for Redis.

Redis: ``MESSENGER_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:56379/0``, see
``scripts/services.sh up``). The outage tests need no shared server: one points a client at a
closed port, the other runs its own ``redis-server`` in a temporary directory.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

from common.adapters.memory import MemoryLock, MemoryRateLimiter
from common.adapters.redis import RedisClient, RedisLock, RedisRateLimiter
from common.clock import FixedClock
from common.errors import Unavailable
from common.ports import Lock, RateLimiter
from tests.support.env import REDIS_URL_ENV, redis_url
from tests.support.node import free_port

REACTOR: Any = _reactor
REDIS_SERVER = "/usr/bin/redis-server"


async def sleep(ms: float) -> None:
    await task.deferLater(REACTOR, ms / 1000, lambda: None)


# -- the environment every contract test runs in ------------------------------------------------


@dataclass
class Env:
    name: str
    limiter: RateLimiter
    lock: Lock
    advance: Callable[[int], Awaitable[None]]
    # hands out keys no other test (or Hypothesis example) uses
    ns: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def key(self, name: str) -> str:
        return f"{self.ns}:{name}"


ADAPTERS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]


@pytest.fixture
def checked_redis_url() -> str:
    return redis_url()  # fails here, in a plain fixture: see ``env``


@pytest_twisted.async_yield_fixture
async def redis_env(checked_redis_url: str) -> AsyncIterator[Env | None]:
    """The Redis adapters on a unique key prefix; None if Redis can't be reached."""
    client = RedisClient.from_url(checked_redis_url)
    if not await client.start(timeout_s=3.0):
        await client.stop()
        yield None
        return
    prefix = f"messenger-test:{uuid.uuid4().hex}:"
    try:
        yield Env("redis", RedisRateLimiter(client, prefix=prefix), RedisLock(client, prefix=prefix), sleep)
    finally:
        try:  # leave nothing behind in the shared server
            keys = await client.call(lambda c: c.keys(f"{prefix}*"), idempotent=True)
            if keys:
                await client.call(lambda c: c.delete(keys), idempotent=True)
        except Unavailable:
            pass
        finally:
            await client.stop()


@pytest.fixture(params=ADAPTERS)
def env(request: pytest.FixtureRequest) -> Env:
    # A plain fixture on purpose: with pytest-twisted 1.14 on pytest 9, an async fixture that
    # raises leaves its fixture definition half set up, and every later test using it errors.
    if request.param == "memory":
        clock = FixedClock()

        async def advance_clock(ms: int) -> None:
            clock.advance(ms)

        return Env("memory", MemoryRateLimiter(clock), MemoryLock(clock), advance_clock)

    redis: Env | None = request.getfixturevalue("redis_env")
    if redis is None:
        pytest.fail(f"Redis at {redis_url()} is not reachable; start it with `scripts/services.sh up`", pytrace=False)
    return redis


# -- RateLimiter contract -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_first_limit_hits_allowed_then_denied(env: Env) -> None:
    rl, key, window = env.limiter, env.key("k"), 2000
    for _ in range(3):
        assert await rl.hit(key, 3, window) == 0
    retry = await rl.hit(key, 3, window)
    assert 0 < retry <= window
    assert 0 < await rl.hit(key, 3, window) <= window  # still denied, still within the window

    await env.advance(100)
    retry = await rl.hit(key, 3, window)
    assert 0 < retry <= window - 100  # the window did not restart with the denied hits


@pytest_twisted.ensureDeferred
async def test_separate_keys_are_independent(env: Env) -> None:
    rl, a, b, window = env.limiter, env.key("a"), env.key("b"), 2000
    assert await rl.hit(a, 1, window) == 0
    assert await rl.hit(a, 1, window) > 0
    assert await rl.hit(b, 1, window) == 0
    assert await rl.hit(b, 1, window) > 0
    assert await rl.hit(env.key("c"), 1, window) == 0


@pytest_twisted.ensureDeferred
async def test_allowed_again_after_the_window(env: Env) -> None:
    rl, key, window = env.limiter, env.key("k"), 300
    assert await rl.hit(key, 2, window) == 0
    assert await rl.hit(key, 2, window) == 0
    assert await rl.hit(key, 2, window) > 0

    await env.advance(window + 60)
    assert await rl.hit(key, 2, window) == 0  # a new window, counted from this hit
    assert await rl.hit(key, 2, window) == 0
    assert 0 < await rl.hit(key, 2, window) <= window


@pytest_twisted.ensureDeferred
async def test_reset_clears_the_key_only(env: Env) -> None:
    rl, key, other, window = env.limiter, env.key("k"), env.key("other"), 2000
    assert await rl.hit(key, 1, window) == 0
    assert await rl.hit(other, 1, window) == 0
    assert await rl.hit(key, 1, window) > 0

    await rl.reset(key)
    assert await rl.hit(key, 1, window) == 0
    assert await rl.hit(key, 1, window) > 0
    assert await rl.hit(other, 1, window) > 0
    await rl.reset(env.key("never-hit"))  # resetting an unknown key is fine


@pytest_twisted.ensureDeferred
async def test_concurrent_hits_are_counted_exactly(env: Env) -> None:
    rl, key = env.limiter, env.key("k")
    results = await defer.gatherResults([defer.ensureDeferred(rl.hit(key, 5, 5000)) for _ in range(20)])
    assert sum(r == 0 for r in results) == 5
    assert all(0 < r <= 5000 for r in results if r)


# -- Lock contract --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lock_is_exclusive(env: Env) -> None:
    lock, name = env.lock, env.key("job")
    token = await lock.acquire(name, 5000)
    assert isinstance(token, str) and token
    assert await lock.acquire(name, 5000) is None
    assert await lock.acquire(env.key("another-job"), 5000) is not None


@pytest_twisted.ensureDeferred
async def test_lock_expires_after_ttl(env: Env) -> None:
    lock, name = env.lock, env.key("job")
    first = await lock.acquire(name, 300)
    assert first is not None
    await env.advance(100)
    assert await lock.acquire(name, 300) is None

    await env.advance(260)
    second = await lock.acquire(name, 5000)
    assert second is not None and second != first
    await lock.release(name, first)  # the old holder's token no longer frees it
    assert await lock.acquire(name, 5000) is None


@pytest_twisted.ensureDeferred
async def test_release_with_wrong_token_does_nothing(env: Env) -> None:
    lock, name = env.lock, env.key("job")
    token = await lock.acquire(name, 5000)
    assert token is not None
    await lock.release(name, "not-the-token")
    await lock.release(name, token + "x")
    await lock.release(env.key("not-held"), token)
    assert await lock.acquire(name, 5000) is None


@pytest_twisted.ensureDeferred
async def test_release_frees_the_lock(env: Env) -> None:
    lock, name = env.lock, env.key("job")
    token = await lock.acquire(name, 5000)
    assert token is not None
    await lock.release(name, token)
    again = await lock.acquire(name, 5000)
    assert again is not None and again != token
    await lock.release(name, token)  # releasing twice with a stale token leaves the new holder alone
    assert await lock.acquire(name, 5000) is None


@pytest_twisted.ensureDeferred
async def test_concurrent_acquires_have_one_winner(env: Env) -> None:
    lock, name = env.lock, env.key("job")
    tokens = await defer.gatherResults([defer.ensureDeferred(lock.acquire(name, 5000)) for _ in range(10)])
    assert len([t for t in tokens if t is not None]) == 1


# -- model-based (Hypothesis) ---------------------------------------------------------------------

KEYS = ("a", "b", "c")


@pytest.mark.usefixtures("hypothesis_rewrap_guard")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=1, max_value=4),
    ops=st.lists(st.tuples(st.sampled_from(["hit", "hit", "hit", "reset"]), st.sampled_from(KEYS)), max_size=25),
)
@pytest_twisted.ensureDeferred
async def test_hits_and_resets_match_a_model(env: Env, limit: int, ops: list[tuple[str, str]]) -> None:
    """Within one (long) window: the first ``limit`` hits since the last reset pass."""
    window, ns = 60_000, uuid.uuid4().hex[:8]  # a fresh key space per example
    counts = dict.fromkeys(KEYS, 0)
    for op, k in ops:
        key = env.key(f"{ns}:{k}")
        if op == "reset":
            await env.limiter.reset(key)
            counts[k] = 0
            continue
        counts[k] += 1
        retry = await env.limiter.hit(key, limit, window)
        if counts[k] <= limit:
            assert retry == 0, (op, k, counts)
        else:
            assert 0 < retry <= window, (op, k, counts, retry)


@dataclass
class WindowModel:
    """Reference fixed window: starts with the first hit after the previous one ended."""

    limit: int
    window: int
    start: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def hit(self, key: str, now: int) -> int:
        start = self.start.get(key)
        if start is None or now - start >= self.window:
            self.start[key], self.count[key] = now, 0
            start = now
        self.count[key] += 1
        return 0 if self.count[key] <= self.limit else start + self.window - now

    def reset(self, key: str) -> None:
        self.start.pop(key, None)
        self.count.pop(key, None)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=5),
    window=st.integers(min_value=1, max_value=20),  # small, so window boundaries are hit exactly
    prune_every=st.integers(min_value=1, max_value=8),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("hit"), st.sampled_from(KEYS)),
            st.tuples(st.just("reset"), st.sampled_from(KEYS)),
            st.tuples(st.just("advance"), st.integers(min_value=0, max_value=25)),
            st.tuples(st.just("advance-windows"), st.sampled_from([-1, 0, 1])),  # to a window edge
        ),
        max_size=60,
    ),
)
@pytest_twisted.ensureDeferred
async def test_memory_limiter_matches_a_model_over_time(
    limit: int, window: int, prune_every: int, ops: list[tuple[str, Any]]
) -> None:
    clock = FixedClock()
    limiter = MemoryRateLimiter(clock, prune_every=prune_every)
    model = WindowModel(limit, window)
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg)
        elif op == "advance-windows":
            clock.advance(window + arg)
        elif op == "reset":
            await limiter.reset(arg)
            model.reset(arg)
        else:
            expected = model.hit(arg, clock.now_ms())
            got = await limiter.hit(arg, limit, window)
            assert got == expected
            assert got == 0 or 0 < got <= window
        assert len(limiter) <= len(KEYS)


# -- memory adapter: exact edges and bounded memory ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_memory_window_and_ttl_edges_are_exact() -> None:
    clock = FixedClock()
    limiter, lock = MemoryRateLimiter(clock), MemoryLock(clock)
    assert await limiter.hit("k", 1, 100) == 0
    clock.advance(1)
    assert await limiter.hit("k", 1, 100) == 99
    clock.advance(98)
    assert await limiter.hit("k", 1, 100) == 1  # the last millisecond of the window
    clock.advance(1)
    assert await limiter.hit("k", 1, 100) == 0  # start + window: a new window

    token = await lock.acquire("n", 100)
    clock.advance(99)
    assert await lock.acquire("n", 100) is None
    clock.advance(1)
    assert await lock.acquire("n", 100) not in (None, token)


@pytest_twisted.ensureDeferred
async def test_memory_adapters_prune_expired_entries() -> None:
    clock = FixedClock()
    limiter, lock = MemoryRateLimiter(clock, prune_every=10), MemoryLock(clock, prune_every=10)
    for i in range(50):
        await limiter.hit(f"k{i}", 1, 100)
        assert await lock.acquire(f"n{i}", 100) is not None
    clock.advance(100)
    for _ in range(10):
        await limiter.hit("live", 1, 100)
        await lock.acquire("live", 100)
    assert len(limiter) == 1
    assert len(lock) == 1


# -- Redis client: URL, outage and recovery ------------------------------------------------------


def test_missing_redis_url_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"scripts/services\.sh up"):
        redis_url()


def test_client_from_url() -> None:
    c = RedisClient.from_url("redis://:s%40cret@redis.example:6380/3")
    assert (c.host, c.port, c.dbid, c._password, c._username) == ("redis.example", 6380, 3, "s@cret", None)
    c = RedisClient.from_url("redis://localhost")
    assert (c.host, c.port, c.dbid) == ("localhost", 6379, 0)
    with pytest.raises(ValueError):
        RedisClient.from_url("http://localhost:6379/0")
    with pytest.raises(ValueError):
        RedisClient.from_url("redis://localhost:6379/x")


async def assert_unavailable_fast(fn: Callable[[], Awaitable[object]], within_s: float = 3.0) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await fn()
    assert time.monotonic() - started < within_s


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_redis_down_answers_unavailable_fast() -> None:
    client = RedisClient("127.0.0.1", 1)  # nothing listens on port 1
    limiter, lock = RedisRateLimiter(client), RedisLock(client)
    try:
        started = time.monotonic()
        assert await client.start(timeout_s=2.0) is False
        assert time.monotonic() - started < 2.5
        await assert_unavailable_fast(lambda: limiter.hit("k", 1, 1000))
        await assert_unavailable_fast(lambda: limiter.reset("k"))
        await assert_unavailable_fast(lambda: lock.acquire("n", 1000))
        await assert_unavailable_fast(lambda: lock.release("n", "t"))
        assert client.breaker.state == "open"
        await assert_unavailable_fast(lambda: limiter.hit("k", 1, 1000), within_s=0.1)  # open: no wait at all
    finally:
        await client.stop()
    await assert_unavailable_fast(lambda: limiter.hit("k", 1, 1000), within_s=0.1)  # stopped


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_redis_unstarted_client_connects_on_first_call() -> None:
    client = RedisClient.from_url(redis_url())
    try:
        lock = RedisLock(client, prefix=f"messenger-test:{uuid.uuid4().hex}:")
        token = await lock.acquire("n", 1000)
        assert token is not None
        await lock.release("n", token)
        assert client.connected
    finally:
        await client.stop()


class RedisServer:
    """A throwaway redis-server on a free port, in a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", "", "--appendonly", "no", "--logfile", str(self.workdir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which(REDIS_SERVER):
        pytest.fail(f"{REDIS_SERVER} is missing (install redis-server)", pytrace=False)
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


async def eventually(fn: Callable[[], Awaitable[object]], deadline_s: float) -> float:
    """Retry ``fn`` while it answers ``Unavailable``; answer how long it took."""
    started = time.monotonic()
    while True:
        try:
            await fn()
            return time.monotonic() - started
        except Unavailable:
            if time.monotonic() - started > deadline_s:
                raise
            await sleep(100)


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_redis_recovers_by_itself_after_an_outage(spare_redis: RedisServer) -> None:
    spare_redis.start()
    client = RedisClient("127.0.0.1", spare_redis.port)
    limiter = RedisRateLimiter(client, prefix="t:")
    try:
        await eventually(lambda: limiter.reset("k"), deadline_s=3.0)  # server is up
        assert await limiter.hit("k", 1, 60_000) == 0

        spare_redis.kill()
        await assert_unavailable_fast(lambda: limiter.hit("k", 1, 60_000))
        await assert_unavailable_fast(lambda: limiter.hit("k", 1, 60_000))

        spare_redis.start()  # empty again: no persistence
        took = await eventually(lambda: limiter.reset("k"), deadline_s=8.0)
        assert took < 8.0
        assert await limiter.hit("k", 1, 60_000) == 0
        assert await limiter.hit("k", 1, 60_000) > 0  # scripts are loaded again after the restart
    finally:
        await client.stop()


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_redis_hung_server_times_out_and_recovers(spare_redis: RedisServer) -> None:
    spare_redis.start()
    # db 1: each reconnection runs SELECT, which times out while the server is paused
    client = RedisClient("127.0.0.1", spare_redis.port, 1, connect_timeout_s=0.5, reply_timeout_s=0.5)
    lock = RedisLock(client, prefix="t:")
    try:
        await eventually(lambda: lock.release("n", "t"), deadline_s=3.0)

        spare_redis.pause()
        await assert_unavailable_fast(lambda: lock.release("n", "t"), within_s=1.5)  # reply timeout, no hang
        await assert_unavailable_fast(lambda: lock.acquire("n", 1000), within_s=0.5)
        await sleep(1500)  # reconnection attempts hang in SELECT and time out

        spare_redis.resume()
        await eventually(lambda: lock.release("n", "t"), deadline_s=8.0)
        assert await lock.acquire("n", 1000) is not None
    finally:
        await client.stop()
