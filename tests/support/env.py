"""Where the test servers are, from the environment `scripts/services.sh env` prints."""

from __future__ import annotations

import os

import pytest

REDIS_URL_ENV = "MESSENGER_TEST_REDIS_URL"


def redis_url() -> str:
    """The test Redis URL; fails the test (not skips) with how to fix it when unset."""
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    if not url:
        pytest.fail(
            f"{REDIS_URL_ENV} is not set. Start the test services with `scripts/services.sh up` and export "
            f"{REDIS_URL_ENV}=redis://127.0.0.1:56379/0 (or deselect with -m 'not redis').",
            pytrace=False,
        )
    return url
