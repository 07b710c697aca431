#!/usr/bin/env python3
"""Container entrypoint (deploy/Dockerfile): run one role of the messenger.

    entrypoint.py router       a router shard: crossbar start, config/distributed/router
    entrypoint.py components   the components: python -m common.runner config/distributed/components.json
    entrypoint.py embedded     the one-node profile (.crossbar), data under $MESSENGER_DATA_DIR (/data)
    entrypoint.py healthcheck  the image's HEALTHCHECK: asks the role that was started
    entrypoint.py render ROLE  print the config ROLE would run with (for review)

The shipped configs are written for one host (backend transport, metrics and the components'
HTTP server on 127.0.0.1; paths relative to the project). In a container each role is alone in
its network namespace, so the config is rendered into ``$MESSENGER_RUN_DIR`` (``/tmp/messenger``,
writable under a read-only root) with these differences and nothing else:

- the backend transport (8081) listens on ``MESSENGER_BACKEND_INTERFACE`` (``0.0.0.0``) so that
  components in other containers can join; it keeps its ticket auth;
- the metrics transport (9100) listens on ``0.0.0.0`` for Prometheus and serves ``/metrics`` only;
  the drain endpoint moves to a transport of its own on ``127.0.0.1:9101`` (``DRAIN_PORT``), so
  only a process inside the container (``scripts/drain --port 9101``, a preStop hook) can drain;
- the router proxies ``/.well-known/`` (JWKS) to ``MESSENGER_AUTH_HTTP_HOST:8091`` (the components'
  service), and the components' HTTP server (metrics, JWKS) listens on ``MESSENGER_HTTP_INTERFACE``
  (``0.0.0.0``);
- ``MESSENGER_TRUSTED_PROXIES`` (comma-separated IPs, e.g. the balancer's) becomes the auth
  component's ``extra.trusted_proxies``; embedded: ``MESSENGER_PUBLIC_URL`` becomes media's
  ``extra.public_url`` (the origin clients use, default ``http://127.0.0.1:8080``);
- paths are absolute (``pythonpath``, ``web_dir``, the embedded backend socket).

Every other setting (router shards, datastores, secrets, push) is read by the code itself from
the environment variables listed in the README.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROLES = {
    "router": "config/distributed/router/config.json",
    "components": "config/distributed/components.json",
    "embedded": ".crossbar/config.json",
}
CLIENT_PORT = 8080
BACKEND_PORT = 8081
METRICS_PORT = 9100
DRAIN_PORT = 9101
COMPONENTS_HTTP_PORT = 8091
HEALTH = {
    "router": f"http://127.0.0.1:{CLIENT_PORT}/healthz",
    "embedded": f"http://127.0.0.1:{CLIENT_PORT}/healthz",
    "components": f"http://127.0.0.1:{COMPONENTS_HTTP_PORT}/metrics",
}


def run_dir(env: dict[str, str]) -> Path:
    return Path(env.get("MESSENGER_RUN_DIR") or "/tmp/messenger")


def _shipped(role: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ROOT / ROLES[role]).read_text())
    return config


def _transports(worker: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in worker.get("transports", [])}


def _container_router(worker: dict[str, Any], env: dict[str, str], auth_host: str) -> None:
    """The router worker's transports, as described in the module docstring."""
    worker.setdefault("options", {})["pythonpath"] = [str(ROOT)]
    transports = _transports(worker)
    clients = transports["clients"]
    clients["endpoint"]["interface"] = "0.0.0.0"
    root = clients["paths"]["/"]["extra"]
    root["web_dir"] = str(ROOT / root.get("web_dir", "web/dist"))
    root["auth_http"] = {"host": auth_host, "port": COMPONENTS_HTTP_PORT}
    metrics = transports["router_metrics"]
    metrics["endpoint"]["interface"] = "0.0.0.0"
    paths = metrics["paths"]["/"]["paths"]
    drain = paths.pop("drain")
    worker["transports"].append(
        {
            "id": "router_drain",
            "type": "web",
            "endpoint": {"type": "tcp", "interface": "127.0.0.1", "port": DRAIN_PORT},
            "paths": {"/": {"type": "path", "paths": {"drain": drain}}},
        }
    )


def _trusted_proxies(env: dict[str, str]) -> list[str]:
    return [p.strip() for p in (env.get("MESSENGER_TRUSTED_PROXIES") or "").split(",") if p.strip()]


def _component_extra(extra: dict[str, Any], env: dict[str, str]) -> None:
    http = extra.setdefault("http", {})
    http["interface"] = env.get("MESSENGER_HTTP_INTERFACE") or "0.0.0.0"
    http["port"] = COMPONENTS_HTTP_PORT
    if "trusted_proxies" in extra:
        extra["trusted_proxies"] = _trusted_proxies(env)


def render(role: str, env: dict[str, str]) -> dict[str, Any]:
    """The config ``role`` runs with in a container (a pure function of the shipped file and ``env``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    config = copy.deepcopy(_shipped(role))
    if role == "components":
        for spec in config["components"]:
            _component_extra(spec["extra"], env)
        return config
    for worker in config["workers"]:
        if worker["type"] == "router":
            auth_host = "127.0.0.1" if role == "embedded" else env.get("MESSENGER_AUTH_HTTP_HOST") or "127.0.0.1"
            _container_router(worker, env, auth_host)
            backends = _transports(worker)["backends"]
            if role == "router":
                backends["endpoint"]["interface"] = env.get("MESSENGER_BACKEND_INTERFACE") or "0.0.0.0"
            else:
                backends["endpoint"]["path"] = str(run_dir(env) / "router.sock")
        elif worker["type"] == "container":
            worker.setdefault("options", {})["pythonpath"] = [str(ROOT)]
            data = env.get("MESSENGER_DATA_DIR") or "/data"
            for c in worker["components"]:
                c["transport"]["endpoint"]["path"] = str(run_dir(env) / "router.sock")
                extra = c["extra"]
                extra["data_dir"] = data
                _component_extra(extra, env)
                if "public_url" in extra:
                    extra["public_url"] = env.get("MESSENGER_PUBLIC_URL") or f"http://127.0.0.1:{CLIENT_PORT}"
    return config


def _write(role: str, env: dict[str, str]) -> Path:
    """Render the role's config into the run folder; answer the file's path."""
    base = run_dir(env)
    target = base / ("components.json" if role == "components" else f"{role}/config.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(render(role, env), indent=2))
    (base / "role").write_text(role)
    return target


def router_addresses(config: dict[str, Any]) -> list[tuple[str, int]]:
    """Host and port of every router shard the components will join (as common/runner.py picks them)."""
    from common.runner import router_urls

    addresses = []
    for url in router_urls(config.get("router") or {}):
        parts = urllib.parse.urlsplit(url)
        addresses.append((parts.hostname or "127.0.0.1", parts.port or BACKEND_PORT))
    return addresses


def wait_for_routers(addresses: list[tuple[str, int]], interval: float = 1.0) -> None:
    """Block until every shard accepts TCP. Autobahn's runner retries a router only after it
    has joined it once: a components process started before a shard is up would never join
    it (nor serve anything if no shard was up), so the container waits here instead."""
    waiting = list(addresses)
    last_log = 0.0
    while waiting:
        for host, port in list(waiting):
            try:
                with socket.create_connection((host, port), timeout=2):
                    waiting.remove((host, port))
            except OSError:
                pass
        if waiting:
            if time.monotonic() - last_log > 10:
                shown = ", ".join(f"{h}:{p}" for h, p in waiting)
                print(f"entrypoint: waiting for router shards {shown}", file=sys.stderr, flush=True)
                last_log = time.monotonic()
            time.sleep(interval)


def healthcheck(env: dict[str, str]) -> int:
    try:
        role = (run_dir(env) / "role").read_text().strip()
        with urllib.request.urlopen(HEALTH[role], timeout=3) as r:
            return 0 if r.status == 200 else 1
    except (OSError, KeyError, ValueError) as e:
        print(f"healthcheck: {e}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    role, rest = argv[0], argv[1:]
    if role == "healthcheck":
        return healthcheck(env)
    if role == "render":
        print(json.dumps(render(rest[0] if rest else "router", env), indent=2))
        return 0
    if role not in ROLES:
        print(f"entrypoint: unknown role {role!r}; roles: {', '.join(ROLES)}, healthcheck, render", file=sys.stderr)
        return 2
    path = _write(role, env)
    os.chdir(ROOT)
    if role == "components":
        wait_for_routers(router_addresses(json.loads(path.read_text())))
        args = [sys.executable, "-m", "common.runner", str(path), *rest]
    else:
        if role == "embedded":
            os.environ.setdefault("MESSENGER_DATA_DIR", "/data")
            Path(os.environ["MESSENGER_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        loglevel = env.get("MESSENGER_LOGLEVEL") or "info"
        args = ["crossbar", "start", "--cbdir", str(path.parent), "--loglevel", loglevel, *rest]
    sys.stdout.flush()
    os.execvp(args[0], args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
