"""Load generator for the messenger (pure asyncio, many WAMP sessions per process).

    .venv/bin/python -m bench.loadgen sessions --start embedded --sessions 2000 --duration 20
    .venv/bin/python -m bench.loadgen chat --start embedded --pairs 50 --rate 200 --duration 20
    .venv/bin/python -m bench.loadgen floor --start floor --pairs 50 --rate 200 --duration 20
    .venv/bin/python -m bench.loadgen compare --rates 200,800 --duration 20 --out var/bench

Scenarios: ``sessions`` (open S user sessions, each subscribed to its own topic, hold them with
client heartbeats; held/dropped, connect rate, server RSS per session, heartbeat round trips),
``chat`` (P direct chats, senders at a total R msg/s; accepted msg/s, call and send → receipt
latency), ``group`` (groups of G members, one sender per group; latency per recipient, fan-out
deliveries/s), ``cross-shard`` (``chat`` with the two ends of every pair on different router
shards), ``floor`` (the ``chat`` pattern as acknowledged PUBLISHes on a bare Crossbar router, no
components: the floor we compare ourselves to), and ``compare`` (``chat`` and ``floor`` at the
same rates, side by side), ``kill-shard`` (``cross-shard`` on a distributed node it starts; one
shard is SIGKILLed mid-run, clients reconnect to the next shard and sync: acknowledged messages
lost, time back and caught up; ``bench/killshard.py``). ``--out DIR`` writes samples.csv, summary.json and latency.png.
Accounts are made once and cached with their tokens in ``--accounts``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import math
import multiprocessing as mp
import os
import random
import resource
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.killshard import kill_shard_worker
from bench.wampws import SessionLost, WampError, WampSession, open_session

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "loadgen password 1"
DEFAULT_ACCOUNTS = ROOT / "var" / "loadgen-accounts.json"
SHIPPED_SEND_LIMIT = (40, 2.0)  # messenger.message.send: 40 per 2 s per user (shipped config)
MIN_TOKEN_VALIDITY = 120.0  # refresh tokens that expire sooner than this (seconds)
SCENARIOS = ("sessions", "chat", "group", "cross-shard", "kill-shard", "floor", "compare")
MESSAGING = ("chat", "group", "cross-shard", "kill-shard", "floor")
SERVICES_HINT = 'start the test servers: scripts/services.sh up && eval "$(scripts/services.sh env)"'


def log(msg: str) -> None:
    print(f"[loadgen {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def error_key(exc: BaseException) -> str:
    if isinstance(exc, WampError):
        return exc.uri
    if isinstance(exc, SessionLost):
        return "session lost"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)], 3)

    return {"n": len(ordered), "p50": at(50), "p90": at(90), "p99": at(99), "max": round(ordered[-1], 3)}


# ------------------------------------------------------------------------------- target


@dataclass
class Target:
    host: str
    port: int
    path: str
    sources: list[str]  # local addresses to bind before connect ([] = let the kernel pick)

    @classmethod
    def from_url(cls, url: str, n_sources: int) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise SystemExit(f"only ws:// URLs are supported, not {url!r}")
        sources = [f"127.0.0.{i}" for i in range(2, 2 + n_sources)]
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/ws", sources)

    def source(self, i: int) -> str | None:
        return self.sources[i % len(self.sources)] if self.sources else None

    async def join(self, i: int, *, ticket: str | None = None, within: float = 30.0) -> WampSession:
        return await open_session(self.host, self.port, self.path, ticket=ticket, source=self.source(i), within=within)


# ------------------------------------------------------------------------------- accounts


@dataclass
class Account:
    username: str
    user_id: str = ""
    device_id: str = ""
    access_token: str = ""
    refresh_token: str = ""
    expires_at: float = 0.0

    def token_kid(self) -> str | None:
        try:
            head = self.access_token.split(".")[0]
            kid: str | None = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("kid")
            return kid
        except (ValueError, IndexError):
            return None

    def take(self, tokens: dict[str, Any]) -> None:
        self.user_id = tokens["user_id"]
        self.device_id = tokens["device_id"]
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]
        self.expires_at = time.time() + float(tokens["expires_in"])


class AccountFile:
    """``{"version": 1, "prefix": "lg_xxxx", "accounts": [Account, ...]}``, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data: dict[str, Any] = {}
        if path.exists():
            data = json.loads(path.read_text())
        self.prefix: str = data.get("prefix") or f"lg{secrets.token_hex(3)}"
        self.accounts = [Account(**a) for a in data.get("accounts", [])]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {"version": 1, "prefix": self.prefix, "accounts": [asdict(a) for a in self.accounts]}
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(self.path)

    def first(self, n: int) -> list[Account]:
        while len(self.accounts) < n:
            self.accounts.append(Account(f"{self.prefix}_{len(self.accounts)}"))
        return self.accounts[:n]


async def http_get_json(target: Target, path: str) -> Any:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), 10)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {target.host}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


class AccountPreparer:
    """Makes every account usable (a fresh enough access token this server signed): refresh,
    else log in, else register and log in. Waits out ``rate_limited`` answers."""

    def __init__(self, target: Target, known_kids: set[str], max_wait: float) -> None:
        self.target = target
        self.known_kids = known_kids
        self.max_wait = max_wait
        self.counts: Counter[str] = Counter()

    async def _call(self, guest: WampSession, procedure: str, **kwargs: Any) -> Any:
        waited = 0.0
        while True:
            try:
                return await guest.call(procedure, within=60, **kwargs)
            except WampError as e:
                if e.uri != "messenger.error.rate_limited":
                    raise
                delay = float(e.kwargs.get("retry_after_ms", 1000)) / 1000
                waited += delay
                self.counts[f"rate_limited {procedure}"] += 1
                if waited > self.max_wait:
                    raise SystemExit(
                        f"{procedure} is rate limited by the server (waited {waited:.0f} s); spread the "
                        "guest connections with --sources K, or use a node with relaxed limits (--start)"
                    ) from e
                await asyncio.sleep(delay + random.random() * 0.2)

    async def _login(self, guest: WampSession, acc: Account) -> None:
        tokens = await self._call(guest, "messenger.auth.login", username=acc.username, password=PASSWORD)
        acc.take(tokens)
        self.counts["login"] += 1

    async def prepare(self, guest: WampSession, acc: Account) -> None:
        fresh = acc.expires_at - time.time() > MIN_TOKEN_VALIDITY
        ours = acc.token_kid() in self.known_kids
        if acc.access_token and fresh and ours:
            self.counts["cached"] += 1
            return
        if acc.refresh_token and (ours or not fresh):
            try:
                acc.take(await self._call(guest, "messenger.auth.refresh", refresh_token=acc.refresh_token))
                self.counts["refreshed"] += 1
                return
            except WampError as e:
                if e.uri != "messenger.error.unauthenticated":
                    raise
        if acc.user_id and (ours or not fresh):
            try:
                await self._login(guest, acc)
                return
            except WampError as e:
                if e.uri != "messenger.error.unauthenticated":
                    raise
        # unknown here (new account, or a token another server signed): register, then log in
        try:
            await self._call(guest, "messenger.auth.register", username=acc.username, password=PASSWORD)
            self.counts["registered"] += 1
        except WampError as e:
            if e.uri != "messenger.error.conflict":
                raise
        await self._login(guest, acc)

    async def run(self, accounts: list[Account], concurrency: int) -> None:
        queue: asyncio.Queue[Account] = asyncio.Queue()
        for acc in accounts:
            queue.put_nowait(acc)

        async def worker(i: int) -> None:
            guest = await self.target.join(i)
            try:
                while not queue.empty():
                    await self.prepare(guest, queue.get_nowait())
            finally:
                await guest.close()

        await asyncio.gather(*(worker(i) for i in range(min(concurrency, len(accounts)))))


async def prepare_accounts(target: Target, store: AccountFile, n: int, concurrency: int) -> dict[str, Any]:
    accounts = store.first(n)
    jwks = await http_get_json(target, "/.well-known/jwks.json")
    kids = {k.get("kid") for k in jwks.get("keys", [])}
    preparer = AccountPreparer(target, kids, max_wait=300)
    started = time.monotonic()
    try:
        await preparer.run(accounts, concurrency)
    finally:
        store.save()
    return {"seconds": round(time.monotonic() - started, 2), **dict(preparer.counts)}


# ------------------------------------------------------------------------------- process helpers


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; answers the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants (from /proc/*/stat), each once."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    seen: set[int] = set()
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_kib(pids: list[int]) -> int:
    total = 0
    for p in process_tree(pids):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def tree_cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pids):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def tree_min_nofile(pids: list[int]) -> int | None:
    limits = []
    for p in process_tree(pids):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    limits.append(int(line.split()[3]))
    return min(limits) if limits else None


def own_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class WorkerSpec:
    index: int
    scenario: str
    targets: list[Target]
    placement: list[int]  # per account: its index into targets (which router / shard it joins)
    # sessions: one per session; messaging: units of unit_size accounts, the sender first
    accounts: list[dict[str, Any]]
    duration: float
    concurrency: int
    connect_timeout: float
    unit_size: int = 2
    rate_per_sender: float = 0.0
    drain: float = 10.0
    run_tag: str = ""
    heartbeat: float = 0.0


@dataclass
class Shared:
    go: MpEvent
    queue: Any  # multiprocessing.Queue of (kind, index, payload)


async def connect_all(
    spec: WorkerSpec, handlers: list[Any], stats: dict[str, Any]
) -> tuple[list[WampSession | None], float, float]:
    """Join and subscribe one session per account (bounded concurrency); an account without an
    access token joins anonymously (a bare router). Answers the sessions (None where it failed)
    and the wall-clock start and end of the phase."""
    sem = asyncio.Semaphore(spec.concurrency)
    sessions: list[WampSession | None] = [None] * len(spec.accounts)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + spec.connect_timeout

    async def one(i: int) -> None:
        acc = spec.accounts[i]
        target = spec.targets[spec.placement[i]]
        async with sem:
            t0 = time.monotonic()
            remaining = deadline - t0
            if remaining <= 0:
                errors["connect phase timeout"] += 1
                return
            try:
                ticket = acc.get("access_token") or None
                s = await target.join(spec.index * 100003 + i, ticket=ticket, within=remaining)
                try:
                    await s.subscribe(f"messenger.user.{acc['user_id']}", handlers[i], within=remaining)
                except BaseException:
                    s.closing = True
                    if s.transport is not None:
                        s.transport.abort()
                    raise
            except Exception as e:
                errors[f"join: {error_key(e)}"] += 1
                return
            latencies.append((time.monotonic() - t0) * 1000)
            sessions[i] = s

    started = time.time()
    await asyncio.gather(*(one(i) for i in range(len(spec.accounts))))
    stats["connect_ms"] = latencies
    stats["errors"] = dict(errors)
    return sessions, started, time.time()


async def close_all(sessions: list[WampSession | None], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(s: WampSession) -> None:
        async with sem:
            await s.close()

    await asyncio.gather(*(one(s) for s in sessions if s is not None and s.is_open))
    return time.monotonic() - started


async def wait_go(shared: Shared, within: float) -> bool:
    loop = asyncio.get_running_loop()
    return bool(await loop.run_in_executor(None, shared.go.wait, within))


# ------------------------------------------------------------------------------- scenario: sessions


async def send_heartbeats(
    live: list[WampSession], interval: float, end: float, samples: list[tuple[float, float]]
) -> list[asyncio.Future[None]]:
    """Every session pings once per ``interval`` (phases spread evenly) until ``end``; each pong
    adds (ping time, round trip ms) to ``samples``. Answers the pings' futures."""
    futures: list[asyncio.Future[None]] = []
    n = len(live)
    if n == 0 or interval <= 0:
        return futures
    start = time.monotonic()
    k = 0
    while (t := start + k * interval / n) < end:
        delay = t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        s = live[k % n]
        k += 1
        if not s.is_open:
            continue
        t0 = time.monotonic()
        fut = s.ping()

        def done(f: asyncio.Future[None], t0: float = t0) -> None:
            if not f.cancelled() and f.exception() is None:
                samples.append((t0, (time.monotonic() - t0) * 1000))

        fut.add_done_callback(done)
        futures.append(fut)
    return futures


async def sessions_worker(spec: WorkerSpec, shared: Shared) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    events: Counter[str] = Counter()
    samples: list[tuple[float, float]] = []
    pings: list[asyncio.Future[None]] = []

    def handler(args: list[Any], kwargs: dict[str, Any]) -> None:
        events[str(kwargs.get("type"))] += 1

    sessions, started, ended = await connect_all(spec, [handler] * len(spec.accounts), stats)
    connected = sum(1 for s in sessions if s is not None)
    shared.queue.put(("connected", spec.index, {"connected": connected, "start": started, "end": ended}))
    hold_start = time.monotonic()
    if await wait_go(shared, spec.connect_timeout + 120):
        hold_start = time.monotonic()
        end = hold_start + spec.duration
        live = [s for s in sessions if s is not None]
        random.shuffle(live)
        pings = await send_heartbeats(live, spec.heartbeat, end, samples)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        if pings:  # the last pings' pongs: a short grace
            await asyncio.wait(pings, timeout=min(spec.heartbeat, 5.0))
    held = [s for s in sessions if s is not None and s.is_open]
    drop_reasons = Counter(s.lost.result() for s in sessions if s is not None and not s.is_open)
    server_pings = sum(s.server_pings for s in sessions if s is not None)
    close_s = await close_all(sessions, spec.concurrency)
    offset = time.time() - time.monotonic()
    stats.update(
        connected=connected,
        held=len(held),
        dropped=connected - len(held),
        drop_reasons=dict(drop_reasons),
        events=dict(events),
        heartbeats_sent=len(pings),
        heartbeats_answered=len(samples),
        server_pings=server_pings,
        samples=[(t + offset, ms) for t, ms in samples],
        accepted_at=[],
        measure_start=hold_start + offset,
        connect_start=started,
        connect_end=ended,
        close_seconds=round(close_s, 2),
        cpu_seconds=own_cpu_seconds(),
    )
    return stats


# ------------------------------------------------------------------------------- messaging scenarios


def floor_event(chat_id: str, sender_id: str, k: int, text: str) -> dict[str, Any]:
    """A ``message.new`` envelope shaped as the messenger's, for the floor's PUBLISH payload."""
    now_ms = int(time.time() * 1000)
    message = {
        "message_id": f"{k:032x}",
        "chat_id": chat_id,
        "seq": k + 1,
        "sender_id": sender_id,
        "client_msg_id": f"floor-{k}",
        "text": text,
        "reply_to": None,
        "media": [],
        "sent_at": now_ms,
        "edited_at": None,
        "deleted": False,
        "reactions": {},
    }
    return {"type": "message.new", "update_id": k + 1, "chat_id": chat_id, "at": now_ms, "data": message}


async def messaging_worker(spec: WorkerSpec, shared: Shared) -> dict[str, Any]:
    """chat, cross-shard, group and floor: units of ``unit_size`` sessions (a sender and its
    recipients); each sender sends at ``rate_per_sender`` msg/s, open loop; every recipient
    timestamps the message's arrival against the send time the text carries."""
    stats: dict[str, Any] = {}
    size = spec.unit_size
    n_units = len(spec.accounts) // size
    samples: list[tuple[float, float]] = []  # (send time, send → receipt ms), monotonic clock
    delivered = [0] * n_units
    received: Counter[tuple[int, int]] = Counter()  # (unit, message number) -> recipients reached
    stale_or_foreign = [0]
    marker = f"lg {spec.run_tag} "
    progress = asyncio.Event()  # a delivery or a send answer: the drain loop looks again

    def receiver(unit: int) -> Any:
        def on_event(args: list[Any], kwargs: dict[str, Any]) -> None:
            if kwargs.get("type") != "message.new":
                return
            now = time.monotonic()
            text = (kwargs.get("data") or {}).get("text") or ""
            if not text.startswith(marker):
                stale_or_foreign[0] += 1
                return
            _, _, sent_s, k = text.split(" ", 3)
            sent = float(sent_s)
            samples.append((sent, (now - sent) * 1000))
            delivered[unit] += 1
            received[unit, int(k)] += 1
            progress.set()

        return on_event

    def ignore(args: list[Any], kwargs: dict[str, Any]) -> None:
        pass

    handlers = [ignore if i % size == 0 else receiver(i // size) for i in range(len(spec.accounts))]
    sessions, started, ended = await connect_all(spec, handlers, stats)
    errors: Counter[str] = Counter(stats["errors"])
    dests: list[str | None] = [None] * n_units  # chat id (messenger) or the receiver's topic (floor)

    async def setup(u: int) -> None:
        members = spec.accounts[u * size : (u + 1) * size]
        if any(s is None for s in sessions[u * size : (u + 1) * size]):
            return
        sender = sessions[u * size]
        assert sender is not None
        if spec.scenario == "floor":
            dests[u] = f"messenger.user.{members[1]['user_id']}"
            return
        for attempt in range(5):  # as a client would: retry what the server answers as unavailable
            try:
                if spec.scenario == "group":
                    others = [m["user_id"] for m in members[1:]]
                    chat = await sender.call("messenger.chat.create_group", title=f"{marker}{u}", member_ids=others)
                else:
                    chat = await sender.call("messenger.chat.create_direct", user_id=members[1]["user_id"])
                dests[u] = chat["chat_id"]
                return
            except Exception as e:
                key = error_key(e)
                if "unavailable" not in key or attempt == 4:
                    errors[f"setup: {key}"] += 1
                    return
                await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(setup(u) for u in range(n_units)))
    ready = [u for u in range(n_units) if dests[u] is not None]
    shared.queue.put(("connected", spec.index, {"connected": len(ready) * size, "start": started, "end": ended}))
    call_ms: list[float] = []
    accepted_at: list[float] = []
    accepted = [0] * n_units
    accepted_ks: list[set[int]] = [set() for _ in range(n_units)]
    attempted = [0]
    late = [0]
    send_start = send_end = time.monotonic()
    floor_chat_ids = [secrets.token_hex(16) for _ in range(n_units)]

    async def send_one(u: int, sender: WampSession, dest: str, k: int) -> None:
        t0 = time.monotonic()
        attempted[0] += 1
        text = f"{marker}{t0:.6f} {k}"
        if spec.scenario == "floor":
            sender_id = spec.accounts[u * size]["user_id"]
            fut = sender.publish_nowait(dest, [], floor_event(floor_chat_ids[u], sender_id, k, text))
        else:
            fut = sender.call_nowait(
                "messenger.message.send", chat_id=dest, client_msg_id=f"{spec.run_tag}-{k}", text=text
            )
        try:
            await asyncio.wait_for(fut, 30)
            now = time.monotonic()
            call_ms.append((now - t0) * 1000)
            accepted_at.append(now)
            accepted[u] += 1
            accepted_ks[u].add(k)
        except Exception as e:
            errors[f"send: {error_key(e)}"] += 1
        finally:
            progress.set()

    tasks: set[asyncio.Task[None]] = set()

    async def sender_loop(u: int, start: float, end: float) -> None:
        sender, dest = sessions[u * size], dests[u]
        assert sender is not None and dest is not None
        interval = 1.0 / spec.rate_per_sender
        t = start + random.random() * interval  # spread the senders' phases
        k = 0
        while t < end:
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                late[0] += 1  # the generator fell behind by more than one interval
            task = asyncio.create_task(send_one(u, sender, dest, k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            t += interval

    if await wait_go(shared, spec.connect_timeout + 120) and ready:
        send_start = time.monotonic() + 0.05
        send_end = send_start + spec.duration
        await asyncio.gather(*(sender_loop(u, send_start, send_end) for u in ready))
        send_end = time.monotonic()
        drain_deadline = send_end + spec.drain
        while tasks or sum(delivered) < sum(accepted) * (size - 1):
            remaining = drain_deadline - time.monotonic()
            if remaining <= 0:
                break
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(remaining, 0.5))
    if tasks:  # sends still unanswered at the end of the drain: not a session loss
        errors["send: no answer by the end of the drain"] += len(tasks)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    drained_at = time.monotonic()
    lost_sessions = sum(1 for s in sessions if s is not None and not s.is_open)
    drop_reasons = Counter(s.lost.result() for s in sessions if s is not None and not s.is_open)
    await close_all(sessions, spec.concurrency)
    offset = time.time() - time.monotonic()
    stats.update(
        units=len(ready),
        connected=sum(1 for s in sessions if s is not None),
        dropped=lost_sessions,
        drop_reasons=dict(drop_reasons),
        attempted=attempted[0],
        accepted=sum(accepted),
        delivered=sum(delivered),
        # deliveries of accepted messages (an unanswered send may still have been delivered)
        delivered_accepted=sum(n for (u, k), n in received.items() if k in accepted_ks[u]),
        expected=sum(accepted) * (size - 1),
        stale_events=stale_or_foreign[0],
        late_sends=late[0],
        call_ms=call_ms,
        samples=[(t + offset, ms) for t, ms in samples],
        accepted_at=[t + offset for t in accepted_at],
        measure_start=send_start + offset,
        errors=dict(errors),
        send_seconds=send_end - send_start,
        drain_seconds=drained_at - send_end,
        connect_start=started,
        connect_end=ended,
        cpu_seconds=own_cpu_seconds(),
    )
    return stats


# ------------------------------------------------------------------------------- processes


def worker_entry(spec: WorkerSpec, shared: Shared) -> None:
    raise_nofile()
    fn = {"sessions": sessions_worker, "kill-shard": kill_shard_worker}.get(spec.scenario, messaging_worker)
    try:
        result = asyncio.run(fn(spec, shared))
        shared.queue.put(("done", spec.index, result))
    except BaseException as e:
        shared.queue.put(("failed", spec.index, f"{type(e).__name__}: {e}"))
        raise


def split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def run_workers(args: argparse.Namespace, specs: list[WorkerSpec], server_pids: list[int]) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    shared = Shared(go=ctx.Event(), queue=ctx.Queue())
    procs = [ctx.Process(target=worker_entry, args=(spec, shared), daemon=True) for spec in specs]
    rss_before = tree_rss_kib(server_pids) if server_pids else None
    cpu_before = tree_cpu_seconds(server_pids) if server_pids else None
    for p in procs:
        p.start()
    connected: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    deadline = time.monotonic() + args.connect_timeout + 60
    rss_after: int | None = None
    server_cpu: float | None = None
    go_at = 0.0

    def receive(until: float) -> bool:
        try:
            kind, index, payload = shared.queue.get(timeout=max(0.1, until - time.monotonic()))
        except Exception:
            return False
        if kind == "connected":
            connected[index] = payload
            log(f"worker {index}: {payload['connected']} sessions ready")
        elif kind == "done":
            done[index] = payload
        else:
            failures.append(f"worker {index}: {payload}")
            done[index] = {}
        return True

    while len(connected) + len(failures) < len(procs) and time.monotonic() < deadline:
        receive(deadline)
    if server_pids:
        time.sleep(1.0)  # let the server settle before measuring
        rss_after = tree_rss_kib(server_pids)
    cpu_mid = tree_cpu_seconds(server_pids) if server_pids else None
    go_at = time.monotonic()
    shared.go.set()
    killer: threading.Timer | None = None
    killed_at: list[float] = []
    if args.scenario == "kill-shard":

        def kill() -> None:
            killed_at.append(time.time())
            args.kill(args.kill_shard)
            log(f"shard {args.kill_shard} SIGKILLed ({args.urls[args.kill_shard]})")

        killer = threading.Timer(args.kill_after, kill)
        killer.start()
    log(f"all workers ready: {'holding' if args.scenario == 'sessions' else 'sending'} for {args.duration:g} s")
    deadline = time.monotonic() + args.duration + args.drain + 120
    while len(done) < len(procs) and time.monotonic() < deadline:
        receive(deadline)
    if killer is not None:
        killer.cancel()
    if server_pids and cpu_mid is not None:
        server_cpu = tree_cpu_seconds(server_pids) - cpu_mid
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            failures.append(f"worker pid {p.pid} did not finish; terminated")
            p.terminate()
            p.join(timeout=5)
    return {
        "workers": [done.get(i, {}) for i in range(len(procs))],
        "connected_msgs": connected,
        "failures": failures,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "server_cpu_before_go": (cpu_mid - cpu_before) if cpu_mid is not None and cpu_before is not None else None,
        "server_cpu_during": server_cpu,
        "measured_seconds": time.monotonic() - go_at,
        "killed_at": killed_at[0] if killed_at else None,
    }


# ------------------------------------------------------------------------------- results


def merge_counters(items: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for item in items:
        total.update(item)
    return dict(total)


def timeline(samples: list[tuple[float, float]], accepted_at: list[float], t0: float) -> list[dict[str, Any]]:
    """Per second from ``t0`` (wall clock): latency p50/p99/max of the messages sent in that
    second (heartbeats for ``sessions``), messages accepted and delivered in it."""
    last = max([t0, *accepted_at, *(t + ms / 1000 for t, ms in samples)])
    n = max(1, math.ceil(last - t0))
    by_send: list[list[float]] = [[] for _ in range(n)]
    accepted = [0] * n
    delivered = [0] * n

    def slot(t: float) -> int:
        return min(n - 1, max(0, int(t - t0)))

    for t, ms in samples:
        by_send[slot(t)].append(ms)
        delivered[slot(t + ms / 1000)] += 1
    for t in accepted_at:
        accepted[slot(t)] += 1
    out = []
    for i in range(n):
        p = percentiles(by_send[i])
        out.append(
            {"t": i, "sent_n": p["n"], "p50": p["p50"], "p99": p["p99"], "max": p["max"]}
            | {"accepted": accepted[i], "delivered": delivered[i]}
        )
    return out


def summarize(args: argparse.Namespace, raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    ws = [w for w in raw["workers"] if w]
    starts = [w["connect_start"] for w in ws]
    ends = [w["connect_end"] for w in ws]
    connected = sum(w.get("connected", 0) for w in ws)
    connect_s = (max(ends) - min(starts)) if ws else 0.0
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "url": args.urls[0],
        "urls": args.urls,
        "procs": args.procs,
        "sources": args.sources,
        **extra,
        "connect": {
            "sessions": connected,
            "seconds": round(connect_s, 3),
            "per_second": round(connected / connect_s, 1) if connect_s > 0 else None,
            "latency_ms": percentiles([x for w in ws for x in w.get("connect_ms", [])]),
        },
        "loadgen_cpu_seconds": round(sum(w.get("cpu_seconds", 0.0) for w in ws), 2),
        "failures": raw["failures"],
    }
    if raw["server_cpu_during"] is not None:
        out["server_cpu_seconds"] = {
            "connect_phase": round(raw["server_cpu_before_go"], 2),
            "measured_phase": round(raw["server_cpu_during"], 2),
        }
    before, after = raw["rss_before_kib"], raw["rss_after_kib"]
    if before is not None and after is not None:
        out["server_rss"] = {
            "before_kib": before,
            "after_kib": after,
            "delta_kib": after - before,
            "per_session_kib": round((after - before) / max(1, connected), 2),
        }
    samples = [s for w in ws for s in w.get("samples", [])]
    accepted_at = [t for w in ws for t in w.get("accepted_at", [])]
    t0 = min((w["measure_start"] for w in ws if "measure_start" in w), default=time.time())
    if args.scenario == "sessions":
        held = sum(w.get("held", 0) for w in ws)
        sent = sum(w.get("heartbeats_sent", 0) for w in ws)
        answered = sum(w.get("heartbeats_answered", 0) for w in ws)
        out.update(
            requested=args.sessions,
            held=held,
            dropped=sum(w.get("dropped", 0) for w in ws),
            failed=args.sessions - connected,
            drop_reasons=merge_counters([w.get("drop_reasons", {}) for w in ws]),
            errors=merge_counters([w.get("errors", {}) for w in ws]),
            events=merge_counters([w.get("events", {}) for w in ws]),
            heartbeat={
                "interval_s": args.heartbeat,
                "sent": sent,
                "answered": answered,
                "missed": sent - answered,
                "rtt_ms": percentiles([ms for _, ms in samples]),
                "server_pings": sum(w.get("server_pings", 0) for w in ws),
            },
            close_seconds=max((w.get("close_seconds", 0) for w in ws), default=0),
        )
    else:
        seconds = max((w.get("send_seconds", 0.0) for w in ws), default=0.0) or args.duration
        accepted = sum(w.get("accepted", 0) for w in ws)
        delivered = sum(w.get("delivered", 0) for w in ws)
        units = sum(w.get("units", 0) for w in ws)
        if args.scenario == "group":
            out.update(groups=units, group_size=args.group_size)
        else:
            out.update(pairs=units)
        out.update(
            recipients_per_message=args.unit_size - 1,
            target_rate=args.rate,
            send_seconds=round(seconds, 3),
            attempted=sum(w.get("attempted", 0) for w in ws),
            accepted=accepted,
            delivered=delivered,
            expected_deliveries=sum(w.get("expected", 0) for w in ws),
            undelivered=sum(w.get("expected", 0) - w.get("delivered_accepted", 0) for w in ws),
            accepted_per_s=round(accepted / seconds, 1),
            delivered_per_s=round(delivered / seconds, 1),
            call_ms=percentiles([x for w in ws for x in w.get("call_ms", [])]),
            delivery_ms=percentiles([ms for _, ms in samples]),
            errors=merge_counters([w.get("errors", {}) for w in ws]),
            dropped=sum(w.get("dropped", 0) for w in ws),
            drop_reasons=merge_counters([w.get("drop_reasons", {}) for w in ws]),
            late_sends=sum(w.get("late_sends", 0) for w in ws),
            stale_events=sum(w.get("stale_events", 0) for w in ws),
            drain_seconds=round(max((w.get("drain_seconds", 0.0) for w in ws), default=0.0), 2),
        )
        if args.scenario == "kill-shard":
            killed_at = raw.get("killed_at")
            out["kill"] = {
                "shard": args.kill_shard,
                "after_s": args.kill_after,
                "killed": killed_at is not None,
                "acknowledged_lost": sum(w.get("acknowledged_lost", 0) for w in ws),
                "missing_before_final_sync": sum(w.get("missing_before_final_sync", 0) for w in ws),
                "delivered_live": sum(w.get("delivered_live", 0) for w in ws),
                "resent": sum(w.get("resent", 0) for w in ws),
                "clients_moved": sum(w.get("clients_moved", 0) for w in ws),
                "clients_recovered": sum(w.get("clients_recovered", 0) for w in ws),
                "receivers_moved": sum(w.get("receivers_moved", 0) for w in ws),
                "recovery_ms": percentiles([x for w in ws for x in w.get("recovery_ms", [])]),
                "recovery_ms_receivers": percentiles([x for w in ws for x in w.get("recovery_ms_receivers", [])]),
                "first_loss_after_kill_ms": (
                    round((min(t for w in ws for t in w.get("lost_at", [])) - killed_at) * 1000, 1)
                    if killed_at is not None and any(w.get("lost_at") for w in ws)
                    else None
                ),
            }
    out["timeline"] = timeline(samples, accepted_at, t0) if ws else []
    out["_samples"] = samples  # taken out before printing: --out writes them to samples.csv
    return out


def fmt_pct(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "n=0"
    return f"p50 {p['p50']:.1f}  p90 {p['p90']:.1f}  p99 {p['p99']:.1f}  max {p['max']:.1f} ms  (n={p['n']})"


PLACEMENT = {
    "chat": "both ends of a pair on the same router",
    "floor": "both ends of a pair on the same router",
    "group": "members spread over the routers",
    "cross-shard": "sender on shard i, receiver on shard i+1 (mod shards)",
    "kill-shard": "sender on shard i, receiver on shard i+1 (mod shards)",
}


def render(r: dict[str, Any]) -> str:
    where = r["url"] if len(r["urls"]) == 1 else f"{len(r['urls'])} routers ({', '.join(r['urls'])})"
    lines = [f"== loadgen {r['scenario']} against {where} ({r['procs']} procs, sources {r['sources']}) =="]
    c = r["connect"]
    if r["scenario"] == "sessions":
        hb = r["heartbeat"]
        lines += [
            f"sessions requested      {r['requested']}",
            f"sessions held           {r['held']}  (dropped {r['dropped']}, failed to join {r['failed']})",
            f"connect rate            {c['per_second']} sessions/s  ({c['sessions']} in {c['seconds']} s)",
            f"join+subscribe latency  {fmt_pct(c['latency_ms'])}",
            f"hold                    {r['duration']:g} s; closed all in {r['close_seconds']} s",
            f"heartbeats              every {hb['interval_s']:g} s per session: {hb['sent']} sent, "
            f"{hb['answered']} answered, {hb['missed']} missed; server pings answered {hb['server_pings']}",
            f"heartbeat round trip    {fmt_pct(hb['rtt_ms'])}",
        ]
    else:
        per_sender = r["target_rate"] / max(1, r.get("pairs", r.get("groups", 1)))
        if r["scenario"] == "group":
            who = f"{r['groups']} groups of {r['group_size']} (1 sender, {r['recipients_per_message']} recipients)"
        else:
            who = f"{r['pairs']} pairs"
        what = "publish → published" if r["scenario"] == "floor" else "call → result"
        lines += [
            f"sessions                {c['sessions']} joined, {r['dropped']} dropped during the run",
            f"connect rate            {c['per_second']} sessions/s  ({c['sessions']} in {c['seconds']} s)",
            f"senders                 {who}; target {r['target_rate']:g} msg/s, {per_sender:.2f} per sender",
        ]
        if len(r["urls"]) > 1:
            lines.append(f"placement               {PLACEMENT[r['scenario']]}")
        lines += [
            f"sent                    {r['attempted']} in {r['send_seconds']} s; late sends {r['late_sends']}",
            f"accepted                {r['accepted']}  = {r['accepted_per_s']} msg/s",
            f"delivered               {r['delivered']}  = {r['delivered_per_s']} deliveries/s; of the "
            f"{r['expected_deliveries']} expected, undelivered {r['undelivered']} (drain {r['drain_seconds']} s)",
            f"accept latency          {fmt_pct(r['call_ms'])}  ({what})",
            f"send → receipt latency  {fmt_pct(r['delivery_ms'])}",
        ]
        if "kill" in r:
            k = r["kill"]
            lines += [
                f"killed                  shard {k['shard']} {k['after_s']:g} s into the sending "
                f"({'done' if k['killed'] else 'NOT DONE'}); first client saw it after "
                f"{k['first_loss_after_kill_ms']} ms",
                f"acknowledged lost       {k['acknowledged_lost']}  (missing after live delivery and the reconnect "
                f"syncs: {k['missing_before_final_sync']}; delivered live or by those syncs {k['delivered_live']}; "
                f"sends repeated after a lost answer {k['resent']})",
                f"clients moved           {k['clients_moved']} ({k['receivers_moved']} receivers), back and caught up "
                f"{k['clients_recovered']}",
                f"loss → back, caught up  {fmt_pct(k['recovery_ms'])}",
                f"  receivers only        {fmt_pct(k['recovery_ms_receivers'])}",
            ]
    if "server_rss" in r:
        rss = r["server_rss"]
        lines.append(
            f"server RSS              {rss['before_kib'] / 1024:.1f} -> {rss['after_kib'] / 1024:.1f} MiB: "
            f"{rss['per_session_kib']:.1f} KiB per session"
        )
    if r.get("drop_reasons"):
        lines.append(f"drop reasons            {r['drop_reasons']}")
    lines.append(f"errors                  {r['errors'] or 'none'}")
    if "server_cpu_seconds" in r:
        sc = r["server_cpu_seconds"]
        lines.append(
            f"server CPU              {sc['connect_phase']} s connecting, {sc['measured_phase']} s measured phase"
        )
    lines.append(f"loadgen CPU             {r['loadgen_cpu_seconds']} s (all workers)")
    if r.get("accounts"):
        lines.append(f"accounts                {r['accounts']}")
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    for failure in r["failures"]:
        lines.append(f"FAILURE: {failure}")
    return "\n".join(lines)


def succeeded(r: dict[str, Any]) -> bool:
    if r["failures"]:
        return False
    if r["scenario"] == "sessions":
        hb = r["heartbeat"]
        return bool(r["held"] == r["requested"] and hb["missed"] == 0)
    if r["scenario"] == "kill-shard":
        k = r["kill"]
        return bool(
            k["killed"]
            and k["acknowledged_lost"] == 0
            and k["clients_moved"] == k["clients_recovered"]
            and r["attempted"] == r["accepted"]
        )
    return bool(r["attempted"] == r["accepted"] and r["delivered"] == r["expected_deliveries"] and r["attempted"])


# ------------------------------------------------------------------------------- compare


def best_under(results: list[dict[str, Any]], p99_ms: float) -> float | None:
    """The highest accepted msg/s among runs that kept up (everything delivered) with the
    send → receipt p99 at or under ``p99_ms``."""
    ok = [
        r["accepted_per_s"]
        for r in results
        if succeeded(r) and r["delivery_ms"]["p99"] is not None and r["delivery_ms"]["p99"] <= p99_ms
    ]
    return max(ok) if ok else None


def render_compare(results: list[dict[str, Any]], p99_ms: float) -> str:
    head = (
        f"{'scenario':<12} {'target':>7} {'accepted/s':>10} {'deliv/s':>8} {'accept p50/p99':>15} "
        f"{'receipt p50':>11} {'p90':>7} {'p99':>7} {'max':>7} {'srv CPU/s':>9}  ok"
    )
    lines = ["== compare: send → recipient receipt, ms ==", head]
    for r in results:
        if r["scenario"] == "sessions":
            continue
        d, c = r["delivery_ms"], r["call_ms"]
        cpu = r.get("server_cpu_seconds", {}).get("measured_phase")
        cpu_s = f"{cpu / max(r['send_seconds'], 1e-9):.2f}" if cpu is not None else "-"

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.1f}"

        lines.append(
            f"{r['scenario']:<12} {r['target_rate']:>7g} {r['accepted_per_s']:>10} {r['delivered_per_s']:>8} "
            f"{f(c['p50']) + '/' + f(c['p99']):>15} {f(d['p50']):>11} {f(d['p90']):>7} {f(d['p99']):>7} "
            f"{f(d['max']):>7} {cpu_s:>9}  {'yes' if succeeded(r) else 'NO'}"
        )
    ours = [r for r in results if r["scenario"] in ("chat", "cross-shard", "group")]
    floor = [r for r in results if r["scenario"] == "floor"]
    for r in ours:
        same = [f for f in floor if f["target_rate"] == r["target_rate"]]
        if same and r["delivery_ms"]["p99"] and same[0]["delivery_ms"]["p99"]:
            fl = same[0]
            lines.append(
                f"at {r['target_rate']:g} msg/s: {r['scenario']} accepted/s ÷ floor's = "
                f"{r['accepted_per_s'] / max(fl['accepted_per_s'], 1e-9):.2f}; receipt p99 "
                f"{r['delivery_ms']['p99']:.1f} vs {fl['delivery_ms']['p99']:.1f} ms "
                f"(x{r['delivery_ms']['p99'] / fl['delivery_ms']['p99']:.1f})"
            )
    if ours and floor:
        a, b = best_under(ours, p99_ms), best_under(floor, p99_ms)
        ratio = f"{a / b:.2f}" if a and b else "n/a"
        lines.append(
            f"throughput at receipt p99 <= {p99_ms:g} ms (the highest rate run that delivered everything within "
            f"it): ours {a or 'none'} msg/s, floor {b or 'none'} msg/s; ratio {ratio} (target >= 0.50)"
        )
        top = max(r["target_rate"] for r in floor)
        if b and b >= 0.95 * top:
            lines.append(
                f"note: the floor met it at the highest rate tried ({top:g} msg/s): its capacity is higher, "
                "so the ratio is an upper bound; add higher --rates"
            )
    return "\n".join(lines)


def load_summary(path: Path) -> dict[str, Any]:
    file = path / "summary.json" if path.is_dir() else path
    result: dict[str, Any] = json.loads(file.read_text())
    return result


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenario_pos", nargs="?", choices=SCENARIOS, metavar="{" + ",".join(SCENARIOS) + "}")
    parser.add_argument("--scenario", choices=SCENARIOS)
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--urls", help="several routers (shards), comma separated; overrides --url")
    parser.add_argument(
        "--start",
        choices=["embedded", "distributed", "floor"],
        help="start a node: embedded, distributed (--shards router shards + components) or floor (bare router)",
    )
    parser.add_argument("--shards", type=int, help="--start distributed: router shards (default 1; cross-shard: 3)")
    parser.add_argument("--node-dir", type=Path, help="with --start: node folder (kept, so accounts survive)")
    parser.add_argument("--server-pid", help="server process(es), comma separated: their trees' RSS and CPU")
    parser.add_argument("--accounts", type=Path, default=DEFAULT_ACCOUNTS, help="account and token cache")
    parser.add_argument("--sessions", type=int, default=100, help="sessions scenario: how many")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="sessions: client ping every S s (0: none)")
    parser.add_argument("--pairs", type=int, help="chat/cross-shard/floor: pairs (default: enough for --rate)")
    parser.add_argument("--groups", type=int, help="group: how many groups (default: enough for --rate)")
    parser.add_argument("--group-size", type=int, default=10, help="group: members per group, the sender included")
    parser.add_argument("--rate", type=float, default=20.0, help="messaging: total msg/s over all senders")
    parser.add_argument("--rates", help="compare: rates to run both scenarios at, comma separated (default --rate)")
    parser.add_argument("--from", dest="from_", nargs="+", type=Path, help="compare: saved summary.json or --out dirs")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="compare: the p99 at which throughput is compared")
    parser.add_argument(
        "--send-limit",
        default="40/2",
        help="per-sender limit COUNT/SECONDS to stay under (shipped: 40/2); 'none' to ignore",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to hold / to send")
    parser.add_argument("--drain", type=float, default=10.0, help="messaging: max seconds to wait for deliveries")
    parser.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1), help="generator processes")
    parser.add_argument("--sources", type=int, default=0, help="bind to 127.0.0.2..127.0.0.(K+1); 0: no bind")
    parser.add_argument("--concurrency", type=int, default=100, help="joins in flight per process")
    parser.add_argument("--prep-concurrency", type=int, default=8, help="guest sessions preparing accounts")
    parser.add_argument("--connect-timeout", type=float, default=180.0, help="bound on the connect phase (s)")
    parser.add_argument("--kill-after", type=float, help="kill-shard: seconds into the sending (default duration/3)")
    parser.add_argument("--kill-shard", type=int, default=0, help="kill-shard: which shard to SIGKILL (default 0)")
    parser.add_argument("--out", type=Path, help="write samples.csv, summary.json and latency.png here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    args.scenario = args.scenario or args.scenario_pos
    if not args.scenario:
        parser.error(f"give a scenario: {', '.join(SCENARIOS)}")
    if args.sessions < 1 or args.procs < 1 or args.duration <= 0 or args.rate <= 0 or args.group_size < 2:
        parser.error("--sessions, --procs, --duration and --rate must be positive, --group-size at least 2")
    args.server_pids = [int(p) for p in args.server_pid.split(",")] if args.server_pid else []
    args.urls = [u.strip() for u in args.urls.split(",") if u.strip()] if args.urls else [args.url]
    args.rate_list = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    if args.start == "floor" and args.scenario not in ("floor", "sessions", "compare"):
        parser.error("--start floor is a bare router: only the floor and sessions scenarios run on it")
    if args.scenario == "floor" and args.start in ("embedded", "distributed"):
        parser.error("the floor scenario needs a bare router: --start floor, or --url of one")
    if args.scenario == "cross-shard" and not args.start and len(args.urls) < 2:
        parser.error("cross-shard needs several routers: --urls u1,u2[,u3] or --start distributed --shards 3")
    if args.scenario == "compare" and not args.from_ and args.start == "floor":
        parser.error("compare starts a floor itself; --start names the node for chat (default embedded)")
    if args.scenario == "kill-shard" and args.start != "distributed":
        parser.error("kill-shard kills a shard it started: --start distributed [--shards 3]")
    args.kill_after = args.duration / 3 if args.kill_after is None else args.kill_after
    args.unit_size = args.group_size if args.scenario == "group" else 2
    return args


def plan_units(args: argparse.Namespace) -> tuple[int, list[str]]:
    """How many senders (pairs or groups), kept under the per-sender send limit. The floor has
    no limit but gets the same count as chat would, so both load patterns are the same."""
    notes: list[str] = []
    limit_rate: float | None = None
    if args.send_limit != "none":
        count, window = args.send_limit.split("/")
        limit_rate = 0.9 * int(count) / float(window)  # 10 % headroom: fixed windows, timer jitter
    given = args.groups if args.scenario == "group" else args.pairs
    flag = "--groups" if args.scenario == "group" else "--pairs"
    units = given or max(1, math.ceil(args.rate / limit_rate) if limit_rate else 1)
    per_sender = args.rate / units
    if limit_rate and per_sender > limit_rate and args.scenario != "floor":
        raise SystemExit(
            f"{args.rate:g} msg/s over {units} senders is {per_sender:.1f} msg/s per sender, above the send "
            f"limit {args.send_limit} (kept under {limit_rate:.1f}/s): use {flag} >= "
            f"{math.ceil(args.rate / limit_rate)}, or --send-limit none against a node with relaxed limits"
        )
    if not given:
        notes.append(f"{flag} not given: {units} senders keep each under the {args.send_limit} send limit")
    return units, notes


def placement(args: argparse.Namespace, n_accounts: int) -> list[int]:
    """Per account, the index of the router it joins."""
    n, size = len(args.urls), args.unit_size
    if args.scenario == "sessions":
        return [i % n for i in range(n_accounts)]
    if args.scenario in ("cross-shard", "kill-shard"):
        return [(i // 2 + i % 2) % n for i in range(n_accounts)]  # pair u: sender on u, receiver on u+1
    if args.scenario == "group":
        return [(i // size + i % size) % n for i in range(n_accounts)]
    return [(i // 2) % n for i in range(n_accounts)]  # chat, floor: a pair on one router


# ------------------------------------------------------------------------------- nodes


@dataclass
class DistributedStores:
    """A Postgres database and a Cassandra keyspace of the node's own (as the tests'
    ``distributed_env``), its key secret and backend ticket. Kept in ``--node-dir`` when given."""

    pg_dsn: str
    pg_database: str
    keyspace: str
    key_secret: str
    backend_ticket: str
    keep: bool = field(default=False, compare=False)

    STATE = "loadgen-distributed.json"

    @classmethod
    def make(cls, node_dir: Path | None) -> DistributedStores:
        missing = [
            n
            for n in ("MESSENGER_TEST_PG_DSN", "MESSENGER_TEST_REDIS_URL", "MESSENGER_TEST_CASSANDRA")
            if not os.environ.get(n)
        ]
        if missing:
            raise SystemExit(f"--start distributed needs {', '.join(missing)}: {SERVICES_HINT}")
        state = node_dir / cls.STATE if node_dir else None
        if state is not None and state.exists():
            return cls(**json.loads(state.read_text()), keep=True)
        admin_dsn = os.environ["MESSENGER_TEST_PG_DSN"]
        name = f"bench_{secrets.token_hex(4)}"
        with contextlib.closing(pg_admin(admin_dsn)) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" OWNER messenger')
        dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
        stores = cls(dsn, name, name, secrets.token_hex(32), secrets.token_hex(16), keep=state is not None)
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            body = {k: v for k, v in asdict(stores).items() if k != "keep"}
            state.write_text(json.dumps(body, indent=1))
        return stores

    def env(self) -> dict[str, str]:
        return {
            "MESSENGER_PG_DSN": self.pg_dsn,
            "MESSENGER_REDIS_URL": os.environ["MESSENGER_TEST_REDIS_URL"],
            "MESSENGER_CASSANDRA": os.environ["MESSENGER_TEST_CASSANDRA"],
            "MESSENGER_KEY_SECRET": self.key_secret,
            "MESSENGER_BACKEND_TICKET": self.backend_ticket,
        }

    def drop(self) -> None:
        if self.keep:
            return
        with contextlib.closing(pg_admin(os.environ["MESSENGER_TEST_PG_DSN"])) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.pg_database,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{self.pg_database}"')
        drop_keyspace(os.environ["MESSENGER_TEST_CASSANDRA"], self.keyspace)


def pg_admin(dsn: str) -> Any:
    import psycopg2

    parts = urlsplit(dsn)
    conn = psycopg2.connect(host=parts.hostname, port=parts.port or 5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    return conn


def drop_keyspace(hostport: str, keyspace: str) -> None:
    from cassandra.cluster import Cluster

    host, port = hostport.rsplit(":", 1)
    cluster = Cluster([host], port=int(port), connect_timeout=10)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


class StartedNode:
    """What ``--start`` started: its client URLs and process ids; ``stop()`` ends it and drops
    its stores (unless kept in ``--node-dir``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tests.support.node import BareNode, Node, SplitNodes

        # absolute: crossbar runs in the node folder with --cbdir under it
        workdir = args.node_dir.resolve() if args.node_dir else Path(tempfile.mkdtemp(prefix="loadgen-"))
        self.stores: DistributedStores | None = None
        self.node: Any
        log(f"starting a {args.start} node in {workdir}")
        if args.start == "floor":
            bare = BareNode(workdir).start()
            self.node, self.urls, self.pids = bare, [bare.url], [bare.pid or 0]
            return
        # accounts for a load test by the thousand: cheap password hashing (and said so in the
        # output); the OWASP minimum holds everywhere else
        weak_env = {"MESSENGER_BENCHMARK_WEAK_HASHING": "1"}
        weak_extra = {"argon2": {"memory_kib": 64, "time_cost": 1, "parallelism": 1}}
        if args.start == "embedded":
            node = Node(workdir, profile="embedded", extra=weak_extra, env=weak_env).start()
            assert node._proc.proc is not None
            self.node, self.urls, self.pids = node, [node.url], [node._proc.proc.pid]
            return
        shards = args.shards or (3 if args.scenario in ("cross-shard", "kill-shard") else 1)
        self.stores = DistributedStores.make(args.node_dir)
        try:
            split_nodes = SplitNodes(
                workdir,
                {**self.stores.env(), **weak_env},
                {"cassandra_keyspace": self.stores.keyspace, **weak_extra},
                shards=shards,
            ).start(timeout=180)
        except BaseException:
            self.stores.drop()
            raise
        procs = [s.proc.proc for s in split_nodes.shards] + [split_nodes.components.proc]
        self.node, self.urls, self.pids = split_nodes, [s.url for s in split_nodes.shards], [p.pid for p in procs if p]
        self.kill = split_nodes.kill_router

    def stop(self) -> None:
        try:
            self.node.stop()
        finally:
            if self.stores is not None:
                self.stores.drop()


# ------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    nofile = raise_nofile()
    n_accounts = args.sessions
    units = 0
    if args.scenario in MESSAGING:
        units, more = plan_units(args)
        notes += more
        n_accounts = args.unit_size * units
        args.procs = min(args.procs, units)
    args.procs = max(1, min(args.procs, n_accounts))
    per_proc = math.ceil(n_accounts / args.procs)
    if per_proc > nofile - 64:
        notes.append(
            f"RLIMIT_NOFILE hard limit {nofile} bounds a process to ~{nofile - 64} sessions: "
            f"{per_proc} per process will fail; use more --procs"
        )
    ports = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    port_span = int(ports[1]) - int(ports[0]) + 1
    if n_accounts > port_span * max(1, args.sources):
        notes.append(f"{n_accounts} sessions exceed {port_span} ephemeral ports per source: raise --sources")

    started: StartedNode | None = None
    if args.start:
        started = StartedNode(args)
        args.urls = started.urls
        args.server_pids = args.server_pids or started.pids
        args.kill = getattr(started, "kill", None)
        if args.start != "floor":
            notes.append("node started by --start hashes passwords below the OWASP minimum (benchmark accounts)")
        if args.start != "floor":
            notes.append("node started by --start has the tests' relaxed rate limits")
    anonymous = args.scenario == "floor" or args.start == "floor"
    if args.scenario in ("cross-shard", "kill-shard") and len(args.urls) < 2:
        raise SystemExit(f"{args.scenario} needs at least 2 routers (--shards 2 or more)")
    try:
        targets = [Target.from_url(u, args.sources) for u in args.urls]
        if args.server_pids:
            server_nofile = tree_min_nofile(args.server_pids)
            if server_nofile is not None and n_accounts > server_nofile - 100:
                notes.append(f"server process open-files limit {server_nofile} bounds the sessions it can hold")
        prep: dict[str, Any] = {}
        if anonymous:  # a bare router: anonymous sessions, made-up user ids for the topics
            accounts = [{"user_id": secrets.token_hex(16), "access_token": ""} for _ in range(n_accounts)]
        else:
            store = AccountFile(args.accounts)
            log(f"preparing {n_accounts} accounts (cache {args.accounts})")
            prep = asyncio.run(prepare_accounts(targets[0], store, n_accounts, args.prep_concurrency))
            log(f"accounts ready: {prep}")
            accounts = [asdict(a) for a in store.first(n_accounts)]
        where = placement(args, n_accounts)
        run_tag = secrets.token_hex(4)
        specs = []
        heartbeat = args.heartbeat if args.scenario == "sessions" else 0.0
        size = 1 if args.scenario == "sessions" else args.unit_size
        chunks = split(list(range(n_accounts // size)), args.procs)
        for i, chunk in enumerate(chunks):
            idx = [u * size + j for u in chunk for j in range(size)]
            specs.append(
                WorkerSpec(
                    i,
                    args.scenario,
                    targets,
                    [where[k] for k in idx],
                    [accounts[k] for k in idx],
                    args.duration,
                    args.concurrency,
                    args.connect_timeout,
                    unit_size=size,
                    rate_per_sender=args.rate / max(1, units),
                    drain=args.drain,
                    run_tag=f"{run_tag}{i}",
                    heartbeat=heartbeat,
                )
            )
        raw = run_workers(args, specs, args.server_pids)
        return summarize(args, raw, {"duration": args.duration, "accounts": prep, "notes": notes})
    finally:
        if started is not None:
            started.stop()


def finish(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Write --out files (when asked) and answer the result without its raw samples."""
    samples = result.pop("_samples", [])
    if args.out:
        from bench.report import write  # imports matplotlib: only with --out

        files = write(args.out, result, samples)
        log(f"wrote {', '.join(str(f) for f in files)}")
    return result


def compare(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    if args.from_:
        return [load_summary(p) for p in args.from_], True
    results, ok = [], True
    for rate in args.rate_list:
        for scenario, start in (("chat", args.start or "embedded"), ("floor", "floor")):
            sub = copy.copy(args)
            sub.scenario, sub.start, sub.rate = scenario, start, rate
            sub.urls, sub.server_pids = list(args.urls), list(args.server_pids)
            sub.unit_size = 2
            sub.out = args.out / f"{scenario}-{rate:g}" if args.out else None
            log(f"compare: {scenario} at {rate:g} msg/s")
            r = finish(sub, run(sub))
            print(render(r), file=sys.stderr)
            ok = ok and succeeded(r)
            results.append(r)
    return results, ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scenario == "compare":
        results, ok = compare(args)
        table = render_compare(results, args.p99_ms)
        if args.json:
            print(table, file=sys.stderr)
            print(json.dumps({"scenario": "compare", "runs": results}))
        else:
            print(table)
        return 0 if ok else 1
    result = finish(args, run(args))
    if args.json:
        print(render(result), file=sys.stderr)
        print(json.dumps(result))
    else:
        print(render(result))
    return 0 if succeeded(result) else 1


if __name__ == "__main__":
    sys.exit(main())
