"""Smoke runs of the load generator (bench/loadgen.py): every scenario, a few sessions for a few
seconds, against the embedded test node, a bare Crossbar router (floor) and three router shards."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import Node

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.node, pytest.mark.slow]


def run_loadgen(*args: str, timeout: float = 240) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", *args, "--json"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"loadgen failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def loadgen(node: Node, accounts: Path, *args: str) -> dict[str, Any]:
    return run_loadgen(*args, "--url", node.url, "--accounts", str(accounts))


def assert_latency(p: dict[str, Any], n: int) -> None:
    assert p["n"] == n
    assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"] < 10_000


def assert_out_dir(out: Path, r: dict[str, Any], rows: int) -> None:
    with (out / "samples.csv").open() as f:
        samples = list(csv.DictReader(f))
    assert len(samples) == rows
    assert all(s["scenario"] == r["scenario"] and float(s["latency_ms"]) > 0 for s in samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == r["scenario"] and summary["accepted"] == r["accepted"]
    assert sum(row["accepted"] for row in summary["timeline"]) == r["accepted"]
    assert sum(row["delivered"] for row in summary["timeline"]) == r["delivered"]
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_all_delivered(r: dict[str, Any], attempted: tuple[int, int], fanout: int = 1) -> None:
    assert r["errors"] == {} and r["failures"] == [] and r["dropped"] == 0
    assert attempted[0] <= r["attempted"] <= attempted[1]
    assert r["accepted"] == r["attempted"]
    assert r["expected_deliveries"] == fanout * r["accepted"]
    assert r["delivered"] == r["expected_deliveries"] and r["undelivered"] == 0
    assert_latency(r["call_ms"], r["accepted"])
    assert_latency(r["delivery_ms"], r["delivered"])


def test_sessions_scenario_holds_every_session_with_heartbeats(embedded_node: Node, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    args = ("sessions", "--sessions", "20", "--duration", "3", "--heartbeat", "1", "--procs", "2", "--sources", "2")
    r = loadgen(embedded_node, accounts, *args)
    assert r["requested"] == 20
    assert r["held"] == 20
    assert r["dropped"] == 0 and r["failed"] == 0
    assert r["errors"] == {} and r["failures"] == []
    assert r["connect"]["sessions"] == 20 and r["connect"]["per_second"] > 0
    assert r["accounts"].get("registered") == 20
    hb = r["heartbeat"]
    assert 40 <= hb["sent"] <= 80  # 20 sessions, one ping a second, for 3 s
    assert hb["answered"] == hb["sent"] and hb["missed"] == 0
    assert_latency(hb["rtt_ms"], hb["sent"])
    # the cache is reused: no new account, no login the second time
    again = loadgen(embedded_node, accounts, *args)
    assert again["held"] == 20
    assert again["accounts"].get("cached") == 20 and "registered" not in again["accounts"]


def test_chat_scenario_delivers_every_message(embedded_node: Node, tmp_path: Path) -> None:
    args = ("chat", "--pairs", "3", "--rate", "20", "--duration", "3", "--procs", "2")
    r = loadgen(embedded_node, tmp_path / "accounts.json", *args)
    assert r["pairs"] == 3
    assert_all_delivered(r, (50, 70))  # 20 msg/s for 3 s


def test_chat_scenario_refuses_to_exceed_the_send_limit(embedded_node: Node, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.loadgen", "chat", "--pairs", "2", "--rate", "100", "--url", embedded_node.url]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "send limit" in proc.stderr and "--pairs >= 6" in proc.stderr


def test_group_scenario_fans_out_to_every_member(embedded_node: Node, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("group", "--groups", "2", "--group-size", "4", "--rate", "10", "--duration", "3", "--out", str(out))
    r = loadgen(embedded_node, tmp_path / "accounts.json", *args)
    assert r["groups"] == 2 and r["group_size"] == 4 and r["recipients_per_message"] == 3
    assert_all_delivered(r, (25, 35), fanout=3)
    assert r["delivered_per_s"] == pytest.approx(3 * r["accepted_per_s"], rel=0.01)
    assert_out_dir(out, r, r["delivered"])


def test_floor_scenario_on_a_bare_router_side_by_side_with_chat(embedded_node: Node, tmp_path: Path) -> None:
    floor_out, chat_out = tmp_path / "floor", tmp_path / "chat"
    same = ("--pairs", "3", "--rate", "20", "--duration", "3")
    floor = run_loadgen("floor", "--start", "floor", *same, "--out", str(floor_out))
    assert floor["pairs"] == 3 and floor["accounts"] == {}
    assert "server_rss" in floor and "server_cpu_seconds" in floor  # --start knows the router's pid
    assert_all_delivered(floor, (50, 70))
    assert_out_dir(floor_out, floor, floor["delivered"])

    chat = loadgen(embedded_node, tmp_path / "accounts.json", "chat", *same, "--out", str(chat_out))
    assert_all_delivered(chat, (50, 70))
    argv = [sys.executable, "-m", "bench.loadgen", "compare", "--from", str(chat_out), str(floor_out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines()[2:4]]
    assert rows == ["chat", "floor"]
    assert "at 20 msg/s: chat accepted/s ÷ floor's" in proc.stdout


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.cassandra
def test_cross_shard_scenario_on_three_shards(
    tmp_path: Path, pg_dsn: str, redis_url: str, cassandra_location: str
) -> None:
    args = ("cross-shard", "--start", "distributed", "--shards", "3", "--pairs", "3", "--rate", "20")
    r = run_loadgen(*args, "--duration", "3", "--accounts", str(tmp_path / "accounts.json"), timeout=400)
    assert len(r["urls"]) == 3 and len(set(r["urls"])) == 3
    assert r["pairs"] == 3, r.get("errors")
    assert_all_delivered(r, (50, 70))
    assert r["accounts"].get("registered") == 6  # a fresh database of its own


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.cassandra
def test_kill_shard_scenario_loses_nothing_acknowledged_and_clients_come_back(
    tmp_path: Path, pg_dsn: str, redis_url: str, cassandra_location: str
) -> None:
    args = ("kill-shard", "--start", "distributed", "--shards", "3", "--pairs", "6", "--rate", "20")
    r = run_loadgen(
        *args, "--duration", "4", "--kill-after", "1.5", "--accounts", str(tmp_path / "a.json"), timeout=400
    )
    k = r["kill"]
    assert k["killed"] and k["acknowledged_lost"] == 0, (k, r["errors"])
    assert k["clients_moved"] == 4 and k["clients_recovered"] == 4  # a third of the 12 were on shard 0
    assert k["recovery_ms"]["max"] < 5000
    assert r["accepted"] == r["attempted"] > 0, r["errors"]


def test_kill_shard_needs_a_node_it_started(embedded_node: Node) -> None:
    argv = [sys.executable, "-m", "bench.loadgen", "kill-shard", "--url", embedded_node.url]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--start distributed" in proc.stderr


def test_cross_shard_needs_several_routers(embedded_node: Node) -> None:
    argv = [sys.executable, "-m", "bench.loadgen", "cross-shard", "--url", embedded_node.url]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "several routers" in proc.stderr


def test_the_plot_library_is_loaded_only_for_out() -> None:
    code = (
        "import argparse, sys, bench.loadgen as lg\n"
        "lg.finish(argparse.Namespace(out=None), {'_samples': []})\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported without --out'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
