"""deploy/kubernetes/ agrees with what it runs on: every kcauth KongPlugin and KongClusterPlugin,
its secretKeyRefs filled from the Secret manifests as the Kong Ingress Controller (KIC) fills
them, passes the plugin's own schema with Kong's rules and kcauth's own checks, with no secret
inline; every values file speaks the Helm chart's keys and Kong 3.9's kong.conf keys; the plugin
server settings agree with the package; and every route through kcauth has its Kong-native guard.
Each check is a function returning what is wrong, shown to catch a broken copy. Fast: no network,
no cluster.

Sources, read for these rules: Kong/charts (kong 3.4.1, ingress 0.24.0: values.yaml,
templates/deployment.yaml, _helpers.tpl), Kong/kubernetes-ingress-controller v3.5.13
(internal/dataplane/kongstate/plugin.go: configFrom is JSON or YAML, a configPatches value is JSON
put into an "add" patch that creates missing parents; KongClusterPlugins need the ingress class),
Kong/kubernetes-configuration v1.5.2 (the KongPlugin and KongClusterPlugin CRDs), Kong/kong 3.9.3
(kong/conf_loader, kong/runloop/plugin_servers). The key lists are tests/e2e/kong_conf_keys_3.9.3.txt
and tests/e2e/kong_charts_values_keys.yaml."""

from __future__ import annotations

import base64
import copy
import json
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from kong_plugin_kcauth import __version__
from kong_plugin_kcauth.config import Config, ConfigError, kong_config_record
from kong_plugin_kcauth.server import READY_TIMEOUT
from tests.harness import kong_schema as kong

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
HERE = Path(__file__).resolve().parent
PLACEHOLDER = "CHANGE-ME"
PLUGIN_KINDS = ("KongPlugin", "KongClusterPlugin")
# The KongPlugin CRD's fields (configuration.konghq.com_kongplugins.yaml, v1.5.2); a
# KongClusterPlugin has the same.
CRD_FIELDS = {"apiVersion", "kind", "metadata", "plugin", "config", "configFrom", "configPatches", "consumerRef",
              "disabled", "instance_name", "ordering", "protocols", "run_on", "status"}
METRICS_PORT_NAME = "metrics"
SIDECAR = "kcauth-pluginserver"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there: the dump is 75 KB

Doc = dict[str, Any]


# --- the files ---------------------------------------------------------------------------------

def values_files() -> dict[str, tuple[str, str]]:
    """Each values file: (chart, mode), from its name: <chart>.<mode>.values.yaml."""
    out = {}
    for path in sorted(DEPLOY.glob("*.values.yaml")):
        chart, mode = path.name.removesuffix(".values.yaml").split(".")
        out[path.name] = ({"kong-kong": "kong/kong", "kong-ingress": "kong/ingress"}[chart], mode)
    return out


def values(name: str) -> Doc:
    loaded = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(loaded, dict), name
    return loaded


def manifests() -> list[Doc]:
    """Every document of manifests/, a fresh copy each time (the tests that break one)."""
    return copy.deepcopy(list(_manifests()))


@lru_cache(maxsize=1)
def _manifests() -> tuple[Doc, ...]:
    docs: list[Doc] = []
    for path in sorted((DEPLOY / "manifests").glob("*.yaml")):
        docs += [d for d in yaml.load_all(path.read_text(), Loader=LOADER) if d is not None]
    return tuple(docs)


def of_kind(docs: list[Doc], *kinds: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") in kinds]


def gateway(doc: Doc, chart: str) -> Doc:
    """Kong's values: kong/ingress puts them under `gateway:`."""
    gw = doc.get("gateway", {}) if chart == "kong/ingress" else doc
    assert isinstance(gw, dict)
    return gw


@lru_cache(maxsize=1)
def record() -> dict[str, Any]:
    """The config record `kcauth-pluginserver --dump` gives Kong, entity checks included."""
    return kong_config_record()


@lru_cache(maxsize=1)
def package_dump() -> list[Any]:
    out = subprocess.run([str(Path(sys.executable).parent / "kcauth-pluginserver"), "--dump"],
                         capture_output=True, check=True, timeout=60).stdout
    return json.loads(out)  # type: ignore[no-any-return]


@lru_cache(maxsize=1)
def kong_conf_keys() -> tuple[frozenset[str], tuple[str, ...]]:
    """(the keys of kong_defaults.lua, the dynamic key prefixes) of Kong 3.9.3."""
    names = [line.strip() for line in (HERE / "kong_conf_keys_3.9.3.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return (frozenset(n for n in names if not n.endswith("*")),
            tuple(n[:-1] for n in names if n.endswith("*")))


@lru_cache(maxsize=1)
def chart_keys() -> dict[str, Any]:
    loaded = yaml.safe_load((HERE / "kong_charts_values_keys.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def package_scripts() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


# --- what KIC makes of a plugin -----------------------------------------------------------------

Secrets = dict[tuple[str, str], dict[str, str]]  # (namespace, name) -> key -> value


def secrets_of(docs: list[Doc]) -> Secrets:
    """Each Secret's keys as the API server holds them (stringData, and data decoded)."""
    out: Secrets = {}
    for s in of_kind(docs, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        data.update(s.get("stringData") or {})
        out[s["metadata"].get("namespace", "default"), s["metadata"]["name"]] = data
    return out


def secret_ref(plugin: Doc, ref: dict[str, str], secrets: Secrets) -> str:
    """The value a secretKeyRef names: a KongPlugin's Secret is in its own namespace, a
    KongClusterPlugin's names its namespace."""
    namespace = plugin["metadata"].get("namespace", "default") if plugin["kind"] == "KongPlugin" else ref["namespace"]
    data = secrets.get((namespace, ref["name"]))
    if data is None or ref["key"] not in data:
        raise ValueError(f"no key {ref['key']!r} in Secret {namespace}/{ref['name']}")
    return data[ref["key"]]


def pointer_add(doc: dict[str, Any], pointer: str, value: Any) -> None:
    """RFC 6902 "add" at an RFC 6901 pointer, creating missing parents (KIC sets json-patch's
    EnsurePathExistsOnAdd)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    if not parts:
        raise ValueError("KIC replaces the whole config on the root path: not a patch of a field")
    for part in parts[:-1]:
        doc = doc.setdefault(part, {})
        if not isinstance(doc, dict):
            raise ValueError(f"{pointer}: {part} is not an object")
    doc[parts[-1]] = value


def kic_config(plugin: Doc, secrets: Secrets) -> dict[str, Any]:
    """The config KIC hands Kong (kongstate.kongPluginFromK8SPlugin): the config, each of
    configPatches' values JSON-decoded and added; or configFrom's Secret, JSON or else YAML."""
    if "configFrom" in plugin:
        text = secret_ref(plugin, plugin["configFrom"]["secretKeyRef"], secrets)
        try:
            config = json.loads(text)
        except ValueError:
            config = yaml.safe_load(text)
    else:
        config = copy.deepcopy(plugin.get("config") or {})
        for patch in plugin.get("configPatches") or []:
            raw = secret_ref(plugin, patch["valueFrom"]["secretKeyRef"], secrets)
            try:
                value = json.loads(raw)
            except ValueError:
                raise ValueError(f"{patch['path']}: the Secret's value is no JSON (a string needs its quotes): "
                                 f"KIC cannot build the patch") from None
            pointer_add(config, patch["path"], value)
    if not isinstance(config, dict):
        raise ValueError("the config is not an object")
    return config


def secret_fields(config: Any, rec: dict[str, Any], path: str = "config") -> list[str]:
    """The fields of `config` that the schema marks referenceable or encrypted (the secrets), by
    path, at any depth (records, and records in arrays: issuers[].client_secret)."""
    found: list[str] = []
    if not isinstance(config, dict):
        return found
    for entry in rec.get("fields", []):
        (name, field), = entry.items()
        if name not in config:
            continue
        where = f"{path}.{name}"
        elements = field.get("elements") or {}
        if field.get("referenceable") or field.get("encrypted"):
            found.append(where)
        elif field.get("type") == "record":
            found += secret_fields(config[name], field, where)
        elif elements.get("type") == "record" and isinstance(config[name], list):
            for i, item in enumerate(config[name]):
                found += secret_fields(item, elements, f"{where}.{i}")
    return found


def field_value(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for part in path.split(".")[1:]:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# --- the checks: each returns what is wrong ----------------------------------------------------

def plugin_problems(plugin: Doc, secrets: Secrets) -> list[str]:
    """A KongPlugin or KongClusterPlugin as the CRD, KIC, Kong and kcauth take it."""
    name = f"{plugin['kind']} {plugin['metadata']['name']}"
    problems = [f"{name}: {f} is no field of the CRD" for f in set(plugin) - CRD_FIELDS]
    if "configFrom" in plugin and ("config" in plugin or "configPatches" in plugin):
        problems.append(f"{name}: configFrom beside config or configPatches (the CRD refuses it)")
    if plugin["kind"] == "KongClusterPlugin" and \
            (plugin["metadata"].get("annotations") or {}).get("kubernetes.io/ingress.class") != "kong":
        problems.append(f"{name}: no kubernetes.io/ingress.class annotation: KIC ignores it")
    if plugin.get("plugin") != package_dump()[0]["Name"]:
        return problems
    problems += [f"{name}: {where} is inline: secrets only through secretKeyRef"
                 for where in secret_fields(plugin.get("config"), record())]
    try:
        config = kic_config(plugin, secrets)
    except (ValueError, KeyError) as exc:
        return [*problems, f"{name}: KIC cannot build its config: {exc}"]
    problems += [f"{name}: {where} is no placeholder from the Secret manifests"
                 for where in secret_fields(config, record()) if PLACEHOLDER not in str(field_value(config, where))]
    full = kong.apply_defaults(record(), config)
    problems += [f"{name}: Kong refuses it: {p}" for p in kong.validate_config(record(), full)]
    if not problems:
        try:
            Config.from_kong(full)
        except ConfigError as exc:
            problems.append(f"{name}: kcauth refuses it: {exc}")
    return problems


def secret_placeholder_problems(docs: list[Doc]) -> list[str]:
    """No real secret is committed: every value of every Secret manifest is a marked placeholder."""
    return [f"Secret {ns}/{name} key {key}: not a {PLACEHOLDER} placeholder"
            for (ns, name), data in secrets_of(docs).items() for key, value in data.items()
            if PLACEHOLDER not in value]


def route_problems(docs: list[Doc], secrets: Secrets) -> list[str]:
    """kong/kong.yml's rules, for Ingresses: a route through kcauth in guard mode also has an ACL
    plugin allowing the group kcauth hands it (Kong 3.9 proxies when the plugin server is down),
    a receiver's route a request-termination 503; a Service behind a guarded route has no
    unguarded one (it could not tell kcauth's headers from a client's)."""
    plugins = of_kind(docs, *PLUGIN_KINDS)
    problems: list[str] = []
    guarded: dict[tuple[str, str], list[bool]] = {}
    for ingress in of_kind(docs, "Ingress"):
        ns, name = ingress["metadata"].get("namespace", "default"), ingress["metadata"]["name"]
        names = [n.strip() for n in (ingress["metadata"].get("annotations") or {}).get(
            "konghq.com/plugins", "").split(",") if n.strip()]
        found = [resolve_plugin(plugins, ns, n) for n in names]
        problems += [f"Ingress {ns}/{name}: no KongPlugin or KongClusterPlugin {n}"
                     for n, p in zip(names, found, strict=True) if p is None]
        named = {p["plugin"]: p for p in found if p is not None}
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                guarded.setdefault((ns, path["backend"]["service"]["name"]), []).append("kcauth" in named)
        if "kcauth" in named:
            problems += guard_problems(f"Ingress {ns}/{name}", named, secrets)
    problems += [f"Service {ns}/{svc}: reached by guarded and unguarded routes" for (ns, svc), marks in guarded.items()
                 if any(marks) and not all(marks)]
    return problems


def resolve_plugin(plugins: list[Doc], namespace: str, name: str) -> Doc | None:
    """KIC's lookup: the KongPlugin of the Ingress's namespace, else the KongClusterPlugin."""
    for kind in PLUGIN_KINDS:
        for p in plugins:
            if p["kind"] == kind and p["metadata"]["name"] == name and \
                    (kind == "KongClusterPlugin" or p["metadata"].get("namespace", "default") == namespace):
                return p
    return None


def guard_problems(where: str, named: dict[str, Doc], secrets: Secrets) -> list[str]:
    try:
        config = kong.apply_defaults(record(), kic_config(named["kcauth"], secrets))
    except (ValueError, KeyError) as exc:
        return [f"{where}: {exc}"]
    if config["mode"] == "revocation_receiver":
        fallback = (named.get("request-termination") or {}).get("config") or {}
        return [] if fallback.get("status_code") == 503 else [f"{where}: a receiver without its 503 fallback"]
    allow = ((named.get("acl") or {}).get("config") or {}).get("allow") or []
    return [] if config["authenticated_group"] in allow else \
        [f"{where}: no ACL guard allowing {config['authenticated_group']}: a dead plugin server fails open"]


def env_problems(env: Doc) -> list[str]:
    """Every `env:` key names a kong.conf key of Kong 3.9 (the chart makes KONG_<KEY> of it), with
    a string value (YAML's unquoted off, on, yes become booleans)."""
    keys, prefixes = kong_conf_keys()
    problems = [f"env.{k}: not a kong.conf key of Kong 3.9" for k in env
                if k.lower() not in keys and not k.lower().startswith(prefixes)]
    return problems + [f"env.{k}: {v!r} is no string" for k, v in env.items() if not isinstance(v, str)]


def chart_key_problems(doc: Doc, chart: str) -> list[str]:
    """Every top-level key (and `deployment:` key) is one the chart's values.yaml has; under
    kong/ingress, `controller:` and `gateway:` hold kong/kong's."""
    known = chart_keys()
    if chart == "kong/ingress":
        problems = [f"{k}: not a key of kong/ingress" for k in doc if k not in known["kong/ingress"]["top_level"]]
        for sub in ("controller", "gateway"):
            problems += [f"{sub}.{p}" for p in chart_key_problems(doc.get(sub) or {}, "kong/kong")]
        return problems
    problems = [f"{k}: not a key of kong/kong" for k in doc if k not in known["kong/kong"]["top_level"]]
    return problems + [f"deployment.{k}: not a key of kong/kong" for k in doc.get("deployment") or {}
                       if k not in known["kong/kong"]["deployment"]]


def install_problems(text: str, chart: str) -> list[str]:
    """The file's own install command pins the chart version its keys were checked against."""
    command = f"helm upgrade --install kong {chart} --version {chart_keys()[chart]['chart_version']} "
    return [] if command in text else [f"no `{command.strip()}` in the file's install command"]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def ready_probe_problems(where: str, probe: Doc | None, program: str, prefix: str, socket_name: str) -> list[str]:
    """A probe that runs `--ready` on the socket the server serves, given time for it."""
    command = ((probe or {}).get("exec") or {}).get("command") or []
    problems = []
    if command[:2] != [program, "--ready"] or option(command, "--kong-prefix") != prefix \
            or option(command, "--socket-name") != socket_name:
        problems.append(f"{where}: not `{program} --ready` on {prefix}/{socket_name}: {command}")
    if (probe or {}).get("timeoutSeconds", 1) < READY_TIMEOUT + 1:
        problems.append(f"{where}: timeoutSeconds leaves --ready ({READY_TIMEOUT:g} s) and Python's start no time")
    return problems


def metrics_problems(where: str, argv: list[str], docs: list[Doc], labels: Doc) -> list[str]:
    """--metrics listens where manifests/metrics.service.yaml looks, on pods it selects."""
    listen = option(argv, "--metrics")
    services = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == "kcauth-metrics"]
    if listen is None or not services:
        return [f"{where}: no --metrics, or no kcauth-metrics Service"]
    service = services[0]["spec"]
    port: Doc = next((p for p in service["ports"] if p["name"] == METRICS_PORT_NAME), {})
    problems = [] if listen.rpartition(":")[2] == str(port.get("targetPort")) else \
        [f"{where}: --metrics {listen}, the Service targets {port.get('targetPort')}"]
    if listen.rpartition(":")[0] not in ("0.0.0.0", "[::]"):
        problems.append(f"{where}: --metrics {listen} is not reachable from the pod's address")
    return problems + [f"{where}: podLabels lack the Service's selector {k}={v}"
                       for k, v in service["selector"].items() if labels.get(k) != v]


def pluginserver_problems(gw: Doc, mode: str, docs: list[Doc]) -> list[str]:
    """The plugin server settings of one values file agree with the package and the manifests."""
    env, dump = gw.get("env") or {}, package_dump()[0]
    problems = []
    if "kcauth" not in str(env.get("plugins", "")).split(",") or "bundled" not in str(env.get("plugins")).split(","):
        problems.append("env.plugins: bundled,kcauth")
    if env.get("pluginserver_names") != dump["Name"]:
        problems.append(f"env.pluginserver_names is not {dump['Name']}, the dump's Name")
    server_keys = {f"pluginserver_{dump['Name']}_{k}" for k in ("socket", "start_cmd", "query_cmd")}
    problems += [f"env.{k}: Kong knows no such plugin server setting" for k in env
                 if k.startswith("pluginserver_") and k != "pluginserver_names" and k not in server_keys]
    socket_path = str(env.get(f"pluginserver_{dump['Name']}_socket"))
    query = shlex.split(str(env.get(f"pluginserver_{dump['Name']}_query_cmd", "")))
    check = in_kong_problems if mode == "in-kong" else sidecar_problems
    return problems + check(gw, socket_path, query, docs)


def in_kong_problems(gw: Doc, socket_path: str, query: list[str], docs: list[Doc]) -> list[str]:
    env, image = gw["env"], gw.get("image") or {}
    start = shlex.split(str(env.get("pluginserver_kcauth_start_cmd", "")))
    if not start:
        return ["in-Kong mode without a start command"]
    program, prefix, socket_name = start[0], option(start, "--kong-prefix"), option(start, "--socket-name")
    problems = []
    if Path(program).name not in package_scripts():
        problems.append(f"{program}: not a command of pyproject's [project.scripts]")
    if query != [program, "--dump"]:
        problems.append(f"query_cmd {query}: not the start command's program with --dump")
    if prefix is None or socket_name is None or socket_path != f"{prefix}/{socket_name}":
        problems.append(f"the socket-name trap: Kong connects to {socket_path}, the server listens on "
                        f"{prefix}/{socket_name}")
    if str(prefix).rstrip("/") != str(env.get("prefix", "")).rstrip("/"):
        problems.append(f"--kong-prefix {prefix} is not Kong's prefix (its nginx.conf gives the worker count)")
    if (image.get("repository"), str(image.get("tag"))) != ("kcauth/kong-kcauth", __version__) \
            or not str(image.get("effectiveSemver", "")).startswith("3.9."):
        problems.append(f"image {image}: kcauth/kong-kcauth:{__version__}, effectiveSemver Kong's 3.9.x")
    problems += ready_probe_problems("startupProbe", gw.get("startupProbe"), program, str(prefix), str(socket_name))
    problems += metrics_problems("start_cmd", start, docs, gw.get("podLabels") or {})
    if any(c.get("name") == SIDECAR for c in (gw.get("deployment") or {}).get("sidecarContainers") or []):
        problems.append("in-Kong mode with a plugin server sidecar too")
    return problems


def sidecar_problems(gw: Doc, socket_path: str, query: list[str], docs: list[Doc]) -> list[str]:
    env, image, deployment = gw["env"], gw.get("image") or {}, gw.get("deployment") or {}
    sidecars = [c for c in deployment.get("sidecarContainers") or [] if c.get("name") == SIDECAR]
    if not sidecars:
        return [f"sidecar mode without the {SIDECAR} container"]
    sidecar, known = sidecars[0], chart_keys()["kong/kong"]
    argv = [*sidecar.get("command", []), *sidecar.get("args", [])]
    program, prefix, socket_name = argv[0], str(option(argv, "--kong-prefix")), str(option(argv, "--socket-name"))
    problems = []
    if "pluginserver_kcauth_start_cmd" in env:
        problems.append("a start command: Kong would start a second plugin server on the sidecar's socket")
    if (image.get("repository"), str(image.get("tag", ""))[:4]) != ("kong", "3.9."):
        problems.append(f"image {image}: Kong's stock kong:3.9.x")
    if sidecar.get("image") != f"kcauth/kcauth-pluginserver:{__version__}":
        problems.append(f"sidecar image {sidecar.get('image')}: not kcauth/kcauth-pluginserver:{__version__}")
    if Path(program).name not in package_scripts():
        problems.append(f"{program}: not a command of pyproject's [project.scripts]")
    if socket_path != f"{prefix}/{socket_name}":
        problems.append(f"the socket-name trap: Kong connects to {socket_path}, the sidecar listens on "
                        f"{prefix}/{socket_name}")
    if option(argv, "--workers") != "1":
        problems.append("--workers 1: in its own PID namespace every nginx worker's peer pid is 0")
    problems += shared_volume_problems(deployment, sidecar, prefix)
    problems += dump_mount_problems(deployment, query, docs)
    context = sidecar.get("securityContext") or {}
    if (context.get("runAsUser"), context.get("runAsGroup")) != (known["kong_uid"], known["kong_gid"]):
        problems.append("the sidecar runs as another user than Kong's: Kong could not connect to its socket")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        problems += ready_probe_problems(f"sidecar {probe}", sidecar.get(probe), program, prefix, socket_name)
    problems += metrics_problems("sidecar", argv, docs, gw.get("podLabels") or {})
    listen_port = str(option(argv, "--metrics")).rpartition(":")[2]
    if listen_port not in [str(p.get("containerPort")) for p in sidecar.get("ports") or []]:
        problems.append(f"the sidecar does not declare its metrics port {listen_port}")
    sleep = ((sidecar.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    if not 15 < sleep < gw.get("terminationGracePeriodSeconds", 30):
        problems.append(f"preStop sleep {sleep}: outlive Kong's `kong quit --wait=15`, within the grace period")
    return problems


def shared_volume_problems(deployment: Doc, sidecar: Doc, prefix: str) -> list[str]:
    """The socket's directory is one emptyDir, mounted at the same path in both containers."""
    volumes = {v["name"]: v for v in deployment.get("userDefinedVolumes") or []}
    kong_mounts = {m["mountPath"].rstrip("/"): m["name"] for m in deployment.get("userDefinedVolumeMounts") or []}
    own_mounts = {m["mountPath"].rstrip("/"): m["name"] for m in sidecar.get("volumeMounts") or []}
    name = own_mounts.get(prefix.rstrip("/"))
    if name is None or kong_mounts.get(prefix.rstrip("/")) != name or "emptyDir" not in volumes.get(name, {}):
        return [f"{prefix}: not one emptyDir mounted there in Kong's container and the sidecar's"]
    return []


def dump_mount_problems(deployment: Doc, query: list[str], docs: list[Doc]) -> list[str]:
    """query_cmd reads the dump from the ConfigMap manifest, mounted in Kong's container."""
    if len(query) != 2 or query[0] != "cat":
        return [f"query_cmd {query}: not `cat <the dump>`"]
    directory, _, key = query[1].rpartition("/")
    volumes = {v["name"]: v for v in deployment.get("userDefinedVolumes") or []}
    mounted = next((m["name"] for m in deployment.get("userDefinedVolumeMounts") or []
                    if m["mountPath"].rstrip("/") == directory), None)
    config_map = (volumes.get(mounted or "") or {}).get("configMap", {}).get("name")
    maps = [m for m in of_kind(docs, "ConfigMap") if m["metadata"]["name"] == config_map]
    if not maps or key not in maps[0].get("data", {}):
        return [f"query_cmd reads {query[1]}: no ConfigMap manifest mounted at {directory} holds {key}"]
    return []


def dump_problems(docs: list[Doc]) -> list[str]:
    """Every ConfigMap holding a dump holds today's `kcauth-pluginserver --dump`."""
    maps = [m for m in of_kind(docs, "ConfigMap") if any(k.endswith(".dump.json") for k in m.get("data", {}))]
    if not maps:
        return ["no ConfigMap holds the dump"]
    return [f"ConfigMap {m['metadata']['name']} {key}: not today's `kcauth-pluginserver --dump` (regenerate it)"
            for m in maps for key, text in m["data"].items() if json.loads(text) != package_dump()]


# --- the files pass ----------------------------------------------------------------------------

def test_there_is_a_values_file_per_chart_and_mode() -> None:
    assert sorted(values_files().values()) == [("kong/ingress", "in-kong"), ("kong/ingress", "sidecar"),
                                               ("kong/kong", "in-kong"), ("kong/kong", "sidecar")]


def test_the_schema_marks_the_secrets_the_checks_look_for() -> None:
    everything = {"client_secret": "x", "client_private_key": "x", "redis": {"secret": "x", "password": "x"},
                  "revocation_feed": {"client_secret": "x"}, "issuers": [{"client_secret": "x"}]}
    assert set(secret_fields(everything, record())) == {
        "config.client_secret", "config.client_private_key", "config.redis.secret", "config.redis.password",
        "config.revocation_feed.client_secret", "config.issuers.0.client_secret"}


def test_every_kcauth_plugin_passes_kong_and_kcauth_with_its_secrets_from_secret_manifests() -> None:
    docs = manifests()
    plugins = of_kind(docs, *PLUGIN_KINDS)
    kcauth = [p for p in plugins if p["plugin"] == "kcauth"]
    assert {p["kind"] for p in kcauth} == set(PLUGIN_KINDS)
    modes = {(p["kind"], (p.get("config") or {}).get("mode", "guard")) for p in kcauth}
    assert {("KongPlugin", "guard"), ("KongPlugin", "revocation_receiver"),
            ("KongClusterPlugin", "revocation_receiver")} <= modes
    assert any("configFrom" in p for p in kcauth) and any("configPatches" in p for p in kcauth), "both ways"
    assert any(kic_config(p, secrets_of(docs)).get("introspect") for p in kcauth), "a sensitive route"
    for plugin in plugins:
        assert plugin_problems(plugin, secrets_of(docs)) == []


def test_no_real_secret_is_committed() -> None:
    assert secret_placeholder_problems(manifests()) == []


def test_every_route_through_kcauth_has_its_kong_native_guard() -> None:
    docs = manifests()
    assert len(of_kind(docs, "Ingress")) >= 6
    assert route_problems(docs, secrets_of(docs)) == []


@pytest.mark.parametrize("name", list(values_files()))
def test_values_speak_the_charts_keys_and_kong_39s_kong_conf(name: str) -> None:
    chart, _ = values_files()[name]
    doc = values(name)
    assert chart_key_problems(doc, chart) == []
    assert env_problems(gateway(doc, chart)["env"]) == []
    assert install_problems((DEPLOY / name).read_text(), chart) == []


@pytest.mark.parametrize("name", list(values_files()))
def test_pluginserver_settings_agree_with_the_package(name: str) -> None:
    chart, mode = values_files()[name]
    assert pluginserver_problems(gateway(values(name), chart), mode, manifests()) == []


def test_both_charts_get_the_same_gateway_settings_in_each_mode() -> None:
    for mode in ("in-kong", "sidecar"):
        kong_chart = values(f"kong-kong.{mode}.values.yaml")
        ingress = values(f"kong-ingress.{mode}.values.yaml")["gateway"]
        assert {k: v for k, v in kong_chart.items() if k != "ingressController"} == ingress, mode


def test_the_committed_dump_is_the_packages() -> None:
    assert dump_problems(manifests()) == []


# --- each check can fail -------------------------------------------------------------------------

def plugin_named(docs: list[Doc], name: str) -> Doc:
    return next(p for p in of_kind(docs, *PLUGIN_KINDS) if p["metadata"]["name"] == name)


def _inline_secret(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-sensitive")
    plugin["config"]["client_secret"] = "{vault://env/kcauth-client-secret}"  # a reference is inline too
    return plugin


def _inline_secret_in_an_issuer(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-guard")
    plugin["config"]["issuers"] = [{"issuer": "https://sso.example.com/realms/other", "client_secret": "s3cret"}]
    return plugin


def _missing_secret_key(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-guard")
    plugin["configPatches"][0]["valueFrom"]["secretKeyRef"]["key"] = "feed-secret"
    return plugin


def _unquoted_patch_value(docs: list[Doc]) -> Doc:
    next(s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "kcauth-secrets")["stringData"][
        "redis-password"] = "CHANGE-ME-redis-password"
    return plugin_named(docs, "kcauth-guard")


def _secret_in_the_wrong_namespace(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-cluster-guard")
    plugin["configPatches"][1]["valueFrom"]["secretKeyRef"]["namespace"] = "orders-typo"
    return plugin


def _short_redis_secret(docs: list[Doc]) -> Doc:
    next(s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "kcauth-secrets")["stringData"][
        "redis-secret"] = '"CHANGE-ME-short"'
    return plugin_named(docs, "kcauth-receiver")


def _receiver_without_audiences(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-cluster-receiver")
    del plugin["config"]["audiences"]
    return plugin


def _feed_without_its_secret(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-guard")
    plugin["configPatches"] = plugin["configPatches"][1:]
    return plugin


def _config_beside_config_from(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-cluster-sensitive")
    plugin["config"] = {"leeway": 5}
    return plugin


def _cluster_plugin_without_class(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-cluster-receiver")
    del plugin["metadata"]["annotations"]
    return plugin


def _a_ca_file_that_is_not_there(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-guard")
    plugin["config"]["tls_ca_bundle"] = "/etc/kcauth/no-such-ca.pem"  # only kcauth checks the node's files
    return plugin


def _a_field_the_crd_lacks(docs: list[Doc]) -> Doc:
    plugin = plugin_named(docs, "kcauth-receiver")
    plugin["configPatch"] = plugin.pop("configPatches")
    return plugin


@pytest.mark.parametrize(("break_it", "message"), [
    (_inline_secret, "config.client_secret is inline"),
    (_inline_secret_in_an_issuer, "config.issuers.0.client_secret is inline"),
    (_missing_secret_key, "no key 'feed-secret' in Secret orders/kcauth-secrets"),
    (_unquoted_patch_value, "/redis/password: the Secret's value is no JSON"),
    (_secret_in_the_wrong_namespace, "Secret orders-typo/kcauth-cluster-secrets"),
    (_short_redis_secret, "Kong refuses it: config.redis.secret: length must be at least 32"),
    (_receiver_without_audiences, "Kong refuses it: config.@entity"),
    (_feed_without_its_secret, "Kong refuses it: config.@entity"),
    (_config_beside_config_from, "configFrom beside config"),
    (_cluster_plugin_without_class, "no kubernetes.io/ingress.class annotation"),
    (_a_ca_file_that_is_not_there, "kcauth refuses it: config.tls_ca_bundle"),
    (_a_field_the_crd_lacks, "configPatch is no field of the CRD"),
])
def test_the_plugin_check_catches(break_it: Any, message: str) -> None:
    docs = manifests()
    plugin = break_it(docs)
    problems = plugin_problems(plugin, secrets_of(docs))
    assert any(message in p for p in problems), problems


def test_the_placeholder_check_catches_a_real_looking_secret() -> None:
    docs = manifests()
    next(s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "kcauth-cluster-secrets")["stringData"][
        "redis-password"] = '"hunter2"'
    assert secret_placeholder_problems(docs) == ["Secret kong/kcauth-cluster-secrets key redis-password: "
                                                 "not a CHANGE-ME placeholder"]
    assert any("config.redis.password is no placeholder" in p
               for p in plugin_problems(plugin_named(docs, "kcauth-cluster-guard"), secrets_of(docs)))


def _annotate(docs: list[Doc], ingress: str, plugins: str) -> None:
    next(i for i in of_kind(docs, "Ingress") if i["metadata"]["name"] == ingress)["metadata"]["annotations"][
        "konghq.com/plugins"] = plugins


@pytest.mark.parametrize(("ingress", "plugins", "message"), [
    ("orders", "kcauth-guard", "no ACL guard allowing kcauth:authenticated"),
    ("billing-statements", "kcauth-cluster-sensitive", "no ACL guard"),
    ("kcauth-revocations", "kcauth-receiver", "a receiver without its 503 fallback"),
    ("orders", "kcauth-guard, acl-everyone", "no KongPlugin or KongClusterPlugin acl-everyone"),
    ("payments", "", "Service orders/orders-api: reached by guarded and unguarded routes"),
])
def test_the_route_check_catches(ingress: str, plugins: str, message: str) -> None:
    docs = manifests()
    _annotate(docs, ingress, plugins)
    assert any(message in p for p in route_problems(docs, secrets_of(docs))), route_problems(docs, secrets_of(docs))


def test_the_route_check_catches_an_acl_allowing_another_group() -> None:
    docs = manifests()
    plugin_named(docs, "acl-authenticated")["config"]["allow"] = ["authenticated"]
    assert any("no ACL guard" in p for p in route_problems(docs, secrets_of(docs)))


@pytest.mark.parametrize(("name", "path", "value", "message"), [
    ("kong-kong.in-kong.values.yaml", ["env", "pluginserver_kcauth_sockt"], "/kong_prefix/kcauth.socket",
     "env.pluginserver_kcauth_sockt: Kong knows no such plugin server setting"),
    ("kong-kong.in-kong.values.yaml", ["env", "nginx_worker_process"], "2", "env.nginx_worker_process: not a kong"),
    ("kong-ingress.sidecar.values.yaml", ["gateway", "env", "anonymous_reports"], False, "is no string"),
])
def test_the_env_check_catches(name: str, path: list[str], value: Any, message: str) -> None:
    chart, mode = values_files()[name]
    doc = values(name)
    set_in(doc, path, value)
    problems = env_problems(gateway(doc, chart)["env"]) + pluginserver_problems(gateway(doc, chart), mode, manifests())
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(("name", "path", "message"), [
    ("kong-kong.sidecar.values.yaml", ["sidecarContainers"], "sidecarContainers: not a key of kong/kong"),
    ("kong-kong.sidecar.values.yaml", ["deployment", "sidecarContainer"], "deployment.sidecarContainer: not a key"),
    ("kong-ingress.in-kong.values.yaml", ["kong"], "kong: not a key of kong/ingress"),
    ("kong-ingress.sidecar.values.yaml", ["gateway", "startupProbes"], "gateway.startupProbes: not a key"),
    ("kong-ingress.sidecar.values.yaml", ["controller", "ingressControler"], "controller.ingressControler"),
])
def test_the_chart_key_check_catches(name: str, path: list[str], message: str) -> None:
    chart, _ = values_files()[name]
    doc = values(name)
    set_in(doc, path, {})
    assert any(message in p for p in chart_key_problems(doc, chart)), chart_key_problems(doc, chart)


def test_the_install_check_catches_another_chart_version() -> None:
    text = (DEPLOY / "kong-ingress.sidecar.values.yaml").read_text().replace("--version 0.24.0", "--version 0.25.0")
    assert install_problems(text, "kong/ingress") == [
        "no `helm upgrade --install kong kong/ingress --version 0.24.0` in the file's install command"]


def set_in(doc: Doc, path: list[str], value: Any) -> None:
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


def sidecar_of(gw: Doc) -> Doc:
    return next(c for c in gw["deployment"]["sidecarContainers"] if c["name"] == SIDECAR)


def _in_kong_socket_name(gw: Doc) -> None:
    gw["env"]["pluginserver_kcauth_start_cmd"] = gw["env"]["pluginserver_kcauth_start_cmd"].replace(
        "kcauth.socket", "kcauth.sock")


def _in_kong_query_without_dump(gw: Doc) -> None:
    gw["env"]["pluginserver_kcauth_query_cmd"] = "/opt/kcauth/bin/kcauth-pluginserver"


def _in_kong_unknown_command(gw: Doc) -> None:
    for key in ("pluginserver_kcauth_start_cmd", "pluginserver_kcauth_query_cmd"):
        gw["env"][key] = gw["env"][key].replace("kcauth-pluginserver", "kcauth-server")


def _in_kong_other_prefix(gw: Doc) -> None:
    gw["env"]["prefix"] = "/usr/local/kong"


def _in_kong_tag_as_kong_version(gw: Doc) -> None:
    del gw["image"]["effectiveSemver"]


def _in_kong_probe_elsewhere(gw: Doc) -> None:
    gw["startupProbe"]["exec"]["command"][3] = "/usr/local/kong"


def _in_kong_metrics_port(gw: Doc) -> None:
    gw["env"]["pluginserver_kcauth_start_cmd"] = gw["env"]["pluginserver_kcauth_start_cmd"].replace(
        "0.0.0.0:9542", "127.0.0.1:9542")


def _sidecar_start_cmd(gw: Doc) -> None:
    gw["env"]["pluginserver_kcauth_start_cmd"] = "/opt/kcauth/bin/kcauth-pluginserver --kong-prefix /kcauth"


def _sidecar_socket_elsewhere(gw: Doc) -> None:
    gw["env"]["pluginserver_kcauth_socket"] = "/kong_prefix/kcauth.socket"


def _sidecar_as_another_user(gw: Doc) -> None:
    sidecar_of(gw)["securityContext"]["runAsUser"] = 10001


def _sidecar_probe_other_socket(gw: Doc) -> None:
    sidecar_of(gw)["readinessProbe"] = {"exec": {"command": [
        "/opt/kcauth/bin/kcauth-pluginserver", "--ready", "--kong-prefix", "/kcauth", "--socket-name", "kcauth.sock"]},
        "timeoutSeconds": 5}


def _sidecar_probe_too_short(gw: Doc) -> None:
    del sidecar_of(gw)["livenessProbe"]["timeoutSeconds"]


def _kong_mounts_the_socket_elsewhere(gw: Doc) -> None:
    gw["deployment"]["userDefinedVolumeMounts"][0]["mountPath"] = "/kcauth-socket"


def _query_reads_a_missing_file(gw: Doc) -> None:
    gw["env"]["pluginserver_kcauth_query_cmd"] = "cat /kcauth-dump/kcauth.json"


def _sidecar_workers(gw: Doc) -> None:
    argv = sidecar_of(gw)["command"]
    argv[argv.index("--workers") + 1] = "2"


def _sidecar_old_image(gw: Doc) -> None:
    sidecar_of(gw)["image"] = "kcauth/kcauth-pluginserver:0.1.0"


def _sidecar_no_metrics_port(gw: Doc) -> None:
    del sidecar_of(gw)["ports"]


def _sidecar_no_pre_stop(gw: Doc) -> None:
    del sidecar_of(gw)["lifecycle"]


@pytest.mark.parametrize(("mode", "break_it", "message"), [
    ("in-kong", _in_kong_socket_name, "the socket-name trap"),
    ("in-kong", _in_kong_query_without_dump, "not the start command's program with --dump"),
    ("in-kong", _in_kong_unknown_command, "not a command of pyproject's [project.scripts]"),
    ("in-kong", _in_kong_other_prefix, "is not Kong's prefix"),
    ("in-kong", _in_kong_tag_as_kong_version, "effectiveSemver"),
    ("in-kong", _in_kong_probe_elsewhere, "startupProbe: not"),
    ("in-kong", _in_kong_metrics_port, "is not reachable from the pod's address"),
    ("sidecar", _sidecar_start_cmd, "Kong would start a second plugin server"),
    ("sidecar", _sidecar_socket_elsewhere, "the socket-name trap"),
    ("sidecar", _sidecar_as_another_user, "Kong could not connect to its socket"),
    ("sidecar", _sidecar_probe_other_socket, "sidecar readinessProbe: not"),
    ("sidecar", _sidecar_probe_too_short, "sidecar livenessProbe: timeoutSeconds"),
    ("sidecar", _kong_mounts_the_socket_elsewhere, "/kcauth: not one emptyDir mounted there"),
    ("sidecar", _query_reads_a_missing_file, "no ConfigMap manifest mounted at /kcauth-dump holds kcauth.json"),
    ("sidecar", _sidecar_workers, "--workers 1"),
    ("sidecar", _sidecar_old_image, "not kcauth/kcauth-pluginserver:"),
    ("sidecar", _sidecar_no_metrics_port, "does not declare its metrics port"),
    ("sidecar", _sidecar_no_pre_stop, "preStop sleep 0"),
])
@pytest.mark.parametrize("chart", ["kong-kong", "kong-ingress"])
def test_the_pluginserver_check_catches(chart: str, mode: str, break_it: Any, message: str) -> None:
    name = f"{chart}.{mode}.values.yaml"
    chart_name, _ = values_files()[name]
    doc = values(name)
    break_it(gateway(doc, chart_name))
    problems = pluginserver_problems(gateway(doc, chart_name), mode, manifests())
    assert any(message in p for p in problems), problems


def test_the_metrics_check_catches_pods_the_service_does_not_select() -> None:
    doc = values("kong-kong.sidecar.values.yaml")
    doc["podLabels"] = {}
    assert any("podLabels lack the Service's selector" in p
               for p in pluginserver_problems(doc, "sidecar", manifests()))


def test_the_dump_check_catches_a_stale_dump() -> None:
    docs = manifests()
    dump_map = next(m for m in of_kind(docs, "ConfigMap") if m["metadata"]["name"] == "kcauth-dump")
    stale = json.loads(dump_map["data"]["kcauth.dump.json"])
    stale[0]["Version"] = "0.1.0"
    dump_map["data"]["kcauth.dump.json"] = json.dumps(stale)
    assert dump_problems(docs) == ["ConfigMap kcauth-dump kcauth.dump.json: not today's `kcauth-pluginserver "
                                   "--dump` (regenerate it)"]
