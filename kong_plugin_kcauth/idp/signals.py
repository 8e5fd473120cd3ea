"""CAEP signals (tokens/secevent.py `Signal`) as the revocations the store records. Pure.

What Keycloak 26.7.3's transmitter sends, and what kcauth makes of it (the same kinds as the
feed's, idp/events.py, so a revocation seen by several channels is one record):

- user logout (RP-initiated, refresh-token logout, account console): session-revoked with a
  `complex` subject naming the session: SESSION, every token of that `sid`;
- an administrator signs the user out: session-revoked with session id `ALL`: SIGNED_OUT of the
  user, tokens issued up to the event, its own second included;
- a password changed or reset (by the user or an administrator): credential-change `password`
  `update`: SUBJECT, tokens issued before the event's second (the user keeps a session, or signs
  in again at once, within that second);
- any credential deleted: credential-change `delete`: SUBJECT, as above;
- a second factor added or updated (OTP, WebAuthn): credential-change `update`: nothing, no
  existing token is less safe for it;
- a realm-wide sign-out, or one session deleted by an administrator: Keycloak sends no signal
  (the back-channel logout and the feed see those).

A signal whose subject names no user of this realm (`email`, an `iss_sub` of another issuer, an
unknown format) revokes nothing; its format is logged once (idp/ssf.py).
"""

from __future__ import annotations

from ..revocation.store import Kind
from ..tokens.secevent import ALL_SESSIONS, CREDENTIAL_CHANGE, SESSION_REVOKED, Signal
from .events import Revocation, changed

_CREDENTIALS_THAT_REVOKE = ("password",)


def revocation_of(signal: Signal) -> Revocation | None:
    """The revocation a signal means, or None."""
    if signal.event == SESSION_REVOKED:
        if signal.session and signal.session != ALL_SESSIONS:
            return Revocation(Kind.SESSION, signal.session, signal.at, "session revoked")
        if signal.user:
            return Revocation(Kind.SIGNED_OUT, signal.user, signal.at, "sessions revoked")
        return None
    if signal.event == CREDENTIAL_CHANGE and signal.user:
        if signal.change_type in ("delete", "revoke") or signal.credential_type in _CREDENTIALS_THAT_REVOKE:
            return changed(signal.user, signal.at, "credential changed")
    return None
