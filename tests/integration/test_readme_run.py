"""The embedded default started exactly as the README says (`scripts/run`), a client logging in,
and Ctrl-C stopping it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from realms import uris
from tests.integration.helpers import PASSWORD, new_username
from tests.support.client import connect
from tests.support.node import ROOT

pytestmark = [pytest.mark.node, pytest.mark.slow]

URL = "ws://127.0.0.1:8080/ws"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def readme_node(tmp_path):
    if port_open(8080):
        pytest.fail("something already listens on 127.0.0.1:8080; stop it to run this test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    env["MESSENGER_DATA_DIR"] = str(tmp_path / "var")
    log = open(tmp_path / "run.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    yield proc, started, tmp_path
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest_twisted.ensureDeferred
async def test_scripts_run_serves_a_messenger_a_client_can_register_and_log_into(readme_node):
    proc, started, tmp_path = readme_node
    name = new_username("readme")
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        try:
            guest = await connect(URL)
            await guest.call(uris.AUTH_REGISTER, username=name, password=PASSWORD)
            break
        except Exception:
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            await task.deferLater(reactor, 0.2, lambda: None)
    ready_after = time.monotonic() - started
    tokens = await guest.call(uris.AUTH_LOGIN, username=name, password=PASSWORD)
    await guest.close()
    user = await connect(URL, ticket=tokens["access_token"])
    assert (await user.call(uris.USER_ME))["username"] == name
    await user.close()
    assert (tmp_path / "var" / "accounts.sqlite3").exists()
    print(f"embedded messenger answered a registration {ready_after:.1f} s after `scripts/run`")

    # Ctrl-C: SIGINT to the foreground process group
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert not port_open(8080)
