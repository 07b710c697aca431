"""Load generator for the messenger (pure asyncio, many WAMP sessions per process).

    .venv/bin/python -m bench.loadgen sessions --start embedded --sessions 2000 --duration 20
    .venv/bin/python -m bench.loadgen chat --start embedded --pairs 50 --rate 200 --duration 20
    .venv/bin/python -m bench.loadgen sessions --url ws://127.0.0.1:8080/ws --server-pid PID ...

Scenarios: ``sessions`` (open S user sessions, each subscribed to its own topic, hold them,
report held/dropped, connect rate and server RSS per session) and ``chat`` (P direct chats,
senders at a total R msg/s, delivery and call latency). Accounts are made once and cached with
their tokens in ``--accounts`` (refreshed or re-logged in when stale). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import resource
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.wampws import SessionLost, WampError, WampSession, open_session

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "loadgen password 1"
DEFAULT_ACCOUNTS = ROOT / "var" / "loadgen-accounts.json"
SHIPPED_SEND_LIMIT = (40, 2.0)  # messenger.message.send: 40 per 2 s per user (shipped config)
MIN_TOKEN_VALIDITY = 120.0  # refresh tokens that expire sooner than this (seconds)


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


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat)."""
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
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def tree_cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def tree_min_nofile(pid: int) -> int | None:
    limits = []
    for p in process_tree(pid):
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
    target: Target
    accounts: list[dict[str, Any]]  # sessions: one per session; chat: sender, receiver, sender, ...
    duration: float
    concurrency: int
    connect_timeout: float
    rate_per_pair: float = 0.0
    drain: float = 10.0
    run_tag: str = ""


@dataclass
class Shared:
    go: MpEvent
    queue: Any  # multiprocessing.Queue of (kind, index, payload)


async def connect_all(
    spec: WorkerSpec, handlers: list[Any], stats: dict[str, Any]
) -> tuple[list[WampSession | None], float, float]:
    """Join and subscribe one session per account (bounded concurrency). Answers the sessions
    (None where it failed) and the wall-clock start and end of the phase."""
    sem = asyncio.Semaphore(spec.concurrency)
    sessions: list[WampSession | None] = [None] * len(spec.accounts)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + spec.connect_timeout

    async def one(i: int) -> None:
        acc = spec.accounts[i]
        async with sem:
            t0 = time.monotonic()
            remaining = deadline - t0
            if remaining <= 0:
                errors["connect phase timeout"] += 1
                return
            try:
                s = await spec.target.join(spec.index * 100003 + i, ticket=acc["access_token"], within=remaining)
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


async def sessions_worker(spec: WorkerSpec, shared: Shared) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    events: Counter[str] = Counter()

    def handler(args: list[Any], kwargs: dict[str, Any]) -> None:
        events[str(kwargs.get("type"))] += 1

    sessions, started, ended = await connect_all(spec, [handler] * len(spec.accounts), stats)
    connected = sum(1 for s in sessions if s is not None)
    shared.queue.put(("connected", spec.index, {"connected": connected, "start": started, "end": ended}))
    if await wait_go(shared, spec.connect_timeout + 120):
        await asyncio.sleep(spec.duration)
    held = [s for s in sessions if s is not None and s.is_open]
    drop_reasons = Counter(s.lost.result() for s in sessions if s is not None and not s.is_open)
    close_s = await close_all(sessions, spec.concurrency)
    stats.update(
        connected=connected,
        held=len(held),
        dropped=connected - len(held),
        drop_reasons=dict(drop_reasons),
        events=dict(events),
        connect_start=started,
        connect_end=ended,
        close_seconds=round(close_s, 2),
        cpu_seconds=own_cpu_seconds(),
    )
    return stats


# ------------------------------------------------------------------------------- scenario: chat


async def chat_worker(spec: WorkerSpec, shared: Shared) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    n_pairs = len(spec.accounts) // 2
    delivery_ms: list[float] = []
    delivered = [0] * n_pairs
    stale_or_foreign = [0]
    marker = f"lg {spec.run_tag} "
    progress = asyncio.Event()  # a delivery or a send answer: the drain loop looks again

    def receiver(pair: int) -> Any:
        def on_event(args: list[Any], kwargs: dict[str, Any]) -> None:
            if kwargs.get("type") != "message.new":
                return
            text = (kwargs.get("data") or {}).get("text") or ""
            if not text.startswith(marker):
                stale_or_foreign[0] += 1
                return
            sent = float(text.split(" ", 3)[2])
            delivery_ms.append((time.monotonic() - sent) * 1000)
            delivered[pair] += 1
            progress.set()

        return on_event

    def ignore(args: list[Any], kwargs: dict[str, Any]) -> None:
        pass

    handlers = [ignore if i % 2 == 0 else receiver(i // 2) for i in range(len(spec.accounts))]
    sessions, started, ended = await connect_all(spec, handlers, stats)
    errors: Counter[str] = Counter(stats["errors"])
    chats: list[str | None] = [None] * n_pairs

    async def make_chat(p: int) -> None:
        sender, recv = sessions[2 * p], sessions[2 * p + 1]
        if sender is None or recv is None:
            return
        try:
            chat = await sender.call("messenger.chat.create_direct", user_id=spec.accounts[2 * p + 1]["user_id"])
            chats[p] = chat["chat_id"]
        except Exception as e:
            errors[f"create_direct: {error_key(e)}"] += 1

    await asyncio.gather(*(make_chat(p) for p in range(n_pairs)))
    ready = [p for p in range(n_pairs) if chats[p] is not None]
    shared.queue.put(("connected", spec.index, {"connected": len(ready) * 2, "start": started, "end": ended}))
    call_ms: list[float] = []
    accepted = [0] * n_pairs
    attempted = [0]
    late = [0]
    send_start = send_end = time.monotonic()

    async def send_one(p: int, sender: WampSession, chat_id: str, k: int) -> None:
        t0 = time.monotonic()
        attempted[0] += 1
        fut = sender.call_nowait(
            "messenger.message.send",
            chat_id=chat_id,
            client_msg_id=f"{spec.run_tag}-{k}",
            text=f"{marker}{t0:.6f} {k}",
        )
        try:
            await asyncio.wait_for(fut, 30)
            call_ms.append((time.monotonic() - t0) * 1000)
            accepted[p] += 1
        except Exception as e:
            errors[f"send: {error_key(e)}"] += 1
        finally:
            progress.set()

    tasks: set[asyncio.Task[None]] = set()

    async def pair_loop(p: int, start: float, end: float) -> None:
        sender, chat_id = sessions[2 * p], chats[p]
        assert sender is not None and chat_id is not None
        interval = 1.0 / spec.rate_per_pair
        t = start + random.random() * interval  # spread the pairs' phases
        k = 0
        while t < end:
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                late[0] += 1  # the generator fell behind by more than one interval
            task = asyncio.create_task(send_one(p, sender, chat_id, k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            t += interval

    if await wait_go(shared, spec.connect_timeout + 120) and ready:
        send_start = time.monotonic() + 0.05
        send_end = send_start + spec.duration
        await asyncio.gather(*(pair_loop(p, send_start, send_end) for p in ready))
        send_end = time.monotonic()
        drain_deadline = send_end + spec.drain
        while tasks or sum(delivered) < sum(accepted):
            remaining = drain_deadline - time.monotonic()
            if remaining <= 0:
                break
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(remaining, 0.5))
    drained_at = time.monotonic()
    lost_sessions = sum(1 for s in sessions if s is not None and not s.is_open)
    await close_all(sessions, spec.concurrency)
    stats.update(
        pairs=len(ready),
        connected=sum(1 for s in sessions if s is not None),
        dropped=lost_sessions,
        attempted=attempted[0],
        accepted=sum(accepted),
        delivered=sum(delivered),
        undelivered=sum(accepted) - sum(delivered),
        stale_events=stale_or_foreign[0],
        late_sends=late[0],
        call_ms=call_ms,
        delivery_ms=delivery_ms,
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
    fn = sessions_worker if spec.scenario == "sessions" else chat_worker
    try:
        result = asyncio.run(fn(spec, shared))
        shared.queue.put(("done", spec.index, result))
    except BaseException as e:
        shared.queue.put(("failed", spec.index, f"{type(e).__name__}: {e}"))
        raise


def split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def run_workers(args: argparse.Namespace, specs: list[WorkerSpec], server_pid: int | None) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    shared = Shared(go=ctx.Event(), queue=ctx.Queue())
    procs = [ctx.Process(target=worker_entry, args=(spec, shared), daemon=True) for spec in specs]
    rss_before = tree_rss_kib(server_pid) if server_pid else None
    cpu_before = tree_cpu_seconds(server_pid) if server_pid else None
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
    if args.scenario == "sessions" and server_pid:
        time.sleep(1.0)  # let the server settle before measuring
        rss_after = tree_rss_kib(server_pid)
    cpu_mid = tree_cpu_seconds(server_pid) if server_pid else None
    go_at = time.monotonic()
    shared.go.set()
    log(f"all workers ready: {'holding' if args.scenario == 'sessions' else 'sending'} for {args.duration:g} s")
    deadline = time.monotonic() + args.duration + args.drain + 120
    while len(done) < len(procs) and time.monotonic() < deadline:
        receive(deadline)
    if server_pid and cpu_mid is not None:
        server_cpu = tree_cpu_seconds(server_pid) - cpu_mid
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
    }


def merge_counters(items: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for item in items:
        total.update(item)
    return dict(total)


def summarize(args: argparse.Namespace, raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    ws = [w for w in raw["workers"] if w]
    starts = [w["connect_start"] for w in ws]
    ends = [w["connect_end"] for w in ws]
    connected = sum(w.get("connected", 0) for w in ws)
    connect_s = (max(ends) - min(starts)) if ws else 0.0
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "url": args.url,
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
    if args.scenario == "sessions":
        held = sum(w.get("held", 0) for w in ws)
        out.update(
            requested=args.sessions,
            held=held,
            dropped=sum(w.get("dropped", 0) for w in ws),
            failed=args.sessions - connected,
            drop_reasons=merge_counters([w.get("drop_reasons", {}) for w in ws]),
            errors=merge_counters([w.get("errors", {}) for w in ws]),
            events=merge_counters([w.get("events", {}) for w in ws]),
            close_seconds=max((w.get("close_seconds", 0) for w in ws), default=0),
        )
        before, after = raw["rss_before_kib"], raw["rss_after_kib"]
        if before is not None and after is not None:
            out["server_rss"] = {
                "before_kib": before,
                "after_kib": after,
                "delta_kib": after - before,
                "per_session_kib": round((after - before) / max(1, connected), 2),
            }
    else:
        seconds = max((w.get("send_seconds", 0.0) for w in ws), default=0.0) or args.duration
        accepted = sum(w.get("accepted", 0) for w in ws)
        delivered = sum(w.get("delivered", 0) for w in ws)
        out.update(
            pairs=sum(w.get("pairs", 0) for w in ws),
            target_rate=args.rate,
            send_seconds=round(seconds, 3),
            attempted=sum(w.get("attempted", 0) for w in ws),
            accepted=accepted,
            delivered=delivered,
            undelivered=sum(w.get("undelivered", 0) for w in ws),
            accepted_per_s=round(accepted / seconds, 1),
            delivered_per_s=round(delivered / seconds, 1),
            call_ms=percentiles([x for w in ws for x in w.get("call_ms", [])]),
            delivery_ms=percentiles([x for w in ws for x in w.get("delivery_ms", [])]),
            errors=merge_counters([w.get("errors", {}) for w in ws]),
            dropped=sum(w.get("dropped", 0) for w in ws),
            late_sends=sum(w.get("late_sends", 0) for w in ws),
            stale_events=sum(w.get("stale_events", 0) for w in ws),
            drain_seconds=round(max((w.get("drain_seconds", 0.0) for w in ws), default=0.0), 2),
        )
    return out


def fmt_pct(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "n=0"
    return f"p50 {p['p50']:.1f}  p90 {p['p90']:.1f}  p99 {p['p99']:.1f}  max {p['max']:.1f} ms  (n={p['n']})"


def render(r: dict[str, Any]) -> str:
    lines = [f"== loadgen {r['scenario']} against {r['url']} ({r['procs']} procs, sources {r['sources']}) =="]
    c = r["connect"]
    if r["scenario"] == "sessions":
        lines += [
            f"sessions requested      {r['requested']}",
            f"sessions held           {r['held']}  (dropped {r['dropped']}, failed to join {r['failed']})",
            f"connect rate            {c['per_second']} sessions/s  ({c['sessions']} in {c['seconds']} s)",
            f"join+subscribe latency  {fmt_pct(c['latency_ms'])}",
            f"hold                    {r['duration']:g} s; closed all in {r['close_seconds']} s",
        ]
        if "server_rss" in r:
            rss = r["server_rss"]
            lines.append(
                f"server RSS              {rss['before_kib'] / 1024:.1f} -> {rss['after_kib'] / 1024:.1f} MiB: "
                f"{rss['per_session_kib']:.1f} KiB per session"
            )
        if r["drop_reasons"]:
            lines.append(f"drop reasons            {r['drop_reasons']}")
    else:
        lines += [
            f"pairs                   {r['pairs']} (target {r['target_rate']:g} msg/s, "
            f"{r['target_rate'] / max(1, r['pairs']):.2f} per sender)",
            f"sent                    {r['attempted']} in {r['send_seconds']} s; late sends {r['late_sends']}",
            f"accepted                {r['accepted']}  = {r['accepted_per_s']} msg/s",
            f"delivered               {r['delivered']}  = {r['delivered_per_s']} msg/s "
            f"(undelivered {r['undelivered']}, drain {r['drain_seconds']} s)",
            f"call latency            {fmt_pct(r['call_ms'])}",
            f"delivery latency        {fmt_pct(r['delivery_ms'])}",
            f"sessions dropped        {r['dropped']}",
        ]
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


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenario_pos", nargs="?", choices=["sessions", "chat"], metavar="{sessions,chat}")
    parser.add_argument("--scenario", choices=["sessions", "chat"])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--start", choices=["embedded", "distributed"], help="start a node of this profile")
    parser.add_argument("--node-dir", type=Path, help="with --start: node folder (kept, so accounts survive)")
    parser.add_argument("--server-pid", type=int, help="server process (its tree) for RSS and CPU figures")
    parser.add_argument("--accounts", type=Path, default=DEFAULT_ACCOUNTS, help="account and token cache")
    parser.add_argument("--sessions", type=int, default=100, help="sessions scenario: how many")
    parser.add_argument("--pairs", type=int, help="chat: sender/receiver pairs (default: enough for --rate)")
    parser.add_argument("--rate", type=float, default=20.0, help="chat: total msg/s over all pairs")
    parser.add_argument(
        "--send-limit",
        default="40/2",
        help="chat: per-sender limit COUNT/SECONDS to stay under (shipped: 40/2); 'none' to ignore",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to hold / to send")
    parser.add_argument("--drain", type=float, default=10.0, help="chat: max seconds to wait for deliveries")
    parser.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1), help="generator processes")
    parser.add_argument("--sources", type=int, default=0, help="bind to 127.0.0.2..127.0.0.(K+1); 0: no bind")
    parser.add_argument("--concurrency", type=int, default=100, help="joins in flight per process")
    parser.add_argument("--prep-concurrency", type=int, default=8, help="guest sessions preparing accounts")
    parser.add_argument("--connect-timeout", type=float, default=180.0, help="bound on the connect phase (s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    args.scenario = args.scenario or args.scenario_pos
    if not args.scenario:
        parser.error("give a scenario: sessions or chat")
    if args.sessions < 1 or args.procs < 1 or args.duration <= 0 or args.rate <= 0:
        parser.error("--sessions, --procs, --duration and --rate must be positive")
    return args


def chat_pairs(args: argparse.Namespace) -> tuple[int, list[str]]:
    notes: list[str] = []
    limit_rate: float | None = None
    if args.send_limit != "none":
        count, window = args.send_limit.split("/")
        limit_rate = 0.9 * int(count) / float(window)  # 10 % headroom: fixed windows, timer jitter
    pairs = args.pairs or max(1, math.ceil(args.rate / limit_rate) if limit_rate else 1)
    per_sender = args.rate / pairs
    if limit_rate and per_sender > limit_rate:
        raise SystemExit(
            f"{args.rate:g} msg/s over {pairs} pairs is {per_sender:.1f} msg/s per sender, above the send "
            f"limit {args.send_limit} (kept under {limit_rate:.1f}/s): use --pairs >= "
            f"{math.ceil(args.rate / limit_rate)}, or --send-limit none against a node with relaxed limits"
        )
    if not args.pairs:
        notes.append(f"--pairs not given: {pairs} pairs keep each sender under the {args.send_limit} send limit")
    return pairs, notes


def drop_keyspace(hostport: str, keyspace: str) -> None:
    from cassandra.cluster import Cluster

    host, port = hostport.rsplit(":", 1)
    cluster = Cluster([host], port=int(port), connect_timeout=10)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


def run(args: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    nofile = raise_nofile()
    n_accounts = args.sessions
    pairs = 0
    if args.scenario == "chat":
        pairs, more = chat_pairs(args)
        notes += more
        n_accounts = 2 * pairs
        args.procs = min(args.procs, pairs)
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

    node: Any = None
    keyspace = ""
    if args.start:
        from tests.support.node import Node

        env: dict[str, str] = {}
        extra: dict[str, Any] = {}
        if args.start == "distributed":
            env = {
                "MESSENGER_PG_DSN": os.environ.get("MESSENGER_TEST_PG_DSN", ""),
                "MESSENGER_REDIS_URL": os.environ.get("MESSENGER_TEST_REDIS_URL", ""),
                "MESSENGER_CASSANDRA": os.environ.get("MESSENGER_TEST_CASSANDRA", ""),
                "MESSENGER_KEY_SECRET": secrets.token_hex(16),
            }
            keyspace = f"bench_{secrets.token_hex(4)}"
            extra = {"cassandra_keyspace": keyspace}
        workdir = args.node_dir or Path(tempfile.mkdtemp(prefix="loadgen-"))
        log(f"starting a {args.start} node in {workdir}")
        node = Node(workdir, profile=args.start, extra=extra, env=env).start()
        args.url = node.url
        args.server_pid = args.server_pid or node._proc.proc.pid
        notes.append("node started by --start has the tests' relaxed rate limits")
    try:
        target = Target.from_url(args.url, args.sources)
        if args.server_pid:
            server_nofile = tree_min_nofile(args.server_pid)
            if server_nofile is not None and n_accounts > server_nofile - 100:
                notes.append(f"server process open-files limit {server_nofile} bounds the sessions it can hold")
        store = AccountFile(args.accounts)
        log(f"preparing {n_accounts} accounts (cache {args.accounts})")
        prep = asyncio.run(prepare_accounts(target, store, n_accounts, args.prep_concurrency))
        log(f"accounts ready: {prep}")
        accounts = [asdict(a) for a in store.first(n_accounts)]
        run_tag = secrets.token_hex(4)
        specs = []
        if args.scenario == "sessions":
            for i, chunk in enumerate(split(accounts, args.procs)):
                specs.append(
                    WorkerSpec(i, "sessions", target, chunk, args.duration, args.concurrency, args.connect_timeout)
                )
        else:
            pair_list = [(accounts[2 * p], accounts[2 * p + 1]) for p in range(pairs)]
            for i, chunk in enumerate(split(pair_list, args.procs)):
                flat = [a for pair in chunk for a in pair]
                specs.append(
                    WorkerSpec(
                        i,
                        "chat",
                        target,
                        flat,
                        args.duration,
                        args.concurrency,
                        args.connect_timeout,
                        rate_per_pair=args.rate / pairs,
                        drain=args.drain,
                        run_tag=f"{run_tag}{i}",
                    )
                )
        raw = run_workers(args, specs, args.server_pid)
        return summarize(args, raw, {"duration": args.duration, "accounts": prep, "notes": notes})
    finally:
        if node is not None:
            node.stop()
            if keyspace:
                drop_keyspace(os.environ["MESSENGER_TEST_CASSANDRA"], keyspace)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(render(result), file=sys.stderr)
        print(json.dumps(result))
    else:
        print(render(result))
    ok = not result["failures"] and (
        result.get("held") == result.get("requested")
        if args.scenario == "sessions"
        else result.get("delivered") == result.get("accepted") == result.get("attempted")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
