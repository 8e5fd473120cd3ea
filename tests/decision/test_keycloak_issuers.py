"""Several realms on one route against the real Keycloak: the test realm and `other`
(kong/keycloak/other-realm.json) through one guard, each with its own audiences; a token of a
third realm (`master`) refused with no request to Keycloak; a back-channel logout of one realm,
received over real HTTP, ending only that realm's session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import bearer, guard_config, receiver_config
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.kong import Kong
from tests.harness.proxy import CountingProxy
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, access_token, login
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak

OTHER = "other"
RECEIVER = "/kcauth/revocations"


@pytest.fixture
def proxy(keycloak: KeycloakServer) -> Iterator[CountingProxy]:
    """Every request the plugin makes to Keycloak goes through it (`provider_url`)."""
    with CountingProxy(keycloak.base_url) as counting:
        yield counting


def two_realms(keycloak: KeycloakServer, proxy: CountingProxy, **other: object) -> dict[str, object]:
    return guard_config(keycloak.issuer(REALM), provider_url=proxy.url,
                        issuers=[{"issuer": keycloak.issuer(OTHER), **other}])


def test_tokens_of_two_realms_on_one_route(kong: Kong, keycloak: KeycloakServer, kc_admin: KeycloakAdmin,
                                           proxy: CountingProxy) -> None:
    entity = kong.plugin(two_realms(keycloak, proxy, audiences=["orders-api"]))
    mine, theirs = access_token(kc_admin, "alice"), access_token(kc_admin, "carol", realm=OTHER)
    for token, realm in ((mine, REALM), (theirs, OTHER)):
        res = kong.request(entity, bearer(token))
        assert res.status == 200, res.headers
        assert res.upstream("x-auth-issuer") == [keycloak.issuer(realm)]
    # The other realm's entry with an audience its tokens do not carry: its own rules apply.
    strict = kong.plugin(two_realms(keycloak, proxy, audiences=["billing-api"]))
    assert kong.request(strict, bearer(mine)).status == 200
    assert kong.request(strict, bearer(theirs)).status == 401
    # A third realm of the same Keycloak: refused, and Keycloak is not asked anything.
    master = kc_admin.admin_token()
    before = sum(proxy.counts.values())
    res = kong.request(entity, bearer(master))
    assert res.status == 401
    assert sum(proxy.counts.values()) == before, "no request to Keycloak for a token of another realm"


@pytest.fixture
def receiving(kong: Kong, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> Iterator[None]:
    """Both realms' test-cli send their back-channel logouts to one receiver route."""
    receiver = kong.plugin(receiver_config(keycloak.issuer(REALM), issuers=[{"issuer": keycloak.issuer(OTHER)}]))
    echo = EchoUpstream()
    gateway = Gateway(kong, [Route("revocations", [RECEIVER], echo.url, kcauth=receiver)]).serve()
    url = gateway.url + RECEIVER
    previous = {realm: kc_admin.set_client_attribute(realm, "test-cli", "backchannel.logout.url", url)
                for realm in (REALM, OTHER)}
    try:
        yield
    finally:
        for realm, value in previous.items():
            kc_admin.set_client_attribute(realm, "test-cli", "backchannel.logout.url", value)
        gateway.stop()
        echo.stop()


@pytest.mark.usefixtures("receiving")
def test_a_logout_in_one_realm_revokes_only_that_realms_session(kong: Kong, keycloak: KeycloakServer,
                                                                kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    guard = kong.plugin(two_realms(keycloak, proxy, audiences=["orders-api"]))
    mine, theirs = login(kc_admin, "alice"), login(kc_admin, "alice", realm=OTHER)  # alice in both realms
    assert [kong.request(guard, bearer(t["access_token"])).status for t in (mine, theirs)] == [200, 200]
    kc_admin.logout_user(OTHER, kc_admin.user_id(OTHER, "alice"))
    deadline = time.monotonic() + 5
    while kong.request(guard, bearer(theirs["access_token"])).status != 401:
        assert time.monotonic() < deadline, "the other realm's logout was not enforced"
        time.sleep(0.05)
    assert kong.request(guard, bearer(mine["access_token"])).status == 200, "the test realm's session goes on"
    assert not any("introspect" in path for path in proxy.counts), "no introspection"
