"""Sensitive routes against the real Keycloak 26 and a real Redis, through the real plugin server.

Introspection calls are counted by a loopback proxy in front of Keycloak (tests/harness/proxy.py),
outside the plugin, which also makes Keycloak fail on demand (500, garbage, hang, refuse).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import at_once, bearer, start_plugin_server
from tests.harness.idp import jwt_part
from tests.harness.kong import Kong
from tests.harness.proxy import CountingProxy
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.server import KeycloakServer
from tests.services.redis import RedisServer

pytestmark = pytest.mark.keycloak

REALM = "kcauth"
INTROSPECT = "/token/introspect"


@pytest.fixture
def proxy(keycloak: KeycloakServer) -> Iterator[CountingProxy]:
    with CountingProxy(keycloak.base_url, fault_path_suffix=INTROSPECT, hang_seconds=10) as p:
        yield p


@pytest.fixture
def routes(kong: Kong, keycloak: KeycloakServer, proxy: CountingProxy) -> Any:
    """plain(): local validation only; sensitive(**config): introspection through the proxy."""
    base = {"issuer": keycloak.issuer(REALM), "audiences": ["orders-api"]}

    class Routes:
        @staticmethod
        def config(**extra: Any) -> dict[str, Any]:
            return {**base, "introspect": True, "client_id": "orders-api", "client_secret": "orders-api-secret",
                    "introspection_endpoint": f"{proxy.url}/realms/{REALM}/protocol/openid-connect{INTROSPECT}",
                    **extra}

        @staticmethod
        def plain() -> Any:
            return kong.plugin(base)

        @staticmethod
        def sensitive(**extra: Any) -> Any:
            return kong.plugin(Routes.config(**extra))

    return Routes


def alice(kc_admin: KeycloakAdmin, user: str = "alice", client: str = "test-cli") -> str:
    return kc_admin.password_token(REALM, client, user, f"{user}-pass")["access_token"]


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
def test_revocation_closes_sensitive_routes_only(how: str, kong: Kong, kc_admin: KeycloakAdmin, routes: Any,
                                                 proxy: CountingProxy) -> None:
    user = "bob"
    token = alice(kc_admin, user)
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
                                                               routes: Any, proxy: CountingProxy) -> None:
    entity = routes.sensitive()
    token = alice(kc_admin)
    assert at_once(50, lambda: kong.request(entity, bearer(token)).status) == [200] * 50
    assert proxy.count(INTROSPECT) == 1


def test_revoked_token_replayed_a_thousand_times_makes_one_call(kong: Kong, kc_admin: KeycloakAdmin,
                                                                routes: Any, proxy: CountingProxy) -> None:
    token = alice(kc_admin)
    kc_admin.revoke_token(REALM, "test-cli", token)
    entity = routes.sensitive(introspection_negative_ttl=60)
    for _ in range(1000):
        assert kong.request(entity, bearer(token)).status == 401
    assert proxy.count(INTROSPECT) == 1


@pytest.mark.parametrize("mode", ["status500", "garbage", "html", "hang", "refuse", "reset"])
def test_keycloak_failures_are_503_or_the_chosen_fallback(mode: str, kong: Kong, kc_admin: KeycloakAdmin,
                                                          routes: Any, proxy: CountingProxy) -> None:
    deny = routes.sensitive(http_timeout=1, introspection_breaker_seconds=0)
    fallback = routes.sensitive(http_timeout=1, introspection_breaker_seconds=0, introspection_failure="local")
    warm = alice(kc_admin)
    assert kong.request(deny, bearer(warm)).status == 200  # keys held
    token = alice(kc_admin)
    proxy.mode = mode
    res = kong.request(deny, bearer(token))
    assert res.status == 503 and res.headers.get("Retry-After") == "5" and not res.proxied, mode
    assert kong.request(fallback, bearer(token)).status == 200, "fallback to the local verdict"
    proxy.mode = "pass"
    assert kong.request(deny, bearer(token)).status == 200, "the plugin server is not wedged"
    assert res.errors == []


def test_breaker_keeps_a_hanging_keycloak_off_the_request_path(kong: Kong, kc_admin: KeycloakAdmin,
                                                               routes: Any, proxy: CountingProxy) -> None:
    entity = routes.sensitive(http_timeout=0.5, introspection_breaker_seconds=30)
    assert kong.request(entity, bearer(alice(kc_admin))).status == 200
    proxy.mode = "hang"
    for _ in range(3):
        assert kong.request(entity, bearer(alice(kc_admin))).status == 503
    calls = proxy.count(INTROSPECT)
    tokens = [alice(kc_admin) for _ in range(10)]
    for token in tokens:
        assert kong.request(entity, bearer(token)).status == 503
    # No call reaches the hanging Keycloak, so no request waits for its timeout.
    assert proxy.count(INTROSPECT) == calls
    proxy.mode = "pass"


def test_lightweight_tokens_get_sub_and_roles_from_introspection(kong: Kong, kc_admin: KeycloakAdmin,
                                                                 routes: Any) -> None:
    light = alice(kc_admin, client="test-cli-light")
    claims = jwt_part(light, 1)
    assert "sub" not in claims and "aud" not in claims and "realm_access" not in claims
    headers = {"x-auth-subject": "sub", "x-auth-api-roles": "resource_access.orders-api.roles"}
    res = kong.request(routes.sensitive(claim_headers=headers, required_roles=["orders-api:writer"]), bearer(light))
    assert res.status == 200, res.headers
    assert res.upstream("X-Auth-Subject") == [kc_admin.user_id(REALM, "alice")]
    assert sorted(json.loads(res.upstream("X-Auth-Api-Roles")[0])) == ["reader", "writer"]
    assert kong.request(routes.plain(), bearer(light)).status == 401, "no aud locally: plain routes refuse it"


def test_two_plugin_servers_share_answers_through_redis(kong: Kong, kc_admin: KeycloakAdmin, routes: Any,
                                                        proxy: CountingProxy, redis_server: RedisServer) -> None:
    config = routes.config(redis=redis_server.plugin_config())
    prefix = Path(tempfile.mkdtemp(prefix="kc2", dir="/tmp"))
    second_server = start_plugin_server(prefix)
    second = Kong(second_server)
    try:
        token = alice(kc_admin)
        assert kong.request(kong.plugin(config), bearer(token)).status == 200
        assert proxy.count(INTROSPECT) == 1
        res = second.request(second.plugin(config), bearer(token))
        assert res.status == 200 and res.upstream("X-Auth-Username") == ["alice"]
        assert proxy.count(INTROSPECT) == 1, "the second process answered from Redis"
        keys = [k.decode() for k in redis_server.client().keys("kcauth:introspection:*")]
        assert len(keys) == 1
        assert not any(token[-16:] in k for k in keys), "no token in Redis keys"
        values = b"".join(redis_server.client().get(k) or b"" for k in keys)
        assert token.encode() not in values and token.split(".")[2].encode() not in values
        assert b"alice" not in values, "answers are sealed: no claim in clear"
    finally:
        second.rpc.close()
        second_server.stop()
        shutil.rmtree(prefix, ignore_errors=True)


def test_redis_killed_mid_test_requests_stay_correct(kong: Kong, kc_admin: KeycloakAdmin, routes: Any,
                                                     proxy: CountingProxy, redis_server: RedisServer) -> None:
    entity = routes.sensitive(redis=redis_server.plugin_config(),
                              introspection_cache_ttl=0)
    good, revoked = alice(kc_admin), alice(kc_admin)
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


def test_private_key_jwt_client_authentication(kong: Kong, kc_admin: KeycloakAdmin, routes: Any,
                                               proxy: CountingProxy) -> None:
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
        token = alice(kc_admin)
        assert kong.request(entity, bearer(token)).status == 200
        kc_admin.revoke_token(REALM, "test-cli", token)
        assert kong.request(entity, bearer(token)).status == 401
        secret_route = routes.sensitive(introspection_cache_ttl=0, introspection_breaker_seconds=0)
        assert kong.request(secret_route, bearer(alice(kc_admin))).status == 503, \
            "the secret no longer authenticates orders-api: Keycloak refuses, kcauth fails closed"
    finally:
        kc_admin.set_client_attribute(REALM, "orders-api", "use.jwks.string", old_use)
        kc_admin.set_client_attribute(REALM, "orders-api", "jwks.string", old_jwks)
        kc_admin.update_client(REALM, "orders-api", **previous)
