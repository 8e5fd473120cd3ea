"""Token validation: is this a Keycloak access token for this API, signed by the realm?

The JWS compact form is split and decoded here (strictly: three base64url segments, JSON
objects) so the header is parsed once and nothing in it but `alg`, `kid`, `typ` and `crit` is
ever read; the signature itself is checked by PyJWT's algorithm implementations. The claim rules
are our own small pure functions rather than `jwt.decode`'s options, because each rule maps to
exactly one refusal class and Keycloak's rules (`typ`, `azp`, exact `iss`) are not PyJWT's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import get_default_algorithms

from . import errors
from .claims import Claims
from .schema import ASYMMETRIC_ALGORITHMS

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_VERIFIERS = {name: algo for name, algo in get_default_algorithms().items()
              if name in ASYMMETRIC_ALGORITHMS}
# Header `typ` values of an access token (RFC 9068 uses at+jwt; Keycloak sends JWT by default).
_ACCESS_HEADER_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
# Keycloak's `typ` claim of an access token; ID, Refresh, Offline and Logout tokens differ.
ACCESS_TOKEN_TYPE = "Bearer"

KeyLookup = Callable[[str | None, str], Any]


@dataclass(frozen=True)
class Rules:
    """The claim rules of one plugin configuration."""

    issuer: str
    audiences: frozenset[str]
    verify_audience: bool
    authorized_parties: frozenset[str]
    algorithms: frozenset[str]
    leeway: int
    max_token_age: int | None
    max_token_size: int
    # Sensitive routes: a token with no `aud` at all (Keycloak's lightweight access tokens) has
    # its audience checked on the introspection answer instead. A wrong `aud` is still refused.
    defer_missing_audience: bool = False


def validate(token: str, rules: Rules, key_for: KeyLookup, now: float) -> Claims:
    """The token's claims if it passes every rule, else the matching `Refusal`."""
    if len(token) > rules.max_token_size:
        raise errors.TokenTooLarge()
    header, claims, signing_input, signature = split(token)
    alg = check_header(header, rules)
    # Claims are checked before the signature: refusing a foreign, expired or mis-addressed
    # token costs no key lookup (so it cannot trigger a key download) and no verification.
    # Nothing is accepted until the signature is verified below.
    check_claims(claims, rules, now)
    verify_signature(header, alg, signing_input, signature, key_for)
    return claims


def verify_signature(header: dict[str, Any], alg: str, signing_input: bytes, signature: bytes,
                     key_for: KeyLookup) -> None:
    """Check the signature with the realm key the header's kid names (never a key the token
    carries). `alg` must already be one of the accepted algorithms."""
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise errors.MalformedToken()
    key = key_for(kid, alg)
    try:
        valid = _VERIFIERS[alg].verify(signing_input, key, signature)
    except Exception:  # a key/alg mismatch inside the library is still just a bad signature
        valid = False
    if not valid:
        raise errors.BadSignature()


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    parts = token.split(".")
    # The signature may be empty (alg "none"), so that such a token is refused for its alg.
    if len(parts) != 3 or not (_SEGMENT.match(parts[0]) and _SEGMENT.match(parts[1])) or (
            parts[2] and not _SEGMENT.match(parts[2])):
        raise errors.MalformedToken()
    header = _json_object(parts[0])
    claims = _json_object(parts[1])
    signature = _b64decode(parts[2])
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def check_header(header: dict[str, Any], rules: Rules) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        raise errors.UnacceptedAlgorithm()
    if "crit" in header:  # RFC 7515 4.1.11: we understand no extension, so must refuse
        raise errors.MalformedToken()
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCESS_HEADER_TYPES):
        raise errors.NotAnAccessToken()
    return alg


def check_claims(claims: Claims, rules: Rules, now: float) -> None:
    leeway = rules.leeway
    exp = _number(claims, "exp", required=True)
    if now > exp + leeway:  # type: ignore[operator]
        raise errors.Expired()
    nbf = _number(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise errors.NotYetValid()
    iat = _number(claims, "iat", required=rules.max_token_age is not None)
    if iat is not None:
        if now + leeway < iat:
            raise errors.NotYetValid()
        if rules.max_token_age is not None and now - iat > rules.max_token_age + leeway:
            raise errors.TooOld()
    if claims.get("iss") != rules.issuer:  # exact: no prefix, suffix or case folding
        raise errors.WrongIssuer()
    if claims.get("typ") != ACCESS_TOKEN_TYPE:
        raise errors.NotAnAccessToken()
    if rules.verify_audience and not (audiences_of(claims) & rules.audiences):
        if not (rules.defer_missing_audience and "aud" not in claims):
            raise errors.WrongAudience()
    if rules.authorized_parties:
        azp = claims.get("azp")
        if not isinstance(azp, str) or azp not in rules.authorized_parties:
            raise errors.WrongAuthorizedParty()


def audiences_of(claims: Claims) -> frozenset[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset((aud,))
    if isinstance(aud, list):
        return frozenset(a for a in aud if isinstance(a, str))
    return frozenset()


def _number(claims: Claims, name: str, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise errors.MalformedToken()
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.MalformedToken()
    return value


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, RecursionError):
        raise errors.MalformedToken() from None
    if not isinstance(value, dict):
        raise errors.MalformedToken()
    return value


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise errors.MalformedToken() from None
