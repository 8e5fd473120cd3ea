"""Shared Signals push delivery (RFC 8935) through the revocation receiver's route, with a local
transmitter shaped as Keycloak 26.7.3's (tests/harness/idp.py `ssf`; the real one in
tests/idp/test_keycloak_signals.py): kcauth sets the client's stream up for push to `push_url`;
a pushed SET is answered 202 once recorded, and every guard of the issuer refuses what it
revokes; a forged, replayed, stale, wrongly signed, mis-addressed or unknown SET gets 400 with its
RFC 8935 error code and revokes nothing; one that cannot be recorded yet gets 503 (Keycloak
retries it)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from kong_plugin_kcauth.idp.ssf import PUSH
from kong_plugin_kcauth.tokens.secevent import REVOKING, SESSION_REVOKED, VERIFICATION
from tests.conftest import bearer, guard_config, receiver_config, started_idp
from tests.harness.idp import LocalIdP, Minter, SigningKey, sign_payload
from tests.harness.kong import Kong, PluginEntity, Response
from tests.harness.pushes import RECEIVER_PATH

PUSH_URL = "https://gateway.example/kcauth/revocations"
CLIENT = "kcauth-ssf"
USER = "4f6c3c1e-0b0e-4d0c-9a57-2b1c3c7d9e01"  # Minter's sub


def push_receiver(idp: LocalIdP, **extra: Any) -> dict[str, Any]:
    return receiver_config(idp, ssf={"client_id": CLIENT, "client_secret": "kcauth-ssf-secret", "delivery": "push",
                                     "push_url": PUSH_URL, "poll_interval": 1}, **extra)


@pytest.fixture
def transmitter(idp: LocalIdP) -> LocalIdP:
    idp.ssf = {}
    return idp


def security_event(idp: LocalIdP, session: str, *, event: str = SESSION_REVOKED, key: SigningKey | None = None,
                   typ: str = "secevent+jwt", payload: dict[str, Any] | None = None, **claims: Any) -> str:
    """A SET as Keycloak's transmitter signs it, about one session of the Minter's user."""
    assert idp.ssf is not None and idp.ssf.get("stream"), "the stream exists"
    key = key or idp.primary  # type: ignore[attr-defined]
    now = int(time.time())
    body = {"jti": str(uuid.uuid4()), "iss": idp.issuer, "iat": now, "aud": idp.ssf["stream"]["aud"],
            "txn": str(uuid.uuid4()),
            "events": {event: {"event_timestamp": now, "initiating_entity": "user"} if payload is None else payload},
            "sub_id": {"format": "complex", "user": {"format": "iss_sub", "iss": idp.issuer, "sub": USER},
                       "session": {"format": "opaque", "id": session}}, **claims}
    return sign_payload(json.dumps(body).encode(), key, {"typ": typ})  # any claim, as a buggy transmitter's


def post_set(kong: Kong, entity: PluginEntity, token: str | bytes,
             content_type: str = "application/secevent+jwt") -> Response:
    return kong.request(entity, [("Content-Type", content_type)], method="POST", path=RECEIVER_PATH,
                        body=token.encode() if isinstance(token, str) else token)


def stream_ready(kong: Kong, receiver: PluginEntity, idp: LocalIdP, seconds: float = 5) -> None:
    """The receiver's instance started (a first push) and the stream set up for push."""
    kong.request(receiver, method="GET", path=RECEIVER_PATH)  # 405, and the instance runs
    deadline = time.monotonic() + seconds
    while not (idp.ssf and (idp.ssf.get("stream") or {}).get("delivery", {}).get("method") == PUSH):
        assert time.monotonic() < deadline, f"no push stream after {seconds} s: {idp.ssf_requests}"
        time.sleep(0.05)


def accepted(kong: Kong, receiver: PluginEntity, token: str, seconds: float = 5) -> Response:
    """Post until answered other than 503 (Keycloak retries a 503), as the transmitter does."""
    deadline = time.monotonic() + seconds
    while (res := post_set(kong, receiver, token)).status == 503:
        assert time.monotonic() < deadline, "still 503"
        time.sleep(0.1)
    return res


@pytest.fixture
def guarded(kong: Kong, transmitter: LocalIdP, minter: Minter) -> Iterator[tuple[PluginEntity, PluginEntity]]:
    receiver = kong.plugin(push_receiver(transmitter))
    guard = kong.plugin(guard_config(transmitter))
    stream_ready(kong, receiver, transmitter)
    yield receiver, guard


def test_kcauth_sets_the_stream_up_for_push_and_a_pushed_set_revokes_on_every_guard(
        kong: Kong, transmitter: LocalIdP, minter: Minter, guarded: tuple[PluginEntity, PluginEntity]) -> None:
    receiver, guard = guarded
    created = [body for method, body in transmitter.ssf_requests if method == "POST"]
    assert created == [{"delivery": {"method": PUSH, "endpoint_url": PUSH_URL}, "events_requested": list(REVOKING),
                        "description": "kcauth revocations"}]
    second_guard = kong.plugin(guard_config(transmitter, required_roles=["realm:user"]))
    victim, bystander = minter.token(sid="revoked-session"), minter.token(sid="other-session")
    for entity in (guard, second_guard):
        assert kong.request(entity, bearer(victim)).status == 200
    res = accepted(kong, receiver, security_event(transmitter, "revoked-session"))
    assert (res.status, res.body) == (202, None)
    for entity in (guard, second_guard):
        assert kong.request(entity, bearer(victim)).status == 401
        assert kong.request(entity, bearer(bystander)).status == 200


def other_key() -> SigningKey:
    return SigningKey("RS256")


# (what is wrong, how the SET is made, the RFC 8935 error code)
REFUSED: list[tuple[str, Any, str]] = [
    ("signed by another key", lambda idp, sid: security_event(idp, sid, key=other_key()), "invalid_key"),
    ("another key under the realm's kid", lambda idp, sid: jwt.encode(
        json.loads(jwt.api_jws.PyJWS().decode_complete(security_event(idp, sid), options={
            "verify_signature": False})["payload"]), other_key().private, algorithm="RS256",
        headers={"typ": "secevent+jwt", "kid": idp.primary.kid}), "invalid_key"),
    ("an access token's typ", lambda idp, sid: security_event(idp, sid, typ="JWT"), "invalid_request"),
    ("stale", lambda idp, sid: security_event(idp, sid, iat=int(time.time()) - 3600 - 120), "invalid_request"),
    ("issued in the future", lambda idp, sid: security_event(idp, sid, iat=int(time.time()) + 600), "invalid_request"),
    ("another stream's audience", lambda idp, sid: security_event(idp, sid, aud=f"{CLIENT}/another-stream"),
     "invalid_audience"),
    ("an unknown event type", lambda idp, sid: security_event(
        idp, sid, event="https://schemas.openid.net/secevent/risc/event-type/account-disabled"), "invalid_request"),
    ("two events", lambda idp, sid: security_event(idp, sid, events={SESSION_REVOKED: {}, VERIFICATION: {}}),
     "invalid_request"),
    ("another issuer", lambda idp, sid: security_event(idp, sid, iss=idp.issuer + "-other"), "invalid_issuer"),
    ("an issuer that is not a string", lambda idp, sid: security_event(idp, sid, iss={"a": 1}), "invalid_issuer"),
    ("no jti", lambda idp, sid: security_event(idp, sid, jti=""), "invalid_request"),
    ("not a JWS", lambda idp, sid: "not-a-token", "invalid_request"),
    ("alg none", lambda idp, sid: jwt.encode({"iss": idp.issuer}, None, algorithm="none",
                                             headers={"typ": "secevent+jwt"}), "invalid_key"),
    ("bytes that are not UTF-8", lambda idp, sid: b"\xff\xfe" * 40, "invalid_request"),
]


@pytest.mark.parametrize(("wrong", "make", "code"), REFUSED, ids=[case[0] for case in REFUSED])
def test_a_refused_set_gets_400_with_its_code_and_revokes_nothing(
        kong: Kong, transmitter: LocalIdP, minter: Minter, guarded: tuple[PluginEntity, PluginEntity],
        wrong: str, make: Any, code: str) -> None:
    receiver, guard = guarded
    token = minter.token(sid="targeted")
    res = post_set(kong, receiver, make(transmitter, "targeted"))
    assert res.status == 400, (wrong, res.status, res.body)
    assert res.body["err"] == code and isinstance(res.body["description"], str), res.body
    assert "Traceback" not in json.dumps(res.body)
    assert kong.request(guard, bearer(token)).status == 200, "nothing revoked"


def test_a_set_is_taken_once(kong: Kong, transmitter: LocalIdP, guarded: tuple[PluginEntity, PluginEntity]) -> None:
    receiver, _ = guarded
    token = security_event(transmitter, "replayed-session")
    assert accepted(kong, receiver, token).status == 202
    res = post_set(kong, receiver, token)
    assert (res.status, res.body["err"]) == (400, "invalid_request"), res.body
    verification = security_event(transmitter, "", event=VERIFICATION, payload={"state": "abc"})
    assert post_set(kong, receiver, verification).status == 202
    assert " verified" in kong.server.log()


def test_a_logout_token_still_goes_to_the_back_channel_receiver(
        kong: Kong, transmitter: LocalIdP, guarded: tuple[PluginEntity, PluginEntity]) -> None:
    """Only `application/secevent+jwt` is a SET: other bodies keep their meaning."""
    receiver, _ = guarded
    res = post_set(kong, receiver, security_event(transmitter, "s"), content_type="application/x-www-form-urlencoded")
    assert res.status == 400 and res.body.get("error") == "invalid_request"


def test_a_pushed_set_waits_for_the_stream_and_the_keys(kong: Kong, transmitter: LocalIdP) -> None:
    """While the transmitter cannot be reached the stream is unknown: 503 with Retry-After (Keycloak
    retries), never 400, then 202 once it is back."""
    transmitter.fail_with = 503
    receiver = kong.plugin(push_receiver(transmitter, jwks_min_refresh_interval=1))
    res = kong.request(receiver, method="GET", path=RECEIVER_PATH)
    assert res.status == 405
    # No stream yet: a SET shaped for the one the transmitter will make.
    transmitter.ssf = {"stream": {"stream_id": "s-1", "aud": f"{CLIENT}/s-1", "events_delivered": list(REVOKING),
                                  "delivery": {"method": "urn:ietf:rfc:8936"}}}
    token = security_event(transmitter, "waiting")
    res = post_set(kong, receiver, token)
    assert res.status == 503 and "Retry-After" in res.headers, res.body
    transmitter.fail_with = None
    # The stream is read again within the poll interval; the key set when its downloads are
    # allowed again (`jwks_min_refresh_interval`), as for the guards.
    assert accepted(kong, receiver, token, seconds=10).status == 202
    assert ("PATCH", {"stream_id": "s-1", "delivery": {"method": PUSH, "endpoint_url": PUSH_URL}}) \
        in transmitter.ssf_requests, "the client's poll stream switched to push"


def test_each_issuers_entry_has_its_own_stream(kong: Kong, transmitter: LocalIdP, minter: Minter) -> None:
    """An `issuers` entry with its own client gets its own stream, pushed to the same route; a
    realm without a pushed stream is refused."""
    second = started_idp()
    try:
        second.ssf = {}
        config = push_receiver(transmitter, issuers=[{"issuer": second.issuer, "ssf": {
            "client_id": CLIENT, "client_secret": "another-secret"}}])
        config["ssf"] = {**config["ssf"], "client_id": None, "client_secret": None}
        receiver = kong.plugin({k: v for k, v in config.items()})
        stream_ready(kong, receiver, second)
        assert not transmitter.ssf, "the plugin-level realm has no client: no stream"
        guard = kong.plugin(guard_config(second))
        token = Minter(second.issuer, second.primary).token(sid="entry-session")  # type: ignore[attr-defined]
        assert kong.request(guard, bearer(token)).status == 200
        assert accepted(kong, receiver, security_event(second, "entry-session")).status == 202
        assert kong.request(guard, bearer(token)).status == 401
        transmitter.ssf = {"stream": {"stream_id": "x", "aud": f"{CLIENT}/x"}}
        res = post_set(kong, receiver, security_event(transmitter, "s"))
        assert (res.status, res.body["err"]) == (400, "invalid_issuer")
    finally:
        second.stop()
