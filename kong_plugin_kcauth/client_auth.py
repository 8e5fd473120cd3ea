"""How kcauth authenticates itself to the identity provider's introspection endpoint
(RFC 6749 2.3: client_secret_basic, client_secret_post; RFC 7523: private_key_jwt)."""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import quote_plus

import jwt

ASSERTION_LIFETIME = 60


def load_signing_key(pem: str) -> tuple[Any, str]:
    """The private key of a PEM and the JWS alg it signs with (RS256 or ES256)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return key, "ES256"
    raise ValueError("must be an RSA key of 2048 bits or more, or an EC P-256 key")


def client_authentication(method: str, client_id: str, secret: str | None, private_key: str | None,
                          audience: str, now: float) -> tuple[dict[str, str], dict[str, str]]:
    """Form fields and headers that authenticate kcauth's client."""
    if method == "client_secret_basic":
        # RFC 6749 2.3.1: id and secret are form-encoded before base64.
        pair = f"{quote_plus(client_id)}:{quote_plus(secret or '')}"
        return {}, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    if method == "client_secret_post":
        return {"client_id": client_id, "client_secret": secret or ""}, {}
    key, alg = load_signing_key(private_key or "")
    assertion = jwt.encode(
        {"iss": client_id, "sub": client_id, "aud": audience, "jti": str(uuid.uuid4()),
         "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME},
        key, algorithm=alg,
    )
    return {
        "client_id": client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }, {}
