"""DPoP against the real Keycloak: a token of the realm's DPoP-required client (test-cli-dpop,
kong/keycloak/kcauth-realm.json), obtained with a proof at Keycloak's token endpoint, then
presented with fresh proofs; as Bearer, with a replayed proof, a proof for another method or URL,
another key, a stale iat or a wrong ath, it is refused with the RFC's challenge."""

from __future__ import annotations

import time

import pytest
import requests

from kong_plugin_kcauth.tokens.dpop import token_hash
from tests.conftest import bearer, guard_config
from tests.harness.dpop import BASE, PATH, Client, dpop_headers
from tests.harness.idp import jwt_part
from tests.harness.kong import Kong
from tests.keycloak.fixtures import REALM
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak


def dpop_login(keycloak: KeycloakServer, client: Client) -> dict[str, object]:
    """Password grant for alice at test-cli-dpop, with the client's proof for the token endpoint."""
    endpoint = f"{keycloak.base_url}/realms/{REALM}/protocol/openid-connect/token"
    proof = client.proof("", method="POST", url=endpoint, ath=None)
    answer = requests.post(endpoint, data={"grant_type": "password", "client_id": "test-cli-dpop",
                                           "username": "alice", "password": "alice-pass", "scope": "openid"},
                           headers={"DPoP": proof}, timeout=15)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_keycloak_dpop_token_with_fresh_proofs(kong: Kong, keycloak: KeycloakServer) -> None:
    client = Client()
    login = dpop_login(keycloak, client)
    assert str(login["token_type"]).lower() == "dpop"
    token = str(login["access_token"])
    claims = jwt_part(token, 1)
    assert claims["typ"] == "DPoP" and claims["cnf"]["jkt"] == client.jkt, claims.get("cnf")
    entity = kong.plugin(guard_config(keycloak.issuer(REALM), public_base_url=BASE, dpop="required"))
    for _ in range(2):
        res = kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH)
        assert res.status == 200, res.headers
        assert res.upstream("x-auth-client") == ["test-cli-dpop"]

    res = kong.request(entity, bearer(token), path=PATH)
    assert res.status == 401 and res.headers["WWW-Authenticate"].startswith("DPoP ")
    replayed = client.proof(token)
    assert kong.request(entity, dpop_headers(token, replayed), path=PATH).status == 200
    cases = {
        "replayed": replayed,
        "another method": client.proof(token, method="DELETE"),
        "another URL": client.proof(token, url=BASE + "/admin"),
        "another key": Client().proof(token),
        "stale iat": client.proof(token, iat=int(time.time()) - 3600),
        "wrong ath": client.proof(token, ath=token_hash("another token")),
    }
    for case, proof in cases.items():
        res = kong.request(entity, dpop_headers(token, proof), path=PATH)
        assert res.status == 401, case
        assert 'DPoP realm="kong", error="invalid_dpop_proof"' in res.headers["WWW-Authenticate"], case
