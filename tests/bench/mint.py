"""Token pools, minted before anything is measured.

Valid tokens are Keycloak-shaped (tests.harness.idp.Minter's claims) and differ by `jti` and
`sid` only, so every one is a distinct cache key but costs the plugin the same to check. They
are signed in a pool of worker processes with PyJWT's own algorithm objects, one key load per
worker; RS256 costs ~0.7 ms a token, ES256 ~0.04 ms, which is why the 100,000-token memory
flood is signed with ES256 (the key type does not change what the plugin remembers).
Invalid tokens need no signing: random signature bytes make a token that fails verification.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from tests.harness.idp import Minter, SigningKey

CHUNK = 500
_worker_keys: dict[bytes, Any] = {}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _encode_json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def _distinct_claims(base: dict[str, Any], count: int) -> list[str]:
    out = []
    for _ in range(count):
        claims = dict(base, jti=str(uuid.uuid4()), sid=str(uuid.uuid4()))
        out.append(_encode_json(claims))
    return out


def _sign_chunk(pem: bytes, alg: str, kid: str | None, count: int, base: dict[str, Any]) -> list[str]:
    key = _worker_keys.get(pem)
    if key is None:
        key = _worker_keys[pem] = serialization.load_pem_private_key(pem, password=None)
    algo = jwt.get_algorithm_by_name(alg)
    tokens = []
    for payload in _distinct_claims(base, count):
        header = _encode_json({"alg": alg, "typ": "JWT", "kid": kid or uuid.uuid4().hex})
        signing_input = f"{header}.{payload}"
        tokens.append(f"{signing_input}.{b64(algo.sign(signing_input.encode(), key))}")
    return tokens


class Mint:
    """Signs token pools in worker processes (spawned: the benchmark process has threads)."""

    def __init__(self, issuer: str, workers: int | None = None) -> None:
        self.issuer = issuer
        self._pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2,
                                         mp_context=multiprocessing.get_context("spawn"))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def claims(self, lifetime: int = 3600, **overrides: Any) -> dict[str, Any]:
        """Claims valid for `lifetime` seconds: longer than the whole run, so nothing expires
        while it is measured (an expired token would silently become a rejection)."""
        import time

        now = int(time.time())
        return Minter(self.issuer, None).claims(exp=now + lifetime, iat=now, **overrides)  # type: ignore[arg-type]

    def valid(self, key: SigningKey, count: int) -> list[str]:
        """`count` distinct tokens signed by `key`, which the realm publishes."""
        return self._signed(key, key.kid, count)

    def random_kid(self, key: SigningKey, count: int) -> list[str]:
        """Tokens properly signed by `key` (one the realm does not publish), each with its own
        random kid: what an attacker probing for key downloads sends."""
        return self._signed(key, None, count)

    def _signed(self, key: SigningKey, kid: str | None, count: int) -> list[str]:
        pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        base = self.claims()
        futures = [self._pool.submit(_sign_chunk, pem, key.alg, kid, min(CHUNK, count - i), base)
                   for i in range(0, count, CHUNK)]
        return [token for f in futures for token in f.result()]

    def forged(self, count: int, kid: str | None, alg: str = "RS256", signature_bytes: int = 256) -> list[str]:
        """Distinct well-formed tokens with valid claims and random signature bytes: `kid` set
        means a known key and a bad signature; `kid=None` gives each a random unknown kid."""
        base = self.claims()
        out = []
        for payload in _distinct_claims(base, count):
            header = _encode_json({"alg": alg, "typ": "JWT", "kid": kid or uuid.uuid4().hex})
            out.append(f"{header}.{payload}.{b64(os.urandom(signature_bytes))}")
        return out


def garbage(count: int) -> list[str]:
    """Bearer values that are not JWTs at all (no dots, random length)."""
    return [b64(os.urandom(30 + i % 120)) for i in range(count)]
