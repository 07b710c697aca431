"""The load generator's ``--out DIR`` files: ``samples.csv`` (one row per delivered message, or
per answered heartbeat in the ``sessions`` scenario), ``summary.json`` (the printed figures and
the per-second timeline) and ``latency.png`` (send → receipt p50/p99 per second, and accepted and
delivered msg/s). matplotlib is imported here only, so only runs with ``--out`` need it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("scenario", "kind", "send_time", "latency_ms")


def write(out_dir: Path, summary: dict[str, Any], samples: list[tuple[float, float]]) -> list[Path]:
    """Write the three files into ``out_dir`` (made if missing); answers their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario = summary["scenario"]
    kind = "heartbeat" if scenario == "sessions" else "delivery"
    csv_path = out_dir / "samples.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for sent, ms in sorted(samples):
            w.writerow((scenario, kind, f"{sent:.6f}", f"{ms:.3f}"))
    json_path = out_dir / "summary.json"
    json_path.write_text(json.dumps(summary, indent=1))
    png_path = out_dir / "latency.png"
    plot(summary, png_path)
    return [csv_path, json_path, png_path]


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.get("timeline") or []
    ts = [r["t"] + 0.5 for r in rows]  # each row is the second [t, t + 1)
    sessions = summary["scenario"] == "sessions"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    what = "heartbeat round trip" if sessions else "send → recipient receipt"
    for key, style in (("p50", "-"), ("p99", "-"), ("max", ":")):
        points = [(r["t"], r[key]) for r in rows if r[key] is not None]
        if points:
            top.plot([t + 0.5 for t, _ in points], [v for _, v in points], style, marker=".", label=key)
    values = [r["p99"] for r in rows if r["p99"] is not None] + [r["p50"] for r in rows if r["p50"] is not None]
    if values and min(values) > 0 and max(values) / min(values) > 30:
        top.set_yscale("log")
    top.set_ylabel(f"{what} (ms)")
    top.grid(True, alpha=0.3)
    if top.get_legend_handles_labels()[0]:
        top.legend(loc="best", fontsize="small", framealpha=0.8)
    if sessions:
        bottom.bar(ts, [r["sent_n"] for r in rows], width=0.8, label="heartbeats answered / s")
    else:
        bottom.bar(ts, [r["accepted"] for r in rows], width=0.8, alpha=0.6, label="accepted msg/s")
        bottom.plot(ts, [r["delivered"] for r in rows], color="C3", marker=".", label="deliveries/s")
        target = summary.get("target_rate")
        if target:
            bottom.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g} msg/s")
    bottom.set_ylabel("per second")
    bottom.set_xlabel("seconds since the start of the measured phase")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="best", fontsize="small", framealpha=0.8)
    title = f"loadgen {summary['scenario']}: {summary.get('url', '')}"
    if not sessions:
        d = summary.get("delivery_ms", {})
        if d.get("n"):
            title += f"\n{summary['accepted_per_s']} msg/s accepted; p50 {d['p50']:.1f} / p99 {d['p99']:.1f} ms"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
