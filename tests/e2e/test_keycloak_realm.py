"""The realms of kong/keycloak/ on a real Keycloak issue the tokens the plugin tests rely on.

Claims are read without signature checks here: validating tokens is the plugin's job; these
tests pin down what Keycloak actually sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.keycloak.admin import KeycloakAdmin, KeycloakError
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak

REALM = "kcauth"
API, API_SECRET = "orders-api", "orders-api-secret"


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def audiences(payload: dict[str, Any]) -> list[str]:
    aud = payload.get("aud", [])
    return [aud] if isinstance(aud, str) else list(aud)  # Keycloak sends a string when there is one


def test_alice_access_token(keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    answer = kc_admin.password_token(REALM, "test-cli", "alice", "alice-pass")
    header = jwt.get_unverified_header(answer["access_token"])
    assert header["alg"] == "RS256" and header["typ"] == "JWT" and header["kid"]
    token = claims(answer["access_token"])
    assert token["iss"] == keycloak.issuer(REALM)
    assert API in audiences(token)
    assert token["typ"] == "Bearer"
    assert token["azp"] == "test-cli"
    assert token["sub"] and token["sid"]
    assert {"user", "admin"} <= set(token["realm_access"]["roles"])
    assert set(token["resource_access"][API]["roles"]) == {"reader", "writer"}
    assert "orders:read" in token["scope"].split()
    assert "orders:write" not in token["scope"].split()  # optional scope: only when asked for
    assert token["preferred_username"] == "alice"
    assert token["email"] == "alice@example.test"
    assert token["exp"] - token["iat"] == 1800  # realm accessTokenLifespan: 30 min, for walking the demo


def test_bob_roles_and_optional_scope(kc_admin: KeycloakAdmin) -> None:
    token = claims(kc_admin.password_token(REALM, "test-cli", "bob", "bob-pass", scope="orders:write")["access_token"])
    assert "user" in token["realm_access"]["roles"]
    assert "admin" not in token["realm_access"]["roles"]
    assert token["resource_access"][API]["roles"] == ["reader"]
    assert {"orders:read", "orders:write"} <= set(token["scope"].split())


def test_wrong_password_is_refused(kc_admin: KeycloakAdmin) -> None:
    with pytest.raises(KeycloakError) as refused:
        kc_admin.password_token(REALM, "test-cli", "bob", "not-bobs-password")
    # RFC 6749 §5.2: invalid_grant is a 400 (not 401).
    assert refused.value.status == 400 and "invalid_grant" in refused.value.body


def test_id_and_refresh_tokens_have_their_own_typ(keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    answer = kc_admin.password_token(REALM, "test-cli", "alice", "alice-pass", scope="openid")
    id_token, refresh = claims(answer["id_token"]), claims(answer["refresh_token"])
    assert id_token["typ"] == "ID" and id_token["aud"] == "test-cli"
    assert refresh["typ"] == "Refresh"
    assert id_token["iss"] == refresh["iss"] == keycloak.issuer(REALM)
    assert "openid" in claims(answer["access_token"])["scope"].split()


def test_lightweight_token_leaves_identity_to_introspection(kc_admin: KeycloakAdmin) -> None:
    access = kc_admin.password_token(REALM, "test-cli-light", "bob", "bob-pass")["access_token"]
    token = claims(access)
    assert token["typ"] == "Bearer" and token["azp"] == "test-cli-light"
    for absent in ("sub", "aud", "realm_access", "resource_access", "preferred_username"):
        assert absent not in token, absent
    # Introspection fills in what the token leaves out (and answers active although aud is absent).
    full = kc_admin.introspect(REALM, API, API_SECRET, access)
    assert full["active"] is True
    assert full["sub"] and API in audiences(full)
    assert full["resource_access"][API]["roles"] == ["reader"]


def test_short_lived_client(kc_admin: KeycloakAdmin) -> None:
    answer = kc_admin.password_token(REALM, "test-cli-short", "bob", "bob-pass")
    token = claims(answer["access_token"])
    assert token["exp"] - token["iat"] == 5
    assert answer["expires_in"] in (4, 5), "exp minus Keycloak's clock when it answered: 4 past a second's turn"


def test_resource_server_introspects_alices_token(kc_admin: KeycloakAdmin) -> None:
    access = kc_admin.password_token(REALM, "test-cli", "alice", "alice-pass")["access_token"]
    answer = kc_admin.introspect(REALM, API, API_SECRET, access)
    assert answer["active"] is True
    assert answer["username"] == "alice" and answer["client_id"] == "test-cli"
    assert answer["token_type"] == "Bearer"
    with pytest.raises(KeycloakError) as wrong_secret:
        kc_admin.introspect(REALM, API, "wrong-secret", access)
    assert wrong_secret.value.status == 401


def test_other_realm_is_another_issuer(keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    access = kc_admin.password_token("other", "test-cli", "alice", "alice-pass")["access_token"]
    token = claims(access)
    # Same client id, user name and audience as realm kcauth: only issuer and keys tell them apart.
    assert token["iss"] == keycloak.issuer("other") != keycloak.issuer(REALM)
    assert token["azp"] == "test-cli" and token["preferred_username"] == "alice"
    assert API in audiences(token)
    kcauth_kids = {key["kid"] for key in kc_admin.jwks(REALM)["keys"]}
    assert jwt.get_unverified_header(access)["kid"] not in kcauth_kids


@pytest.fixture
def es256_key(kc_admin: KeycloakAdmin) -> Iterator[str]:
    before = {component["id"] for component in kc_admin.list_key_providers(REALM)}
    component = kc_admin.add_key_provider(REALM, "ecdsa-generated", priority=100, algorithm="ES256", name="test-es256")
    previous = kc_admin.set_client_attribute(REALM, "test-cli", "access.token.signed.response.alg", "ES256")
    try:
        yield component
    finally:
        kc_admin.set_client_attribute(REALM, "test-cli", "access.token.signed.response.alg", previous)
        # Also any fallback-ES256 provider Keycloak may have added on its own.
        for extra in kc_admin.list_key_providers(REALM):
            if extra["id"] not in before:
                kc_admin.delete_component(REALM, extra["id"])


def test_client_switched_to_es256(es256_key: str, kc_admin: KeycloakAdmin) -> None:
    ec_keys = [key for key in kc_admin.list_keys(REALM)["keys"] if key["providerId"] == es256_key]
    assert [(key["algorithm"], key["status"]) for key in ec_keys] == [("ES256", "ACTIVE")]
    access = kc_admin.password_token(REALM, "test-cli", "alice", "alice-pass")["access_token"]
    header = jwt.get_unverified_header(access)
    assert header["alg"] == "ES256" and header["kid"] == ec_keys[0]["kid"]
    # The new key is published at once, so a validator that refetches the JWKS can verify it.
    jwk = next(key for key in kc_admin.jwks(REALM)["keys"] if key["kid"] == header["kid"])
    verified = jwt.decode(access, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=API)
    assert verified["preferred_username"] == "alice"
    # Other clients keep the realm default.
    other = kc_admin.password_token(REALM, "test-cli-short", "alice", "alice-pass")["access_token"]
    assert jwt.get_unverified_header(other)["alg"] == "RS256"


def test_logout_makes_introspection_inactive(kc_admin: KeycloakAdmin) -> None:
    access = kc_admin.password_token(REALM, "test-cli", "alice", "alice-pass")["access_token"]
    assert kc_admin.introspect(REALM, API, API_SECRET, access)["active"] is True
    alice = kc_admin.user_id(REALM, "alice")
    assert claims(access)["sid"] in {session["id"] for session in kc_admin.user_sessions(REALM, alice)}
    kc_admin.logout_user(REALM, alice)
    assert kc_admin.user_sessions(REALM, alice) == []
    assert kc_admin.introspect(REALM, API, API_SECRET, access) == {"active": False}
