"""Reading what the identity provider sends: strict JSON, times, claim paths, roles and scopes.
Pure functions.

Every JSON document from outside (token segments, introspection answers, key sets, discovery,
Redis entries) is parsed by `json_object`, which refuses what Python's json module would let
through but nothing downstream can carry: `NaN`/`Infinity`, text that is not UTF-8, and lone
UTF-16 surrogates (`"\\ud800"`), which MessagePack cannot encode back to Kong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

Claims = dict[str, Any]

_MISSING = object()

# A NumericDate kcauth accepts: a finite number of seconds from 1970 to the end of year 9999.
MAX_TIME = 253402300799
# A \uD800-\uDFFF escape: the only way a decoded JSON string can hold a surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: a number no double holds
        raise ValueError("JSON number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def json_value(data: bytes | str, *, scrub: bool = False) -> Any:
    """A JSON value from UTF-8 text, or None when it is not one (or holds NaN, Infinity, a
    number no double holds, or a string that cannot be encoded as UTF-8). `scrub`: lone
    surrogates become U+FFFD instead (a list of items each of which stands alone)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = _decoder.decode(text)
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        if _SURROGATE_ESCAPE.search(raw):
            if scrub:
                return _scrubbed(value)
            # Pairs decode to one character; a lone half survives and fails to encode here.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError):
        return None
    return value


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    return value


def json_object(data: bytes | str) -> dict[str, Any] | None:
    """A JSON object from UTF-8 text (json_value), or None."""
    value = json_value(data)
    return value if isinstance(value, dict) else None


def is_number(value: object) -> bool:
    """A JSON number (bool is an int in Python, never a number in JSON)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def time_of(value: object) -> float | None:
    """A NumericDate as seconds, or None unless it is a finite number in [0, MAX_TIME], so no
    later arithmetic or comparison on it can overflow or silently be false (NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(value) if 0 <= value <= MAX_TIME else None
    return value if 0.0 <= value <= MAX_TIME else None  # NaN fails both comparisons


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
