"""Smoke runs of the load generator (bench/loadgen.py) against the embedded test node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import Node

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.node, pytest.mark.slow]


def loadgen(node: Node, accounts: Path, *args: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", *args, "--url", node.url, "--accounts", str(accounts), "--json"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"loadgen failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_sessions_scenario_holds_every_session(embedded_node: Node, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    args = ("sessions", "--sessions", "20", "--duration", "3", "--procs", "2", "--sources", "2")
    r = loadgen(embedded_node, accounts, *args)
    assert r["requested"] == 20
    assert r["held"] == 20
    assert r["dropped"] == 0 and r["failed"] == 0
    assert r["errors"] == {} and r["failures"] == []
    assert r["connect"]["sessions"] == 20 and r["connect"]["per_second"] > 0
    assert r["accounts"].get("registered") == 20
    # the cache is reused: no new account, no login the second time
    again = loadgen(embedded_node, accounts, *args)
    assert again["held"] == 20
    assert again["accounts"].get("cached") == 20 and "registered" not in again["accounts"]


def test_chat_scenario_delivers_every_message(embedded_node: Node, tmp_path: Path) -> None:
    args = ("chat", "--pairs", "3", "--rate", "20", "--duration", "3", "--procs", "2")
    r = loadgen(embedded_node, tmp_path / "accounts.json", *args)
    assert r["pairs"] == 3
    assert r["errors"] == {} and r["failures"] == [] and r["dropped"] == 0
    assert 50 <= r["attempted"] <= 70  # 20 msg/s for 3 s
    assert r["accepted"] == r["attempted"]
    assert r["delivered"] == r["accepted"] and r["undelivered"] == 0
    for figure in ("call_ms", "delivery_ms"):
        p = r[figure]
        assert p["n"] == r["accepted"]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"] < 10_000


def test_chat_scenario_refuses_to_exceed_the_send_limit(embedded_node: Node, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.loadgen", "chat", "--pairs", "2", "--rate", "100", "--url", embedded_node.url]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "send limit" in proc.stderr and "--pairs >= 6" in proc.stderr
