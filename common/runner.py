"""Run backend components as a standalone process that reconnects by itself.

    python -m common.runner config/distributed/components.json

The file names the router and the components:

    {"router": {"url": "rs://127.0.0.1:8081", "realm": "messenger", "serializer": "msgpack"},
     "components": [{"classname": "components.auth.app.AuthComponent", "extra": {...}}]}

``router.urls`` (a list) or ``MESSENGER_ROUTER_URLS`` (comma-separated) names several router
shards: every component then joins every shard (one session each), so a call made on any
shard is served. ``MESSENGER_ROUTER_URL`` overrides a single URL. Each session reconnects with
backoff whenever its router goes away (a Crossbar container restarts a component only once),
so a components process survives router restarts and can run on any machine and in any number.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from autobahn.twisted.wamp import ApplicationRunner
from autobahn.wamp import serializer as ser
from twisted.internet import reactor
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from common import gcwatch

log = Logger(namespace="messenger.runner")

SERIALIZERS = {"msgpack": ser.MsgPackSerializer, "cbor": ser.CBORSerializer, "json": ser.JsonSerializer}


def load_class(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def router_urls(router: dict[str, Any]) -> list[str]:
    env_many = os.environ.get("MESSENGER_ROUTER_URLS")
    if env_many:
        return [u.strip() for u in env_many.split(",") if u.strip()]
    env_one = os.environ.get("MESSENGER_ROUTER_URL")
    if env_one:
        return [env_one]
    urls = router.get("urls") or [router.get("url") or "rs://127.0.0.1:8081"]
    return [str(u) for u in urls]


def start(config: dict[str, Any]) -> None:
    gcwatch.install()
    router = config.get("router") or {}
    realm = router.get("realm", "messenger")
    serializer = SERIALIZERS[router.get("serializer", "msgpack")]()
    for url in router_urls(router):
        for spec in config["components"]:
            _start_one(url, realm, serializer, spec)


def _start_one(url: str, realm: str, serializer: Any, spec: dict[str, Any]) -> None:
    runner = ApplicationRunner(
        url,
        realm,
        extra=spec.get("extra") or {},
        serializers=[serializer],
        max_retries=-1,
        initial_retry_delay=0.2,
        max_retry_delay=5.0,
        retry_delay_growth=1.5,
        retry_delay_jitter=0.1,
    )
    # Autobahn's retry policy retries only after one successful connection ("hit stop" and never
    # again otherwise): a components process started before a shard is up would never join it.
    # Counting one success up front makes the first connection retry with the same backoff.
    if hasattr(runner, "_connect_successes"):
        runner._connect_successes = max(1, runner._connect_successes)
    else:  # a future autobahn: say so rather than silently giving up on shards started later
        log.warn("autobahn's ApplicationRunner changed: the first connection may not be retried")
    runner.run(load_class(spec["classname"]), start_reactor=False, auto_reconnect=True)
    log.info("component {cls} connecting to {url}", cls=spec["classname"], url=url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="components config JSON file")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)  # type: ignore[list-item]
    start(config)
    reactor.run()  # type: ignore[misc]


if __name__ == "__main__":
    main()
