"""Keycloak's stored events, as the revocation feed (feed.py) reads them: which ones end a
user's access, and where the feed is in each list. Pure functions; the I/O is in feed.py.

Keycloak keeps two lists per realm (admin REST, role `view-events`): login events
(`/events`: a user logged out, changed a password, revoked a consent, was locked out) and admin
events (`/admin-events`: an administrator disabled, deleted or signed out a user, reset a
password, signed out the realm). What each action records was checked against Keycloak 26.7.3
(tests/idp/test_keycloak_feed.py). An event becomes a revocation of the kind the receiver records:
- SESSION for an ended session (every token of it);
- SIGNED_OUT for a sign-out of every session of a user (an administrator's "Sign out") or of
  the realm ("Sign out all active sessions"): tokens issued up to the event, its own second
  included, except those of sessions that started at or after it. Those sessions are told by
  their LOGIN events (`new_sessions_query`, `session_start_of`), which the feed reads for the
  sign-out's second until no late one can appear (`Pending`): token times are whole seconds,
  and a user signed out may sign in again within the same second;
- SUBJECT for a user (tokens issued up to `at`). After some actions the user keeps their session
  or can sign in again at once (a password change ends in a new token within the same second,
  from the same session): their revocation spares tokens issued in the event's own second, which
  nothing in Keycloak's record tells from the new ones. After the others (disabled, deleted) no
  new token can exist, so the whole second is revoked;
- NOT_BEFORE for the realm's not-before (every client: tokens issued before `at`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..revocation.store import Kind
from ..tokens.claims import json_value, time_of

# The lists and the queries that select what can revoke (Keycloak filters, the feed decides).
LOGIN_EVENTS = "events"
ADMIN_EVENTS = "admin-events"
LOGIN_TYPES = ("LOGOUT", "UPDATE_PASSWORD", "UPDATE_CREDENTIAL", "REVOKE_GRANT", "USER_DISABLED_BY_PERMANENT_LOCKOUT")
ADMIN_RESOURCES = ("USER", "USER_SESSION", "REALM")
ROLE_RESOURCES = ("REALM_ROLE_MAPPING", "CLIENT_ROLE_MAPPING", "GROUP_MEMBERSHIP")
ADMIN_OPERATIONS = ("UPDATE", "DELETE", "ACTION")

OVERLAP_MS = 2000  # each read starts this far before the newest event seen: events commit late
MAX_SEEN = 20000  # ids remembered inside the overlap (a burst larger than this may be read twice)
MAX_PENDING = 100  # sign-outs whose second is still watched for new sessions
SESSION_STARTS = ("LOGIN",)  # the login events that start a user session (browser, direct grant, broker)


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


def changed(user: str, t: float, cause: str) -> Revocation:
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
        return changed(user, t, "password changed")
    if kind == "REVOKE_GRANT":
        return changed(user, t, "consent revoked")
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
            return Revocation(Kind.SIGNED_OUT, user, t, "user signed out")
        if len(parts) == 3 and operation == "ACTION" and parts[2] == "reset-password":
            return changed(user, t, "password reset")
        if len(parts) == 4 and operation == "DELETE" and parts[2] == "consents":
            return changed(user, t, "consent revoked")
        return None
    if resource == "USER_SESSION" and operation == "DELETE" and len(parts) == 2 and parts[0] == "sessions" and parts[1]:
        return Revocation(Kind.SESSION, parts[1], t, "session deleted")
    if resource == "REALM" and operation == "ACTION" and path == "logout-all":
        return Revocation(Kind.SIGNED_OUT, "", t, "realm signed out")
    if resource == "REALM" and operation == "UPDATE" and path in ("", "/"):
        rep = _representation(event)
        not_before = time_of(rep.get("notBefore")) if isinstance(rep, dict) else None
        return Revocation(Kind.NOT_BEFORE, "", not_before, "realm not-before") if not_before else None
    if role_changes and operation == "DELETE" and user is not None and resource in ROLE_RESOURCES:
        return changed(user, t, "role removed" if resource != "GROUP_MEMBERSHIP" else "group removed")
    return None


def revocation_of(kind: str, event: Mapping[str, Any], role_changes: bool) -> Revocation | None:
    return from_login_event(event) if kind == LOGIN_EVENTS else from_admin_event(event, role_changes)


def event_time(event: Mapping[str, Any]) -> int | None:
    t = event.get("time")
    return t if isinstance(t, int) and not isinstance(t, bool) and t > 0 else None


def new_sessions_query(user: str, at_ms: int) -> dict[str, Any]:
    """The login-events query for the sessions that started in a sign-out's second at or after
    it (its user's, or the realm's when `user` is "")."""
    params: dict[str, Any] = {"type": list(SESSION_STARTS), "dateFrom": str(at_ms),
                              "dateTo": str(at_ms // 1000 * 1000 + 999)}
    if user:
        params["user"] = user
    return params


def session_start_of(event: Mapping[str, Any], after_ms: int) -> Revocation | None:
    """A session a LOGIN event started at or after `after_ms` (a sign-out's time), or None."""
    ms, session = event_time(event), _text(event.get("sessionId"))
    if event.get("type") not in SESSION_STARTS or ms is None or ms < after_ms or session is None:
        return None
    return Revocation(Kind.SESSION_START, session, ms / 1000, "session started")


@dataclass(frozen=True)
class Pending:
    """A sign-out whose second may still see new sessions: until late events of that second can
    no longer appear (OVERLAP_MS after it)."""

    user: str  # "" for the realm
    at_ms: int

    def settled(self, read_ms: int) -> bool:
        return read_ms > self.at_ms // 1000 * 1000 + 1000 + OVERLAP_MS


@dataclass(frozen=True)
class Position:
    """Where the feed is in one list: the newest event time read (ms), never past the time of
    the read that found it, and the ids read within OVERLAP_MS of it, so the next read can
    start early (an event may become visible after a newer one) without taking anything twice.
    An event dated in the future (a Keycloak node whose clock is ahead) is taken once, by id,
    and moves the position no further than the read's own time: later events with earlier
    times are still read. `pending`: sign-outs whose second is still watched (Pending)."""

    newest: int
    seen: Mapping[str, int]  # id -> time (ms)
    pending: tuple[Pending, ...] = ()

    @classmethod
    def starting(cls, since_ms: int) -> Position:
        return cls(since_ms, {})

    @property
    def read_from(self) -> int:
        return max(0, self.newest - OVERLAP_MS)

    def is_new(self, event: Mapping[str, Any]) -> bool:
        ident, t = event.get("id"), event_time(event)
        return t is not None and t >= self.read_from and not (isinstance(ident, str) and ident in self.seen)

    def advance(self, events: Sequence[Mapping[str, Any]], read_ms: int) -> Position:
        """The position once `events` (new ones, in the order read) are taken by a read made at
        `read_ms` (this gateway's clock)."""
        if not events:
            return self
        newest = max(self.newest, min(read_ms, max(event_time(e) or 0 for e in events)))
        seen = {i: s for i, s in self.seen.items() if s >= newest - OVERLAP_MS}
        for event in events:
            ident, t = event.get("id"), event_time(event)
            if isinstance(ident, str) and t is not None and t >= newest - OVERLAP_MS:
                seen[ident] = t
        while len(seen) > MAX_SEEN:
            del seen[next(iter(seen))]
        return replace(self, newest=newest, seen=seen)

    def watching(self, pending: Sequence[Pending], read_ms: int) -> Position:
        """The position with `pending` sign-outs, those settled by `read_ms` dropped."""
        kept = tuple(dict.fromkeys(p for p in pending if not p.settled(read_ms)))
        return replace(self, pending=kept[-MAX_PENDING:])

    def to_json(self) -> dict[str, Any]:
        return {"newest": self.newest, "seen": dict(self.seen),
                "pending": [[p.user, p.at_ms] for p in self.pending]}

    @classmethod
    def from_json(cls, value: object) -> Position | None:
        if not isinstance(value, dict):
            return None
        newest, seen, pending = value.get("newest"), value.get("seen"), value.get("pending", [])
        if not isinstance(newest, int) or not isinstance(seen, dict) or not isinstance(pending, list):
            return None
        return cls(newest, {k: v for k, v in seen.items() if isinstance(k, str) and isinstance(v, int)},
                   tuple(Pending(p[0], p[1]) for p in pending if isinstance(p, list) and len(p) == 2
                         and isinstance(p[0], str) and isinstance(p[1], int)))
