"""Every way a request can be refused, one class each, and how each is answered.

Answers follow RFC 6750 section 3: 401 with a bare `Bearer` challenge when no token was
presented, 401 `invalid_token` / `invalid_request` for a bad one, 403 `insufficient_scope` for a
valid token that lacks a scope or role, and 503 with Retry-After when the identity provider's keys
cannot be had. Descriptions are fixed strings of this module: no library text, no key ids and no
token content ever reach a client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar


class Refusal(Exception):
    """Base class: a request this plugin answers itself instead of proxying."""

    status: ClassVar[int] = 401
    error: ClassVar[str | None] = "invalid_token"
    description: ClassVar[str] = "The access token is invalid"
    message: ClassVar[str] = "Unauthorized"


# --- no usable credentials (bare challenge) ---------------------------------------------------

class MissingToken(Refusal):
    error = None
    description = ""


# --- malformed request (RFC 6750 invalid_request, answered 401 so clients re-authenticate) ------

class InvalidRequest(Refusal):
    error = "invalid_request"
    description = "The request must carry exactly one Bearer token in one Authorization header"


class TooManyHeaders(Refusal):
    """More header lines than Kong hands a plugin (kong.request.get_headers, at most 1000): a
    client's copy of an identity header could hide past them, so the request is not taken.
    RFC 6585 431, without a challenge: no token would change the answer."""

    status = 431
    error = None
    description = ""
    message = "Request Header Fields Too Large"


# --- invalid token ----------------------------------------------------------------------------

class InvalidToken(Refusal):
    """A token refused by a claim rule that is not signed by a key the gateway holds: which
    rule is not told (jws.verify_after), so forgers cannot probe the configuration."""


class TokenTooLarge(Refusal):
    description = "The access token is too large"


class MalformedToken(Refusal):
    description = "The access token is malformed"


class UnacceptedAlgorithm(Refusal):
    description = "The access token is signed with an algorithm that is not accepted"


class UnknownKey(Refusal):
    description = "The access token is signed with an unknown key"


class BadSignature(Refusal):
    description = "The access token signature is invalid"


class Expired(Refusal):
    description = "The access token expired"


class NotYetValid(Refusal):
    description = "The access token is not valid yet"


class TooOld(Refusal):
    description = "The access token is too old"


class WrongIssuer(Refusal):
    description = "The access token was issued by another issuer"


class WrongAudience(Refusal):
    description = "The access token is not meant for this API"


class WrongAuthorizedParty(Refusal):
    description = "The access token was issued to a client that is not accepted"


class NotAnAccessToken(Refusal):
    description = "The token is not an access token"


class TokenRevoked(Refusal):
    """Keycloak pushed a logout of the token's session or user, or a not-before past its iat."""

    description = "The access token was revoked"


class TokenInactive(Refusal):
    """Introspection says the token is no longer active (logout, revocation, disabled user)."""

    description = "The access token is no longer active"


# --- valid token, not enough rights ------------------------------------------------------------

class InsufficientScope(Refusal):
    status = 403
    error = "insufficient_scope"
    description = "The access token lacks a required scope or role"
    message = "Forbidden"

    def __init__(self, required_scopes: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.required_scopes = required_scopes


class UnknownConsumer(Refusal):
    status = 403
    error = "insufficient_scope"
    description = "The access token does not map to a Kong consumer"
    message = "Forbidden"


# --- the identity provider cannot be used ------------------------------------------------------

class ProviderUnavailable(Refusal):
    status = 503
    error = None
    message = "The identity provider cannot be reached"
    retry_after = 5


class KeysUnavailable(ProviderUnavailable):
    """No usable signing keys: the key set cannot be fetched and none are held."""


class IntrospectionUnavailable(ProviderUnavailable):
    """Introspection failed (unreachable, timed out, garbage) and no fallback applies."""


# --- the revocation receiver -------------------------------------------------------------------

class PushRejected(Refusal):
    """A back-channel logout or not-before push that is refused; `reason` is a fixed category
    (tokens/logout.py) returned to the sender, never input text."""

    status = 400
    error = "invalid_request"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventRejected(Refusal):
    """A Security Event Token that is refused (tokens/secevent.py): `error` is an RFC 8935
    error code, `reason` a fixed description, both returned to the transmitter."""

    status = 400

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MethodNotAllowed(Refusal):
    status = 405
    error = None
    message = "Method not allowed"


# --- DPoP (RFC 9449 section 7.1; tokens/dpop.py) ------------------------------------------------------

class DPoPRefusal(Refusal):
    """A refusal answered with the DPoP challenge (on the DPoP scheme)."""


class InvalidDPoPProof(DPoPRefusal):
    error = "invalid_dpop_proof"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.reason


class UseDPoPNonce(DPoPRefusal):
    error = "use_dpop_nonce"
    description = "A DPoP nonce is required: retry with the one in the DPoP-Nonce header"

    def __init__(self, nonce: str) -> None:
        super().__init__(nonce)
        self.nonce = nonce


class DPoPRequired(DPoPRefusal):
    """A Bearer token where the route takes DPoP-bound tokens only: a bare DPoP challenge."""

    error = None
    description = ""


class BoundTokenAsBearer(Refusal):
    description = "The access token is bound to a key (DPoP): present it with a DPoP proof"


class UnboundTokenAsDPoP(DPoPRefusal):
    error = "invalid_token"
    description = "The access token is not bound to a key: present it as a Bearer token"


class BindingMismatch(Refusal):
    description = "The access token's key binding does not match the identity provider's"


# --- our own fault -----------------------------------------------------------------------------

class InternalFault(Refusal):
    status = 500
    error = None
    message = "An unexpected error occurred"


# Refusals an introspection verdict can carry, by name: the only names read back from Redis.
VERDICT_REFUSALS: dict[str, type[Refusal]] = {cls.__name__: cls for cls in (
    TokenInactive, Expired, NotYetValid, TooOld, WrongIssuer, WrongAudience, WrongAuthorizedParty,
    NotAnAccessToken,
)}


R = TypeVar("R", bound=Refusal)


def raised(kind: type[R], check: Callable[[], object]) -> R | None:
    """The `kind` of refusal `check` raises, or None: token rules are written as checks that
    raise, and answered as what they refuse (tokens/access.py, tokens/logout.py)."""
    try:
        check()
    except kind as refused:
        return refused
    return None


@dataclass(frozen=True)
class Answer:
    """What Kong sends the client: the arguments of `kong.response.exit`."""

    status: int
    body: dict[str, str] | str | None  # None: no body (202 to a pushed SET); str: sent as is
    headers: dict[str, str]


@dataclass(frozen=True)
class Schemes:
    """The schemes a route takes, for the challenges its refusals are answered with: Bearer,
    DPoP (with its algorithms), or both."""

    bearer: bool = True
    dpop_algs: tuple[str, ...] = ()


BEARER_ONLY = Schemes()


def answer(refusal: Refusal, realm: str, schemes: Schemes = BEARER_ONLY, dpop_used: bool = False) -> Answer:
    """`dpop_used`: the request came with the DPoP scheme, whose challenge then carries the error."""
    if isinstance(refusal, PushRejected):
        return Answer(400, {"error": refusal.error or "", "error_description": refusal.reason},
                      {"Cache-Control": "no-store"})
    if isinstance(refusal, EventRejected):  # RFC 8935 section 2.3
        return Answer(400, {"err": refusal.code, "description": refusal.reason}, {"Cache-Control": "no-store"})
    if isinstance(refusal, MethodNotAllowed):
        return Answer(405, {"message": refusal.message}, {"Allow": "POST"})
    headers: dict[str, str] = {}
    if refusal.status in (401, 403):
        headers["WWW-Authenticate"] = challenges(refusal, realm, schemes, dpop_used)
    if isinstance(refusal, UseDPoPNonce):
        headers["DPoP-Nonce"] = refusal.nonce
    if isinstance(refusal, ProviderUnavailable):
        headers["Retry-After"] = str(refusal.retry_after)
    return Answer(refusal.status, {"message": refusal.message}, headers)


def challenges(refusal: Refusal, realm: str, schemes: Schemes, dpop_used: bool) -> str:
    """RFC 6750 section 3 and RFC 9449 section 7.1, in one header. A Bearer request is answered
    with the Bearer challenge alone, as without DPoP (plus a bare DPoP one when its token needs
    DPoP); a DPoP request or refusal puts the error on the DPoP challenge, beside a bare Bearer
    one where Bearer is accepted too."""
    on_dpop = dpop_used or isinstance(refusal, DPoPRefusal)
    offer_dpop = bool(schemes.dpop_algs) and (on_dpop or not schemes.bearer or isinstance(refusal, BoundTokenAsBearer))
    if not offer_dpop:
        return challenge(refusal, realm)
    out = [challenge(None if on_dpop else refusal, realm)] if schemes.bearer else []
    out.append(challenge(refusal if on_dpop else None, realm, "DPoP") + f', algs="{" ".join(schemes.dpop_algs)}"')
    return ", ".join(out)


def challenge(refusal: Refusal | None, realm: str, scheme: str = "Bearer") -> str:
    parts = [f'realm="{realm}"']
    if refusal is not None and refusal.error:
        parts.append(f'error="{refusal.error}"')
        parts.append(f'error_description="{refusal.description}"')
    if isinstance(refusal, InsufficientScope) and refusal.required_scopes:
        parts.append(f'scope="{" ".join(refusal.required_scopes)}"')
    return f"{scheme} " + ", ".join(parts)
