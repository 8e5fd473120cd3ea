"""Upstream headers: the identity the upstream receives, and nothing a client could forge.

The encoding contract (documented in the README, relied on by upstream services):
- a string claim is sent as is when it is printable ASCII without `%` and without leading or
  trailing space; otherwise `%`, control characters, non-ASCII characters (as UTF-8 bytes) and
  leading/trailing spaces are percent-encoded, so `urllib.parse.unquote` (or any URL decoder)
  gives the exact claim back;
- numbers as JSON numbers, booleans as `true` / `false`;
- arrays and objects as compact JSON, ASCII only (non-ASCII and control characters escaped);
- an absent claim, a null, or a value longer than the configured limit: the header is removed.
Every configured header name is always set or removed, so a client's own copy never survives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .claims import Claims, claim_at, parse_claim_path, roles_of

HeaderValue = str | list[str]
REMOVE: list[str] = []  # kong.service.request.set_headers with an empty array clears the header


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


def upstream_headers(plan: HeaderPlan, claims: Claims) -> dict[str, HeaderValue]:
    """The argument of one `kong.service.request.set_headers` call."""
    out: dict[str, HeaderValue] = {}
    for name, path in plan.claims:
        value = encode(claim_at(claims, path))
        out[name] = value if value is not None and len(value) <= plan.max_length else REMOVE
    if plan.strip_authorization:
        out["Authorization"] = REMOVE
    return out


def cleared_headers(plan: HeaderPlan) -> dict[str, HeaderValue]:
    """Every configured header removed: what a request with no claims to forward gets."""
    return {name: REMOVE for name, _ in plan.claims}


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


def groups_for(claims: Claims, authenticated_group: str, roles_as_groups: bool) -> list[str]:
    """kong.ctx.shared.authenticated_groups for Kong's ACL plugin."""
    groups = [authenticated_group]
    if roles_as_groups:
        groups.extend(sorted(roles_of(claims) - {authenticated_group}))
    return groups
