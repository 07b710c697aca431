"""Draining a router shard (router/drain.py): the pacing, the closing loop on a fake clock, the
HTTP resources (drain trigger and the health check of router/web.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.web.test.requesthelper import DummyRequest

from router import drain
from router.web import root_resource

# -- pacing -------------------------------------------------------------------------------------


def run_pacer(total: int, rate: float, tick: float) -> list[tuple[float, int]]:
    """(time, closes) per tick until ``total`` are closed."""
    pacer = drain.Pacer(rate, 0.0)
    out: list[tuple[float, int]] = []
    done, now = 0, 0.0
    while done < total:
        n = pacer.take(now, total - done)
        if n:
            out.append((now, n))
        done += n
        now = round(now + tick, 9)
        assert now < 3600, "pacer stalled"
    return out


def test_first_session_goes_at_once_then_at_the_rate():
    batches = run_pacer(total=11, rate=10, tick=0.02)
    assert batches[0] == (0.0, 1)
    last_time = batches[-1][0]
    assert last_time == pytest.approx(drain.drain_seconds(11, 10), abs=0.021)  # 1 s
    assert all(n == 1 for _, n in batches)  # 10/s on 20 ms ticks: never two at once


def test_a_high_rate_is_spread_over_the_ticks():
    batches = run_pacer(total=2000, rate=500, tick=0.02)
    assert batches[-1][0] == pytest.approx(4.0, abs=0.03)
    assert max(n for _, n in batches[1:]) == 10  # 500/s x 20 ms


@given(
    rate=st.floats(min_value=0.5, max_value=20000),
    tick=st.sampled_from([0.001, 0.02, 0.05, 0.25]),
    total=st.integers(min_value=1, max_value=3000),
)
def test_never_faster_than_the_rate_and_never_more_than_the_burst(rate, tick, total):
    pacer = drain.Pacer(rate, 0.0)
    done, now = 0, 0.0
    while done < total and now < 30:
        n = pacer.take(now, total - done)
        assert 0 <= n <= max(1.0, rate * drain.BURST_S)
        done += n
        assert done <= 1 + rate * now + 1e-6
        now += tick


def test_after_a_stall_only_one_burst_is_released():
    pacer = drain.Pacer(100, 0.0)
    assert pacer.take(0.0, 1000) == 1
    assert pacer.take(60.0, 1000) == 10  # a minute without ticks: 100 ms worth, not 6000
    assert pacer.take(60.0, 1000) == 0
    assert pacer.take(60.05, 1000) == 5


def test_the_pacer_refuses_a_rate_of_zero():
    with pytest.raises(ValueError):
        drain.Pacer(0, 0.0)


# -- the closing loop -----------------------------------------------------------------------------


class FakeRouter:
    """The component's view: joined sessions by role; a kill makes the session leave a little
    later (the client's GOODBYE reply), unless it is a client that never answers."""

    def __init__(self, clock: task.Clock, state: drain.DrainState) -> None:
        self.clock = clock
        self.sessions: dict[int, str] = {}
        self.killed: list[tuple[float, int]] = []
        self.deaf: set[int] = set()
        self.drainer = drain.Drainer(state, self.candidates, self.sessions.__contains__, self.kill, clock=clock)
        state.attach(self.drainer)

    def candidates(self) -> list[int]:
        return [sid for sid, role in self.sessions.items() if role in drain.CLIENT_ROLES]

    def join(self, sid: int, role: str) -> None:
        self.sessions[sid] = role
        self.drainer.on_join(sid, role)

    def leave(self, sid: int) -> None:
        if self.sessions.pop(sid, None) is not None:
            self.drainer.on_leave(sid)

    def kill(self, sid: int) -> defer.Deferred[Any]:
        if sid not in self.sessions:
            return defer.fail(RuntimeError("wamp.error.no_such_session"))
        self.killed.append((self.clock.seconds(), sid))
        if sid not in self.deaf:
            self.clock.callLater(0.005, self.leave, sid)
        return defer.succeed(None)


def advance(clock: task.Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter(task.Clock(), drain.DrainState())


def test_drain_closes_client_sessions_paced_and_leaves_backends(router):
    for sid in range(1, 101):
        router.join(sid, "user" if sid % 10 else "guest")
    router.join(500, "backend")
    router.drainer.state.start(rate_per_s=50, grace_s=0)
    assert router.drainer.closing
    advance(router.clock, 1.0)
    assert 45 <= len(router.killed) <= 52  # 1 at once, then 50/s
    advance(router.clock, 1.5)
    assert sorted(sid for _, sid in router.killed) == list(range(1, 101))
    assert router.sessions == {500: "backend"}
    times = [t for t, _ in router.killed]
    assert times[-1] - times[0] == pytest.approx(99 / 50, abs=0.05)
    report = router.drainer.state.report()
    assert report["draining"] and report["closing"]
    assert report["sessions_left"] == 0 and report["closed"] == 100 and report["awaiting_goodbye"] == 0


def test_grace_delays_the_closing_and_joins_during_grace_are_drained_too(router):
    router.join(1, "user")
    router.drainer.state.start(rate_per_s=100, grace_s=2)
    advance(router.clock, 1.9)
    router.join(2, "user")
    assert router.killed == [] and not router.drainer.closing
    advance(router.clock, 0.2)
    assert {sid for _, sid in router.killed} == {1, 2}


def test_a_client_joining_while_closing_is_closed_at_once(router):
    router.drainer.state.start(rate_per_s=1, grace_s=0)
    router.clock.advance(0.5)
    router.join(7, "user")
    router.join(8, "guest")
    router.join(9, "backend")
    assert [sid for _, sid in router.killed] == [7, 8]  # not paced, and not the backend
    router.clock.advance(0.01)
    assert set(router.sessions) == {9}


def test_a_client_that_never_answers_is_reported_and_not_killed_twice(router):
    router.deaf.add(3)
    for sid in (1, 2, 3):
        router.join(sid, "user")
    router.drainer.state.start(rate_per_s=1000, grace_s=0)
    advance(router.clock, 0.5)
    assert [sid for _, sid in router.killed].count(3) == 1
    report = router.drainer.report()
    assert report["sessions_left"] == 1 and report["awaiting_goodbye"] == 1


def test_a_failed_kill_of_a_session_still_joined_is_tried_again(router):
    router.join(1, "user")
    calls = []

    def flaky(sid: int) -> defer.Deferred[Any]:
        calls.append(sid)
        if len(calls) == 1:
            return defer.fail(RuntimeError("router busy"))
        return FakeRouter.kill(router, sid)

    router.drainer.kill = flaky
    router.drainer.state.start(rate_per_s=10, grace_s=0)
    advance(router.clock, 0.3)
    assert calls == [1, 1] and router.sessions == {}


def test_cancel_stops_closing_and_a_new_drain_starts_over(router):
    for sid in range(1, 21):
        router.join(sid, "user")
    state = router.drainer.state
    state.start(rate_per_s=10, grace_s=0)
    advance(router.clock, 0.45)
    closed = len(router.killed)
    assert state.cancel() and not state.draining and not router.drainer.closing
    advance(router.clock, 1.0)
    router.join(99, "user")
    assert len(router.killed) == closed
    assert state.start(rate_per_s=1000, grace_s=0)
    assert not state.start(rate_per_s=1, grace_s=0)  # already draining: unchanged
    advance(router.clock, 0.2)
    assert router.sessions == {}


def test_a_drain_asked_before_the_component_joined_begins_when_it_attaches():
    state = drain.DrainState()
    assert state.report()["sessions_left"] is None
    state.start(rate_per_s=100, grace_s=0)
    clock = task.Clock()
    late = FakeRouter.__new__(FakeRouter)
    late.clock, late.sessions, late.killed, late.deaf = clock, {5: "user"}, [], set()
    late.drainer = drain.Drainer(state, late.candidates, late.sessions.__contains__, late.kill, clock=clock)
    state.attach(late.drainer)
    clock.advance(0.01)
    assert [sid for _, sid in late.killed] == [5]


# -- HTTP ---------------------------------------------------------------------------------------


def render(resource: Any, method: str, args: dict[bytes, list[bytes]] | None = None) -> tuple[int, dict[str, Any]]:
    request = DummyRequest([b""])
    request.method = method.encode()
    request.args = args or {}
    body = resource.render(request)
    return request.responseCode or 200, json.loads(body)


def test_drain_resource_starts_reports_and_cancels(router):
    resource = drain.DrainResource(router.drainer.state, rate_per_s=500, grace_s=5)
    router.join(1, "user")
    code, body = render(resource, "GET")
    assert code == 200 and body["draining"] is False and body["sessions_left"] == 1
    code, body = render(resource, "POST", {b"rate": [b"20"], b"grace": [b"0"]})
    assert code == 202 and body["draining"] is True and body["rate_per_s"] == 20 and body["grace_s"] == 0
    code, body = render(resource, "POST")
    assert code == 200 and body["rate_per_s"] == 20  # already draining
    router.clock.advance(0.01)
    code, body = render(resource, "GET")
    assert body["sessions_left"] == 0 and body["closed"] == 1
    code, body = render(resource, "DELETE")
    assert code == 200 and body["draining"] is False


@pytest.mark.parametrize("args", [{b"rate": [b"0"]}, {b"rate": [b"x"]}, {b"grace": [b"-1"]}, {b"grace": [b"1e9"]}])
def test_drain_resource_refuses_bad_numbers(args):
    state = drain.DrainState()
    code, body = render(drain.DrainResource(state, 500, 5), "POST", args)
    assert code == 400 and "error" in body and not state.draining


def test_drain_resource_takes_its_defaults_from_the_config_extra():
    resource = drain.drain_resource({"rate_per_s": 42, "grace_s": 1.5})
    assert isinstance(resource, drain.DrainResource)
    assert (resource.rate_per_s, resource.grace_s, resource.state) == (42.0, 1.5, drain.STATE)


def test_health_check_answers_503_while_draining(monkeypatch):
    state = drain.DrainState()
    monkeypatch.setattr(drain, "STATE", state)
    index = root_resource({}).getChildWithDefault(b"healthz", DummyRequest([b"healthz"]))
    code, body = render(index, "GET")
    assert code == 200 and body["websocket"] == "/ws"
    state.start(rate_per_s=1, grace_s=0)
    code, body = render(index, "GET")
    assert code == 503 and body["draining"] is True
    state.cancel()
    assert render(index, "GET")[0] == 200
