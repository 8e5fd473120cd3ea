"""Sensitive routes against the real Keycloak 26 and a real Redis, through the real plugin server.

Introspection calls are counted by a loopback proxy in front of Keycloak (tests/harness/proxy.py),
outside the plugin. What happens when Keycloak fails (the proxy makes it fail on demand: 500,
garbage, hang, refuse) is with the rest of the failure policy in tests/idp/test_introspection.py.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import at_once, bearer, own_gateway
from tests.harness.idp import jwt_part
from tests.harness.kong import Kong
from tests.harness.proxy import CountingProxy
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import INTROSPECT, REALM, Routes, access_token
from tests.services.redis import RedisServer

pytestmark = pytest.mark.keycloak


def session_of(token: str) -> str:
    return jwt_part(token, 1)["sid"]


REVOCATIONS = ["user logout", "session delete", "token revoke", "user disable"]


def revoke(kc_admin: KeycloakAdmin, how: str, token: str, user: str) -> None:
    uid = kc_admin.user_id(REALM, user)
    if how == "user logout":
        kc_admin.logout_user(REALM, uid)
    elif how == "session delete":
        kc_admin.delete_session(REALM, session_of(token))
    elif how == "token revoke":
        kc_admin.revoke_token(REALM, "test-cli", token)
    else:
        kc_admin.set_user_enabled(REALM, uid, False)


@pytest.mark.parametrize("how", REVOCATIONS)
def test_revocation_closes_sensitive_routes_only(how: str, kong: Kong, kc_admin: KeycloakAdmin, routes: Routes,
                                                 keycloak_proxy: CountingProxy) -> None:
    user = "bob"
    token = access_token(kc_admin, user)
    plain, every_time, cached = routes.plain(), routes.sensitive(introspection_cache_ttl=0), \
        routes.sensitive(introspection_cache_ttl=3)
    try:
        for entity in (plain, every_time, cached):
            assert kong.request(entity, bearer(token)).status == 200
        revoke(kc_admin, how, token, user)
        res = kong.request(every_time, bearer(token))
        assert res.status == 401, how
        assert "no longer active" in res.headers["WWW-Authenticate"]
        assert kong.request(cached, bearer(token)).status == 200, "inside introspection_cache_ttl"
        time.sleep(3.1)
        assert kong.request(cached, bearer(token)).status == 401, "after introspection_cache_ttl"
        # The revocation gap, documented: local validation alone still accepts the token.
        assert kong.request(plain, bearer(token)).status == 200
    finally:
        if how == "user disable":
            kc_admin.set_user_enabled(REALM, kc_admin.user_id(REALM, user), True)


def test_fifty_concurrent_requests_make_one_introspection_call(kong: Kong, kc_admin: KeycloakAdmin,
                                                               routes: Routes, keycloak_proxy: CountingProxy) -> None:
    entity = routes.sensitive()
    token = access_token(kc_admin)
    assert at_once(50, lambda: kong.request(entity, bearer(token)).status) == [200] * 50
    assert keycloak_proxy.count(INTROSPECT) == 1


def test_revoked_token_replayed_a_thousand_times_makes_one_call(kong: Kong, kc_admin: KeycloakAdmin,
                                                                routes: Routes, keycloak_proxy: CountingProxy) -> None:
    token = access_token(kc_admin)
    kc_admin.revoke_token(REALM, "test-cli", token)
    entity = routes.sensitive(introspection_negative_ttl=60)
    for _ in range(1000):
        assert kong.request(entity, bearer(token)).status == 401
    assert keycloak_proxy.count(INTROSPECT) == 1


def test_lightweight_tokens_get_sub_and_roles_from_introspection(kong: Kong, kc_admin: KeycloakAdmin,
                                                                 routes: Routes) -> None:
    light = access_token(kc_admin, client="test-cli-light")
    claims = jwt_part(light, 1)
    assert "sub" not in claims and "aud" not in claims and "realm_access" not in claims
    headers = {"x-auth-subject": "sub", "x-auth-api-roles": "resource_access.orders-api.roles"}
    res = kong.request(routes.sensitive(claim_headers=headers, required_roles=["orders-api:writer"]), bearer(light))
    assert res.status == 200, res.headers
    assert res.upstream("X-Auth-Subject") == [kc_admin.user_id(REALM, "alice")]
    assert sorted(json.loads(res.upstream("X-Auth-Api-Roles")[0])) == ["reader", "writer"]
    assert kong.request(routes.plain(), bearer(light)).status == 401, "no aud locally: plain routes refuse it"


def test_two_plugin_servers_share_answers_through_redis(kong: Kong, kc_admin: KeycloakAdmin, routes: Routes,
                                                        keycloak_proxy: CountingProxy,
                                                        redis_server: RedisServer) -> None:
    config = routes.config(redis=redis_server.plugin_config())
    with own_gateway() as second:
        token = access_token(kc_admin)
        assert kong.request(kong.plugin(config), bearer(token)).status == 200
        assert keycloak_proxy.count(INTROSPECT) == 1
        res = second.request(second.plugin(config), bearer(token))
        assert res.status == 200 and res.upstream("X-Auth-Username") == ["alice"]
        assert keycloak_proxy.count(INTROSPECT) == 1, "the second process answered from Redis"
        keys = [k.decode() for k in redis_server.client().keys("kcauth:introspection:*")]
        assert len(keys) == 1
        assert not any(token[-16:] in k for k in keys), "no token in Redis keys"
        values = b"".join(redis_server.client().get(k) or b"" for k in keys)
        assert token.encode() not in values and token.split(".")[2].encode() not in values
        assert b"alice" not in values, "answers are sealed: no claim in clear"


def test_redis_killed_mid_test_requests_stay_correct(kong: Kong, kc_admin: KeycloakAdmin, routes: Routes,
                                                     keycloak_proxy: CountingProxy, redis_server: RedisServer) -> None:
    entity = routes.sensitive(redis=redis_server.plugin_config(),
                              introspection_cache_ttl=0)
    good, revoked = access_token(kc_admin), access_token(kc_admin)
    kc_admin.revoke_token(REALM, "test-cli", revoked)
    assert kong.request(entity, bearer(good)).status == 200
    redis_server.kill()
    try:
        for _ in range(5):
            assert kong.request(entity, bearer(good)).status == 200
            assert kong.request(entity, bearer(revoked)).status == 401
        assert kong.request(entity, bearer("garbage")).status == 401
    finally:
        redis_server.restart()
    # Logged once per change of state (and carried to Kong's own log), never per request.
    assert f"redis {redis_server.host}:{redis_server.port}: read failed" in kong.server.log()


def test_private_key_jwt_client_authentication(kong: Kong, kc_admin: KeycloakAdmin, routes: Routes,
                                               keycloak_proxy: CountingProxy) -> None:
    from cryptography.hazmat.primitives import serialization

    from tests.harness.idp import SigningKey

    key = SigningKey("RS256")
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    # orders-api switched to signed-JWT client authentication with our public key, then back.
    previous = kc_admin.update_client(REALM, "orders-api", clientAuthenticatorType="client-jwt")
    old_jwks = kc_admin.set_client_attribute(REALM, "orders-api", "jwks.string",
                                             json.dumps({"keys": [key.jwk()]}))
    old_use = kc_admin.set_client_attribute(REALM, "orders-api", "use.jwks.string", "true")
    try:
        entity = routes.sensitive(client_auth_method="private_key_jwt", client_secret=None,
                                  client_private_key=pem, introspection_cache_ttl=0)
        token = access_token(kc_admin)
        assert kong.request(entity, bearer(token)).status == 200
        kc_admin.revoke_token(REALM, "test-cli", token)
        assert kong.request(entity, bearer(token)).status == 401
        secret_route = routes.sensitive(introspection_cache_ttl=0, introspection_breaker_seconds=0)
        assert kong.request(secret_route, bearer(access_token(kc_admin))).status == 503, \
            "the secret no longer authenticates orders-api: Keycloak refuses, kcauth fails closed"
    finally:
        kc_admin.set_client_attribute(REALM, "orders-api", "use.jwks.string", old_use)
        kc_admin.set_client_attribute(REALM, "orders-api", "jwks.string", old_jwks)
        kc_admin.update_client(REALM, "orders-api", **previous)
