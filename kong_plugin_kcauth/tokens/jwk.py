"""JSON Web Keys (RFC 7517) as kcauth takes them: which entries of a key set may verify a
token, and which key a token header names. Pure: the key sets themselves are downloaded and
kept by idp/keys.py.

- only `use: sig` keys of type RSA (2048 bits or more), EC or OKP; private and symmetric keys never;
- a key verifies only tokens whose `alg` its type, curve and own `alg` agree with;
- without a `kid`, only an unambiguous match is taken.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import get_default_algorithms

log = logging.getLogger("kcauth.keys")

MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# RFC 7638 section 3.2: the required members of each key type, the only ones hashed.
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url SHA-256 of the key's required members, in order, no whitespace."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def published(public_key: Any, alg: str) -> dict[str, Any]:
    """The JWK kcauth publishes for one of its own public keys: `kid` its RFC 7638 thumbprint,
    so every node computes the same one from the same key, and `use`, `alg` for verifiers."""
    jwk = get_default_algorithms()[alg].to_jwk(public_key, as_dict=True)
    public = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    return {**public, "kid": thumbprint(public), "use": "sig", "alg": alg}


@dataclass(frozen=True)
class Jwk:
    kid: str | None
    kty: str
    alg: str | None
    crv: str | None
    key: Any  # a cryptography public key object


def key_agrees(jwk: Jwk, alg: str) -> bool:
    """Whether `jwk` may verify a token signed with `alg` (type, curve and named alg agree)."""
    if jwk.alg is not None and jwk.alg != alg:
        return False
    if alg[:2] in ("RS", "PS"):
        return jwk.kty == "RSA"
    if alg in _EC_CURVES:
        return jwk.kty == "EC" and jwk.crv == _EC_CURVES[alg]
    if alg == "EdDSA":
        return jwk.kty == "OKP" and jwk.crv in ("Ed25519", "Ed448")
    return False


def parse_jwks(doc: dict[str, Any]) -> dict[str | None, tuple[Jwk, ...]]:
    """Signing keys of a JWKS document by kid; unusable entries are skipped and logged."""
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise ValueError("key set has no `keys` array")
    by_kid: dict[str | None, list[Jwk]] = {}
    for entry in entries:
        jwk = _parse_key(entry)
        if jwk is not None:
            by_kid.setdefault(jwk.kid, []).append(jwk)
    return {kid: tuple(keys) for kid, keys in by_kid.items()}


def _parse_key(entry: Any) -> Jwk | None:
    if not isinstance(entry, dict) or entry.get("use") != "sig":
        return None  # encryption keys (Keycloak publishes one) and malformed entries
    kty, kid, alg, crv = entry.get("kty"), entry.get("kid"), entry.get("alg"), entry.get("crv")
    if kty not in ("RSA", "EC", "OKP") or not isinstance(kid, (str, type(None))):
        return None
    if not isinstance(alg, (str, type(None))) or not isinstance(crv, (str, type(None))):
        return None
    try:
        key = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        log.warning("skipping key %s: cannot load it (%s)", kid, type(exc).__name__)
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        log.warning("skipping key %s: RSA key of %d bits is too short", kid, key.key_size)
        return None
    if not hasattr(key, "verify"):  # a private or symmetric key has no business here
        return None
    return Jwk(kid=kid, kty=kty, alg=alg, crv=crv, key=key)


def select_key(keys: dict[str | None, tuple[Jwk, ...]], kid: str | None, alg: str) -> Jwk | None:
    """The key for a token header. Without a kid, only an unambiguous match is accepted."""
    if kid is not None:
        return next((k for k in keys.get(kid, ()) if key_agrees(k, alg)), None)
    fitting = [k for group in keys.values() for k in group if key_agrees(k, alg)]
    return fitting[0] if len(fitting) == 1 else None
