"""Time of `messenger.message.send` as a client sees it (one sender, sequential calls).

    .venv/bin/python -m bench.send_latency --url ws://127.0.0.1:8080/ws -n 1000
    .venv/bin/python -m bench.send_latency --start embedded -n 1000
    .venv/bin/python -m bench.send_latency --start distributed -n 1000   # needs scripts/services.sh up
    .venv/bin/python -m bench.send_latency --start distributed --shards 1 -n 1000

Prints p50/p90/p99/max in milliseconds. With --start, a node of that profile is started in a
temporary folder (as the tests do) and stopped afterwards. ``--start distributed`` runs the
components inside the Crossbar node (``.crossbar/config.json``, distributed profile); with
``--shards N`` it runs the shipped distributed configs instead (N router shards and one
components process, ``tests/support/node.py: SplitNodes``), as ``bench.loadgen`` does. Either
way the node gets a Postgres database and a Cassandra keyspace of its own (``bench_<hex>``, as
``bench.loadgen --start distributed`` makes them), dropped at the end: the shared test database
may hold signing keys sealed with another run's key secret.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import DistributedStores  # noqa: E402
from tests.integration.helpers import PASSWORD, new_username  # noqa: E402
from tests.support.client import connect  # noqa: E402
from tests.support.node import Node, SplitNodes  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(url: str, n: int, serializer: str) -> dict[str, Any]:
    guest = await connect(url, serializer=serializer)
    users = []
    for _ in range(2):
        name = new_username("bench")
        await guest.call("messenger.auth.register", username=name, password=PASSWORD)
        tokens = await guest.call("messenger.auth.login", username=name, password=PASSWORD)
        users.append(tokens)
    await guest.close()
    alice = await connect(url, ticket=users[0]["access_token"], serializer=serializer)
    bob = await connect(url, ticket=users[1]["access_token"], serializer=serializer)
    received: list[float] = []
    await bob.subscribe(lambda **kw: received.append(time.perf_counter()), f"messenger.user.{users[1]['user_id']}")
    chat = await alice.call("messenger.chat.create_direct", user_id=users[1]["user_id"])
    for i in range(20):  # warm-up
        await alice.call("messenger.message.send", chat_id=chat["chat_id"], client_msg_id=f"w{i}", text="warm")
    times: list[float] = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await alice.call("messenger.message.send", chat_id=chat["chat_id"], client_msg_id=f"m{i}", text=f"msg {i}")
        times.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    await task.deferLater(reactor, 0.5, lambda: None)
    await alice.close()
    await bob.close()
    return {
        "sends": n,
        "p50_ms": statistics.median(times),
        "p90_ms": percentile(times, 90),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times),
        "sends_per_s": n / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--start", choices=["embedded", "distributed"])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--serializer", default="msgpack", choices=["json", "msgpack", "cbor"])
    parser.add_argument(
        "--shards", type=int, help="--start distributed: N router shards + a components process (SplitNodes)"
    )
    args = parser.parse_args()
    if args.shards is not None and args.start != "distributed":
        parser.error("--shards goes with --start distributed")
    node: Any = None
    stores: DistributedStores | None = None
    if args.start:
        workdir = Path(tempfile.mkdtemp(prefix="bench-"))
        if args.start == "distributed":
            stores = DistributedStores.make(None)
            extra = {"cassandra_keyspace": stores.keyspace}
            try:
                if args.shards:
                    node = SplitNodes(workdir, stores.env(), extra, shards=args.shards).start(timeout=180)
                    print(f"components process pid {node.components.proc.pid}", file=sys.stderr)
                else:
                    node = Node(workdir, profile="distributed", extra=extra, env=stores.env()).start()
            except BaseException:
                stores.drop()
                raise
        else:
            node = Node(workdir, profile=args.start).start()
        args.url = node.url
    result: dict[str, Any] = {}

    async def go() -> None:
        try:
            result.update(await run(args.url, args.n, args.serializer))
        finally:
            reactor.stop()  # type: ignore[misc]

    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()))
    reactor.run()  # type: ignore[misc]
    if node:
        node.stop()
    if stores is not None:
        stores.drop()
    profile = args.start or args.url
    if args.shards:
        profile += f", {args.shards} shard(s) + components process"
    print(
        f"message.send [{profile}, {args.serializer}]: n={result['sends']} p50={result['p50_ms']:.2f} ms "
        f"p90={result['p90_ms']:.2f} ms p99={result['p99_ms']:.2f} ms max={result['max_ms']:.2f} ms "
        f"({result['sends_per_s']:.0f} sends/s sequential)"
    )


if __name__ == "__main__":
    main()
