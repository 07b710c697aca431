"""Garbage-collection pauses, measured and made rarer.

``install()`` times every collection into a Prometheus histogram
(``messenger_gc_pause_seconds{generation}``) and logs a long one, so a latency tail can be told
apart from a GC stall (two ``perf_counter`` calls per collection). It also tunes the collector,
unless ``MESSENGER_GC=default``: the objects alive a few seconds after start-up (modules, classes,
configuration, the long-lived part of every process) are frozen out of all later collections, and
the young generation is collected every 10,000 net allocations instead of 700 (one full
collection when the process joins, before any traffic; objects made during start-up are frozen
5 s later without another full collection). Measured in the
note of issue 4: with CPython's defaults a full collection held a components process 60-90 ms and
a router worker 175-230 ms every few seconds under load. Idempotent."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from prometheus_client import Histogram
from twisted.logger import Logger

log = Logger(namespace="messenger.gc")

GC_PAUSE = Histogram(
    "messenger_gc_pause_seconds",
    "Time the garbage collector held the process, by generation",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LONG_PAUSE_S = 0.05
THRESHOLDS = (10_000, 10, 10)
FREEZE_AFTER_S = 5.0

_started: list[float] = []
_installed = [False]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
        return
    if not _started:
        return
    pause = time.perf_counter() - _started.pop()
    generation = str(info.get("generation", "?"))
    GC_PAUSE.labels(generation).observe(pause)
    if pause >= LONG_PAUSE_S:
        log.warn(
            "garbage collection of generation {generation} held the process {ms:.0f} ms ({collected} collected)",
            generation=generation,
            ms=pause * 1000,
            collected=info.get("collected"),
        )


def install(reactor: Any = None) -> None:
    if _installed[0]:
        return
    _installed[0] = True
    gc.callbacks.append(_on_gc)
    if os.environ.get("MESSENGER_GC", "tuned") == "default":
        return
    gc.set_threshold(*THRESHOLDS)
    # now, before any traffic: the one full collection; later only a freeze, which costs nothing
    # (a full collection 5 s after start held a router 100 ms in the middle of a benchmark)
    freeze(collect=True)
    if reactor is None:
        from twisted.internet import reactor
    reactor.callLater(FREEZE_AFTER_S, freeze)


def freeze(collect: bool = False) -> None:
    """Move every object alive now to the permanent generation (after one full collection if
    ``collect``: that one takes a while, ~100 ms in a router worker)."""
    if collect:
        gc.collect()
    gc.freeze()
    log.info("garbage collector: {n} start-up objects frozen, thresholds {t}", n=gc.get_freeze_count(), t=THRESHOLDS)
