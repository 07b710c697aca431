"""Reading a component's configuration from Crossbar's ``extra`` plus the environment."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"
DISTRIBUTED = "distributed"


def profile(extra: dict[str, Any]) -> str:
    value = os.environ.get("MESSENGER_PROFILE") or extra.get("profile") or EMBEDDED
    if value not in (EMBEDDED, DISTRIBUTED):
        raise ValueError(f"unknown profile {value!r} (expected {EMBEDDED!r} or {DISTRIBUTED!r})")
    return str(value)


def data_dir(extra: dict[str, Any]) -> Path:
    """``MESSENGER_DATA_DIR``, else ``extra.data_dir`` (relative to the worker's cwd, the node dir)."""
    path = Path(os.environ.get("MESSENGER_DATA_DIR") or extra.get("data_dir") or "../var").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret_from_env(extra: dict[str, Any], key: str, default_env: str) -> str | None:
    """The value of the environment variable named by ``extra[key]`` (or ``default_env``)."""
    env = str(extra.get(key) or default_env)
    return os.environ.get(env) or None


def required_env(extra: dict[str, Any], key: str, default_env: str) -> str:
    value = secret_from_env(extra, key, default_env)
    if not value:
        env = str(extra.get(key) or default_env)
        raise ValueError(f"environment variable {env} must be set in the distributed profile")
    return value


def local_secret(directory: Path, name: str) -> bytes:
    """A random secret kept in ``directory/name`` (mode 0600), made on first use (embedded profile)."""
    path = directory / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode("ascii")


def cassandra_location(extra: dict[str, Any]) -> tuple[list[str], int]:
    """Contact points and port of the Cassandra cluster: ``host[:port][,host...]`` from the
    environment variable named by ``extra.cassandra_env`` (default ``MESSENGER_CASSANDRA``);
    ``MESSENGER_CASSANDRA_PORT`` overrides the port."""
    hosts, port = [], 9042
    for part in required_env(extra, "cassandra_env", "MESSENGER_CASSANDRA").split(","):
        host, _, p = part.strip().partition(":")
        hosts.append(host)
        if p:
            port = int(p)
    return hosts, int(os.environ.get("MESSENGER_CASSANDRA_PORT", port))
