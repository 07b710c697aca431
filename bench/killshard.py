"""The ``kill-shard`` scenario of the load generator: 1:1 pairs spread over router shards (sender
on shard i, receiver on shard i+1), sending at a steady rate; the generator SIGKILLs one shard
mid-run. Every client acts as a real one would: when its connection dies it reconnects to the
next shard (no balancer in between), re-subscribes and, if it receives, syncs from the last
update id it saw; a sender whose send got no answer sends it again with the same
``client_msg_id``. At the end every receiver syncs once more and the run counts the accepted
messages that never arrived (must be 0) and, per client that lost its shard, the time from the
loss to being back and caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.wampws import SessionLost, WampSession

if TYPE_CHECKING:
    from bench.loadgen import Shared, WorkerSpec

SYNC_FROM_NOW = 2**52  # since_update_id past the end: the answer's last_update_id is "now"
RECONNECT_PAUSE = 0.1  # between attempts at the shards, as a client's first backoff step


class Client:
    """One account's connection that comes back after losing its shard."""

    def __init__(self, spec: WorkerSpec, i: int, on_message: Any) -> None:
        self.spec, self.i = spec, i
        self.account = spec.accounts[i]
        self.shard = spec.placement[i]
        self.on_message = on_message  # (k, update_id) -> None; None for a sender
        self.session: WampSession | None = None
        self.ready = asyncio.Event()
        self.last_update_id = 0
        self.lost_at: float | None = None
        self.recoveries: list[float] = []  # ms from losing the shard to back and caught up
        self.shards_tried: list[int] = []
        self.closing = False
        self.watch: asyncio.Task[None] | None = None

    def handle(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        update_id = kwargs.get("update_id")
        if isinstance(update_id, int) and update_id == self.last_update_id + 1:
            self.last_update_id = update_id  # a gap is left for the sync to fill
        if self.on_message is not None and kwargs.get("type") == "message.new":
            self.on_message((kwargs.get("data") or {}).get("text") or "")

    async def connect(self, within: float) -> None:
        target = self.spec.targets[self.shard]
        s = await target.join(self.spec.index * 100003 + self.i, ticket=self.account["access_token"], within=within)
        try:
            await s.subscribe(f"messenger.user.{self.account['user_id']}", self.handle, within=within)
        except BaseException:
            s.closing = True
            if s.transport is not None:
                s.transport.abort()
            raise
        self.session = s
        self.ready.set()
        self.watch = asyncio.create_task(self._watch(s))

    async def _watch(self, s: WampSession) -> None:
        await asyncio.shield(s.lost)
        if self.closing:
            return
        self.ready.clear()
        self.lost_at = time.monotonic()
        deadline = self.lost_at + 60
        while not self.closing and time.monotonic() < deadline:
            self.shard = (self.shard + 1) % len(self.spec.targets)
            self.shards_tried.append(self.shard)
            try:
                await self.connect(within=5.0)
                await self.catch_up()
            except Exception:
                self.ready.clear()
                await asyncio.sleep(RECONNECT_PAUSE)
                continue
            self.recoveries.append((time.monotonic() - self.lost_at) * 1000)
            return

    async def catch_up(self) -> None:
        """Sync from the last update id seen until the server has nothing more."""
        if self.on_message is None:  # a sender has nothing to catch up on here
            return
        assert self.session is not None
        while True:
            page = await self.session.call("messenger.sync.get_updates", since_update_id=self.last_update_id, limit=100)
            for u in page["updates"]:
                if u.get("type") == "message.new":
                    self.on_message((u.get("data") or {}).get("text") or "")
            self.last_update_id = max(self.last_update_id, int(page["last_update_id"]))
            if not page["has_more"]:
                return

    async def position(self) -> None:
        """Start counting update ids from now."""
        assert self.session is not None
        page = await self.session.call("messenger.sync.get_updates", since_update_id=SYNC_FROM_NOW, limit=1)
        self.last_update_id = int(page["last_update_id"])

    async def close(self) -> None:
        self.closing = True
        if self.watch is not None:
            self.watch.cancel()
        if self.session is not None and self.session.is_open:
            await self.session.close()


async def kill_shard_worker(spec: WorkerSpec, shared: Shared) -> dict[str, Any]:
    from bench.loadgen import error_key, own_cpu_seconds, wait_go

    n_units = len(spec.accounts) // 2
    marker = f"lg {spec.run_tag} "
    received: list[set[int]] = [set() for _ in range(n_units)]
    arrived = asyncio.Event()  # a message reached a receiver: the drain loop looks again
    live: list[set[int]] = [set() for _ in range(n_units)]  # before any sync
    samples: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    syncing = [False] * n_units

    def receiver(u: int) -> Any:
        def on_message(text: str) -> None:
            if not text.startswith(marker):
                return
            _, _, sent_s, k_s = text.split(" ", 3)
            k = int(k_s)
            if k not in received[u]:
                received[u].add(k)
                arrived.set()
                if not syncing[u]:
                    samples.append((float(sent_s), (time.monotonic() - float(sent_s)) * 1000))
                    live[u].add(k)

        return on_message

    clients = [Client(spec, i, None if i % 2 == 0 else receiver(i // 2)) for i in range(len(spec.accounts))]
    sem = asyncio.Semaphore(spec.concurrency)
    connect_ms: list[float] = []

    async def join(c: Client) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                await c.connect(within=spec.connect_timeout)
                await c.position()
            except Exception as e:
                errors[f"join: {error_key(e)}"] += 1
                return
            connect_ms.append((time.monotonic() - t0) * 1000)

    started = time.time()
    await asyncio.gather(*(join(c) for c in clients))
    ended = time.time()
    chats: list[str | None] = [None] * n_units

    async def setup(u: int) -> None:
        sender, recv = clients[2 * u], clients[2 * u + 1]
        if sender.session is None or recv.session is None:
            return
        for attempt in range(5):
            try:
                chat = await sender.session.call("messenger.chat.create_direct", user_id=recv.account["user_id"])
                chats[u] = chat["chat_id"]
                return
            except Exception as e:
                if "unavailable" not in error_key(e) or attempt == 4:
                    errors[f"setup: {error_key(e)}"] += 1
                    return
                await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(setup(u) for u in range(n_units)))
    # chat.created may have moved the receivers' positions: start counting from here
    await asyncio.gather(*(clients[2 * u + 1].position() for u in range(n_units) if chats[u]))
    ready = [u for u in range(n_units) if chats[u] is not None]
    shared.queue.put(("connected", spec.index, {"connected": 2 * len(ready), "start": started, "end": ended}))

    accepted: list[set[int]] = [set() for _ in range(n_units)]
    attempted = [0]
    resent = [0]
    call_ms: list[float] = []
    accepted_at: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def send_one(u: int, k: int, deadline: float) -> None:
        sender = clients[2 * u]
        t0 = time.monotonic()
        text = f"{marker}{t0:.6f} {k}"
        attempted[0] += 1
        tries = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sender.ready.wait(), max(0.01, deadline - time.monotonic()))
            s = sender.session
            if s is None or not sender.ready.is_set():
                continue
            tries += 1
            if tries > 1:
                resent[0] += 1
            try:
                await asyncio.wait_for(
                    s.call_nowait(
                        "messenger.message.send", chat_id=chats[u], client_msg_id=f"{spec.run_tag}-{k}", text=text
                    ),
                    10,
                )
            except (SessionLost, ConnectionError, TimeoutError):
                await asyncio.sleep(RECONNECT_PAUSE)  # the shard went away: send again once back
                continue
            except Exception as e:
                key = error_key(e)
                if "unavailable" in key:
                    await asyncio.sleep(0.2)
                    continue
                errors[f"send: {key}"] += 1
                return
            now = time.monotonic()
            call_ms.append((now - t0) * 1000)
            accepted_at.append(now)
            accepted[u].add(k)
            return
        errors["send: no answer before the deadline"] += 1

    async def sender_loop(u: int, start: float, end: float) -> None:
        interval = 1.0 / spec.rate_per_sender
        t = start + (u % 97) / 97 * interval
        k = 0
        while t < end:
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send_one(u, k, end + spec.drain + 30))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            t += interval

    send_start = send_end = time.monotonic()
    if await wait_go(shared, spec.connect_timeout + 120) and ready:
        send_start = time.monotonic() + 0.05
        await asyncio.gather(*(sender_loop(u, send_start, send_start + spec.duration) for u in ready))
        send_end = time.monotonic()
        if tasks:
            await asyncio.wait(set(tasks), timeout=spec.drain + 40)
        deadline = time.monotonic() + spec.drain
        while time.monotonic() < deadline and any(accepted[u] - received[u] for u in ready):
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.2)
    # every receiver syncs once more: what live delivery and the reconnect sync missed
    missing_live = sum(len(accepted[u] - received[u]) for u in ready)
    for u in ready:
        syncing[u] = True

    async def final_sync(u: int) -> None:
        c = clients[2 * u + 1]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.ready.wait(), 30)
        try:
            await c.catch_up()
        except Exception as e:
            errors[f"final sync: {error_key(e)}"] += 1

    await asyncio.gather(*(final_sync(u) for u in ready))
    lost = sum(len(accepted[u] - received[u]) for u in ready)
    for c in clients:
        c.closing = True
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    offset = time.time() - time.monotonic()
    moved = [c for c in clients if c.lost_at is not None]
    return {
        "units": len(ready),
        "connected": sum(1 for c in clients if c.session is not None),
        "connect_ms": connect_ms,
        "connect_start": started,
        "connect_end": ended,
        "attempted": attempted[0],
        "accepted": sum(len(a) for a in accepted),
        "delivered": sum(len(r) for r in received),
        "delivered_live": sum(len(x) for x in live),
        "expected": sum(len(a) for a in accepted),
        "delivered_accepted": sum(len(accepted[u] & received[u]) for u in ready),
        "missing_before_final_sync": missing_live,
        "acknowledged_lost": lost,
        "resent": resent[0],
        "clients_moved": len(moved),
        "clients_recovered": sum(1 for c in moved if c.recoveries),
        "receivers_moved": sum(1 for c in moved if c.on_message is not None),
        "recovery_ms": [ms for c in moved for ms in c.recoveries],
        "recovery_ms_receivers": [ms for c in moved if c.on_message is not None for ms in c.recoveries],
        "lost_at": [c.lost_at + offset for c in moved if c.lost_at is not None],
        "call_ms": call_ms,
        "samples": [(t + offset, ms) for t, ms in samples],
        "accepted_at": [t + offset for t in accepted_at],
        "measure_start": send_start + offset,
        "send_seconds": send_end - send_start,
        "errors": dict(errors),
        "dropped": 0,
        "cpu_seconds": own_cpu_seconds(),
    }
