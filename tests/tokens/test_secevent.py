"""Security Event Tokens (tokens/secevent.py) and what their signals revoke (idp/signals.py),
without a transmitter: SETs shaped as Keycloak 26.7.3's transmitter sends them (checked against
it in tests/idp/test_keycloak_signals.py), signed with a local key."""

from __future__ import annotations

import math
import time
from typing import Any

import jwt
import pytest

from kong_plugin_kcauth import errors
from kong_plugin_kcauth.idp.signals import revocation_of
from kong_plugin_kcauth.revocation.store import Kind
from kong_plugin_kcauth.tokens import jws, secevent
from kong_plugin_kcauth.tokens.secevent import CREDENTIAL_CHANGE, SESSION_REVOKED, VERIFICATION, Expected
from tests.harness.idp import SigningKey

ISS = "https://sso.example.com/realms/acme"
AUD = "kcauth-ssf/0b6f5a4e-2d1c-4b7a-9f0e-6a1d2c3b4e5f"
KEY = SigningKey("RS256")
EXPECTED = Expected(issuer=ISS, audiences=frozenset({AUD}), max_age=3600, leeway=10)
USER = "e7ff3116-60ba-49d8-8e96-0f2eaacaa26a"


def session_revoked(session: str = "78aKgBKwQkzRPlnWNrWihhA2", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"jti": "85ed9d9e-00e7", "iss": ISS, "iat": now, "aud": AUD, "txn": "020ddf79",
            "events": {SESSION_REVOKED: {"event_timestamp": now, "initiating_entity": "user",
                                         "reason_admin": {"en": "User logout"}}},
            "sub_id": {"format": "complex", "user": {"format": "iss_sub", "iss": ISS, "sub": USER},
                       "session": {"format": "opaque", "id": session}}, **extra}


def credential_change(credential: str = "password", change: str = "update") -> dict[str, Any]:
    now = int(time.time())
    return {"jti": "d554576e", "iss": ISS, "iat": now, "aud": AUD,
            "events": {CREDENTIAL_CHANGE: {"event_timestamp": now, "initiating_entity": "admin",
                                           "credential_type": credential, "change_type": change}},
            "sub_id": {"format": "iss_sub", "iss": ISS, "sub": USER}}


def sign(claims: dict[str, Any], typ: str = "secevent+jwt", key: SigningKey = KEY) -> str:
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"typ": typ, "kid": key.kid})


def judged(token: str) -> tuple[errors.EventRejected | None, jws.Signed]:
    signed = secevent.parse(token, 16384, frozenset({"RS256"}))
    return secevent.set_refusal(signed, EXPECTED, time.time()), signed


def test_a_valid_set_says_what_keycloak_sent() -> None:
    refusal, signed = judged(sign(session_revoked()))
    assert refusal is None and jws.signed_by(signed, KEY.private.public_key())
    signal = secevent.signal_of(signed)
    assert (signal.event, signal.user, signal.session) == (SESSION_REVOKED, USER, "78aKgBKwQkzRPlnWNrWihhA2")


NOW = int(time.time())


@pytest.mark.parametrize(("claims", "typ", "code"), [
    (session_revoked(), "JWT", "invalid_request"),
    (session_revoked(iss="https://evil.example.com/realms/acme"), "secevent+jwt", "invalid_issuer"),
    (session_revoked(aud="kcauth-ssf/another-stream"), "secevent+jwt", "invalid_audience"),
    # NOW is taken when the tests are collected, minutes before this one may run: far enough off
    (session_revoked(iat=NOW - 7200), "secevent+jwt", "invalid_request"),
    (session_revoked(iat=NOW + 86400), "secevent+jwt", "invalid_request"),
    (session_revoked(jti=""), "secevent+jwt", "invalid_request"),
    (session_revoked(events={"https://example.com/unknown": {}}), "secevent+jwt", "invalid_request"),
    (session_revoked(events={SESSION_REVOKED: {}, CREDENTIAL_CHANGE: {}}), "secevent+jwt", "invalid_request"),
    (session_revoked(events={SESSION_REVOKED: {"event_timestamp": "yesterday"}}), "secevent+jwt",
     "invalid_request"),
    (session_revoked(events={SESSION_REVOKED: "revoked"}), "secevent+jwt", "invalid_request"),
])
def test_refused_sets_name_rfc_8935_codes(claims: dict[str, Any], typ: str, code: str) -> None:
    refusal, _ = judged(sign(claims, typ))
    assert refusal is not None and refusal.code == code, refusal
    answer = errors.answer(refusal, "kong")
    assert answer.status == 400 and answer.body == {"err": code, "description": refusal.reason}


def test_unparsable_sets_are_invalid_requests() -> None:
    for token in ("garbage", sign(session_revoked()) + "x" * 20000):
        with pytest.raises(errors.EventRejected) as refused:
            secevent.parse(token, 16384, frozenset({"RS256"}))
        assert refused.value.code == "invalid_request"
    with pytest.raises(errors.EventRejected) as refused:
        secevent.parse(sign(session_revoked(), key=SigningKey("ES256")), 16384, frozenset({"RS256"}))
    assert refused.value.code == "invalid_key"


def signal(claims: dict[str, Any]) -> secevent.Signal:
    refusal, signed = judged(sign(claims))
    assert refusal is None
    return secevent.signal_of(signed)


def test_what_each_signal_revokes() -> None:
    logout = revocation_of(signal(session_revoked()))
    assert logout is not None and (logout.kind, logout.ident) == (Kind.SESSION, "78aKgBKwQkzRPlnWNrWihhA2")
    signed_out = revocation_of(signal(session_revoked(session="ALL")))
    assert signed_out is not None and (signed_out.kind, signed_out.ident) == (Kind.SIGNED_OUT, USER)
    password = revocation_of(signal(credential_change()))
    at = credential_change()["events"][CREDENTIAL_CHANGE]["event_timestamp"]
    assert password is not None and (password.kind, password.ident, password.at) == (Kind.SUBJECT, USER,
                                                                                    math.floor(at) - 1)
    deleted = revocation_of(signal(credential_change("app", "delete")))
    assert deleted is not None and deleted.kind is Kind.SUBJECT
    assert revocation_of(signal(credential_change("app", "update"))) is None, "a new second factor revokes nothing"


def test_subjects_kcauth_cannot_read_revoke_nothing_and_are_named() -> None:
    email = {**credential_change(), "sub_id": {"format": "email", "email": "alice@example.com"}}
    foreign = {**credential_change(), "sub_id": {"format": "iss_sub", "iss": "https://other", "sub": USER}}
    for claims, fmt in ((email, "email"), (foreign, "iss_sub of another issuer")):
        read = signal(claims)
        assert read.user is None and read.subject_format == fmt and revocation_of(read) is None
        assert "alice" not in repr(read.subject_format)


def test_a_verification_carries_its_state() -> None:
    claims = {**session_revoked(), "events": {VERIFICATION: {"state": "s-1"}},
              "sub_id": {"format": "opaque", "id": AUD.split("/")[1]}}
    read = signal(claims)
    assert (read.event, read.state) == (VERIFICATION, "s-1") and revocation_of(read) is None
