"""Time of ``append_message`` at the Cassandra chat store alone (no router, no service).

    .venv/bin/python -m bench.store_append --cassandra 127.0.0.1:59042 -n 2000 --concurrency 1,16,64
    .venv/bin/python -m bench.store_append -n 500 --chats 64 --concurrency 64     # many 1:1 chats
    .venv/bin/python -m bench.store_append -n 300 --profile                        # + cProfile, statements

Creates a fresh keyspace (dropped at the end) with the store built as the contract suite
builds it (``CassandraChatStore([host], port, keyspace, reactor)``), ``--chats`` direct chats
of two members, then:

- sequential: ``-n`` appends one after the other (p50/p90/p99/max in ms), with the number of
  statements (and LWTs) each append sends;
- for each ``--concurrency`` level C: ``-n`` appends issued by C concurrent senders (each
  sender picks chats round robin): throughput and latency.

``--cassandra`` defaults to ``$MESSENGER_TEST_CASSANDRA``. ``--adapter FILE`` takes
``CassandraChatStore`` from another copy of the adapter (say the one before a change:
``git show HEAD:components/chat/adapters/cassandra.py > /tmp/old.py``), to compare both in one sitting.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import os
import pstats
import resource
import secrets
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.chat.adapters.cassandra import CassandraChatStore  # noqa: E402
from components.chat.domain import Chat, new_direct, new_id  # noqa: E402
from components.chat.ports import MessageDraft  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(times: list[float]) -> str:
    return (
        f"p50={statistics.median(times):6.2f} p90={percentile(times, 90):6.2f} "
        f"p99={percentile(times, 99):6.2f} max={max(times):7.2f} ms"
    )


def cpu_s() -> float:
    """CPU time of this process so far (every thread: the reactor's and the driver's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def count_statements(store: CassandraChatStore) -> Counter[str]:
    """Counts every statement the store sends, by prepared-statement name."""
    counts: Counter[str] = Counter()
    real = store._run

    def run(name: str, params: Any, consistency: Any = None) -> defer.Deferred[Any]:
        counts[name] += 1
        return real(name, params, consistency)

    store._run = run  # type: ignore[method-assign]
    real_batch = getattr(store, "_run_batch", None)
    if real_batch is not None:  # plain writes sent together: one statement

        def run_batch(writes: Any) -> defer.Deferred[Any]:
            counts["batch(" + "+".join(sorted({name for name, _ in writes})) + ")"] += 1
            return real_batch(writes)

        store._run_batch = run_batch  # type: ignore[method-assign]
    return counts


def is_lwt(store: CassandraChatStore, name: str) -> bool:
    stmt = store._stmts.get(name)
    return stmt is not None and " IF " in stmt.query_string


def adapter_class(path: str | None) -> type[CassandraChatStore]:
    if path is None:
        return CassandraChatStore
    spec = importlib.util.spec_from_file_location("bench_cassandra_adapter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    cls: type[CassandraChatStore] = module.CassandraChatStore
    return cls


async def run(args: argparse.Namespace) -> None:
    host, port = args.cassandra.rsplit(":", 1)
    keyspace = f"bench_{secrets.token_hex(4)}"
    store = adapter_class(args.adapter)([host], int(port), keyspace, reactor)
    await store.start()
    try:
        chats: list[tuple[Chat, str]] = []
        for _ in range(args.chats):
            a, b = new_id(), new_id()
            chat, _, _ = await store.create_chat(new_direct(a, b, int(time.time() * 1000)), [])
            chats.append((chat, a))

        def draft(i: int) -> MessageDraft:
            chat, sender = chats[i % len(chats)]
            return MessageDraft(new_id(), chat.chat_id, sender, new_id(), f"msg {i}", int(time.time() * 1000))

        async def timed(i: int) -> float:
            t0 = time.perf_counter()
            await store.append_message(draft(i))
            return (time.perf_counter() - t0) * 1000

        for i in range(min(50, args.n)):  # warm-up: connections, caches, JIT of the server
            await timed(i)

        counts = count_statements(store)
        profiler = cProfile.Profile() if args.profile else None
        times: list[float] = []
        if profiler:
            profiler.enable()
        started, cpu = time.perf_counter(), cpu_s()
        for i in range(args.n):
            times.append(await timed(i))
        elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu
        if profiler:
            profiler.disable()
        lwts = sum(c for name, c in counts.items() if is_lwt(store, name))
        total = sum(counts.values())
        print(
            f"sequential   n={args.n:5d} {summary(times)}  {args.n / elapsed:6.0f} appends/s"
            f"  [{total / args.n:.1f} statements, {lwts / args.n:.1f} LWTs,"
            f" {cpu * 1000 / args.n:.2f} ms CPU per append]"
        )
        if args.profile:
            per = ", ".join(f"{name} {c / args.n:.2f}" for name, c in counts.most_common())
            print(f"  statements per append: {per}")
        counts.clear()

        async def concurrently(level: int) -> tuple[list[float], float, float]:
            latencies: list[float] = []
            queue = iter(range(args.n))

            async def sender() -> None:
                for i in queue:
                    latencies.append(await timed(i))

            started, cpu = time.perf_counter(), cpu_s()
            await defer.gatherResults([defer.ensureDeferred(sender()) for _ in range(level)], consumeErrors=True)
            return latencies, time.perf_counter() - started, cpu_s() - cpu

        for level in args.concurrency:
            latencies, elapsed, cpu = await concurrently(level)
            print(
                f"concurrency {level:3d} n={args.n:5d} {summary(latencies)}  {args.n / elapsed:6.0f} appends/s"
                f"  [{cpu * 1000 / args.n:.2f} ms CPU per append; {args.chats} chat{'s' if args.chats > 1 else ''}]"
            )
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
    finally:
        try:
            await store._ddl(f"DROP KEYSPACE IF EXISTS {keyspace}")
        finally:
            await store.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cassandra", default=os.environ.get("MESSENGER_TEST_CASSANDRA", "127.0.0.1:59042"))
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--chats", type=int, default=1, help="direct chats to spread the appends over")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 16, 64], help="e.g. 1,16,64"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the sequential run; statements by name")
    parser.add_argument("--adapter", help="a file holding another version of the adapter")
    args = parser.parse_args()
    task.react(lambda _reactor: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
