"""Prometheus metrics shared by every process (router worker and component containers)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("messenger_calls_total", "Procedure calls handled", ["procedure"])
ERRORS = Counter("messenger_call_errors_total", "Procedure calls that failed, by error code", ["procedure", "code"])
LATENCY = Histogram(
    "messenger_call_seconds",
    "Time to handle a procedure call",
    ["procedure"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SESSIONS_JOINED = Counter("messenger_sessions_joined_total", "WAMP sessions joined", ["authrole"])
SESSIONS_LEFT = Counter("messenger_sessions_left_total", "WAMP sessions left")
SESSIONS_ACTIVE = Gauge("messenger_sessions_active", "WAMP sessions currently joined", ["authrole"])
AUTH_DECISIONS = Counter("messenger_auth_decisions_total", "Join authentications", ["result"])
DEPENDENCY_ERRORS = Counter("messenger_dependency_errors_total", "Failed calls to a dependency", ["dependency"])
DEPENDENCY_STATE = Gauge(
    "messenger_dependency_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", ["dependency"]
)
