"""The actions after which a user's access tokens must stop working, done to a fresh user of the
test realm the way an administrator or the user would (admin REST API, Keycloak's own pages, the
account API), and what Keycloak 26.7.3 does about each: push it to the receiver, or only record
it as an event the revocation feed reads. tests/revocation/test_keycloak_pushes.py checks PUSHED,
tests/idp/test_keycloak_feed.py the feed; docs/revocation.md "Which revocations are seen, and how fast" carries
both."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tests.keycloak import account
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, login

CLIENT = "test-cli"


@dataclass(frozen=True)
class Victim:
    id: str
    name: str
    password: str
    token: str  # an access token of a session of its own (`sid`), issued before the action
    sid: str


def new_victim(kc: KeycloakAdmin, prefix: str = "victim") -> Victim:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    password = f"{name}-pass"
    user = kc.create_user(REALM, name, password)
    kc.add_realm_role(REALM, user, "user")
    token = login(kc, name)["access_token"]
    sid = kc.user_sessions(REALM, user)[0]["id"]
    return Victim(user, name, password, token, sid)


def forget(kc: KeycloakAdmin, victim: Victim) -> None:
    try:
        kc.delete_user(REALM, victim.id)
    except Exception:  # noqa: BLE001 - the action may have deleted it
        pass


Action = Callable[[KeycloakAdmin, Victim], object]


def _change_password(sign_out: bool) -> Action:
    return lambda kc, v: account.change_password(kc.issuer(REALM), CLIENT, v.name, v.password, "changed-" + v.password,
                                                 sign_out_other_devices=sign_out)


ACTIONS: dict[str, Action] = {
    "admin signs the user out": lambda kc, v: kc.logout_user(REALM, v.id),
    "admin deletes the user's session": lambda kc, v: kc.delete_session(REALM, v.sid),
    "admin disables the user": lambda kc, v: kc.set_user_enabled(REALM, v.id, False),
    "admin deletes the user": lambda kc, v: kc.delete_user(REALM, v.id),
    "admin resets the password": lambda kc, v: kc.reset_password(REALM, v.id, "changed-" + uuid.uuid4().hex),
    "user changes the password": _change_password(False),
    "user changes the password, signing out other devices": _change_password(True),
    "admin signs out all sessions of the realm": lambda kc, v: kc.logout_all(REALM),
    "user ends the session in the account console": lambda kc, v: account.end_session(kc.issuer(REALM), v.token, v.sid),
    "user removes the client's access in the account console":
        lambda kc, v: account.revoke_access(kc.issuer(REALM), v.token, CLIENT),
    "admin removes a realm role from the user": lambda kc, v: kc.remove_realm_role(REALM, v.id, "user"),
    "admin sets the realm's not-before and pushes it": lambda kc, v: _not_before_now(kc),
}
# Actions that revoke every user's tokens; `undo` puts the realm back.
REALM_WIDE = ("admin signs out all sessions of the realm", "admin sets the realm's not-before and pushes it")


def _not_before_now(kc: KeycloakAdmin) -> None:
    kc.set_realm_not_before(REALM, int(time.time()))
    kc.push_revocation(REALM)


def undo(kc: KeycloakAdmin, action: str) -> None:
    if action == "admin sets the realm's not-before and pushes it":
        kc.set_realm_not_before(REALM, 0)

# What Keycloak 26.7.3 pushes to the receiver (True), and what it only records (False).
PUSHED = {
    "admin signs the user out": True,
    "admin deletes the user's session": True,
    "admin disables the user": False,
    "admin deletes the user": False,
    "admin resets the password": False,
    "user changes the password": False,
    "user changes the password, signing out other devices": True,
    "admin signs out all sessions of the realm": False,
    "user ends the session in the account console": True,
    "user removes the client's access in the account console": False,
    "admin removes a realm role from the user": False,
    "admin sets the realm's not-before and pushes it": True,
}

# What Keycloak 26.7.3's Shared Signals transmitter sends about the user (`--features=ssf`, the
# realm's transmitter on, every user's events): CAEP event types, checked by
# tests/idp/test_keycloak_signals.py.
SIGNALLED: dict[str, tuple[str, ...]] = {
    "admin signs the user out": ("session-revoked",),
    "admin deletes the user's session": (),
    "admin disables the user": (),
    "admin deletes the user": (),
    "admin resets the password": ("credential-change",),
    "user changes the password": ("credential-change",),
    "user changes the password, signing out other devices": ("credential-change", "session-revoked"),
    "admin signs out all sessions of the realm": (),
    "user ends the session in the account console": (),
    "user removes the client's access in the account console": (),
    "admin removes a realm role from the user": (),
    "admin sets the realm's not-before and pushes it": (),
}
