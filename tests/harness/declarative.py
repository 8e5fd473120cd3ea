"""Kong's DB-less declarative config (kong.yml), read the way the gateway stand-in needs it.

Only what the stand-in emulates is accepted: services with a `url`, their routes by path prefix
(`paths`, `strip_path`, `methods`), the plugins `kcauth`, `acl` and `request-termination`
(`status_code` and `message` only; global, per service or per route, the most specific one
winning as in Kong), consumers and their ACL groups, and Kong's env
vault references (`{vault://env/<name>}`). Anything else is refused with the path of the
unsupported key, so the demo never silently behaves unlike Kong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_PLUGINS = {"kcauth", "acl", "request-termination"}
_TOP = {"_format_version", "_transform", "services", "routes", "plugins", "consumers", "acls"}
_SERVICE = {"name", "url", "routes", "plugins", "tags", "connect_timeout", "read_timeout", "write_timeout", "retries"}
_ROUTE = {"name", "paths", "strip_path", "methods", "plugins", "tags", "service", "protocols", "preserve_host"}
_PLUGIN = {"name", "config", "route", "service", "enabled", "tags", "protocols"}
_CONSUMER = {"username", "custom_id", "id", "tags", "acls"}
_VAULT = re.compile(r"^\{vault://env/([A-Za-z0-9_-]+)\}$")


class UnsupportedFeature(ValueError):
    """kong.yml uses something the stand-in does not emulate."""


@dataclass
class RouteSpec:
    name: str
    paths: list[str]
    service_url: str
    strip_path: bool = True
    methods: list[str] | None = None
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → config


@dataclass
class Declarative:
    routes: list[RouteSpec]
    consumers: list[dict[str, Any]]


def load(source: str | Path | dict[str, Any], rewrite: dict[str, str] | None = None) -> Declarative:
    """Parse kong.yml. `rewrite` maps URL prefixes (and `host:port` pairs) of the compose stack
    to where the stand-in's services run, applied to every string in the file."""
    doc = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    if rewrite:
        doc = _rewrite(doc, rewrite)
    _only(doc, _TOP, "kong.yml")
    if not str(doc.get("_format_version", "")).startswith("3."):
        raise UnsupportedFeature("kong.yml: _format_version must be 3.x")

    global_plugins: dict[str, dict[str, Any]] = {}
    service_plugins: dict[str, dict[str, dict[str, Any]]] = {}
    route_plugins: dict[str, dict[str, dict[str, Any]]] = {}
    routes: list[tuple[RouteSpec, str]] = []
    services: dict[str, str] = {}

    def add_plugin(plugin: dict[str, Any], where: str, service: str | None, route: str | None) -> None:
        _only(plugin, _PLUGIN, where)
        name = plugin.get("name")
        if name not in SUPPORTED_PLUGINS:
            raise UnsupportedFeature(f"{where}: plugin {name!r} is not emulated (only {sorted(SUPPORTED_PLUGINS)})")
        if plugin.get("enabled", True) is False:
            return
        config = _check_vault(plugin.get("config") or {}, where)
        if name == "acl" and (set(config) - {"allow", "always_use_authenticated_groups", "hide_groups_header"}
                              or not config.get("allow")):
            raise UnsupportedFeature(f"{where}: only ACL allow lists are emulated")
        if name == "request-termination" and set(config) - {"status_code", "message"}:
            raise UnsupportedFeature(f"{where}: only request-termination's status_code and message are emulated")
        route = plugin.get("route", route)
        service = plugin.get("service", service)
        if route:
            route_plugins.setdefault(route, {})[name] = config
        elif service:
            service_plugins.setdefault(service, {})[name] = config
        else:
            global_plugins[name] = config

    for i, service in enumerate(doc.get("services") or []):
        where = f"kong.yml: services[{i}]"
        _only(service, _SERVICE, where)
        if "url" not in service or "name" not in service:
            raise UnsupportedFeature(f"{where}: a service needs `name` and `url` here")
        services[service["name"]] = service["url"]
        for j, route in enumerate(service.get("routes") or []):
            routes.append((_route(route, f"{where}.routes[{j}]", service["url"]), service["name"]))
            for k, plugin in enumerate(route.get("plugins") or []):
                add_plugin(plugin, f"{where}.routes[{j}].plugins[{k}]", None, route["name"])
        for k, plugin in enumerate(service.get("plugins") or []):
            add_plugin(plugin, f"{where}.plugins[{k}]", service["name"], None)
    for i, route in enumerate(doc.get("routes") or []):
        where = f"kong.yml: routes[{i}]"
        if route.get("service") not in services:
            raise UnsupportedFeature(f"{where}: a top-level route must name a service defined above")
        routes.append((_route(route, where, services[route["service"]]), route["service"]))
    for i, plugin in enumerate(doc.get("plugins") or []):
        add_plugin(plugin, f"kong.yml: plugins[{i}]", None, None)

    consumers = []
    for i, consumer in enumerate(doc.get("consumers") or []):
        _only(consumer, _CONSUMER, f"kong.yml: consumers[{i}]")
        entry = {k: consumer[k] for k in ("id", "username", "custom_id") if k in consumer}
        entry.setdefault("id", _uuid_for(consumer.get("username") or consumer.get("custom_id") or str(i)))
        entry["acl_groups"] = [a["group"] for a in consumer.get("acls") or []]
        consumers.append(entry)

    resolved = []
    for spec, service_name in routes:
        spec.plugins = {**global_plugins, **service_plugins.get(service_name, {}), **route_plugins.get(spec.name, {})}
        resolved.append(spec)
    return Declarative(resolved, consumers)


def _route(route: dict[str, Any], where: str, url: str) -> RouteSpec:
    _only(route, _ROUTE, where)
    paths = route.get("paths") or []
    if not paths or any(not isinstance(p, str) or p.startswith("~") for p in paths):
        raise UnsupportedFeature(f"{where}: only plain path prefixes are emulated (no regex paths, hosts or headers)")
    if route.get("preserve_host"):
        raise UnsupportedFeature(f"{where}: preserve_host is not emulated")
    return RouteSpec(name=route["name"], paths=paths, service_url=url,
                     strip_path=route.get("strip_path", True), methods=route.get("methods"))


def _only(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise UnsupportedFeature(f"{where}: expected a mapping")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise UnsupportedFeature(f"{where}: {', '.join(extra)} not emulated by the kcauth demo gateway")


def _check_vault(value: Any, where: str) -> Any:
    """Only the env vault is emulated: its references are kept in the config, as Kong stores them,
    and resolved by the harness Kong when it starts an instance (Kong.vault_get, with `$refs`)."""
    if isinstance(value, dict):
        return {k: _check_vault(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_check_vault(v, where) for v in value]
    if isinstance(value, str) and value.startswith("{vault://") and not _VAULT.match(value):
        raise UnsupportedFeature(f"{where}: only the env vault is emulated ({value.split('/')[2]} is not)")
    return value


def _rewrite(value: Any, rewrite: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, rewrite) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, rewrite) for v in value]
    if isinstance(value, str):
        for old, new in rewrite.items():
            # URLs by prefix (paths follow), anything else (a host name) only whole.
            if value == old or ("://" in old and value.startswith(old + "/")):
                return new + value[len(old):]
    return value


def _uuid_for(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.consumers.kcauth"))
