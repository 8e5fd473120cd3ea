"""Upstream headers: the identity the upstream receives, and nothing a client could forge.

The encoding contract (documented in the README, relied on by upstream services):
- a string claim is sent as is when it is printable ASCII without `%` and without leading or
  trailing space; otherwise `%`, control characters, non-ASCII characters (as UTF-8 bytes) and
  leading/trailing spaces are percent-encoded, so `urllib.parse.unquote` (or any URL decoder)
  gives the exact claim back;
- numbers as JSON numbers, booleans as `true` / `false`;
- arrays and objects as compact JSON, ASCII only (non-ASCII and control characters escaped);
- an absent claim, a null, or a value longer than the configured limit: the header is removed.
Every configured header name is always set or removed, so a client's own copy never survives;
so are Kong's identity headers (`X-Consumer-*`, ...) and any spelling of either with underscores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.values import KONG_IDENTITY_HEADERS
from ..tokens.claims import Claims, claim_at, parse_claim_path, roles_of

if TYPE_CHECKING:
    from ..config import Config

HeaderValue = str | list[str]
REMOVE: list[str] = []  # kong.service.request.set_headers with an empty array clears the header

# What kong.request.get_headers hands over at most (kong/pdk/request.lua MAX_HEADERS). Without an
# argument it stops at lua_max_req_headers (100 by default) and drops the rest without a word.
MAX_REQUEST_HEADERS = 1000

@dataclass(frozen=True)
class HeaderPlan:
    """Which claim goes into which header, compiled once per configuration."""

    claims: tuple[tuple[str, tuple[str, ...]], ...]
    max_length: int
    strip_authorization: bool

    @classmethod
    def compile(cls, claim_headers: dict[str, str], max_length: int, strip_authorization: bool) -> HeaderPlan:
        return cls(
            claims=tuple(sorted((name, parse_claim_path(path)) for name, path in claim_headers.items())),
            max_length=max_length,
            strip_authorization=strip_authorization,
        )

    @classmethod
    def from_config(cls, config: Config) -> HeaderPlan:
        return cls.compile(config.claim_headers, config.header_value_max_length, config.strip_authorization)

    @property
    def managed(self) -> frozenset[str]:
        """Every header name (lower-cased) whose value is kcauth's or Kong's alone."""
        return frozenset(name.lower() for name, _ in self.claims) | {h.lower() for h in KONG_IDENTITY_HEADERS}


def upstream_headers(plan: HeaderPlan, claims: Claims) -> dict[str, HeaderValue]:
    """The argument of one `kong.service.request.set_headers` call."""
    out: dict[str, HeaderValue] = {}
    for name, path in plan.claims:
        value = encode(claim_at(claims, path))
        out[name] = value if value is not None and len(value) <= plan.max_length else REMOVE
    if plan.strip_authorization:
        out["Authorization"] = REMOVE
    return out


def dropped_headers(plan: HeaderPlan, claims: Claims, headers: dict[str, HeaderValue]) -> list[str]:
    """The headers whose claim is present but was too long to forward."""
    return [name for name, path in plan.claims
            if headers.get(name) is REMOVE and claim_at(claims, path) is not None]


def cleared_headers(plan: HeaderPlan) -> dict[str, HeaderValue]:
    """Every configured header removed: what a request with no claims to forward gets."""
    return {name: REMOVE for name, _ in plan.claims}


def kong_identity_headers(consumer: dict[str, Any] | None, credential: dict[str, str] | None,
                          anonymous: bool = False) -> dict[str, HeaderValue]:
    """Kong's identity headers for an authenticated consumer (or none): each set from it or
    removed, as Kong's auth plugins' `set_consumer` does."""
    values: dict[str, HeaderValue] = {name: REMOVE for name in KONG_IDENTITY_HEADERS}
    if consumer is not None:
        for header, field in (("X-Consumer-ID", "id"), ("X-Consumer-Custom-ID", "custom_id"),
                              ("X-Consumer-Username", "username")):
            if isinstance(consumer.get(field), str):
                values[header] = consumer[field]
    if credential is not None:
        values["X-Credential-Identifier"] = credential["id"]
    if anonymous:
        values["X-Anonymous-Consumer"] = "true"
    return values


def spelling_variants(request_headers: dict[str, Any], managed: frozenset[str]) -> dict[str, HeaderValue]:
    """Removals for client headers that spell a managed header with underscores
    (`X_Auth_Subject`): Kong's nginx passes them (`underscores_in_headers on`) and WSGI, CGI and
    many frameworks read them as the very same header."""
    return {name: REMOVE for name in request_headers
            if "_" in name and name.replace("_", "-").lower() in managed}


def all_seen(request_headers: dict[str, Any]) -> bool:
    """Whether the map holds every header line of the request: a full map may have been cut
    at MAX_REQUEST_HEADERS, and a client's copy of an identity header could be past the cut."""
    lines = sum(len(v) if isinstance(v, list) else 1 for v in request_headers.values())
    return lines < MAX_REQUEST_HEADERS


def changes(headers: dict[str, HeaderValue], request_headers: dict[str, Any]) -> dict[str, HeaderValue]:
    """What `headers` changes in this request: removing a header it does not carry changes
    nothing, so it is not sent (less for Kong to unpack; names in the map are lower case)."""
    return {name: value for name, value in headers.items() if value != REMOVE or name.lower() in request_headers}


def encode(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return encode_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    # json escapes control characters except DEL; escape it too so no raw control byte remains.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("\x7f", "\\u007f")


def encode_string(value: str) -> str:
    if value.isascii() and value.isprintable() and "%" not in value and value == value.strip(" "):
        return value
    last = len(value) - 1
    out = []
    for i, ch in enumerate(value):
        if ch == "%" or not (ch.isascii() and ch.isprintable()) or (ch == " " and (i == 0 or i == last)):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def groups_for(claims: Claims, authenticated_group: str, roles_as_groups: bool,
               groups_path: tuple[str, ...] | None = None) -> list[str]:
    """kong.ctx.shared.authenticated_groups for Kong's ACL plugin: the authenticated group, the
    roles (`realm:<role>`, `<client-id>:<role>`) and the Keycloak groups (`group:<name>`)."""
    extra = set(roles_of(claims)) if roles_as_groups else set()
    if groups_path is not None:
        memberships = claim_at(claims, groups_path)
        if isinstance(memberships, list):
            extra.update(f"group:{g}" for g in memberships if isinstance(g, str) and g)
    return [authenticated_group, *sorted(extra - {authenticated_group})]
