"""A DPoP client (RFC 9449): its key, the proofs it signs, and tokens bound to it as Keycloak 26
issues them."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

from kong_plugin_kcauth.tokens.dpop import thumbprint, token_hash
from tests.harness.idp import Minter, SigningKey

BASE = "https://api.example.com"
PATH = "/orders/42"
URL = BASE + PATH


class Client:
    """A DPoP client: its key, and the proofs it signs."""

    def __init__(self, alg: str = "ES256") -> None:
        self.key = SigningKey(alg)
        self.jwk = {k: v for k, v in self.key.jwk().items() if k not in ("kid", "use", "alg")}
        self.jkt = thumbprint(self.jwk)

    def proof(self, token: str, method: str = "GET", url: str = URL, **claims: Any) -> str:
        header = claims.pop("header", {})
        body = {"jti": str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time()),
                "ath": token_hash(token), **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key.private, algorithm=self.key.alg,
                          headers={"typ": "dpop+jwt", "jwk": self.jwk, **header})


def bound_token(minter: Minter, client: Client, **claims: Any) -> str:
    """As Keycloak 26 issues them: typ DPoP, cnf.jkt and Keycloak's own cnf member."""
    return minter.token(typ="DPoP", cnf={"jkt": client.jkt, "kc-jkt-type": "DPoP"}, **claims)


def dpop_headers(token: str, proof: str | None) -> list[tuple[str, str]]:
    return [("Authorization", f"DPoP {token}")] + ([("DPoP", proof)] if proof is not None else [])
