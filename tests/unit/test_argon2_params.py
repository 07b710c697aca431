"""Password hashing never goes below the OWASP minimum unless a benchmark says so explicitly."""

from __future__ import annotations

import pytest

from components.auth.adapters.argon2 import Argon2Hasher


def test_parameters_below_the_owasp_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="OWASP"):
        Argon2Hasher(memory_kib=64, time_cost=1)


def test_weak_parameters_pass_only_when_a_benchmark_asks_for_them() -> None:
    Argon2Hasher(memory_kib=64, time_cost=1, weak_for_benchmarks=True)
