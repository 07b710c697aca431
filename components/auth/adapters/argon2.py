"""argon2id password hashing, run off the reactor thread."""

from __future__ import annotations

from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet import threads

# OWASP Password Storage Cheat Sheet, argon2id minimum: m=19 MiB, t=2, p=1.
OWASP_MEMORY_KIB = 19 * 1024
OWASP_TIME_COST = 2
OWASP_PARALLELISM = 1


class Argon2Hasher:
    def __init__(
        self,
        *,
        memory_kib: int = OWASP_MEMORY_KIB,
        time_cost: int = OWASP_TIME_COST,
        parallelism: int = OWASP_PARALLELISM,
        reactor: Any = None,
        weak_for_benchmarks: bool = False,
    ) -> None:
        """``weak_for_benchmarks`` lets parameters below the OWASP minimum through: only for load
        tests that need 100k accounts on one machine (set by the environment variable
        ``MESSENGER_BENCHMARK_WEAK_HASHING=1``, never by configuration alone)."""
        if (memory_kib < OWASP_MEMORY_KIB or time_cost < OWASP_TIME_COST) and not weak_for_benchmarks:
            raise ValueError("argon2 parameters below the OWASP minimum (m=19 MiB, t=2)")
        self._ph = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        # Verifying against this makes an unknown user cost the same as a wrong password.
        self._dummy = self._ph.hash("not a password: timing equaliser")

    async def hash(self, password: str) -> str:
        result: str = await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._ph.hash, password
        )
        return result

    def _verify(self, encoded: str | None, password: str) -> bool:
        try:
            return bool(self._ph.verify(encoded or self._dummy, password)) and encoded is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, encoded: str | None, password: str) -> bool:
        """``encoded=None`` (unknown user) verifies against a dummy hash and answers False."""
        result: bool = await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._verify, encoded, password
        )
        return result

    def needs_rehash(self, encoded: str) -> bool:
        try:
            return bool(self._ph.check_needs_rehash(encoded))
        except InvalidHashError:
            return True
