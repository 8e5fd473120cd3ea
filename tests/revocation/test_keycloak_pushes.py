"""Which of Keycloak's revocations reach kcauth's receiver on their own: each action of
tests/keycloak/actions.py is done to a fresh user of the test realm while test-cli's back-channel
logout URL and admin URL point at a receiver route (over real HTTP, tests/harness/gateway.py); the
user's access token is then checked on a plain guard. `PUSHED` records what Keycloak 26.7.3
does, and docs/revocation.md "Which revocations are seen, and how fast" carries it: an action that is not
pushed leaves the token passing every non-sensitive route until it expires, unless the
revocation feed reads it (tests/idp/test_keycloak_feed.py). (The user's own logout at Keycloak's
logout endpoint is pushed: tests/revocation/test_keycloak_revocation.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import bearer, guard_config, receiver_config
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.kong import Kong
from tests.keycloak.actions import ACTIONS, PUSHED, REALM_WIDE, forget, new_victim, undo
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak

RECEIVER = "/kcauth/revocations"
WAIT = 1.0  # seconds a push may take to be enforced: Keycloak sends it before it answers the action


@pytest.fixture
def receiving(kong: Kong, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> Iterator[None]:
    receiver = kong.plugin(receiver_config(keycloak.issuer(REALM)))
    echo = EchoUpstream()
    gateway = Gateway(kong, [Route("revocations", [RECEIVER], echo.url, kcauth=receiver)]).serve()
    url = gateway.url + RECEIVER
    previous = kc_admin.update_client(REALM, "test-cli", adminUrl=url)
    previous_url = kc_admin.set_client_attribute(REALM, "test-cli", "backchannel.logout.url", url)
    try:
        yield
    finally:
        kc_admin.set_client_attribute(REALM, "test-cli", "backchannel.logout.url", previous_url)
        kc_admin.update_client(REALM, "test-cli", **previous)
        gateway.stop()
        echo.stop()


def test_every_action_is_classified() -> None:
    assert set(PUSHED) == set(ACTIONS)


@pytest.mark.usefixtures("receiving")
@pytest.mark.parametrize("action", list(ACTIONS))
def test_what_keycloak_pushes(action: str, kong: Kong, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    guard = kong.plugin(guard_config(keycloak.issuer(REALM)))
    victim = new_victim(kc_admin, "push")
    try:
        assert kong.request(guard, bearer(victim.token)).status == 200
        if action in REALM_WIDE:
            time.sleep(1.1)  # they revoke tokens issued before their second
        ACTIONS[action](kc_admin, victim)
        deadline = time.monotonic() + WAIT
        refused = False
        while time.monotonic() < deadline and not refused:
            refused = kong.request(guard, bearer(victim.token)).status == 401
            time.sleep(0.05)
        assert refused is PUSHED[action], f"{action}: pushed={refused}, recorded {PUSHED[action]}"
    finally:
        undo(kc_admin, action)
        forget(kc_admin, victim)
