"""What Keycloak pushes to the revocation receiver, and how each push is checked.

- OpenID Connect Back-Channel Logout 1.0: a POST with form field `logout_token`, a JWT signed by
  the realm (header typ `logout+jwt`), naming the ended session (`sid`) or user (`sub`).
- Keycloak's not-before push (`k_push_not_before` under a client's admin URL): a JWT admin action,
  signed by the realm, carrying `notBefore`: tokens of that client issued earlier are invalid.

Both go through the JWS layer (jws.py); this module holds their claim rules (`logout_refusal`,
`not_before_refusal`: what they refuse, checked before the signature, which the receiver then
checks with the realm's keys) and what a valid one says (`logout_of`, `not_before_of`). Every
refusal is an `errors.PushRejected` with a fixed reason category, which the receiver returns
with its 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from .. import errors
from . import jws
from .access import Rules, audiences_of
from .claims import Claims, time_of

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
PUSH_NOT_BEFORE_PATH = "k_push_not_before"
# Keycloak sends a push the moment it happens: anything older (or, for a not-before action, valid
# for longer) than this, beyond the leeway, is refused as stale, so a captured push cannot be
# replayed later.
PUSH_MAX_AGE = 300
_MAX_FORM_FIELDS = 20


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
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=_MAX_FORM_FIELDS)
    except ValueError:
        raise errors.PushRejected("too many form fields") from None
    tokens = fields.get("logout_token", [])
    if len(tokens) != 1:
        raise errors.PushRejected("the request must carry one logout_token")
    return tokens[0]


def logout_refusal(signed: jws.Signed, rules: Rules, audiences: frozenset[str],
                   now: float) -> errors.PushRejected | None:
    """What OIDC Back-Channel Logout 1.0 section 2.6 refuses in a `parse_push`ed logout token,
    short of its signature, or None."""
    if signed.typ not in ("logout+jwt", "application/logout+jwt"):
        return errors.PushRejected("not a logout token")
    return errors.raised(errors.PushRejected, lambda: _logout_claims(signed.claims, rules, audiences, now))


def logout_of(signed: jws.Signed) -> Logout:
    """What a logout token that passed `logout_refusal` and its signature ended."""
    claims = signed.claims
    sid, sub = claims.get("sid"), claims.get("sub")
    return Logout(sid=sid if isinstance(sid, str) and sid else None,
                  sub=sub if isinstance(sub, str) and sub else None,
                  jti=claims["jti"], iat=time_of(claims["iat"]) or 0.0)


def _logout_claims(claims: Claims, rules: Rules, audiences: frozenset[str], now: float) -> None:
    if claims.get("iss") != rules.issuer:
        raise errors.PushRejected("wrong issuer")
    if not audiences_of(claims) & audiences:
        raise errors.PushRejected("wrong audience")
    iat = time_of(claims.get("iat"))
    if iat is None or iat > now + rules.leeway:
        raise errors.PushRejected("missing or future iat")
    if iat < now - PUSH_MAX_AGE - rules.leeway:
        raise errors.PushRejected("stale logout token")
    if "exp" in claims:
        exp = time_of(claims["exp"])
        if exp is None or now > exp + rules.leeway:
            raise errors.PushRejected("expired")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise errors.PushRejected("no back-channel logout event")
    if "nonce" in claims:
        raise errors.PushRejected("a logout token must not carry a nonce")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise errors.PushRejected("missing jti")
    if not any(isinstance(claims.get(n), str) and claims.get(n) for n in ("sid", "sub")):
        raise errors.PushRejected("neither sid nor sub")


def not_before_refusal(signed: jws.Signed, rules: Rules, audiences: frozenset[str],
                       now: float) -> errors.PushRejected | None:
    """What is refused in Keycloak's PUSH_NOT_BEFORE admin action (sent to `<admin URL>/
    k_push_not_before`) as `parse_push` read it, short of its signature, or None. Keycloak's admin
    actions carry no `iss`: the realm's signature is what binds them to it."""
    return errors.raised(errors.PushRejected, lambda: _not_before_claims(signed.claims, audiences, rules, now))


def not_before_of(signed: jws.Signed) -> NotBefore:
    claims = signed.claims
    return NotBefore(client=claims["resource"], not_before=time_of(claims["notBefore"]) or 0.0)


def _not_before_claims(claims: Claims, audiences: frozenset[str], rules: Rules, now: float) -> None:
    if claims.get("action") != "PUSH_NOT_BEFORE":
        raise errors.PushRejected("not a not-before push")
    client = claims.get("resource")
    if not isinstance(client, str) or client not in audiences:
        raise errors.PushRejected("wrong audience")
    expiration = time_of(claims.get("expiration"))
    if expiration is None or now > expiration + rules.leeway:
        raise errors.PushRejected("expired")
    if expiration > now + PUSH_MAX_AGE + rules.leeway:
        raise errors.PushRejected("stale not-before push")
    if time_of(claims.get("notBefore")) is None:
        raise errors.PushRejected("missing notBefore")


def parse_push(token: str, max_size: int, algorithms: frozenset[str]) -> jws.Signed:
    """A pushed JWS, not yet verified; its refusals are the receiver's reason categories."""
    try:
        return jws.parse(token, max_size, algorithms)
    except errors.TokenTooLarge:
        raise errors.PushRejected("token too large") from None
    except errors.UnacceptedAlgorithm:
        raise errors.PushRejected("signature algorithm not accepted") from None
    except errors.Refusal:
        raise errors.PushRejected("malformed token") from None
