"""Access tokens: is this a Keycloak access token for this API, signed by the realm?

The JWS layer (jws.py) parses and verifies; this module holds the claim rules of an access token.
They are small pure functions rather than `jwt.decode`'s options, because each rule maps to
exactly one refusal class and Keycloak's rules (`typ`, `azp`, exact `iss`) are not PyJWT's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import errors
from ..config import Config
from . import jws
from .claims import Claims, time_of

# Header `typ` values of an access token (RFC 9068 uses at+jwt; Keycloak sends JWT by default).
_ACCESS_HEADER_TYPES = frozenset({None, "jwt", "at+jwt", "application/at+jwt"})
# Keycloak's `typ` claim of an access token (DPoP: bound to a key, dpop.py); ID, Refresh,
# Offline and Logout tokens differ.
ACCESS_TOKEN_TYPES = frozenset({"Bearer", "DPoP"})


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

    @classmethod
    def from_config(cls, config: Config) -> Rules:
        return cls(issuer=config.the_issuer, audiences=frozenset(config.audiences),
                   verify_audience=config.verify_audience,
                   authorized_parties=frozenset(config.authorized_parties),
                   algorithms=frozenset(config.algorithms), leeway=config.leeway,
                   max_token_age=config.max_token_age, max_token_size=config.max_token_size,
                   defer_missing_audience=config.introspect)


def parse(token: str, max_size: int, algorithms: frozenset[str]) -> jws.Signed:
    """The JWS of what claims to be an access token, not yet verified (its `iss` tells which
    issuer's rules and keys apply)."""
    signed = jws.parse(token, max_size, algorithms)
    if signed.typ not in _ACCESS_HEADER_TYPES:
        raise errors.NotAnAccessToken()
    return signed


def refusal(claims: Claims, rules: Rules, now: float) -> errors.Refusal | None:
    """What the claim rules refuse in a token, or None (they need no key: checked first, so a
    foreign, expired or mis-addressed token costs no key download and no verification)."""
    return errors.raised(errors.Refusal, lambda: check_claims(claims, rules, now))


def check_claims(claims: Claims, rules: Rules, now: float) -> None:
    leeway = rules.leeway
    exp = time_claim(claims, "exp", required=True)
    if exp is not None and now > exp + leeway:
        raise errors.Expired()
    nbf = time_claim(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise errors.NotYetValid()
    iat = time_claim(claims, "iat", required=rules.max_token_age is not None)
    if iat is not None:
        if now + leeway < iat:
            raise errors.NotYetValid()
        if rules.max_token_age is not None and now - iat > rules.max_token_age + leeway:
            raise errors.TooOld()
    if claims.get("iss") != rules.issuer:  # exact: no prefix, suffix or case folding
        raise errors.WrongIssuer()
    typ = claims.get("typ")
    if not isinstance(typ, str) or typ not in ACCESS_TOKEN_TYPES:  # (a list is no set member)
        raise errors.NotAnAccessToken()
    if rules.verify_audience and not (audiences_of(claims) & rules.audiences):
        if not (rules.defer_missing_audience and "aud" not in claims):
            raise errors.WrongAudience()
    if rules.authorized_parties:
        azp = claims.get("azp")
        if not isinstance(azp, str) or azp not in rules.authorized_parties:
            raise errors.WrongAuthorizedParty()


def time_claim(claims: Claims, name: str, required: bool = False) -> float | None:
    """A time claim (claims.time_of), absent → None; present but not a sane time → malformed."""
    value = claims.get(name)
    if value is None:
        if required:
            raise errors.MalformedToken()
        return None
    seconds = time_of(value)
    if seconds is None:
        raise errors.MalformedToken()
    return seconds


def deadline_of(claims: Claims, rules: Rules) -> float:
    """Until when a validated token's outcome may be remembered: `exp`, or earlier under
    `max_token_age`."""
    deadline = time_claim(claims, "exp", required=True) or 0.0
    if rules.max_token_age is not None:
        deadline = min(deadline, (time_claim(claims, "iat", required=True) or 0.0) + rules.max_token_age)
    return deadline


def audiences_of(claims: Claims) -> frozenset[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset((aud,))
    if isinstance(aud, list):
        return frozenset(a for a in aud if isinstance(a, str))
    return frozenset()
