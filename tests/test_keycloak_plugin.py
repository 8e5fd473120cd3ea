"""The plugin against a real Keycloak 26: real tokens, real key rotation, real expiry.

Runs through the real plugin server and the Kong-side harness. Keycloak is started once per
session by tests/keycloak/fixtures.py; a start failure fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import bearer
from tests.harness.idp import Minter, SigningKey, jwt_part
from tests.harness.kong import Kong
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak

REALM = "kcauth"
ROLE_HEADERS = {
    "x-auth-subject": "sub",
    "x-auth-username": "preferred_username",
    "x-auth-scope": "scope",
    "x-auth-realm-roles": "realm_access.roles",
    "x-auth-api-roles": "resource_access.orders-api.roles",
}


def token(kc_admin: KeycloakAdmin, user: str = "alice", client: str = "test-cli", realm: str = REALM,
          scope: str | None = None) -> dict[str, Any]:
    return kc_admin.password_token(realm, client, user, f"{user}-pass", scope=scope)


@pytest.fixture
def route(kong: Kong, keycloak: KeycloakServer) -> Any:
    def make(**extra: Any) -> Any:
        return kong.plugin({"issuer": keycloak.issuer(REALM), "audiences": ["orders-api"], **extra})
    return make


def test_real_access_token_is_accepted_with_documented_headers(kong: Kong, kc_admin: KeycloakAdmin, route: Any) -> None:
    tokens = token(kc_admin, scope="openid")
    access = tokens["access_token"]
    claims = jwt_part(access, 1)
    res = kong.request(route(claim_headers=ROLE_HEADERS), bearer(access))
    assert res.status == 200, res.headers
    assert res.upstream("X-Auth-Subject") == [claims["sub"]]
    assert res.upstream("X-Auth-Username") == ["alice"]
    assert res.upstream("X-Auth-Scope") == [claims["scope"]] and "orders:read" in claims["scope"]
    assert set(json.loads(res.upstream("X-Auth-Realm-Roles")[0])) >= {"user", "admin"}
    assert set(json.loads(res.upstream("X-Auth-Api-Roles")[0])) == {"reader", "writer"}
    groups = res.ctx_shared["authenticated_groups"]
    assert groups[0] == "kcauth:authenticated" and {"realm:admin", "orders-api:writer"} <= set(groups)


def test_id_and_refresh_tokens_are_refused(kong: Kong, kc_admin: KeycloakAdmin, route: Any) -> None:
    tokens = token(kc_admin, scope="openid")
    entity = route()
    for kind in ("id_token", "refresh_token"):
        res = kong.request(entity, bearer(tokens[kind]))
        assert res.status == 401, kind
        assert 'error="invalid_token"' in res.headers["WWW-Authenticate"], kind


def test_other_realm_and_other_audience_are_refused(kong: Kong, kc_admin: KeycloakAdmin, route: Any) -> None:
    foreign = token(kc_admin, user="carol", realm="other")["access_token"]
    res = kong.request(route(), bearer(foreign))
    assert res.status == 401
    # Not signed by a key of this realm: which rule refused it is not told (security model).
    assert 'error_description="The access token is invalid"' in res.headers["WWW-Authenticate"]
    res = kong.request(route(audiences=["billing-api"]), bearer(token(kc_admin)["access_token"]))
    assert res.status == 401 and "not meant for this API" in res.headers["WWW-Authenticate"]


def test_roles_and_scopes_policy(kong: Kong, kc_admin: KeycloakAdmin, route: Any) -> None:
    admins = route(required_roles=["realm:admin"])
    assert kong.request(admins, bearer(token(kc_admin, "alice")["access_token"])).status == 200
    bob = kong.request(admins, bearer(token(kc_admin, "bob")["access_token"]))
    assert bob.status == 403 and 'error="insufficient_scope"' in bob.headers["WWW-Authenticate"]

    writers = route(required_scopes=["orders:write"], required_roles=["orders-api:writer"])
    plain = token(kc_admin, "alice")["access_token"]
    res = kong.request(writers, bearer(plain))
    assert res.status == 403 and 'scope="orders:write"' in res.headers["WWW-Authenticate"]
    scoped = token(kc_admin, "alice", scope="orders:write")["access_token"]
    assert kong.request(writers, bearer(scoped)).status == 200
    bob_scoped = token(kc_admin, "bob", scope="orders:write")["access_token"]
    assert kong.request(writers, bearer(bob_scoped)).status == 403, "bob has the scope but not the role"


@pytest.fixture
def rotation(kc_admin: KeycloakAdmin) -> Iterator[dict[str, str]]:
    """Remembers the realm's key providers and restores them afterwards."""
    before = {c["id"] for c in kc_admin.list_key_providers(REALM)}
    changed: dict[str, str] = {}
    yield changed
    for component_id in changed.values():
        kc_admin.set_key_provider_enabled(REALM, component_id, True)
    for c in kc_admin.list_key_providers(REALM):
        if c["id"] not in before:
            kc_admin.delete_component(REALM, c["id"])


def test_key_rotation_without_restart(kong: Kong, kc_admin: KeycloakAdmin, route: Any,
                                      rotation: dict[str, str]) -> None:
    entity = route(jwks_min_refresh_interval=1)
    old = token(kc_admin)["access_token"]
    assert kong.request(entity, bearer(old)).status == 200
    old_kid = jwt_part(old, 0)["kid"]
    # Key metadata names the component (key provider) that holds each key.
    old_component = next(k["providerId"] for k in kc_admin.list_keys(REALM)["keys"] if k["kid"] == old_kid)

    kc_admin.add_key_provider(REALM, "rsa-generated", priority=500, algorithm="RS256", name="rotated")
    new = token(kc_admin)["access_token"]
    new_kid = jwt_part(new, 0)["kid"]
    assert new_kid != old_kid
    time.sleep(1.1)
    assert kong.request(entity, bearer(new)).status == 200, "new key picked up without a restart"
    assert kong.request(entity, bearer(old)).status == 200, "the old key is still published"

    rotation["old"] = old_component
    kc_admin.set_key_provider_enabled(REALM, old_component, False)
    time.sleep(1.1)
    # Any unknown kid makes the plugin refresh its key set (at most once a second here).
    stranger = Minter(kc_admin.issuer(REALM), SigningKey("RS256")).token()
    assert kong.request(entity, bearer(stranger)).status == 401
    res = kong.request(route(jwks_min_refresh_interval=1, leeway=11), bearer(old))
    assert res.status == 401 and "unknown key" in res.headers["WWW-Authenticate"]
    assert kong.request(entity, bearer(new)).status == 200


def test_es256_tokens_follow_the_algorithm_allow_list(kong: Kong, kc_admin: KeycloakAdmin, route: Any,
                                                       rotation: dict[str, str]) -> None:
    kc_admin.add_key_provider(REALM, "ecdsa-generated", priority=100, algorithm="ES256", name="ec")
    previous = kc_admin.set_client_attribute(REALM, "test-cli", "access.token.signed.response.alg", "ES256")
    try:
        es = token(kc_admin)["access_token"]
        assert jwt_part(es, 0)["alg"] == "ES256"
        assert kong.request(route(), bearer(es)).status == 200
        res = kong.request(route(algorithms=["RS256"]), bearer(es))
        assert res.status == 401 and "algorithm that is not accepted" in res.headers["WWW-Authenticate"]
    finally:
        kc_admin.set_client_attribute(REALM, "test-cli", "access.token.signed.response.alg", previous)


def test_short_lived_token_expires(kong: Kong, kc_admin: KeycloakAdmin, route: Any) -> None:
    short = token(kc_admin, client="test-cli-short")["access_token"]
    claims = jwt_part(short, 1)
    assert claims["exp"] - claims["iat"] == 5
    entity = route(leeway=1)
    assert kong.request(entity, bearer(short)).status == 200
    time.sleep(max(0.0, claims["exp"] + 1 - time.time()) + 1.0)
    res = kong.request(entity, bearer(short))
    assert res.status == 401 and "expired" in res.headers["WWW-Authenticate"]
