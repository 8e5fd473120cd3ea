"""Which of Keycloak's events revoke what (keycloak_events.py), on events shaped as Keycloak
26.7.3 returns them (ids and times shortened), and the feed's position in a list."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kong_plugin_kcauth.idp.events import (
    ADMIN_EVENTS,
    LOGIN_EVENTS,
    OVERLAP_MS,
    Pending,
    Position,
    Revocation,
    from_admin_event,
    from_login_event,
    new_sessions_query,
    query,
    session_start_of,
)
from kong_plugin_kcauth.revocation.store import Kind

T = 1796205043136  # ms; 1796205043.136 s
USER, SID = "82ac57e1-e848-4d4e-abe8-faa85ff23430", "GjvaPJxo7oenIEtfBslJ1FOh"


def login_event(kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": "e1", "time": T, "type": kind, "realmId": "r", "clientId": "test-cli", "userId": USER,
            "ipAddress": "127.0.0.1", **extra}


def admin_event(operation: str, resource: str, path: str, representation: Any = None) -> dict[str, Any]:
    event = {"id": "a1", "time": T, "realmId": "r", "authDetails": {}, "operationType": operation,
             "resourceType": resource, "resourcePath": path}
    if representation is not None:
        event["representation"] = json.dumps(representation)
    return event


CHANGED = 1796205043 - 1  # tokens issued before the event's own second
ENDED = T / 1000  # every token issued up to the event


@pytest.mark.parametrize(("event", "expected"), [
    (login_event("LOGOUT", sessionId=SID), Revocation(Kind.SESSION, SID, T / 1000, "logout")),
    (login_event("LOGOUT"), None),  # no session named
    (login_event("UPDATE_PASSWORD"), Revocation(Kind.SUBJECT, USER, CHANGED, "password changed")),
    (login_event("UPDATE_CREDENTIAL", details={"credential_type": "password"}),
     Revocation(Kind.SUBJECT, USER, CHANGED, "password changed")),
    (login_event("UPDATE_CREDENTIAL", details={"credential_type": "otp"}), None),  # a second factor added
    (login_event("REVOKE_GRANT", details={"revoked_client": "test-cli"}),
     Revocation(Kind.SUBJECT, USER, CHANGED, "consent revoked")),
    (login_event("USER_DISABLED_BY_PERMANENT_LOCKOUT"), Revocation(Kind.SUBJECT, USER, ENDED, "user locked out")),
    (login_event("LOGIN", sessionId=SID), None),
    ({**login_event("UPDATE_PASSWORD"), "userId": None}, None),
    ({**login_event("LOGOUT", sessionId=SID), "time": "soon"}, None),
])
def test_login_events(event: dict[str, Any], expected: Revocation | None) -> None:
    assert from_login_event(event) == expected


@pytest.mark.parametrize(("event", "expected"), [
    (admin_event("UPDATE", "USER", f"users/{USER}", {"id": USER, "enabled": False}),
     Revocation(Kind.SUBJECT, USER, ENDED, "user disabled")),
    (admin_event("UPDATE", "USER", f"users/{USER}", {"id": USER, "enabled": True}), None),
    (admin_event("UPDATE", "USER", f"users/{USER}"), None),  # no representation: cannot tell
    (admin_event("DELETE", "USER", f"users/{USER}"), Revocation(Kind.SUBJECT, USER, ENDED, "user deleted")),
    (admin_event("ACTION", "USER", f"users/{USER}/logout"),
     Revocation(Kind.SIGNED_OUT, USER, ENDED, "user signed out")),
    (admin_event("ACTION", "USER", f"users/{USER}/reset-password"),
     Revocation(Kind.SUBJECT, USER, CHANGED, "password reset")),
    (admin_event("DELETE", "USER", f"users/{USER}/consents/test-cli"),
     Revocation(Kind.SUBJECT, USER, CHANGED, "consent revoked")),
    (admin_event("CREATE", "USER", f"users/{USER}"), None),
    (admin_event("DELETE", "USER_SESSION", f"sessions/{SID}", {"offline": False}),
     Revocation(Kind.SESSION, SID, T / 1000, "session deleted")),
    (admin_event("ACTION", "REALM", "logout-all", {"successRequests": []}),
     Revocation(Kind.SIGNED_OUT, "", ENDED, "realm signed out")),
    (admin_event("UPDATE", "REALM", "", {"realm": "kcauth", "notBefore": 1796205000}),
     Revocation(Kind.NOT_BEFORE, "", 1796205000, "realm not-before")),
    (admin_event("UPDATE", "REALM", "", {"realm": "kcauth", "notBefore": 0}), None),
    (admin_event("ACTION", "REALM", "clear-realm-cache"), None),
    ({**admin_event("DELETE", "USER", f"users/{USER}"), "error": "unknown_error"}, None),  # it failed
])
def test_admin_events(event: dict[str, Any], expected: Revocation | None) -> None:
    assert from_admin_event(event, role_changes=False) == expected


@pytest.mark.parametrize("event", [
    admin_event("DELETE", "REALM_ROLE_MAPPING", f"users/{USER}/role-mappings/realm", [{"name": "user"}]),
    admin_event("DELETE", "CLIENT_ROLE_MAPPING", f"users/{USER}/role-mappings/clients/c1", [{"name": "reader"}]),
    admin_event("DELETE", "GROUP_MEMBERSHIP", f"users/{USER}/groups/g1"),
])
def test_role_and_group_removals_count_only_when_asked(event: dict[str, Any]) -> None:
    assert from_admin_event(event, role_changes=False) is None
    revocation = from_admin_event(event, role_changes=True)
    assert revocation is not None
    assert (revocation.kind, revocation.ident, revocation.at) == (Kind.SUBJECT, USER, CHANGED)


def test_removals_that_name_no_user_never_count() -> None:
    group_role = admin_event("DELETE", "REALM_ROLE_MAPPING", "groups/g1/role-mappings/realm", [{"name": "user"}])
    assert from_admin_event(group_role, role_changes=True) is None


def test_queries_ask_keycloak_for_revoking_events_only() -> None:
    assert query(LOGIN_EVENTS, False) == {"type": ["LOGOUT", "UPDATE_PASSWORD", "UPDATE_CREDENTIAL", "REVOKE_GRANT",
                                                   "USER_DISABLED_BY_PERMANENT_LOCKOUT"]}
    assert "GROUP_MEMBERSHIP" not in query(ADMIN_EVENTS, False)["resourceTypes"]
    assert "GROUP_MEMBERSHIP" in query(ADMIN_EVENTS, True)["resourceTypes"]
    assert "CREATE" not in query(ADMIN_EVENTS, True)["operationTypes"]


NOW = 20_000  # ms: when the reads below are made


def test_a_position_reads_again_within_the_overlap_and_takes_nothing_twice() -> None:
    start = Position.starting(1000)
    first = {"id": "a", "time": 5000}
    moved = start.advance([first], NOW)
    assert moved.newest == 5000 and moved.read_from == 5000 - OVERLAP_MS
    assert not moved.is_new(first), "read again inside the overlap, taken once"
    late = {"id": "b", "time": 4000}  # committed after `first` was read, older than it
    assert moved.is_new(late)
    later = moved.advance([late, {"id": "c", "time": 9000}], NOW)
    assert later.newest == 9000 and set(later.seen) == {"c"}, "ids older than the overlap are forgotten"
    assert Position.from_json(json.loads(json.dumps(later.to_json()))) == later
    assert Position.from_json({"newest": "x"}) is None and Position.from_json(None) is None


def test_an_event_dated_in_the_future_moves_the_position_no_further_than_the_read() -> None:
    """A Keycloak node whose clock is an hour ahead records one event: it is taken once (by its
    id), and the events recorded after it with true times are still read."""
    future = {"id": "ahead", "time": NOW + 3_600_000}
    moved = Position.starting(1000).advance([{"id": "a", "time": 5000}, future], NOW)
    assert moved.newest == NOW, "never past the time of the read"
    assert not moved.is_new(future), "taken once, by id"
    after = {"id": "b", "time": NOW + 500}  # recorded after the read, by a node with a right clock
    assert moved.is_new(after)
    again = moved.advance([after], NOW + 1000)
    assert again.newest == NOW + 500 and "ahead" in again.seen, "the future id is kept until the position reaches it"
    assert not again.is_new(future)


def test_a_sign_out_second_is_watched_until_no_late_login_can_appear() -> None:
    at = 7_400  # a sign-out at 7.4 s: its second ends at 8 s, late events may appear until 10 s
    position = Position.starting(0).watching([Pending(USER, at), Pending("", at), Pending(USER, at)], 9_000)
    assert position.pending == (Pending(USER, at), Pending("", at)), "once each"
    assert Position.from_json(json.loads(json.dumps(position.to_json()))) == position
    assert position.watching(position.pending, 10_000).pending == position.pending
    assert position.watching(position.pending, 10_001).pending == ()


def test_sessions_started_in_the_sign_out_second_at_or_after_it() -> None:
    query = new_sessions_query(USER, T)
    assert query == {"type": ["LOGIN"], "user": USER, "dateFrom": str(T), "dateTo": str(T // 1000 * 1000 + 999)}
    assert "user" not in new_sessions_query("", T), "the realm's: every user"
    login = login_event("LOGIN", sessionId=SID)
    assert session_start_of(login, T) == Revocation(Kind.SESSION_START, SID, T / 1000, "session started")
    assert session_start_of({**login, "time": T - 1}, T) is None, "a session from before the sign-out ended with it"
    assert session_start_of(login_event("LOGIN"), T) is None
    assert session_start_of(login_event("LOGOUT", sessionId=SID), T) is None
