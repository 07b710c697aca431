"""The web client end to end: a real embedded node serving the built client (web/dist), two and
then three users in Chromium driven by playwright-core (web/e2e/run.mjs), and a drain of the
node; the Web Push opt-in (web/e2e/push.mjs) against the node with Web Push configured and the
Web Push stand-in (tests/support/push_standins.py), which decrypts what the node sends.
Screenshots go to var/test-artifacts/web/; docs/screenshots/chat.png is refreshed from them when
it is missing or MESSENGER_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import ROOT, Node
from tests.support.push_standins import WebPushStandin, vapid_keypair

pytestmark = [pytest.mark.node, pytest.mark.web, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "var" / "test-artifacts" / "web"
README_SHOT = ROOT / "docs" / "screenshots" / "chat.png"


@pytest.fixture(scope="module")
def built() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js (node, npm) is needed for the web client: install Node.js 20 or later")
    subprocess.run([str(ROOT / "scripts" / "web"), "build"], check=True, timeout=300)
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `scripts/web chromium` installs it (the test command does)")


@pytest.fixture(scope="module")
def vapid() -> tuple[str, str]:
    return vapid_keypair()


@pytest.fixture(scope="module")
def webpush(vapid: tuple[str, str]) -> Iterator[WebPushStandin]:
    standin = WebPushStandin(vapid[1]).start()
    yield standin
    standin.stop()
    assert not standin.errors, standin.errors


@pytest.fixture(scope="module")
def web_node(built: None, vapid: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The node, with Web Push configured (VAPID key; the stand-in's loopback endpoints are allowed)."""
    vapid_private = vapid[0]
    push_config = {"webpush": {"subject": "mailto:ops@example.com", "ttl_s": 120}}
    node = Node(
        tmp_path_factory.mktemp("web"),
        profile="embedded",
        extra={"push": push_config},
        env={"MESSENGER_VAPID_PRIVATE_KEY": vapid_private},
    ).start()
    yield node
    node.stop()


def test_node_serves_the_built_client_and_keeps_its_other_paths(web_node: Node) -> None:
    base = f"http://127.0.0.1:{web_node.ws_port}"
    with urllib.request.urlopen(f"{base}/", timeout=5) as r:
        page = r.read().decode()
        assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    assert '<div id="app">' in page
    asset = page.split('src="', 1)[1].split('"', 1)[0]
    with urllib.request.urlopen(f"{base}{asset}", timeout=5) as r:
        assert r.status == 200 and "immutable" in r.headers["cache-control"]
    with urllib.request.urlopen(f"{base}/sw.js", timeout=5) as r:  # the service worker, at the root: scope /
        assert r.status == 200 and "javascript" in r.headers["content-type"]
        assert "showNotification" in r.read().decode()
    with urllib.request.urlopen(f"{base}/chats/anything", timeout=5) as r:  # SPA fallback
        assert '<div id="app">' in r.read().decode()
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
        assert r.status == 200 and r.headers["content-type"] == "application/json"
    with urllib.request.urlopen(f"{base}/.well-known/jwks.json", timeout=5) as r:
        assert r.status == 200


def run_e2e(script: str, node: Node, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``node web/e2e/<script>`` against ``node`` in Chromium; fails the test with both logs."""
    result = subprocess.run(
        [
            "node",
            str(ROOT / "web" / "e2e" / script),
            "--url",
            f"http://127.0.0.1:{node.ws_port}/",
            "--out",
            str(ARTIFACTS),
            "--chromium",
            str(CHROMIUM),
            *args,
        ],
        cwd=ROOT / "web",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(result.stdout)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nnode log:\n{node.log_tail()}"
    return result


def test_two_users_chat_in_the_browser_offline_and_back(web_node: Node) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run_e2e(
        "run.mjs",
        web_node,
        # the router's private port: the e2e drains the node and cancels the drain
        "--metrics",
        f"http://127.0.0.1:{web_node.metrics_port}",
        timeout=150,
    )
    print(f"e2e took {time.monotonic() - started:.1f} s")
    for name in ("login", "chat-list", "typing", "chat", "offline", "after-reconnect"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
    if not README_SHOT.exists() or os.environ.get("MESSENGER_UPDATE_SCREENSHOTS") == "1":
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "chat.png", README_SHOT)


def test_web_push_opt_in_and_pushes_to_the_closed_browser(web_node: Node, webpush: WebPushStandin) -> None:
    """Alice opts in (the browser's subscribe is faked to answer a stand-in subscription with a real
    key pair), closes the page, Bob writes: the stand-in gets her push and decrypts Bob's message.
    After a new login (a new device) the app registers the subscription again; after her opt-out
    nothing more is pushed."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sub = webpush.subscribe()
    started = time.monotonic()
    result = run_e2e(
        "push.mjs",
        web_node,
        "--subscription",
        json.dumps(sub.as_json()),
        "--vapid",
        webpush.vapid_public_key,
        timeout=90,
    )
    lines = result.stdout.splitlines()
    expected = [json.loads(line[len("RESULT ") :]) for line in lines if line.startswith("RESULT ")]
    not_pushed = [json.loads(line[len("NOT_PUSHED ") :]) for line in lines if line.startswith("NOT_PUSHED ")]
    assert len(expected) == 2 and len(not_pushed) == 1, result.stdout
    deadline = time.monotonic() + 10
    while len(webpush.delivered(sub)) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the opted-out message had as long to arrive as the others: it must not
    pushes = webpush.delivered(sub)
    assert [p.body["body"] for p in pushes] == [e["body"] for e in expected], (pushes, webpush.errors)
    for push, want in zip(pushes, expected, strict=True):
        body = push.body  # decrypted with the subscription's private key and auth secret
        assert body["title"] == want["title"] and body["type"] == "message.new", body
        assert body["chat_id"] == want["chat_id"] and body["tag"] == want["chat_id"], body
        assert push.headers["topic"] == want["chat_id"]
    print(f"push e2e took {time.monotonic() - started:.1f} s")
