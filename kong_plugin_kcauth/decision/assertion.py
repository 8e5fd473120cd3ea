"""The upstream assertion: the identity kcauth established, signed by the gateway for the upstream
(docs/upstream-identity.md), and the JWK Set an `assertion_keys` route publishes to verify it.

One compact JWS per accepted request, in the header `upstream_assertion.header`:
- protected header `{"alg", "kid", "typ": "kcauth-assertion+jwt"}`, `kid` the RFC 7638 thumbprint
  of the public key, so every node holding the same key names it the same;
- claims: `iss` (the gateway), `aud` (the upstream), `iat`, `exp` (`ttl` later), `jti` (random),
  `sub`, `kc_iss` (the issuer that accepted the token), `claims` (header name to the claim value
  the header carries, decoded), `consumer` (`id`, `username`) when one is mapped, and the request
  it is for: `htm` (method) and `htp` (path, no query), in clear since the upstream's own path can
  differ from the client's (`strip_path`) and it compares them as its route maps them.

What is cached: the key object, the encoded protected header (per config: a Signer per Guard),
and the identity part of the claims per accepted token (on the Grant, decision/guard.py). The
signed bytes cannot be: `jti`, times and the request are in them. One signature per request.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..config.values import fits, load_assertion_key, load_public_key
from ..ops.logs import Owners
from ..tokens import jws
from ..tokens.claims import Claims, claim_at
from ..tokens.jwk import b64url, published
from .headers import REMOVE, HeaderPlan, HeaderValue

TYP = "kcauth-assertion+jwt"
# The JWK Set's answer: cacheable, briefly, so a rotation's new key is seen within minutes.
KEYS_CACHE_CONTROL = "public, max-age=300"
KEYS_MEDIA_TYPE = "application/jwk-set+json"


def _alg_of(key: Any, configured: str) -> str:
    """The alg a published extra public key verifies: by its type (RSA: the configured RS256 or
    PS256, else RS256)."""
    if fits(key, configured):
        return configured
    return next(alg for alg in ("ES256", "EdDSA", "RS256") if fits(key, alg))  # load_public_key: one fits


def key_set(config: Config) -> dict[str, Any]:
    """The JWK Set of the config's assertion keys: `private_key`'s public key, then
    `public_keys` (a rotation's next or previous ones), each once."""
    record = config.upstream_assertion
    keys = [published(load_assertion_key(record.private_key or "", record.algorithm).public_key(), record.algorithm)]
    for pem in record.public_keys or ():
        public = load_public_key(pem)
        keys.append(published(public, _alg_of(public, record.algorithm)))
    unique: dict[str, dict[str, Any]] = {}
    for jwk in keys:
        unique.setdefault(jwk["kid"], jwk)  # a key listed twice is published once
    return {"keys": list(unique.values())}


@dataclass(frozen=True)
class Request:
    """What the assertion binds to."""

    method: str
    path: str


class Signer:
    """A config's assertion: its key loaded once, its protected header encoded once."""

    def __init__(self, config: Config) -> None:
        record = config.upstream_assertion
        self.header = record.header
        self.algorithm = record.algorithm
        self._key = load_assertion_key(record.private_key or "", record.algorithm)
        self.kid = published(self._key.public_key(), record.algorithm)["kid"]
        self._protected = b64url(json.dumps({"alg": record.algorithm, "kid": self.kid, "typ": TYP},
                                             separators=(",", ":")).encode())
        self._fixed = {"iss": record.issuer, "aud": record.audience}
        self.ttl = record.ttl

    def sign(self, identity: dict[str, Any], consumer: dict[str, Any] | None, request: Request, now: float) -> str:
        """The header's value for one request."""
        iat = int(now)
        claims = {**self._fixed, "iat": iat, "exp": iat + self.ttl, "jti": secrets.token_urlsafe(16),
                  "htm": request.method, "htp": request.path, **identity}
        if consumer is not None:
            claims["consumer"] = {k: consumer[k] for k in ("id", "username") if isinstance(consumer.get(k), str)}
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode()
        return jws.sign(self._protected, payload, self._key, self.algorithm)


def identity_of(sub: Any, issuer: str, plan: HeaderPlan, claims: Claims,
                headers: dict[str, HeaderValue]) -> dict[str, Any]:
    """The part of the claims that is the token's (computed once per accepted token): the value
    of each claim header set (not those removed: absent, or over the length limit), decoded."""
    forwarded = {name: claim_at(claims, path) for name, path in plan.claims if headers.get(name) is not REMOVE}
    out: dict[str, Any] = {"kc_iss": issuer, "claims": forwarded}
    if isinstance(sub, str):
        out["sub"] = sub
    return out


class KeysPublisher:
    """`mode: assertion_keys`: the JWK Set, built once per config."""

    def __init__(self, config: Config) -> None:
        self.owners = Owners()
        self.body = json.dumps(key_set(config), separators=(",", ":"))
