"""Reading Keycloak's claims: claim paths, roles and scopes. Pure functions."""

from __future__ import annotations

from typing import Any

Claims = dict[str, Any]

_MISSING = object()


def parse_claim_path(path: str) -> tuple[str, ...]:
    """`a.b.c` or an RFC 6901 JSON Pointer `/a.b/c` (for claim names that contain dots)."""
    if not path:
        raise ValueError("claim path is empty")
    if path.startswith("/"):
        parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/"))
    else:
        parts = tuple(path.split("."))
    if any(p == "" for p in parts):
        raise ValueError(f"claim path {path!r} has an empty segment")
    return parts


def claim_at(claims: Claims, path: tuple[str, ...]) -> Any:
    """The value at `path`, or None when any step is missing or not an object."""
    node: Any = claims
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return None
    return node


def roles_of(claims: Claims) -> frozenset[str]:
    """Keycloak roles as `realm:<role>` and `<client-id>:<role>`; malformed parts are ignored."""
    roles: set[str] = set()
    realm = claims.get("realm_access")
    if isinstance(realm, dict):
        roles.update(f"realm:{r}" for r in _strings(realm.get("roles")))
    resources = claims.get("resource_access")
    if isinstance(resources, dict):
        for client, access in resources.items():
            if isinstance(access, dict):
                roles.update(f"{client}:{r}" for r in _strings(access.get("roles")))
    return frozenset(roles)


def scopes_of(claims: Claims) -> frozenset[str]:
    scope = claims.get("scope")
    return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
