"""Which of Keycloak's revocations reach kcauth's receiver on their own: each administrator action
below is done to a fresh user of the test realm while test-cli's back-channel logout URL and
admin URL point at a receiver route (over real HTTP, tests/harness/gateway.py); the user's
access token is then checked on a plain guard. `PUSHED` records what Keycloak 26.7.3 does, and
README "Which revocations are seen, and how fast" carries it: an action that is not pushed leaves
the token passing every non-sensitive route until it expires."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import bearer, guard_config, receiver_config
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.kong import Kong
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, login
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak

RECEIVER = "/kcauth/revocations"
WAIT = 3.0  # seconds a push may take to be enforced (they take milliseconds)

Action = Callable[[KeycloakAdmin, str, str], object]  # (admin, user id, session id)

ACTIONS: dict[str, Action] = {
    "admin signs the user out": lambda kc, user, sid: kc.logout_user(REALM, user),
    "admin deletes the user's session": lambda kc, user, sid: kc.delete_session(REALM, sid),
    "admin disables the user": lambda kc, user, sid: kc.set_user_enabled(REALM, user, False),
    "admin deletes the user": lambda kc, user, sid: kc.delete_user(REALM, user),
    "admin resets the password": lambda kc, user, sid: kc.reset_password(REALM, user, "changed-" + uuid.uuid4().hex),
    "admin signs out all sessions of the realm": lambda kc, user, sid: kc.logout_all(REALM),
    "admin removes a realm role": lambda kc, user, sid: kc.remove_realm_role(REALM, user, "user"),
}

# What Keycloak 26.7.3 pushes to the receiver (True), and what it does not (False).
PUSHED = {
    "admin signs the user out": True,
    "admin deletes the user's session": True,
    "admin disables the user": False,
    "admin deletes the user": False,
    "admin resets the password": False,
    "admin signs out all sessions of the realm": False,
    "admin removes a realm role": False,
}


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


@pytest.mark.usefixtures("receiving")
@pytest.mark.parametrize("action", list(ACTIONS))
def test_what_keycloak_pushes(action: str, kong: Kong, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    guard = kong.plugin(guard_config(keycloak.issuer(REALM)))
    name = f"push-{uuid.uuid4().hex[:10]}"
    user = kc_admin.create_user(REALM, name, f"{name}-pass")
    try:
        kc_admin.add_realm_role(REALM, user, "user")
        token = login(kc_admin, name)["access_token"]
        sid = kc_admin.user_sessions(REALM, user)[0]["id"]
        assert kong.request(guard, bearer(token)).status == 200
        ACTIONS[action](kc_admin, user, sid)
        deadline = time.monotonic() + WAIT
        refused = False
        while time.monotonic() < deadline and not refused:
            refused = kong.request(guard, bearer(token)).status == 401
            time.sleep(0.05)
        assert refused is PUSHED[action], f"{action}: pushed={refused}, recorded {PUSHED[action]}"
    finally:
        try:
            kc_admin.delete_user(REALM, user)
        except Exception:  # noqa: BLE001 - the action may have deleted it
            pass
