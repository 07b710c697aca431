"""Start a real Crossbar node for tests, from the shipped node config with test ports and paths."""

from __future__ import annotations

import copy
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CROSSBAR = Path(sys.executable).with_name("crossbar")
SHIPPED_CONFIG = ROOT / ".crossbar" / "config.json"
READY_MARKERS = ("auth", "chat", "delivery", "media", "push")


def ready_markers(profile: str, env: dict[str, str]) -> tuple[str, ...]:
    """The components that must say "ready": media only where it has a store (embedded, or an S3
    bucket in the environment; without one it stays disabled, e.g. in benchmark runs)."""
    if profile == "embedded" or env.get("MESSENGER_S3_BUCKET"):
        return READY_MARKERS
    return tuple(m for m in READY_MARKERS if m != "media")


# rate limits relaxed so that the suite's many logins from 127.0.0.1 pass; tests of the
# limits start their own node with tight ones
RELAXED_LIMITS = {
    "login_per_ip": [100000, 60000],
    "login_per_username": [1000, 60000],
    "register_per_ip": [100000, 60000],
    "refresh_per_ip": [100000, 60000],
    "send_per_window": 100000,
    "send_window_ms": 1000,
    "uploads_per_window": 100000,
}


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free TCP port on 127.0.0.1 *below* the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) may be taken again by any outgoing connection (the load generator's
    thousands, a client's) before the server that was given it binds it; seen as "Address
    already in use" for a router shard in a full run."""
    hi = min(_ephemeral_low() - 1, 32000)
    for _ in range(200):
        port = random.randint(max(1024, hi - 12000), hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything tried was taken: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Node:
    """A Crossbar node in ``workdir``. ``extra`` is merged into the auth component's extra."""

    def __init__(
        self,
        workdir: Path,
        *,
        profile: str = "embedded",
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cbdir = workdir / "node"
        self.data_dir = workdir / "var"
        self.profile = profile
        self.ws_port = free_port()
        self.metrics_port = free_port()
        self.auth_http_port = free_port()
        self.extra = extra or {}
        self.env = env or {}
        self._proc = _Proc(self.cbdir, "node.log")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = json.loads(SHIPPED_CONFIG.read_text())
        sock = str(self.data_dir / "router.sock")
        for worker in cfg["workers"]:
            worker.setdefault("options", {})["pythonpath"] = [str(ROOT)]
            if worker["type"] == "router":
                for t in worker["transports"]:
                    if t["id"] == "clients":
                        t["endpoint"]["port"] = self.ws_port
                        t["paths"]["/"]["extra"]["auth_http"]["port"] = self.auth_http_port
                    elif t["id"] == "backends":
                        t["endpoint"]["path"] = sock
                    elif t["id"] == "router_metrics":
                        t["endpoint"]["port"] = self.metrics_port
            if worker["type"] == "container":
                for c in worker["components"]:
                    c["transport"]["endpoint"]["path"] = sock
                    extra = c["extra"]
                    extra["profile"] = self.profile
                    extra["data_dir"] = str(self.data_dir)
                    extra["http"] = {"port": self.auth_http_port, "interface": "127.0.0.1"}
                    extra["limits"] = copy.deepcopy(RELAXED_LIMITS)
                    extra["public_url"] = f"http://127.0.0.1:{self.ws_port}"  # media URLs (embedded)
                    extra.update(copy.deepcopy(self.extra))
        return cfg

    def start(self, timeout: float = 60.0) -> Node:
        """Start and block until ready (for fixtures that run outside the reactor)."""
        self._spawn()
        deadline = time.monotonic() + timeout
        while not self._ready(deadline):
            time.sleep(0.1)
        return self

    async def start_async(self, within: float = 60.0) -> Node:
        """Start and wait without blocking the reactor (when the test process itself serves
        something the node needs, e.g. a relay in front of a dependency)."""
        from twisted.internet import reactor, task

        self._spawn()
        deadline = time.monotonic() + within
        while not self._ready(deadline):
            await task.deferLater(reactor, 0.1, lambda: None)
        return self

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc.start_crossbar(self.config(), self.env)

    def _ready(self, deadline: float) -> bool:
        failure: str | None = None
        if self._proc.exited():
            failure = f"crossbar exited; log:\n{self.log_tail()}"
        elif all(f"{c} component ready" in self.log_text() for c in ready_markers(self.profile, self.env)):
            wait_port(self.ws_port, max(1.0, deadline - time.monotonic()))
            return True
        elif time.monotonic() > deadline:
            failure = f"node not ready in time; log:\n{self.log_tail()}"
        if failure:
            self.stop()
            raise RuntimeError(failure)
        return False

    def log_text(self) -> str:
        return self._proc.log_text()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> None:
        self._proc.stop()


@dataclass
class _Shard:
    proc: _Proc
    ws_port: int = field(default_factory=free_port)
    backend_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"


class SplitNodes:
    """The shipped distributed configs: ``shards`` router nodes (``config/distributed/router``)
    and one components process (``python -m common.runner config/distributed/components.json``)
    joined to every router over the ticket-authenticated TCP backend transport."""

    def __init__(
        self, workdir: Path, env: dict[str, str], extra: dict[str, Any] | None = None, shards: int = 1
    ) -> None:
        self.workdir = workdir
        # the backend transport's shared secret: the given one, else a fresh one
        self.env = {"MESSENGER_BACKEND_TICKET": secrets.token_hex(16), **env}
        self.backend_ticket = self.env["MESSENGER_BACKEND_TICKET"]
        self.extra = extra or {}
        self.auth_http_port = free_port()
        self.shards = [_Shard(_Proc(workdir / f"router{i}", f"router{i}.log")) for i in range(shards)]
        self.components = _Proc(workdir / "components", "components.log")
        self.more_components: list[_Proc] = []

    @property
    def router(self) -> _Proc:
        return self.shards[0].proc

    @property
    def url(self) -> str:
        return self.shards[0].url

    @property
    def backend_port(self) -> int:
        return self.shards[0].backend_port

    def _router_config(self, shard: _Shard) -> dict[str, Any]:
        router: dict[str, Any] = json.loads((ROOT / "config/distributed/router/config.json").read_text())
        for worker in router["workers"]:
            worker["options"]["pythonpath"] = [str(ROOT)]
            for t in worker["transports"]:
                if t["id"] == "clients":
                    t["endpoint"].update(port=shard.ws_port, interface="127.0.0.1")
                    t["paths"]["/"]["extra"]["auth_http"]["port"] = self.auth_http_port
                elif t["id"] == "backends":
                    t["endpoint"]["port"] = shard.backend_port
                elif t["id"] == "router_metrics":
                    t["endpoint"]["port"] = shard.metrics_port
        return router

    def _components_config(self) -> dict[str, Any]:
        comps: dict[str, Any] = json.loads((ROOT / "config/distributed/components.json").read_text())
        comps["router"].pop("url", None)
        comps["router"]["urls"] = [f"rs://127.0.0.1:{s.backend_port}" for s in self.shards]
        for c in comps["components"]:
            c["extra"]["http"]["port"] = self.auth_http_port
            c["extra"]["limits"] = copy.deepcopy(RELAXED_LIMITS)
            c["extra"].update(copy.deepcopy(self.extra))
        return comps

    def start(self, timeout: float = 60.0) -> SplitNodes:
        for shard in self.shards:
            shard.proc.start_crossbar(self._router_config(shard), self.env)
        for shard in self.shards:
            wait_port(shard.ws_port, timeout)
        self.components.start_runner(self._components_config(), self.env)
        deadline = time.monotonic() + timeout
        needed = len(self.shards)
        markers = ready_markers("distributed", self.env)
        while not all(self.components.log_text().count(f"{c} component ready") >= needed for c in markers):
            if time.monotonic() > deadline or self.components.exited():
                self.stop()
                raise RuntimeError(f"components not ready; log:\n{self.components.log_text()[-4000:]}")
            time.sleep(0.1)
        return self

    def restart_router(self, index: int = 0) -> None:
        shard = self.shards[index]
        shard.proc.stop()
        shard.proc.start_crossbar(self._router_config(shard), self.env)
        wait_port(shard.ws_port, 30)

    def add_components(self) -> _Proc:
        """One more components process joined to every shard (started, not waited for)."""
        n = len(self.more_components) + 1
        proc = _Proc(self.workdir / f"components{n}", f"components{n}.log")
        config = self._components_config()
        port = free_port()  # its own HTTP port (metrics, JWKS) on this host
        for c in config["components"]:
            c["extra"]["http"]["port"] = port
        proc.start_runner(config, self.env)
        self.more_components.append(proc)
        return proc

    def kill_router(self, index: int) -> None:
        """SIGKILL the shard's node (controller and router worker): no goodbye to anyone."""
        self.shards[index].proc.kill()

    def start_router(self, index: int) -> None:
        shard = self.shards[index]
        shard.proc.start_crossbar(self._router_config(shard), self.env)
        wait_port(shard.ws_port, 30)

    def stop(self) -> None:
        for proc in [self.components, *self.more_components]:
            proc.stop()
        for shard in self.shards:
            shard.proc.stop()


FLOOR_CONFIG = ROOT / "bench" / "floor" / "config.json"


class BareNode:
    """A bare Crossbar router with no components (``bench/floor/config.json``: realm
    ``messenger``, anonymous role allowed everything): the load generator's floor."""

    def __init__(self, workdir: Path, config_path: Path = FLOOR_CONFIG) -> None:
        self.workdir = workdir
        self.config_path = config_path
        self.ws_port = free_port()
        self._proc = _Proc(workdir / "node", "node.log")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def pid(self) -> int | None:
        return self._proc.proc.pid if self._proc.proc is not None else None

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = json.loads(self.config_path.read_text())
        for worker in cfg["workers"]:
            for t in worker.get("transports", []):
                if t["id"] == "clients":
                    t["endpoint"].update(port=self.ws_port, interface="127.0.0.1")
        return cfg

    def start(self, timeout: float = 60.0) -> BareNode:
        self._proc.start_crossbar(self.config(), {})
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.exited():
                raise RuntimeError(f"crossbar exited; log:\n{self.log_text()[-4000:]}")
            try:
                wait_port(self.ws_port, 0.5)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"bare router not listening in time; log:\n{self.log_text()[-4000:]}") from None

    def log_text(self) -> str:
        return self._proc.log_text()

    def stop(self) -> None:
        self._proc.stop()


class _Proc:
    def __init__(self, cbdir: Path, log_name: str) -> None:
        self.cbdir = cbdir
        self.log_path = cbdir.parent / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start_crossbar(self, config: dict[str, Any], extra_env: dict[str, str]) -> None:
        self.cbdir.mkdir(parents=True, exist_ok=True)
        (self.cbdir / "config.json").write_text(json.dumps(config, indent=2))
        self._spawn([str(CROSSBAR), "start", "--cbdir", str(self.cbdir), "--loglevel", "info"], extra_env)

    def start_runner(self, config: dict[str, Any], extra_env: dict[str, str]) -> None:
        self.cbdir.mkdir(parents=True, exist_ok=True)
        path = self.cbdir / "components.json"
        path.write_text(json.dumps(config, indent=2))
        self._spawn([sys.executable, "-m", "common.runner", str(path)], extra_env)

    def _spawn(self, argv: list[str], extra_env: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
        env.update(extra_env)
        env["PYTHONPATH"] = str(ROOT)
        # readiness is judged on this start's lines only (a restart appends to the same log)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.cbdir), start_new_session=True
        )

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
