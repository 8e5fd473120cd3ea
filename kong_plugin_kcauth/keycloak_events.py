"""Keycloak's stored events, as the revocation feed (feed.py) reads them: which ones end a
user's access, and where the feed is in each list. Pure functions; the I/O is in feed.py.

Keycloak keeps two lists per realm (admin REST, role `view-events`): login events
(`/events`: a user logged out, changed a password, revoked a consent, was locked out) and admin
events (`/admin-events`: an administrator disabled, deleted or signed out a user, reset a
password, signed out the realm). What each action records was checked against Keycloak 26.7.3
(tests/test_keycloak_feed.py). An event becomes a revocation of the kind the receiver records:
- SESSION for an ended session (every token of it);
- SUBJECT for a user (tokens issued up to `at`). After some actions the user can sign in again
  at once (a password change ends in a new token within the same second): their revocation spares
  tokens issued in the event's own second, which the feed cannot tell from the new ones (token
  times are whole seconds). After the others (disabled, deleted) no new token can exist, so the
  whole second is revoked;
- NOT_BEFORE for the realm (every client: tokens issued before `at`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .claims import json_value, time_of
from .revocation import Kind

# The lists and the queries that select what can revoke (Keycloak filters, the feed decides).
LOGIN_EVENTS = "events"
ADMIN_EVENTS = "admin-events"
LOGIN_TYPES = ("LOGOUT", "UPDATE_PASSWORD", "UPDATE_CREDENTIAL", "REVOKE_GRANT", "USER_DISABLED_BY_PERMANENT_LOCKOUT")
ADMIN_RESOURCES = ("USER", "USER_SESSION", "REALM")
ROLE_RESOURCES = ("REALM_ROLE_MAPPING", "CLIENT_ROLE_MAPPING", "GROUP_MEMBERSHIP")
ADMIN_OPERATIONS = ("UPDATE", "DELETE", "ACTION")

OVERLAP_MS = 2000  # each read starts this far before the newest event seen: events commit late
MAX_SEEN = 20000  # ids remembered inside the overlap (a burst larger than this may be read twice)


@dataclass(frozen=True)
class Revocation:
    kind: Kind
    ident: str  # a sid, a user id (the tokens' `sub`), or "" (every client) for NOT_BEFORE
    at: float
    cause: str  # for metrics and logs: what happened, never who


def query(kind: str, role_changes: bool) -> dict[str, list[str]]:
    """The filter parameters of a list's query."""
    if kind == LOGIN_EVENTS:
        return {"type": list(LOGIN_TYPES)}
    resources = ADMIN_RESOURCES + (ROLE_RESOURCES if role_changes else ())
    return {"resourceTypes": list(resources), "operationTypes": list(ADMIN_OPERATIONS)}


def _ended(user: str, t: float, cause: str) -> Revocation:
    """The user can get no new token: every token issued up to the event."""
    return Revocation(Kind.SUBJECT, user, t, cause)


def _changed(user: str, t: float, cause: str) -> Revocation:
    """The user may get new tokens at once: tokens issued before the event's second."""
    return Revocation(Kind.SUBJECT, user, math.floor(t) - 1, cause)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def from_login_event(event: Mapping[str, Any]) -> Revocation | None:
    """The revocation a login event means, or None."""
    kind, ms = event.get("type"), event_time(event)
    user, session = _text(event.get("userId")), _text(event.get("sessionId"))
    if ms is None:
        return None
    t = ms / 1000
    if kind == "LOGOUT":
        return Revocation(Kind.SESSION, session, t, "logout") if session else None
    if user is None:
        return None
    details = event.get("details")
    credential = details.get("credential_type") if isinstance(details, dict) else None
    if kind == "UPDATE_PASSWORD" or (kind == "UPDATE_CREDENTIAL" and credential == "password"):
        return _changed(user, t, "password changed")
    if kind == "REVOKE_GRANT":
        return _changed(user, t, "consent revoked")
    if kind == "USER_DISABLED_BY_PERMANENT_LOCKOUT":
        return _ended(user, t, "user locked out")
    return None


def _representation(event: Mapping[str, Any]) -> Any:
    """The admin event's representation (a JSON text in Keycloak's answer), or None."""
    raw = event.get("representation")
    if not isinstance(raw, str):
        return None
    return json_value(raw)


def from_admin_event(event: Mapping[str, Any], role_changes: bool) -> Revocation | None:
    """The revocation an admin event means, or None. Role and group removals count only with
    `role_changes`; removals through a group or a composite role name no user and never count."""
    ms, path = event_time(event), event.get("resourcePath")
    path = "" if path is None else path  # a realm update names no path
    if ms is None or not isinstance(path, str) or event.get("error"):
        return None
    t = ms / 1000
    resource, operation, parts = event.get("resourceType"), event.get("operationType"), path.split("/")
    user = parts[1] if len(parts) >= 2 and parts[0] == "users" and parts[1] else None
    if resource == "USER" and user is not None:
        if len(parts) == 2 and operation == "DELETE":
            return _ended(user, t, "user deleted")
        if len(parts) == 2 and operation == "UPDATE":
            rep = _representation(event)
            return _ended(user, t, "user disabled") if isinstance(rep, dict) and rep.get("enabled") is False else None
        if len(parts) == 3 and operation == "ACTION" and parts[2] == "logout":
            return _changed(user, t, "user signed out")
        if len(parts) == 3 and operation == "ACTION" and parts[2] == "reset-password":
            return _changed(user, t, "password reset")
        if len(parts) == 4 and operation == "DELETE" and parts[2] == "consents":
            return _changed(user, t, "consent revoked")
        return None
    if resource == "USER_SESSION" and operation == "DELETE" and len(parts) == 2 and parts[0] == "sessions" and parts[1]:
        return Revocation(Kind.SESSION, parts[1], t, "session deleted")
    if resource == "REALM" and operation == "ACTION" and path == "logout-all":
        return Revocation(Kind.NOT_BEFORE, "", math.floor(t), "realm signed out")
    if resource == "REALM" and operation == "UPDATE" and path in ("", "/"):
        rep = _representation(event)
        not_before = time_of(rep.get("notBefore")) if isinstance(rep, dict) else None
        return Revocation(Kind.NOT_BEFORE, "", not_before, "realm not-before") if not_before else None
    if role_changes and operation == "DELETE" and user is not None and resource in ROLE_RESOURCES:
        return _changed(user, t, "role removed" if resource != "GROUP_MEMBERSHIP" else "group removed")
    return None


def revocation_of(kind: str, event: Mapping[str, Any], role_changes: bool) -> Revocation | None:
    return from_login_event(event) if kind == LOGIN_EVENTS else from_admin_event(event, role_changes)


def event_time(event: Mapping[str, Any]) -> int | None:
    t = event.get("time")
    return t if isinstance(t, int) and not isinstance(t, bool) and t > 0 else None


@dataclass(frozen=True)
class Position:
    """Where the feed is in one list: the newest event time read (ms) and the ids read within
    OVERLAP_MS of it, so the next read can start early (an event may become visible after a
    newer one) without taking anything twice."""

    newest: int
    seen: Mapping[str, int]  # id -> time (ms)

    @classmethod
    def starting(cls, since_ms: int) -> Position:
        return cls(since_ms, {})

    @property
    def read_from(self) -> int:
        return max(0, self.newest - OVERLAP_MS)

    def is_new(self, event: Mapping[str, Any]) -> bool:
        ident, t = event.get("id"), event_time(event)
        return t is not None and t >= self.read_from and not (isinstance(ident, str) and ident in self.seen)

    def advance(self, events: Sequence[Mapping[str, Any]]) -> Position:
        """The position once `events` (new ones, in the order read) are taken."""
        if not events:
            return self
        newest = max(self.newest, *(event_time(e) or 0 for e in events))
        seen = {i: s for i, s in self.seen.items() if s >= newest - OVERLAP_MS}
        for event in events:
            ident, t = event.get("id"), event_time(event)
            if isinstance(ident, str) and t is not None and t >= newest - OVERLAP_MS:
                seen[ident] = t
        while len(seen) > MAX_SEEN:
            del seen[next(iter(seen))]
        return Position(newest, seen)

    def to_json(self) -> dict[str, Any]:
        return {"newest": self.newest, "seen": dict(self.seen)}

    @classmethod
    def from_json(cls, value: object) -> Position | None:
        if not isinstance(value, dict):
            return None
        newest, seen = value.get("newest"), value.get("seen")
        if not isinstance(newest, int) or not isinstance(seen, dict):
            return None
        return cls(newest, {k: v for k, v in seen.items() if isinstance(k, str) and isinstance(v, int)})
