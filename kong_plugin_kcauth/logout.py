"""What Keycloak pushes to the revocation receiver, and how each push is checked.

- OpenID Connect Back-Channel Logout 1.0: a POST with form field `logout_token`, a JWT signed by
  the realm (header typ `logout+jwt`), naming the ended session (`sid`) or user (`sub`).
- Keycloak's not-before push (`k_push_not_before` under a client's admin URL): a JWT admin action,
  signed by the realm, carrying `notBefore`: tokens of that client issued earlier are invalid.

Both are verified with the realm's keys (the guards' key set) before anything is recorded. Each
refusal has a reason category (`LogoutRejected.reason`) that the receiver returns with its 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from . import errors
from .tokens import KeyLookup, Rules, audiences_of, split, verify_signature

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
PUSH_NOT_BEFORE_PATH = "k_push_not_before"


class LogoutRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Logout:
    sid: str | None
    sub: str | None
    jti: str
    iat: float


@dataclass(frozen=True)
class NotBefore:
    client: str
    not_before: float


def logout_token_of(body: bytes) -> str:
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    tokens = fields.get("logout_token", [])
    if len(tokens) != 1:
        raise LogoutRejected("the request must carry one logout_token")
    return tokens[0]


def _verified(token: str, rules: Rules, key_for: KeyLookup, typ: str | None, issuer: bool = True) -> dict[str, Any]:
    if len(token) > rules.max_token_size:
        raise LogoutRejected("token too large")
    try:
        header, claims, signing_input, signature = split(token)
    except errors.Refusal:
        raise LogoutRejected("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        raise LogoutRejected("signature algorithm not accepted")
    if typ is not None and str(header.get("typ", "")).lower() != typ:
        raise LogoutRejected("not a logout token")
    if "crit" in header:
        raise LogoutRejected("malformed token")
    try:
        verify_signature(header, alg, signing_input, signature, key_for)
    except errors.ProviderUnavailable:
        raise
    except errors.Refusal:
        raise LogoutRejected("invalid signature") from None
    if issuer and claims.get("iss") != rules.issuer:
        raise LogoutRejected("wrong issuer")
    return claims


def check_logout_token(token: str, rules: Rules, key_for: KeyLookup, audiences: frozenset[str],
                       now: float) -> Logout:
    """OIDC Back-Channel Logout 1.0 section 2.6 validation (raises KeysUnavailable, too)."""
    claims = _verified(token, rules, key_for, typ="logout+jwt")
    if not audiences_of(claims) & audiences:
        raise LogoutRejected("wrong audience")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _number(iat) or iat > now + rules.leeway:  # type: ignore[operator]
        raise LogoutRejected("missing or future iat")
    if exp is not None and (not _number(exp) or now > exp + rules.leeway):
        raise LogoutRejected("expired")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise LogoutRejected("no back-channel logout event")
    if "nonce" in claims:
        raise LogoutRejected("a logout token must not carry a nonce")
    sid, sub, jti = claims.get("sid"), claims.get("sub"), claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise LogoutRejected("missing jti")
    sid = sid if isinstance(sid, str) and sid else None
    sub = sub if isinstance(sub, str) and sub else None
    if sid is None and sub is None:
        raise LogoutRejected("neither sid nor sub")
    return Logout(sid=sid, sub=sub, jti=jti, iat=float(iat))  # type: ignore[arg-type]


def check_push_not_before(token: str, rules: Rules, key_for: KeyLookup, audiences: frozenset[str],
                          now: float) -> NotBefore:
    """Keycloak's PUSH_NOT_BEFORE admin action, sent to `<admin URL>/k_push_not_before`."""
    # Keycloak's admin actions carry no `iss`: the realm's signature is what binds them to it.
    claims = _verified(token, rules, key_for, typ=None, issuer=False)
    if claims.get("action") != "PUSH_NOT_BEFORE":
        raise LogoutRejected("not a not-before push")
    client, not_before, expiration = claims.get("resource"), claims.get("notBefore"), claims.get("expiration")
    if not isinstance(client, str) or client not in audiences:
        raise LogoutRejected("wrong audience")
    if not _number(expiration) or now > expiration + rules.leeway:  # type: ignore[operator]
        raise LogoutRejected("expired")
    if not _number(not_before):
        raise LogoutRejected("missing notBefore")
    return NotBefore(client=client, not_before=float(not_before))  # type: ignore[arg-type]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
