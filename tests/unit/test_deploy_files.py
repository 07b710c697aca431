"""Static checks of the deployment files (deploy/): no container engine or cluster is needed.

The Dockerfile, the Compose files and the Kubernetes manifests are parsed and checked against
the repository: COPY sources exist, stages exist, the roles start the configs they name, the
ports and health path are the node configs', every environment variable a container gets is
one the code reads, references between objects resolve. The rendered container configs pass
``crossbar check`` and the Compose balancer config passes ``haproxy -c`` (when installed).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ROUTER_CONFIG = ROOT / "config/distributed/router/config.json"
COMPONENTS_CONFIG = ROOT / "config/distributed/components.json"
SESSION_BYTES = 25 * 1024  # README: 24.3 KiB of server RSS per session, measured
SESSIONS_PER_SHARD = 20_000  # README / haproxy.cfg: maxconn 20000 per shard


def _entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_entrypoint", DEPLOY / "entrypoint.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entrypoint = _entrypoint()


# --- what the code reads ------------------------------------------------------------------------


def _router_transports() -> dict[str, dict[str, Any]]:
    config = json.loads(ROUTER_CONFIG.read_text())
    return {t["id"]: t for w in config["workers"] if w["type"] == "router" for t in w["transports"]}


def _config_env_names(node: Any) -> set[str]:
    """Values of ``*_env`` keys and ``${VAR}`` placeholders in a node/components config."""
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_env") and isinstance(value, str):
                names.add(value)
            names |= _config_env_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _config_env_names(value)
    elif isinstance(node, str):
        names |= set(re.findall(r"\$\{([A-Z0-9_]+)\}", node))
    return names


def env_names_read() -> set[str]:
    """Every MESSENGER_* name in the code that runs in the image (string literals), the configs'
    ``*_env`` names and placeholders."""
    names: set[str] = set()
    sources = [p for d in ("common", "components", "router", "realms") for p in (ROOT / d).rglob("*.py")]
    sources += [DEPLOY / "entrypoint.py", ROOT / "scripts/drain"]
    for path in sources:
        names |= set(re.findall(r"[\"'](MESSENGER_[A-Z0-9_]+)[\"']", path.read_text()))
    for config in (ROUTER_CONFIG, COMPONENTS_CONFIG, ROOT / ".crossbar/config.json"):
        names |= _config_env_names(json.loads(config.read_text()))
    return names


NOT_FOR_DEPLOYMENT = {"MESSENGER_BENCHMARK_WEAK_HASHING"}  # weak argon2 for benchmarks only


def readme_distributed_env() -> set[str]:
    """The environment variables of the README's "Distributed" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Distributed", 1)[1].split("\n### ", 1)[0]
    return {
        n for line in section.splitlines() if line.startswith("| `") for n in re.findall(r"`(MESSENGER_\w+)`", line)
    }


def test_the_code_reads_the_names_we_rely_on():
    read = env_names_read()
    assert readme_distributed_env() <= read
    assert {"MESSENGER_ROUTER_URLS", "MESSENGER_AUTH_HTTP_HOST", "MESSENGER_VAPID_SUBJECT"} <= read


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    assert not pending, "a continuation line runs off the end"
    return out


def copies() -> list[tuple[str | None, list[str], str]]:
    """(stage or None, sources, destination) of every COPY."""
    out = []
    for op, args in dockerfile():
        if op != "COPY":
            continue
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        out.append((stage, paths[:-1], paths[-1]))
    return out


def runtime_files() -> dict[str, str]:
    """Source (repo path) -> path in the final image, for COPYs into the last stage."""
    stages = [i for i, (op, _) in enumerate(dockerfile()) if op == "FROM"]
    last = dockerfile()[stages[-1] :]
    workdir = "/"
    mapped = {}
    for op, args in last:
        if op == "WORKDIR":
            workdir = args
        if op == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            for src in words[:-1]:
                dest = words[-1]
                full = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
                mapped[src] = full
    return mapped


def test_dockerfile_stages_exist_and_base_images_are_pinned_by_tag():
    stages = []
    for op, args in dockerfile():
        if op == "FROM":
            words = args.split()
            image = words[0]
            assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {args}"
            stages.append(words[2])
    assert len(stages) >= 3 and len(set(stages)) == len(stages)
    assert any(a.startswith("node:20") for op, a in dockerfile() if op == "FROM")
    assert any(a.startswith("python:3.11-slim") for op, a in dockerfile() if op == "FROM")
    seen: list[str] = []
    for op, args in dockerfile():
        if op == "FROM":
            seen.append(args.split()[2])
        if op == "COPY" and "--from=" in args:
            ref = re.search(r"--from=(\S+)", args)
            assert ref and ref.group(1) in seen[:-1], f"COPY from an unknown or later stage: {args}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(Path(p).name, bare) for p in prefixes):
            return True
    return False


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_copy_source_exists_and_is_in_the_build_context():
    patterns = dockerignore()
    for stage, sources, _ in copies():
        if stage is not None:
            continue
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source missing from the repository: {src}"
            assert not _dockerignored(src, patterns), f"COPY source excluded by .dockerignore: {src}"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context():
    patterns = dockerignore()
    for path in (".venv", "var", ".services", "web/node_modules", ".git", "deploy/.env", "web/dist"):
        assert _dockerignored(path, patterns), path


def test_the_image_holds_what_each_role_starts():
    files = runtime_files()
    assert files["deploy/entrypoint.py"] == "/app/deploy/entrypoint.py"
    assert files["scripts/drain"] == "/app/scripts/drain"  # the k8s preStop hook runs it
    for config in entrypoint.ROLES.values():
        # each role's config is copied (itself or its folder) to the same place under /app
        copied = [src for src in files if config == src or config.startswith(src.rstrip("/") + "/")]
        assert copied, f"{config} is not in the image"
        for src in copied:
            assert files[src] == f"/app/{src}"
    # the code those configs load
    for package in ("common", "components", "realms", "router"):
        assert files.get(package) == f"/app/{package}"
    web = [(stage, dest) for stage, srcs, dest in copies() if stage and any(s.endswith("web/dist") for s in srcs)]
    assert web == [("web", "./web/dist")]
    instructions = dict(dockerfile())
    assert "/app/deploy/entrypoint.py" in instructions["ENTRYPOINT"]
    assert json.loads(instructions["CMD"])[0] in entrypoint.ROLES
    # the stage that builds web/dist runs the web client's own build
    assert "npm ci" in (DEPLOY / "Dockerfile").read_text() and "npm run build" in (DEPLOY / "Dockerfile").read_text()


def test_roles_start_the_shipped_configs_with_the_right_programs():
    assert entrypoint.ROLES == {
        "router": "config/distributed/router/config.json",
        "components": "config/distributed/components.json",
        "embedded": ".crossbar/config.json",
    }
    for config in entrypoint.ROLES.values():
        assert (ROOT / config).is_file()
    text = (DEPLOY / "entrypoint.py").read_text()
    assert '"-m", "common.runner"' in text and '"crossbar", "start", "--cbdir"' in text


def test_exposed_ports_are_the_node_configs_ports():
    exposed = {int(p.split("/")[0]) for op, args in dockerfile() if op == "EXPOSE" for p in args.split()}
    transports = _router_transports()
    components = json.loads(COMPONENTS_CONFIG.read_text())["components"]
    http_ports = {c["extra"]["http"]["port"] for c in components}
    expected = {transports[t]["endpoint"]["port"] for t in ("clients", "backends", "router_metrics")} | http_ports
    assert exposed == expected
    assert (entrypoint.CLIENT_PORT, entrypoint.BACKEND_PORT, entrypoint.METRICS_PORT) == tuple(
        transports[t]["endpoint"]["port"] for t in ("clients", "backends", "router_metrics")
    )
    assert http_ports == {entrypoint.COMPONENTS_HTTP_PORT}
    assert entrypoint.DRAIN_PORT not in exposed  # loopback only


def test_runs_as_non_root_with_a_healthcheck_on_the_health_path():
    instructions = dockerfile()
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert len(health) == 1 and "entrypoint.py" in health[0] and "healthcheck" in health[0]
    from router.web import HEALTH_PATH

    assert entrypoint.HEALTH["router"] == f"http://127.0.0.1:{entrypoint.CLIENT_PORT}/{HEALTH_PATH.decode()}"
    assert ["/data"] == [json.loads(a)[0] for op, a in instructions if op == "VOLUME"]


# --- rendered container configs ------------------------------------------------------------------


def test_rendered_router_config_opens_the_backend_and_keeps_drain_on_loopback():
    config = entrypoint.render("router", {"MESSENGER_AUTH_HTTP_HOST": "components"})
    (worker,) = config["workers"]
    t = {x["id"]: x for x in worker["transports"]}
    assert t["clients"]["endpoint"]["interface"] == "0.0.0.0"
    assert t["backends"]["endpoint"]["interface"] == "0.0.0.0"
    assert "ticket" in t["backends"]["auth"] and "anonymous" not in t["backends"]["auth"]
    assert t["router_metrics"]["endpoint"] == {"type": "tcp", "interface": "0.0.0.0", "port": 9100}
    assert set(t["router_metrics"]["paths"]["/"]["paths"]) == {"metrics"}
    assert t["router_drain"]["endpoint"]["interface"] == "127.0.0.1"
    assert t["router_drain"]["endpoint"]["port"] == entrypoint.DRAIN_PORT
    assert set(t["router_drain"]["paths"]["/"]["paths"]) == {"drain"}
    root = t["clients"]["paths"]["/"]["extra"]
    assert root["auth_http"] == {"host": "components", "port": 8091}
    assert Path(root["web_dir"]).is_absolute() and worker["options"]["pythonpath"] == [str(ROOT)]


def test_rendered_components_and_embedded_configs():
    env = {"MESSENGER_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2", "MESSENGER_RUN_DIR": "/run/x"}
    comps = entrypoint.render("components", env)
    auth = comps["components"][0]["extra"]
    assert auth["trusted_proxies"] == ["10.0.0.1", "10.0.0.2"]
    assert {c["extra"]["http"]["interface"] for c in comps["components"]} == {"0.0.0.0"}
    embedded = entrypoint.render("embedded", {**env, "MESSENGER_PUBLIC_URL": "https://chat.example.com"})
    router, container = embedded["workers"]
    assert {x["id"]: x for x in router["transports"]}["backends"]["endpoint"]["path"] == "/run/x/router.sock"
    for c in container["components"]:
        assert c["transport"]["endpoint"]["path"] == "/run/x/router.sock"
        assert c["extra"]["data_dir"] == "/data"
    media = next(c for c in container["components"] if c["id"] == "media")
    assert media["extra"]["public_url"] == "https://chat.example.com"
    # the shipped files themselves are untouched
    assert json.loads(ROUTER_CONFIG.read_text())["workers"][0]["transports"][1]["endpoint"]["interface"] == "127.0.0.1"


@pytest.mark.slow
@pytest.mark.parametrize("role", ["router", "embedded"])
def test_rendered_node_configs_pass_crossbar_check(role, tmp_path):
    crossbar = Path(sys.executable).with_name("crossbar")
    if not crossbar.exists():
        pytest.skip("crossbar not installed next to this python")
    cbdir = tmp_path / role
    cbdir.mkdir()
    (cbdir / "config.json").write_text(json.dumps(entrypoint.render(role, {"MESSENGER_RUN_DIR": str(tmp_path)})))
    env = {**os.environ, "MESSENGER_BACKEND_TICKET": "check-only"}
    done = subprocess.run(
        [str(crossbar), "check", "--cbdir", str(cbdir)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_components_wait_for_every_shard_named_in_the_environment(monkeypatch):
    monkeypatch.setenv("MESSENGER_ROUTER_URLS", "rs://router1:8081, rs://router2:8081")
    config = entrypoint.render("components", {})
    assert entrypoint.router_addresses(config) == [("router1", 8081), ("router2", 8081)]


# --- Compose ----------------------------------------------------------------------------------------


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return data


def ours(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the messenger image."""
    return {n: s for n, s in services.items() if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize("name", ["compose.yaml", "compose.embedded.yaml"])
def test_compose_services_run_known_roles_with_env_the_code_reads(name):
    services = compose(name)["services"]
    mine = ours(services)
    assert mine
    read = env_names_read()
    for svc_name, svc in mine.items():
        assert svc["command"][0] in entrypoint.ROLES, svc_name
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
        assert (DEPLOY / svc["build"]["context"]).resolve() == ROOT
        names = set(env_of(svc))
        assert names <= read, f"{svc_name}: variables no code reads: {names - read}"
        assert not names & NOT_FOR_DEPLOYMENT
        assert svc["healthcheck"]["test"][-2:] == ["/app/deploy/entrypoint.py", "healthcheck"]
    for svc_name, svc in services.items():
        for target in svc.get("depends_on") or {}:
            assert target in services, f"{svc_name} depends on unknown {target}"
        deps = svc.get("depends_on") or {}
        if isinstance(deps, dict):
            for target, cond in deps.items():
                if cond["condition"] == "service_healthy":
                    assert "healthcheck" in services[target] or target in mine, f"{target} has no healthcheck"
        for volume in svc.get("volumes") or []:
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{svc_name} mounts missing {src}"


def test_compose_distributed_profile_layout():
    services = compose()["services"]
    mine = ours(services)
    routers = sorted(n for n, s in mine.items() if s["command"] == ["router"])
    comps = [s for s in mine.values() if s["command"] == ["components"]]
    assert len(routers) >= 2 and len(comps) == 1
    (components,) = comps
    assert (components.get("deploy") or {}).get("replicas", 1) >= 2
    env = env_of(components)
    # every variable of the README's table is given to the components
    assert readme_distributed_env() <= set(env)
    assert env["MESSENGER_ROUTER_URLS"].split(",") == [f"rs://{r}:{entrypoint.BACKEND_PORT}" for r in routers]
    # the components wait for the datastores, the bucket and every shard
    deps = components["depends_on"]
    for target in ("postgres", "redis", "cassandra", *routers):
        assert deps[target]["condition"] == "service_healthy"
    assert deps["minio-setup"]["condition"] == "service_completed_successfully"
    # the balancer lists every shard service by name on the clients port, and is the trusted proxy
    cfg = (DEPLOY / "haproxy/haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+):(\d+)", cfg, flags=re.M)
    assert sorted((name, host) for name, host, _ in servers) == [(r, r) for r in routers]
    assert {int(port) for *_, port in servers} == {entrypoint.CLIENT_PORT}
    assert "option httpchk GET /healthz" in cfg
    haproxy = services["haproxy"]
    assert haproxy["networks"]["messenger"]["ipv4_address"] == env["MESSENGER_TRUSTED_PROXIES"].split()[0]
    assert {d for d in haproxy["depends_on"]} == set(routers)
    for r in routers:
        assert env_of(mine[r])["MESSENGER_AUTH_HTTP_HOST"] in services


def _interpolated(text: str) -> tuple[set[str], set[str]]:
    """(names used without a default, names used with one) in ${...} of a Compose file."""
    bare: set[str] = set()
    defaulted: set[str] = set()
    for name, op in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?+]?)", text):
        (defaulted if op.endswith("-") else bare).add(name)
    return bare, defaulted


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_env_example_defines_every_required_variable_and_no_real_secret():
    example = env_example()
    bare, defaulted = _interpolated((DEPLOY / "compose.yaml").read_text())
    assert bare <= set(example), f"not in .env.example: {bare - set(example)}"
    assert set(example) <= bare | defaulted, f"unused in compose.yaml: {set(example) - bare - defaulted}"
    for key, value in example.items():
        if re.search(r"TICKET|SECRET|PASSWORD", key):
            assert value in ("", "CHANGE-ME"), f"{key} must be a placeholder in .env.example"
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_compose_haproxy_config_passes_haproxy_check():
    done = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(DEPLOY / "haproxy/haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Kubernetes ------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for name in kustomization()["resources"]:
        objects += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return objects


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return spec


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest():
    listed = kustomization()["resources"]
    files = sorted(p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml") and p.stem != "kustomization")
    assert sorted(listed) == files and len(set(listed)) == len(listed)
    assert kustomization()["namespace"] == one("Namespace")["metadata"]["name"]


def test_every_object_is_well_formed():
    for o in k8s_objects():
        assert o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o
    kinds = {o["kind"] for o in k8s_objects()}
    assert {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Service", "Deployment", "PodDisruptionBudget"} <= kinds
    # datastores are external: the only StatefulSet is the router's
    assert [o["metadata"]["name"] for o in k8s_objects() if o["kind"] == "StatefulSet"] == ["messenger-router"]


def test_selectors_match_pod_labels_and_services_target_exposed_ports():
    for w in workloads():
        assert matches(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
    for svc in (o for o in k8s_objects() if o["kind"] == "Service"):
        targets = [
            w for w in workloads() if matches(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in containers(targets[0]) for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), (svc["metadata"]["name"], target)
    for pdb in (o for o in k8s_objects() if o["kind"] == "PodDisruptionBudget"):
        labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads()]
        assert any(matches(pdb["spec"]["selector"]["matchLabels"], lab) for lab in labels)
    policy = one("NetworkPolicy")
    names = {p["name"] for w in workloads() for c in containers(w) for p in c["ports"]}
    for rule in policy["spec"]["ingress"]:
        assert all(p["port"] in names for p in rule["ports"])


def test_container_ports_are_the_node_configs_ports():
    transports = _router_transports()
    router = one("StatefulSet", "messenger-router")
    (c,) = containers(router)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "clients": transports["clients"]["endpoint"]["port"],
        "backends": transports["backends"]["endpoint"]["port"],
        "metrics": transports["router_metrics"]["endpoint"]["port"],
    }
    comps = one("Deployment", "messenger-components")
    (cc,) = containers(comps)
    assert [p["containerPort"] for p in cc["ports"]] == [entrypoint.COMPONENTS_HTTP_PORT]
    assert c["args"] == ["router"] and cc["args"] == ["components"]
    # Prometheus scrapes a port the pod has
    for w, port in ((router, ports["metrics"]), (comps, entrypoint.COMPONENTS_HTTP_PORT)):
        annotations = w["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"


def test_router_shards_have_stable_names_the_components_join():
    ns = kustomization()["namespace"]
    router = one("StatefulSet", "messenger-router")
    headless = one("Service", router["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    data = one("ConfigMap", "messenger-config")["data"]
    sts, svc = router["metadata"]["name"], headless["metadata"]["name"]
    expected = [
        f"rs://{sts}-{i}.{svc}.{ns}.svc.cluster.local:{entrypoint.BACKEND_PORT}"
        for i in range(router["spec"]["replicas"])
    ]
    assert data["MESSENGER_ROUTER_URLS"].split(",") == expected
    comps_svc = one("Service", "messenger-components")
    assert data["MESSENGER_AUTH_HTTP_HOST"] == f"messenger-components.{ns}.svc.cluster.local"
    assert [p["port"] for p in comps_svc["spec"]["ports"]] == [entrypoint.COMPONENTS_HTTP_PORT]


def test_health_probes_and_the_paced_drain():
    router = one("StatefulSet", "messenger-router")
    (c,) = containers(router)
    from router.web import HEALTH_PATH

    assert c["readinessProbe"]["httpGet"] == {"path": f"/{HEALTH_PATH.decode()}", "port": "clients"}
    # a draining shard answers 503: the liveness probe must not restart it for that
    assert "httpGet" not in c["livenessProbe"] or c["livenessProbe"]["httpGet"]["path"] != "/healthz"
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", runtime_files()["scripts/drain"]]
    args = dict(itertools.pairwise(command))
    assert int(args["--port"]) == entrypoint.DRAIN_PORT and "--wait" in command
    rate, grace, timeout = float(args["--rate"]), float(args["--grace"]), float(args["--timeout"])
    assert timeout >= grace + SESSIONS_PER_SHARD / rate, "the drain cannot finish a full shard"
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > timeout
    # readiness notices the drain within the grace (period x failures)
    probe = c["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < grace


def test_resources_are_sized_and_every_container_is_locked_down():
    for w in workloads():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in containers(w):
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp"}  # MESSENGER_RUN_DIR
            assert c["image"].split(":")[0] in {i["name"] for i in kustomization()["images"]}
    (router,) = containers(one("StatefulSet", "messenger-router"))
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", router["resources"]["limits"]["memory"])
    assert m and int(m.group(1)) * units[m.group(2)] >= SESSIONS_PER_SHARD * SESSION_BYTES * 1.5


def test_k8s_env_names_are_read_by_the_code_and_refs_resolve():
    read = env_names_read()
    config = one("ConfigMap", "messenger-config")["data"]
    secret = one("Secret", "messenger-secrets")["stringData"]
    assert set(config) <= read and set(secret) <= read
    assert not (set(config) | set(secret)) & NOT_FOR_DEPLOYMENT
    assert readme_distributed_env() <= set(config) | set(secret)
    for value in secret.values():
        assert value == "" or "CHANGE-ME" in value, "Secret values must be placeholders"
    for w in workloads():
        for c in containers(w):
            for e in c.get("env", []):
                assert e["name"] in read, e["name"]
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == "messenger-secrets"
                    assert ref["secretKeyRef"]["key"] in secret
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] == "messenger-config"
                    assert ref["configMapKeyRef"]["key"] in config
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"] in ("messenger-config", "messenger-secrets")
