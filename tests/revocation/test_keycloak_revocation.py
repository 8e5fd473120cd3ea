"""Keycloak's own pushes: back-channel logout and not-before, received over real HTTP by the
gateway stand-in (tests/harness/gateway.py) and enforced by two plugin server processes that share
a real Redis, with zero introspection calls."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import bearer, guard_config, own_gateway, receiver_config
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.idp import jwt_part
from tests.harness.kong import Kong
from tests.harness.proxy import CountingProxy
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, login
from tests.keycloak.server import KeycloakServer
from tests.services.redis import RedisServer

pytestmark = pytest.mark.keycloak

RECEIVER = "/kcauth/revocations"


class Setup:
    def __init__(self, kong: Kong, other: Kong, keycloak: KeycloakServer, redis_server: RedisServer,
                 proxy: CountingProxy) -> None:
        self.redis = redis_server.plugin_config()
        self.issuer = keycloak.issuer(REALM)
        self.kong, self.other, self.proxy = kong, other, proxy
        # Every call the guards make to Keycloak goes through the counting proxy.
        guard = guard_config(self.issuer, redis=self.redis,
                             jwks_uri=f"{proxy.url}/realms/{REALM}/protocol/openid-connect/certs")
        self.guard_here = kong.plugin(guard)
        self.guard_there = other.plugin(guard)
        self.receiver = kong.plugin(receiver_config(self.issuer, redis=self.redis))

    def status(self, token: str) -> tuple[int, int]:
        return (self.kong.request(self.guard_here, bearer(token)).status,
                self.other.request(self.guard_there, bearer(token)).status)


@pytest.fixture
def setup(kong: Kong, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, redis_server: RedisServer) -> Iterator[Setup]:
    if not redis_server.running:
        redis_server.restart()
    with own_gateway() as other:
        echo = EchoUpstream()
        proxy = CountingProxy(keycloak.base_url).start()
        s = Setup(kong, other, keycloak, redis_server, proxy)
        gateway = Gateway(kong, [Route("revocations", [RECEIVER], echo.url, kcauth=s.receiver)]).serve()
        url = gateway.url + RECEIVER
        # test-cli is the client users log in with, so Keycloak sends its sessions' logouts there.
        # test-cli is the client users log in with (the realm file sets the same URLs for compose).
        previous = kc_admin.update_client(REALM, "test-cli", adminUrl=url)
        previous_url = kc_admin.set_client_attribute(REALM, "test-cli", "backchannel.logout.url", url)
        try:
            yield s
        finally:
            kc_admin.set_client_attribute(REALM, "test-cli", "backchannel.logout.url", previous_url)
            kc_admin.update_client(REALM, "test-cli", **previous)
            gateway.stop()
            echo.stop()
            proxy.stop()


def refused_by_both_within(setup: Setup, token: str, seconds: float) -> float:
    started = time.monotonic()
    while setup.status(token) != (401, 401):
        assert time.monotonic() - started < seconds, f"still accepted after {seconds} s: {setup.status(token)}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("how", ["admin user logout", "admin session delete", "user logout at keycloak"])
def test_keycloak_logout_revokes_the_session_everywhere(how: str, setup: Setup, kc_admin: KeycloakAdmin) -> None:
    bob, alice = login(kc_admin, "bob"), login(kc_admin, "alice")
    token = bob["access_token"]
    assert setup.status(token) == (200, 200)
    assert setup.status(alice["access_token"]) == (200, 200)
    if how == "admin user logout":
        kc_admin.logout_user(REALM, kc_admin.user_id(REALM, "bob"))
    elif how == "admin session delete":
        kc_admin.delete_session(REALM, jwt_part(token, 1)["sid"])
    else:
        kc_admin.end_session(REALM, "test-cli", bob["refresh_token"])
    refused_by_both_within(setup, token, 1.0)
    res = setup.kong.request(setup.guard_here, bearer(token))
    assert "The access token was revoked" in res.headers["WWW-Authenticate"]
    assert jwt_part(token, 1)["exp"] > time.time(), "the token itself has not expired"
    assert setup.status(alice["access_token"]) == (200, 200), "another user's token still passes"
    assert set(setup.proxy.counts) == {f"/realms/{REALM}/protocol/openid-connect/certs"}, \
        "the guards asked Keycloak for keys only: no introspection"


def test_keycloak_not_before_push(setup: Setup, kc_admin: KeycloakAdmin) -> None:
    before = login(kc_admin, "alice")["access_token"]
    assert setup.status(before) == (200, 200)
    time.sleep(1.1)  # not-before has one-second resolution
    now = int(time.time())
    kc_admin.set_realm_not_before(REALM, now)
    try:
        result = kc_admin.push_revocation(REALM)
        assert result.get("successRequests"), result
        refused_by_both_within(setup, before, 1.0)
        time.sleep(1.1)
        after = login(kc_admin, "alice")["access_token"]
        assert jwt_part(after, 1)["iat"] >= now
        assert setup.status(after) == (200, 200)
    finally:
        kc_admin.set_realm_not_before(REALM, 0)
