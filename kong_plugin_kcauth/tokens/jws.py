"""JWS compact serialization (RFC 7515): parse, header policy, signature.

The one layer under everything signed that kcauth reads: access tokens (access.py), logout tokens
and not-before pushes (logout.py), DPoP proofs (dpop.py). Each of those adds its own claim rules
on top, as PyJWT and joserfc keep a JWS layer under their JWT claim checks; the key a signature is
checked with is given (a realm's, from idp/keys.py `KeySet.verify`, which also decides when a
refused token may cost a download: never).

- Parsing is strict: three base64url segments, a JSON object header and payload (claims.json_object:
  no NaN/Infinity, no lone surrogates), only asymmetric algorithms the config accepts, no `crit`.
- Nothing in the header but `alg`, `kid` and `typ` is ever read; keys come from the realm's key set
  by `kid`, never from `jku`, `x5u`, `jwk` or `x5c` (a DPoP proof's own `jwk` aside, `parse_proof`,
  which proves possession of the key a realm-signed token is bound to).
- The signature itself is checked by PyJWT's algorithm implementations, which also make kcauth's
  own signatures (`sign`: the upstream assertion, decision/assertion.py).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import get_default_algorithms

from .. import errors
from ..config.values import ASYMMETRIC_ALGORITHMS
from .claims import json_object
from .jwk import b64url

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_VERIFIERS = {name: algo for name, algo in get_default_algorithms().items() if name in ASYMMETRIC_ALGORITHMS}


@dataclass(frozen=True)
class Signed:
    """A parsed, not yet verified, JWS."""

    claims: dict[str, Any]
    alg: str
    kid: str | None
    typ: str | None  # the header's typ, lower-cased
    signing_input: bytes
    signature: bytes


def parse(token: str, max_size: int, algorithms: frozenset[str]) -> Signed:
    """Split and decode a compact JWS and apply the header policy (raises a `Refusal`)."""
    return _parse(token, max_size, algorithms)[0]


def parse_proof(token: str, max_size: int, algorithms: frozenset[str]) -> tuple[Signed, dict[str, Any]]:
    """A DPoP proof (dpop.py): the one JWS whose key is its own header's `jwk`, by design (RFC
    9449: the proof shows possession of the key the access token is bound to, which the token
    names by thumbprint). Never used for anything the realm signs."""
    signed, header = _parse(token, max_size, algorithms)
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise errors.MalformedToken()
    return signed, jwk


def _parse(token: str, max_size: int, algorithms: frozenset[str]) -> tuple[Signed, dict[str, Any]]:
    if len(token) > max_size:
        raise errors.TokenTooLarge()
    parts = token.split(".")
    # The signature may be empty (alg "none"), so that such a token is refused for its alg.
    if len(parts) != 3 or not (_SEGMENT.match(parts[0]) and _SEGMENT.match(parts[1])) or (
            parts[2] and not _SEGMENT.match(parts[2])):
        raise errors.MalformedToken()
    header = _json_segment(parts[0])
    claims = _json_segment(parts[1])
    signature = _b64decode(parts[2])
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise errors.UnacceptedAlgorithm()
    if "crit" in header:  # RFC 7515 4.1.11: kcauth understands no extension, so must refuse
        raise errors.MalformedToken()
    kid, typ = header.get("kid"), header.get("typ")
    if not isinstance(kid, (str, type(None))) or not isinstance(typ, (str, type(None))):
        raise errors.MalformedToken()
    return Signed(claims, alg, kid, typ.lower() if typ is not None else None,
                  f"{parts[0]}.{parts[1]}".encode("ascii"), signature), header


def verify(signed: Signed, key: Any) -> None:
    """Check the signature with `key` (raises BadSignature)."""
    if not signed_by(signed, key):
        raise errors.BadSignature()


def signed_by(signed: Signed, key: Any) -> bool:
    """Whether `key` made the signature."""
    try:
        return bool(_VERIFIERS[signed.alg].verify(signed.signing_input, key, signed.signature))
    except Exception:  # noqa: BLE001 - a key/alg mismatch inside the library is a bad signature
        return False


def sign(header_segment: str, payload: bytes, key: Any, alg: str) -> str:
    """A compact JWS of `payload` under the encoded protected header (kcauth's own assertions:
    decision/assertion.py); `key` is a private key of `alg`, checked when the config loaded."""
    signing_input = f"{header_segment}.{b64url(payload)}"
    signature = _VERIFIERS[alg].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url(signature)}"


def _json_segment(segment: str) -> dict[str, Any]:
    value = json_object(_b64decode(segment))
    if value is None:
        raise errors.MalformedToken()
    return value


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise errors.MalformedToken() from None
