"""Revocation without introspection: the receiver route and its enforcement on every guard,
against the local IdP (forged pushes need a key we control). Keycloak's own pushes are in
tests/revocation/test_keycloak_revocation.py."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from tests.conftest import bearer, guard_config, own_gateway, receiver_config, round_trips
from tests.harness.idp import DROP, LocalIdP, Minter, SigningKey, jwt_part, sign_payload
from tests.harness.kong import Kong
from tests.harness.pushes import RECEIVER_PATH, logout_token, post_logout, push_not_before
from tests.services.redis import RedisServer


def test_a_session_logout_revokes_that_session_on_every_guard(each_mode_kong: Kong, idp: LocalIdP,
                                                              minter: Minter) -> None:
    kong = each_mode_kong
    plain, admin = kong.plugin(guard_config(idp)), kong.plugin(guard_config(idp, required_roles=["realm:user"]))
    mine, other = minter.token(sid="session-1"), minter.token(sid="session-2")
    for entity in (plain, admin):
        assert kong.request(entity, bearer(mine)).status == 200  # now cached
    res = post_logout(kong, kong.plugin(receiver_config(idp)), logout_token(idp, sid="session-1"))
    assert res.status == 200 and res.body == {"message": "recorded"} and not res.proxied
    assert round_trips(res) == ["kong.request.get_method", "kong.request.get_path", "kong.request.get_header",
                             "kong.request.get_raw_body", "kong.response.exit"]
    for entity in (plain, admin):
        refused = kong.request(entity, bearer(mine))
        assert refused.status == 401
        assert 'error_description="The access token was revoked"' in refused.headers["WWW-Authenticate"]
        assert kong.request(entity, bearer(other)).status == 200
    assert idp.introspection_requests == 0


def test_a_subject_logout_revokes_tokens_issued_until_then(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    now = int(time.time())
    before = minter.token(sub="user-9", sid=DROP, iat=now - 5)
    sink = kong.plugin(receiver_config(idp))
    assert post_logout(kong, sink, logout_token(idp, sid=DROP, sub="user-9", iat=now)).status == 200
    assert kong.request(entity, bearer(before)).status == 401
    after = minter.token(sub="user-9", sid=DROP, iat=now + 1)
    assert kong.request(entity, bearer(after)).status == 200, "a later login is not revoked"
    assert kong.request(entity, bearer(minter.token(sub="user-8"))).status == 200


@pytest.mark.parametrize(("forgery", "reason"), [
    ("wrong key", "invalid signature"),
    ("wrong issuer", "wrong issuer"),
    ("wrong audience", "wrong audience"),
    ("no event", "no back-channel logout event"),
    ("nonce", "a logout token must not carry a nonce"),
    ("access token", "not a logout token"),
    ("expired", "expired"),
    ("future iat", "missing or future iat"),
    ("no sid nor sub", "neither sid nor sub"),
    ("alg none", "signature algorithm not accepted"),
    ("replay", "replayed logout token"),
    ("no token", "the request must carry one logout_token"),
    ("a day old, no exp", "stale logout token"),
    ("a year old, no exp", "stale logout token"),
    ("huge iat", "missing or future iat"),
    ("NaN exp", "malformed token"),
])
def test_forged_logout_tokens_are_refused_and_revoke_nothing(forgery: str, reason: str, kong: Kong, idp: LocalIdP,
                                                             minter: Minter) -> None:
    entity, sink = kong.plugin(guard_config(idp)), kong.plugin(receiver_config(idp))
    token = minter.token(sid="session-1")
    now = int(time.time())
    forged = {
        "wrong key": lambda: logout_token(idp, key=SigningKey("RS256", kid=idp.primary.kid)),  # type: ignore[attr-defined]
        "wrong issuer": lambda: logout_token(idp, iss=idp.issuer + "x"),
        "wrong audience": lambda: logout_token(idp, aud="other-app"),
        "no event": lambda: logout_token(idp, events={}),
        "nonce": lambda: logout_token(idp, nonce="n-1"),
        "access token": lambda: minter.token(sid="session-1"),
        "expired": lambda: logout_token(idp, exp=now - 60),
        "future iat": lambda: logout_token(idp, iat=now + 600),
        "no sid nor sub": lambda: logout_token(idp, sid=DROP, sub=DROP),
        "alg none": lambda: logout_token(idp).rsplit(".", 2)[0] + ".eyJ9.",
        "replay": None,
        "no token": None,
        "a day old, no exp": lambda: logout_token(idp, iat=now - 86400, exp=DROP),
        "a year old, no exp": lambda: logout_token(idp, iat=now - 365 * 86400, exp=DROP),
        "huge iat": lambda: logout_token(idp, iat=10 ** 400),
        "NaN exp": lambda: sign_payload(json.dumps({**jwt_part(logout_token(idp), 1), "exp": float("nan")}).encode(),
                                        idp.primary, {"typ": "logout+jwt"}),  # type: ignore[attr-defined]
    }[forgery]
    if forgery == "replay":
        first = logout_token(idp, sid="session-other")
        assert post_logout(kong, sink, first).status == 200
        res = post_logout(kong, sink, first)
    elif forgery == "no token":
        res = kong.request(sink, [], method="POST", path=RECEIVER_PATH, body=b"token=abc")
    elif forgery == "alg none":
        from tests.harness.idp import forge
        res = post_logout(kong, sink, forge({"alg": "none", "typ": "logout+jwt"},
                                            {"iss": idp.issuer, "aud": "test-cli", "sid": "session-1"}))
    else:
        res = post_logout(kong, sink, forged())
    assert res.status == 400, res.body
    assert res.body == {"error": "invalid_request", "error_description": reason}
    assert kong.request(entity, bearer(token)).status == 200, "nothing was revoked"


@pytest.mark.parametrize("body", [
    "&".join(f"f{i}=x" for i in range(50)).encode(), b"logout_token=a&logout_token=b", b"\xff\xfe\x00",
    b"logout_token=" + b"A" * 70000, b"logout_token=%ZZ", b"=&&==", b"logout_token=a.b.c",
    b'{"logout_token": "x"}',
], ids=["50 fields", "two tokens", "binary", "huge", "bad escape", "empty pairs", "three segments", "json"])
def test_any_body_shape_gets_400(kong: Kong, idp: LocalIdP, body: bytes) -> None:
    sink = kong.plugin(receiver_config(idp))
    for path in (RECEIVER_PATH, RECEIVER_PATH + "/k_push_not_before"):
        res = kong.request(sink, [("Content-Type", "application/x-www-form-urlencoded")], method="POST",
                           path=path, body=body)
        assert res.status == 400 and res.errors == [], (res.status, res.body)
        assert set(res.body) == {"error", "error_description"}


def test_a_stale_not_before_push_is_refused(kong: Kong, idp: LocalIdP) -> None:
    key = idp.primary  # type: ignore[attr-defined]
    now = int(time.time())
    action = {"id": "a-1", "expiration": now + 86400, "resource": "test-cli", "action": "PUSH_NOT_BEFORE",
              "notBefore": now}
    stale = jwt.encode(action, key.private, algorithm=key.alg, headers={"kid": key.kid})
    res = kong.request(kong.plugin(receiver_config(idp)), [], method="POST",
                       path=RECEIVER_PATH + "/k_push_not_before", body=stale.encode())
    assert res.status == 400 and res.body["error_description"] == "stale not-before push"


def test_receiver_refuses_other_methods(kong: Kong, idp: LocalIdP) -> None:
    res = kong.request(kong.plugin(receiver_config(idp)), [], method="GET", path=RECEIVER_PATH)
    assert res.status == 405 and res.headers["Allow"] == "POST"


def test_receiver_can_pass_the_logout_on(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    sink = kong.plugin(receiver_config(idp, pass_logout_upstream=True))
    res = post_logout(kong, sink, logout_token(idp, sid="s-pass"))
    assert res.status == 200 and res.proxied
    assert kong.request(kong.plugin(guard_config(idp)), bearer(minter.token(sid="s-pass"))).status == 401


def test_operator_not_before(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    now = int(time.time())
    entity = kong.plugin(guard_config(idp, not_before=now))
    assert kong.request(entity, bearer(minter.token(iat=now - 10))).status == 401
    assert kong.request(entity, bearer(minter.token(iat=now))).status == 200


def test_pushed_not_before_applies_to_that_clients_tokens(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity, sink = kong.plugin(guard_config(idp)), kong.plugin(receiver_config(idp))
    now = int(time.time())
    old_cli, old_web = minter.token(iat=now - 10), minter.token(iat=now - 10, azp="web-app")
    res = kong.request(sink, [], method="POST", path=RECEIVER_PATH + "/k_push_not_before",
                       body=push_not_before(idp, "test-cli", now).encode())
    assert res.status == 200, res.body
    assert kong.request(entity, bearer(old_cli)).status == 401
    assert kong.request(entity, bearer(old_web)).status == 200, "another client's tokens are untouched"
    assert kong.request(entity, bearer(minter.token(iat=now + 1))).status == 200
    forged = push_not_before(idp, "test-cli", now + 100, key=SigningKey("RS256", kid=idp.primary.kid))  # type: ignore[attr-defined]
    res = kong.request(sink, [], method="POST", path=RECEIVER_PATH + "/k_push_not_before", body=forged.encode())
    assert res.status == 400


def test_two_processes_share_revocations_through_redis(each_mode_kong: Kong, server_mode: str, idp: LocalIdP,
                                                      minter: Minter, redis_server: RedisServer) -> None:
    kong = each_mode_kong
    redis = redis_server.plugin_config()
    with own_gateway(server_mode) as other:
        try:
            token, survivor = minter.token(sid="shared-1"), minter.token(sid="shared-2")
            there = other.plugin(guard_config(idp, redis=redis))
            here = kong.plugin(guard_config(idp, redis=redis))
            assert other.request(there, bearer(token)).status == 200
            assert kong.request(here, bearer(token)).status == 200
            assert post_logout(kong, kong.plugin(receiver_config(idp, redis=redis)),
                               logout_token(idp, sid="shared-1")).status == 200
            deadline = time.monotonic() + 1.0
            while other.request(there, bearer(token)).status == 200:
                assert time.monotonic() < deadline, "the other process did not learn the revocation within 1 s"
                time.sleep(0.02)
            assert kong.request(here, bearer(token)).status == 401
            assert other.request(there, bearer(survivor)).status == 200

            # A process started later catches up from Redis.
            late = other.plugin(guard_config(idp, redis=redis, leeway=11))
            assert other.request(late, bearer(token)).status == 401

            # Redis down: the receiver answers 503 (Keycloak records the failure) but still applies
            # the revocation in its own process; every guard keeps what it knew.
            redis_server.kill()
            res = post_logout(kong, kong.plugin(receiver_config(idp, redis=redis)),
                              logout_token(idp, sid="shared-2"))
            assert res.status == 503 and res.headers["Retry-After"] == "5"
            assert kong.request(here, bearer(token)).status == 401
            assert kong.request(here, bearer(survivor)).status == 401, "applied where it was received"
            assert other.request(there, bearer(token)).status == 401
            assert other.request(there, bearer(survivor)).status == 200, "not shared: Redis was down"
        finally:
            if not redis_server.running:
                redis_server.restart()
