"""What Keycloak pushes to a revocation receiver, as a LocalIdP would sign it: back-channel logout
tokens (OIDC Back-Channel Logout 1.0) and not-before actions (Keycloak's PUSH_NOT_BEFORE)."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt

from kong_plugin_kcauth.tokens.logout import BACKCHANNEL_EVENT
from tests.harness.idp import DROP, LocalIdP, SigningKey
from tests.harness.kong import Kong, PluginEntity, Response

RECEIVER_PATH = "/kcauth/revocations"


def logout_token(idp: LocalIdP, key: SigningKey | None = None, typ: str = "logout+jwt", **claims: Any) -> str:
    key = key or idp.primary  # type: ignore[attr-defined]
    now = int(time.time())
    body: dict[str, Any] = {"iss": idp.issuer, "aud": "test-cli", "iat": now, "exp": now + 120,
                            "jti": str(uuid.uuid4()), "sid": "session-1", "sub": "user-1",
                            "events": {BACKCHANNEL_EVENT: {}}}
    for name, value in claims.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})


def post_logout(kong: Kong, entity: PluginEntity, token: str) -> Response:
    return kong.request(entity, [("Content-Type", "application/x-www-form-urlencoded")], method="POST",
                        path=RECEIVER_PATH, body=urlencode({"logout_token": token}).encode())


def push_not_before(idp: LocalIdP, client: str, not_before: int, key: SigningKey | None = None) -> str:
    key = key or idp.primary  # type: ignore[attr-defined]
    now = int(time.time())
    action = {"id": str(uuid.uuid4()), "expiration": now + 10, "resource": client,
              "action": "PUSH_NOT_BEFORE", "notBefore": not_before}  # Keycloak sends no iss
    return jwt.encode(action, key.private, algorithm=key.alg, headers={"kid": key.kid})
