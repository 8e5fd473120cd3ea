"""The naive plugin: what the article in /work/shared/seeds sketches, written plainly in Python.

Every request: PyJWT's `PyJWKClient` finds the signing key (it keeps the downloaded key set for
five minutes, as `jose`'s createRemoteJWKSet does) and `jwt.decode` verifies the token. On a
sensitive route it then POSTs the token to the introspection endpoint with `requests.post`, on
every request, with no cache. Served by the same machinery and mode as kcauth, for comparison.

    python -m tests.bench.naive --kong-prefix <dir> --socket-name naive.socket [-g]
"""

from __future__ import annotations

import json
from typing import Any

NAME = "naive"

SCHEMA: list[dict[str, Any]] = [
    {"issuer": {"type": "string", "required": True}},
    {"audience": {"type": "string", "required": True}},
    {"jwks_uri": {"type": "string", "required": True}},
    {"introspect": {"type": "boolean", "required": True, "default": False}},
    {"introspection_endpoint": {"type": "string"}},
    {"client_id": {"type": "string"}},
    {"client_secret": {"type": "string"}},
]

UNAUTHORIZED = {"message": "Unauthorized"}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kong", error="invalid_token"'}


def _load() -> tuple[type, dict[str, Any], str]:
    # Imported here, after the plugin server's gevent decision, like kcauth's own modules.
    import jwt
    import requests

    class Plugin:
        def __init__(self, config: dict[str, Any]) -> None:
            self.config = config
            self.jwks = jwt.PyJWKClient(config["jwks_uri"])

        def access(self, kong: Any) -> None:
            headers = kong.request.get_headers()
            auth = (headers.get("authorization") or [""])[0]
            if not auth.lower().startswith("bearer "):
                kong.response.exit(401, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="kong"'})
                return
            token = auth[7:].strip()
            try:
                key = self.jwks.get_signing_key_from_jwt(token)
                claims = jwt.decode(token, key.key, algorithms=["RS256"],
                                    audience=self.config["audience"], issuer=self.config["issuer"])
            except Exception:
                kong.response.exit(401, UNAUTHORIZED, CHALLENGE)
                return
            if self.config["introspect"]:
                try:
                    answer = requests.post(
                        self.config["introspection_endpoint"],
                        data={"token": token, "token_type_hint": "access_token"},
                        auth=(self.config["client_id"], self.config["client_secret"]),
                        timeout=3,
                    ).json()
                except Exception:
                    kong.response.exit(503, {"message": "Service Unavailable"})
                    return
                if answer.get("active") is not True:
                    kong.response.exit(401, UNAUTHORIZED, CHALLENGE)
                    return
            roles = claims.get("realm_access", {}).get("roles", [])
            kong.service.request.set_headers({
                "X-Auth-Subject": claims.get("sub", ""),
                "X-Auth-Username": claims.get("preferred_username", ""),
                "X-Auth-Client": claims.get("azp", ""),
                "X-Auth-Scope": claims.get("scope", ""),
                "X-Auth-Realm-Roles": json.dumps(roles, separators=(",", ":")),
            })
            groups = ["kcauth:authenticated"] + [f"realm:{r}" for r in roles]
            for client, access in claims.get("resource_access", {}).items():
                groups += [f"{client}:{r}" for r in access.get("roles", [])]
            kong.ctx.shared.set("authenticated_groups", groups)

    return Plugin, {"type": "record", "fields": SCHEMA}, "0.1.0"


def main(argv: list[str] | None = None) -> None:
    from kong_plugin_kcauth.server import run

    run(argv, load_plugin=_load, name=NAME, priority=980)


if __name__ == "__main__":
    main()
