"""DPoP (RFC 9449): access tokens bound to a client's key, and the proof checked on every request.

Keycloak issues DPoP-bound access tokens (client setting "Require DPoP bound tokens"): the claim
`typ` is `DPoP` and `cnf.jkt` is the RFC 7638 thumbprint of the client's public key (Keycloak adds
members of its own to `cnf`; they are ignored). The client presents such a token as
`Authorization: DPoP <token>` with a `DPoP` header: a JWT it signs with that key for this one
request. `check_proof` is section 4.3 of the RFC; `Proofs` adds what needs state: single use of
each proof (`jti`) across every process and node (Redis when configured), and server nonces
(sections 8 and 9) when the route asks for them; that state is the decision's
(decision/proofs.py). This module is pure.

Nothing here is asked of Kong: the handler passes the request's method and the URL the client
addressed (handler.request_url), which it asks Kong for only when a DPoP token comes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .. import errors
from . import jws
from .claims import time_of
from .jwk import MIN_RSA_BITS, THUMBPRINT_MEMBERS, Jwk, b64url, key_agrees, thumbprint

PROOF_TYPE = "dpop+jwt"
MAX_PROOF_SIZE = 8192
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def token_hash(token: str) -> str:
    """The proof's `ath`: base64url SHA-256 of the access token's ASCII bytes."""
    return b64url(hashlib.sha256(token.encode("ascii", "replace")).digest())


def bound_key(claims: dict[str, Any]) -> str | None:
    """The `cnf.jkt` a token (or an introspection answer) is bound to; other `cnf` members, such
    as Keycloak's own, are tolerated."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) and jkt else None


# An absolute http(s) URI as RFC 3986 section 3 writes it, without user-info: what `htu` and the
# request's URL must be before they are compared (Python's urlsplit also takes `\`, spaces and a
# host after the last `@`, so `https://evil.com\@api.example.com/` would read as the API's).
_URI = re.compile(r"https?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::[0-9]*)?"
                  r"(?:/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?(?:\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?"
                  r"(?:#[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?\Z", re.IGNORECASE)


def normalized_url(url: str) -> str | None:
    """RFC 9449 4.3 (and RFC 3986 6.2.2-6.2.3): scheme and host in lower case, the default port
    left out, no query or fragment; None for what is no absolute http(s) URI (`_URI`)."""
    if not _URI.match(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname or ""  # hostname: lower case, no brackets
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{normalized_path(parts.path or '/')}"


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalized_path(path: str) -> str:
    """RFC 3986 6.2.2: unreserved characters decoded, other escapes in upper case, dot segments
    removed (Kong's kong.request.get_path normalizes the same way)."""
    def escape(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    out: list[str] = []
    for segment in _PERCENT.sub(escape, path).split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if path.endswith(("/.", "/..")):
        out.append("")
    return "/".join(out) or "/"


@dataclass(frozen=True)
class Proof:
    jti: str
    iat: float
    jkt: str  # the thumbprint of the key that signed it
    nonce: str | None


def check_proof(proof: str, *, method: str, url: str, token: str, jkt: str, algorithms: frozenset[str],
                max_age: float, leeway: float, now: float) -> Proof:
    """RFC 9449 section 4.3, steps 4 to 11 (the one-header rule is the caller's, the `jti` and
    nonce state `Proofs`'): raises `InvalidDPoPProof` with what is wrong."""
    try:
        signed, key = jws.parse_proof(proof, MAX_PROOF_SIZE, algorithms)
    except errors.Refusal:
        raise errors.InvalidDPoPProof("The DPoP proof is not a signed JWT with an accepted algorithm") from None
    if signed.typ != PROOF_TYPE:
        raise errors.InvalidDPoPProof("The DPoP proof's typ must be dpop+jwt")
    public = _public_key(key, signed.alg)
    try:
        jws.verify(signed, public)
    except errors.Refusal:
        raise errors.InvalidDPoPProof("The DPoP proof's signature is invalid") from None
    claims = signed.claims
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise errors.InvalidDPoPProof("The DPoP proof has no usable jti")
    if claims.get("htm") != method:
        raise errors.InvalidDPoPProof("The DPoP proof is for another method")
    htu = claims.get("htu")
    addressed = normalized_url(htu) if isinstance(htu, str) else None
    if addressed is None or addressed != normalized_url(url):
        raise errors.InvalidDPoPProof("The DPoP proof is for another URL")
    iat = time_of(claims.get("iat"))
    if iat is None or iat > now + leeway or iat < now - max_age - leeway:
        raise errors.InvalidDPoPProof("The DPoP proof is not fresh")
    if claims.get("ath") != token_hash(token):
        raise errors.InvalidDPoPProof("The DPoP proof is for another access token")
    if not hmac.compare_digest(thumbprint(key), jkt):
        raise errors.InvalidDPoPProof("The DPoP proof is signed by another key than the token is bound to")
    nonce = claims.get("nonce")
    return Proof(jti=jti, iat=iat, jkt=jkt, nonce=nonce if isinstance(nonce, str) else None)


def _public_key(jwk: dict[str, Any], alg: str) -> Any:
    """The proof's embedded `jwk`: a public key of a type the algorithm uses, nothing private."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in THUMBPRINT_MEMBERS or _PRIVATE_MEMBERS & set(jwk) or \
            not all(isinstance(jwk.get(m), str) for m in THUMBPRINT_MEMBERS[kty]):
        raise errors.InvalidDPoPProof("The DPoP proof's jwk is not a public key")
    try:
        key = jwt.PyJWK(jwk).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        raise errors.InvalidDPoPProof("The DPoP proof's jwk is not a public key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise errors.InvalidDPoPProof("The DPoP proof's key is too short")
    crv = jwk.get("crv")
    if not key_agrees(Jwk(kid=None, kty=kty, alg=None, crv=crv if isinstance(crv, str) else None, key=key), alg) \
            or not hasattr(key, "verify"):
        raise errors.InvalidDPoPProof("The DPoP proof's jwk does not fit its algorithm")
    return key
