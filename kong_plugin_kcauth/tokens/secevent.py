"""Security Event Tokens (RFC 8417) from an OpenID Shared Signals transmitter (SSF 1.0, CAEP).

Keycloak's transmitter (26.7, `--features=ssf`) signs each SET with the realm's RS256 key (header
typ `secevent+jwt`), one event per SET: `iss` the realm, `aud` the stream's audience
(`<client id>/<stream id>` unless the client pins one), `iat`, `jti`, `txn`, a subject in
`sub_id` and `events: {<event type URI>: {...}}`. Checked against Keycloak 26.7.3's transmitter
(tests/idp/test_keycloak_signals.py).

This module holds the claim rules of a SET on the JWS layer (`set_refusal`, checked before the
signature, which the caller checks with the realm's keys) and what a valid one says
(`signal_of`). A refusal is an `errors.EventRejected` carrying an RFC 8935 error code (section
2.4: invalid_request, invalid_key, invalid_issuer, invalid_audience) with a fixed description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import errors
from . import jws
from .access import audiences_of
from .claims import Claims, time_of

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
REVOKING = (SESSION_REVOKED, CREDENTIAL_CHANGE)  # what kcauth asks the transmitter for
KNOWN = (*REVOKING, VERIFICATION, STREAM_UPDATED)
TYPES = ("secevent+jwt", "application/secevent+jwt")
ALL_SESSIONS = "ALL"  # Keycloak's session id when an administrator signs a user out of every session


@dataclass(frozen=True)
class Signal:
    """What one valid SET says. `user` and `session` come from its subject as Keycloak emits them
    (`iss_sub`, or `complex` with a `user` and a `session`); `at` is the event's time (its
    `event_timestamp`, else the SET's `iat`)."""

    event: str
    jti: str
    at: float
    user: str | None = None
    session: str | None = None
    subject_format: str | None = None  # of a subject kcauth could not read: named in the log, once
    change_type: str | None = None
    credential_type: str | None = None
    state: str | None = None  # a verification's
    status: str | None = None  # a stream update's: enabled, paused or disabled


@dataclass(frozen=True)
class Expected:
    """What a stream's SETs must say: the realm's issuer, the stream's audiences, and how old a
    SET may be (the revocation's lifetime: an older event concerns only expired tokens)."""

    issuer: str
    audiences: frozenset[str]
    max_age: float
    leeway: float


def parse(token: str, max_size: int, algorithms: frozenset[str]) -> jws.Signed:
    """A SET as the JWS layer reads it, not yet verified."""
    try:
        return jws.parse(token, max_size, algorithms)
    except errors.TokenTooLarge:
        raise errors.EventRejected("invalid_request", "the SET is too large") from None
    except errors.UnacceptedAlgorithm:
        raise errors.EventRejected("invalid_key", "signature algorithm not accepted") from None
    except errors.Refusal:
        raise errors.EventRejected("invalid_request", "malformed SET") from None


def set_refusal(signed: jws.Signed, expected: Expected, now: float) -> errors.EventRejected | None:
    """What RFC 8417 and SSF 1.0 refuse in a parsed SET, short of its signature, or None."""
    if signed.typ not in TYPES:
        return errors.EventRejected("invalid_request", "not a security event token")
    return errors.raised(errors.EventRejected, lambda: _claims(signed.claims, expected, now))


def _claims(claims: Claims, expected: Expected, now: float) -> None:
    if claims.get("iss") != expected.issuer:
        raise errors.EventRejected("invalid_issuer", "wrong issuer")
    if not audiences_of(claims) & expected.audiences:
        raise errors.EventRejected("invalid_audience", "wrong audience")
    iat = time_of(claims.get("iat"))
    if iat is None or iat > now + expected.leeway:
        raise errors.EventRejected("invalid_request", "missing or future iat")
    if iat < now - expected.max_age - expected.leeway:
        raise errors.EventRejected("invalid_request", "stale SET")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise errors.EventRejected("invalid_request", "missing jti")
    events = claims.get("events")
    if not isinstance(events, dict) or len(events) != 1:
        raise errors.EventRejected("invalid_request", "a SET must carry exactly one event")
    event, payload = next(iter(events.items()))
    if event not in KNOWN:
        raise errors.EventRejected("invalid_request", "unknown event type")
    if not isinstance(payload, dict):
        raise errors.EventRejected("invalid_request", "malformed event")
    if event in REVOKING and "event_timestamp" in payload and time_of(payload["event_timestamp"]) is None:
        raise errors.EventRejected("invalid_request", "malformed event_timestamp")


def signal_of(signed: jws.Signed) -> Signal:
    """What a SET that passed `set_refusal` and its signature says."""
    claims = signed.claims
    event, payload = next(iter(claims["events"].items()))
    at = time_of(payload.get("event_timestamp")) or time_of(claims["iat"]) or 0.0
    user, session, unread = _subject(claims.get("sub_id"), claims["iss"])
    return Signal(event=event, jti=claims["jti"], at=at, user=user, session=session, subject_format=unread,
                  change_type=_text(payload.get("change_type")), credential_type=_text(payload.get("credential_type")),
                  state=_text(payload.get("state")), status=_status(payload) if event == STREAM_UPDATED else None)


def _status(payload: dict[str, Any]) -> str | None:
    status = payload.get("status")
    status = status.get("status") if isinstance(status, dict) else status  # Keycloak nests it
    return status if isinstance(status, str) and 0 < len(status) <= 20 else None


def _subject(sub_id: Any, issuer: str) -> tuple[str | None, str | None, str | None]:
    """(user, session, the format of a subject that names neither) of an SSF subject identifier
    (RFC 9493): `iss_sub` of this realm, or `complex` with `user` and `session`."""
    if not isinstance(sub_id, dict):
        return None, None, "none"
    fmt = sub_id.get("format")
    if fmt == "iss_sub":
        if sub_id.get("iss") == issuer and _text(sub_id.get("sub")):
            return sub_id["sub"], None, None
        return None, None, "iss_sub of another issuer"
    if fmt == "complex":
        user = _subject(sub_id["user"], issuer)[0] if isinstance(sub_id.get("user"), dict) else None
        session = sub_id.get("session")
        sid = _text(session.get("id")) if isinstance(session, dict) and session.get("format") == "opaque" else None
        if user or sid:
            return user, sid, None
        return None, None, "complex"
    return None, None, fmt if isinstance(fmt, str) and len(fmt) <= 40 else "unknown"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
