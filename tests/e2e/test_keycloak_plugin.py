"""The plugin against a real Keycloak 26: real tokens, real algorithms, real expiry (real key
rotation is with the other key set tests, in tests/idp/test_key_sets.py).

Runs through the real plugin server and the Kong-side harness. Keycloak is started once per
session by tests/keycloak/fixtures.py; a start failure fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import bearer
from tests.harness.idp import jwt_part
from tests.harness.kong import Kong
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, MakeRoute, access_token, login

pytestmark = pytest.mark.keycloak

ROLE_HEADERS = {
    "x-auth-subject": "sub",
    "x-auth-username": "preferred_username",
    "x-auth-scope": "scope",
    "x-auth-realm-roles": "realm_access.roles",
    "x-auth-api-roles": "resource_access.orders-api.roles",
}


def test_real_access_token_is_accepted_with_documented_headers(kong: Kong, kc_admin: KeycloakAdmin,
                                                               route: MakeRoute) -> None:
    tokens = login(kc_admin, scope="openid")
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


def test_id_and_refresh_tokens_are_refused(kong: Kong, kc_admin: KeycloakAdmin, route: MakeRoute) -> None:
    tokens = login(kc_admin, scope="openid")
    entity = route()
    for kind in ("id_token", "refresh_token"):
        res = kong.request(entity, bearer(tokens[kind]))
        assert res.status == 401, kind
        assert 'error="invalid_token"' in res.headers["WWW-Authenticate"], kind


def test_other_realm_and_other_audience_are_refused(kong: Kong, kc_admin: KeycloakAdmin, route: MakeRoute) -> None:
    foreign = access_token(kc_admin, user="carol", realm="other")
    res = kong.request(route(), bearer(foreign))
    assert res.status == 401
    # Not signed by a key of this realm: which rule refused it is not told (security model).
    assert 'error_description="The access token is invalid"' in res.headers["WWW-Authenticate"]
    res = kong.request(route(audiences=["billing-api"]), bearer(access_token(kc_admin)))
    assert res.status == 401 and "not meant for this API" in res.headers["WWW-Authenticate"]


def test_roles_and_scopes_policy(kong: Kong, kc_admin: KeycloakAdmin, route: MakeRoute) -> None:
    admins = route(required_roles=["realm:admin"])
    assert kong.request(admins, bearer(access_token(kc_admin, "alice"))).status == 200
    bob = kong.request(admins, bearer(access_token(kc_admin, "bob")))
    assert bob.status == 403 and 'error="insufficient_scope"' in bob.headers["WWW-Authenticate"]

    writers = route(required_scopes=["orders:write"], required_roles=["orders-api:writer"])
    plain = access_token(kc_admin, "alice")
    res = kong.request(writers, bearer(plain))
    assert res.status == 403 and 'scope="orders:write"' in res.headers["WWW-Authenticate"]
    scoped = access_token(kc_admin, "alice", scope="orders:write")
    assert kong.request(writers, bearer(scoped)).status == 200
    bob_scoped = access_token(kc_admin, "bob", scope="orders:write")
    assert kong.request(writers, bearer(bob_scoped)).status == 403, "bob has the scope but not the role"


def test_es256_tokens_follow_the_algorithm_allow_list(kong: Kong, kc_admin: KeycloakAdmin, route: MakeRoute,
                                                       key_providers: dict[str, str]) -> None:
    kc_admin.add_key_provider(REALM, "ecdsa-generated", priority=100, algorithm="ES256", name="ec")
    previous = kc_admin.set_client_attribute(REALM, "test-cli", "access.token.signed.response.alg", "ES256")
    try:
        es = access_token(kc_admin)
        assert jwt_part(es, 0)["alg"] == "ES256"
        assert kong.request(route(), bearer(es)).status == 200
        res = kong.request(route(algorithms=["RS256"]), bearer(es))
        assert res.status == 401 and "algorithm that is not accepted" in res.headers["WWW-Authenticate"]
    finally:
        kc_admin.set_client_attribute(REALM, "test-cli", "access.token.signed.response.alg", previous)


def test_short_lived_token_expires(kong: Kong, kc_admin: KeycloakAdmin, route: MakeRoute) -> None:
    short = access_token(kc_admin, client="test-cli-short")
    claims = jwt_part(short, 1)
    assert claims["exp"] - claims["iat"] == 5
    entity = route(leeway=1)
    assert kong.request(entity, bearer(short)).status == 200
    time.sleep(max(0.0, claims["exp"] + 1 - time.time()) + 1.0)
    res = kong.request(entity, bearer(short))
    assert res.status == 401 and "expired" in res.headers["WWW-Authenticate"]
