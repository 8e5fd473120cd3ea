"""How kcauth authenticates itself to the identity provider's introspection endpoint
(RFC 6749 2.3: client_secret_basic, client_secret_post; RFC 7523: private_key_jwt)."""

from __future__ import annotations

import base64
import uuid
from urllib.parse import quote_plus

import jwt

from ..config.values import load_signing_key

ASSERTION_LIFETIME = 60


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
