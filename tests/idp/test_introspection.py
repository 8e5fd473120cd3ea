"""Sensitive routes: introspection of every token a local check accepted, and what happens when
the identity provider's answer cannot be had. Against a local introspection endpoint that can be
made to misbehave, except the section "failure policy, against the real Keycloak". Introspection
against the real Keycloak otherwise (its revocations, its lightweight tokens, answers shared
through Redis, signed-JWT client authentication) is in tests/idp/test_keycloak_introspection.py.

Sections:
1. answers and their reuse;
2. failure policy (503 by default, the local verdict when chosen; the breaker; a slow IdP; an
   answer that cannot be trusted), against the local IdP, in both server modes where it matters;
3. failure policy, against the real Keycloak (a proxy in front of it fails on demand, Keycloak
   down included);
4. client authentication and configs;
5. the answer rules, without a server.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kong_plugin_kcauth import errors
from kong_plugin_kcauth.idp.introspection import judge
from kong_plugin_kcauth.tokens.access import Rules
from tests.conftest import CLIENT_SECRET, at_once, bearer, guard_config, sensitive_config
from tests.harness.idp import DROP, LocalIdP, Minter
from tests.harness.kong import Kong
from tests.harness.proxy import CountingProxy
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import INTROSPECT, Routes, access_token

# --- 1. answers and their reuse ---------------------------------------------------------------

def test_active_token_passes_and_the_answer_is_reused(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(sensitive_config(idp))
    token = minter.token()
    for _ in range(5):
        res = kong.request(entity, bearer(token))
        assert res.status == 200 and res.upstream("X-Auth-Username") == ["alice"]
    assert idp.introspection_requests == 1
    form = idp.introspection_forms[0]
    assert form == {"token": token, "token_type_hint": "access_token"}


def test_revocation_is_seen_on_sensitive_routes_only(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    plain = kong.plugin(guard_config(idp))
    every_time = kong.plugin(sensitive_config(idp, introspection_cache_ttl=0))
    cached = kong.plugin(sensitive_config(idp, introspection_cache_ttl=2))
    token = minter.token()
    for entity in (plain, every_time, cached):
        assert kong.request(entity, bearer(token)).status == 200
    idp.revoked.add(token)
    res = kong.request(every_time, bearer(token))
    assert res.status == 401
    assert 'error_description="The access token is no longer active"' in res.headers["WWW-Authenticate"]
    assert kong.request(cached, bearer(token)).status == 200, "within introspection_cache_ttl"
    assert kong.request(plain, bearer(token)).status == 200, "the revocation gap of local validation"
    time.sleep(2.1)
    assert kong.request(cached, bearer(token)).status == 401, "once the cached answer expired"
    assert kong.request(plain, bearer(token)).status == 200


def test_replayed_revoked_token_is_answered_from_the_negative_cache(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(sensitive_config(idp, introspection_negative_ttl=60))
    token = minter.token()
    idp.revoked.add(token)
    for _ in range(1000):
        assert kong.request(entity, bearer(token)).status == 401
    assert idp.introspection_requests == 1


def test_concurrent_requests_share_one_call(each_mode_kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(sensitive_config(idp))
    token = minter.token()
    idp.delay = 0.3
    assert at_once(50, lambda: kong.request(entity, bearer(token)).status) == [200] * 50
    assert idp.introspection_requests == 1


def test_locally_invalid_tokens_never_reach_keycloak(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(sensitive_config(idp))
    for bad in ("garbage", minter.token(exp=int(time.time()) - 60), minter.token(aud=["other"]),
                minter.token(typ="ID")):
        assert kong.request(entity, bearer(bad)).status == 401
    assert idp.introspection_requests == 0


def test_opaque_tokens_only_through_introspection(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    idp.opaque["opaque-0123456789"] = minter.claims()
    allowed = kong.plugin(sensitive_config(idp, accept_opaque_tokens=True))
    res = kong.request(allowed, bearer("opaque-0123456789"))
    assert res.status == 200 and res.upstream("X-Auth-Username") == ["alice"]
    assert kong.request(allowed, bearer("opaque-unknown")).status == 401
    strict = kong.plugin(sensitive_config(idp))
    assert kong.request(strict, bearer("opaque-0123456789")).status == 401


def test_lightweight_tokens_take_claims_from_introspection(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    full = minter.claims()
    light = minter.token(aud=DROP, sub=DROP, realm_access=DROP, resource_access=DROP, preferred_username=DROP)
    idp.opaque.clear()
    entity_plain = kong.plugin(guard_config(idp))
    assert kong.request(entity_plain, bearer(light)).status == 401, "no aud: refused on plain routes"

    original = idp.introspect
    idp.introspect = lambda token: {**original(token), **{k: full[k] for k in  # type: ignore[method-assign]
                                    ("aud", "sub", "realm_access", "resource_access", "preferred_username")}}
    entity = kong.plugin(sensitive_config(idp, required_roles=["realm:user"]))
    res = kong.request(entity, bearer(light))
    assert res.status == 200, res.headers
    assert res.upstream("X-Auth-Subject") == [full["sub"]] and res.upstream("X-Auth-Username") == ["alice"]
    assert "realm:user" in res.ctx_shared["authenticated_groups"]
    wrong = minter.token(aud=["billing-api"])
    assert kong.request(entity, bearer(wrong)).status == 401, "a wrong aud is still refused locally"


# --- 2. failure policy, against the local IdP -------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 404])
def test_failures_are_503_by_default_and_local_when_chosen(each_mode_kong: Kong, idp: LocalIdP, minter: Minter,
                                                           status: int) -> None:
    kong = each_mode_kong
    deny = kong.plugin(sensitive_config(idp, introspection_breaker_seconds=0))
    local = kong.plugin(sensitive_config(idp, introspection_failure="local", introspection_breaker_seconds=0))
    token = minter.token()
    assert kong.request(deny, bearer(minter.token())).status == 200  # keys and endpoint are known
    idp.fail_with = status
    res = kong.request(deny, bearer(token))
    assert res.status == 503 and res.headers["Retry-After"] == "5" and not res.proxied
    assert kong.request(local, bearer(token)).status == 200
    assert kong.request(local, bearer("garbage")).status == 401, "fallback is to the local verdict"
    idp.fail_with = None
    idp.revoked.add(token)
    assert kong.request(local, bearer(token)).status == 401, "the fallback was not remembered"


def test_slow_keycloak_times_out_to_503(each_mode_kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(sensitive_config(idp, http_timeout=0.3))
    assert kong.request(entity, bearer(minter.token())).status == 200
    idp.delay = 1.0
    started = time.monotonic()
    assert kong.request(entity, bearer(minter.token())).status == 503
    assert time.monotonic() - started < 2.5


def test_breaker_fails_fast_after_three_failures(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    # The core's logic, the same under every server mode: run under the default one.
    entity = kong.plugin(sensitive_config(idp, introspection_breaker_seconds=2))
    assert kong.request(entity, bearer(minter.token())).status == 200
    idp.fail_with = 500
    calls = idp.introspection_requests
    for _ in range(3):
        assert kong.request(entity, bearer(minter.token())).status == 503
    assert idp.introspection_requests == calls + 3
    for _ in range(20):
        assert kong.request(entity, bearer(minter.token())).status == 503
    assert idp.introspection_requests == calls + 3, "the breaker is open: Keycloak is left alone"
    idp.fail_with = None
    time.sleep(2.1)
    assert kong.request(entity, bearer(minter.token())).status == 200, "and closes again"


@pytest.mark.parametrize("override", [{"sub": "someone-else"}, {"preferred_username": "mallory", "sub": "m"},
                                      {"sid": "another-session"}, {"jti": "another-token"}, {"azp": "other-client"},
                                      {"client_id": "other-client"}, {"iat": 12345}])
def test_an_answer_about_another_token_is_a_failure_never_remembered(kong: Kong, idp: LocalIdP, minter: Minter,
                                                                     override: dict[str, Any]) -> None:
    entity = kong.plugin(sensitive_config(idp, introspection_breaker_seconds=0))
    token = minter.token()
    idp.answer_override = override
    logged = kong.server.log().count("introspection answered about another token")
    for _ in range(3):
        res = kong.request(entity, bearer(token))
        assert res.status == 503 and not res.proxied, "an IdP answering about someone else is failing"
    assert idp.introspection_requests == 3, "the bad answer was not remembered"
    assert kong.server.log().count("introspection answered about another token") - logged == 1, \
        "logged once, not per request"
    idp.answer_override = {}
    res = kong.request(entity, bearer(token))
    assert res.status == 200 and res.upstream("X-Auth-Subject") == [minter.claims()["sub"]]


@pytest.mark.parametrize("answer", [
    b'{"active": true, "exp": NaN}', b'{"active": true, "exp": Infinity}', b'{"active": true, "exp": 1e999}',
    b'{"active": true, "exp": 1' + b"0" * 400 + b'}', b'{"active": true, "exp": -1' + b"0" * 400 + b'}',
    b'{"active": true, "iat": "yesterday", "exp": 99999999999}', b'{"active": true, "sub": "\\ud800"}',
    b'{"active": true}', b'[true]', b'\xff\xfe',
])
def test_broken_numbers_and_strings_in_an_answer_are_503(kong: Kong, idp: LocalIdP, minter: Minter,
                                                         answer: bytes) -> None:
    entity = kong.plugin(sensitive_config(idp, introspection_breaker_seconds=0))
    idp.raw_answer = answer
    res = kong.request(entity, bearer(minter.token()))
    assert res.status == 503 and res.errors == [], (res.status, res.errors)


# --- 3. failure policy, against the real Keycloak ---------------------------------------------

@pytest.mark.keycloak
@pytest.mark.parametrize("mode", ["status500", "garbage", "html", "hang", "refuse", "reset"])
def test_keycloak_failures_are_503_or_the_chosen_fallback(mode: str, kong: Kong, kc_admin: KeycloakAdmin,
                                                          routes: Routes, keycloak_proxy: CountingProxy) -> None:
    deny = routes.sensitive(http_timeout=1, introspection_breaker_seconds=0)
    fallback = routes.sensitive(http_timeout=1, introspection_breaker_seconds=0, introspection_failure="local")
    warm = access_token(kc_admin)
    assert kong.request(deny, bearer(warm)).status == 200  # keys held
    token = access_token(kc_admin)
    keycloak_proxy.mode = mode
    res = kong.request(deny, bearer(token))
    assert res.status == 503 and res.headers.get("Retry-After") == "5" and not res.proxied, mode
    assert kong.request(fallback, bearer(token)).status == 200, "fallback to the local verdict"
    keycloak_proxy.mode = "pass"
    assert kong.request(deny, bearer(token)).status == 200, "the plugin server is not wedged"
    assert res.errors == []


@pytest.mark.keycloak
def test_breaker_keeps_a_hanging_keycloak_off_the_request_path(kong: Kong, kc_admin: KeycloakAdmin,
                                                               routes: Routes, keycloak_proxy: CountingProxy) -> None:
    entity = routes.sensitive(http_timeout=0.5, introspection_breaker_seconds=30)
    assert kong.request(entity, bearer(access_token(kc_admin))).status == 200
    keycloak_proxy.mode = "hang"
    for _ in range(3):
        assert kong.request(entity, bearer(access_token(kc_admin))).status == 503
    calls = keycloak_proxy.count(INTROSPECT)
    tokens = [access_token(kc_admin) for _ in range(10)]
    for token in tokens:
        assert kong.request(entity, bearer(token)).status == 503
    # No call reaches the hanging Keycloak, so no request waits for its timeout.
    assert keycloak_proxy.count(INTROSPECT) == calls
    keycloak_proxy.mode = "pass"


# --- 4. client authentication and configs -----------------------------------------------------

def test_client_authentication_methods(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    post = kong.plugin(sensitive_config(idp, client_auth_method="client_secret_post"))
    kong.request(post, bearer(minter.token()))
    assert idp.introspection_forms[-1]["client_secret"] == CLIENT_SECRET

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    signed = kong.plugin(sensitive_config(idp, client_auth_method="private_key_jwt", client_secret=None,
                                   client_private_key=pem))
    kong.request(signed, bearer(minter.token()))
    form = idp.introspection_forms[-1]
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = jwt.decode(form["client_assertion"], key.public_key(), algorithms=["RS256"], audience=idp.issuer)
    assert claims["iss"] == claims["sub"] == "orders-api" and claims["exp"] - claims["iat"] == 60
    assert "client_secret" not in form


def test_secrets_never_reach_the_logs(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(sensitive_config(idp, introspection_breaker_seconds=0))
    idp.fail_with = 500
    token = minter.token()
    kong.request(entity, bearer(token))
    log = kong.server.log()
    assert "introspection failing" in log
    assert CLIENT_SECRET not in log and token not in log and token[-20:] not in log


@pytest.mark.parametrize(("change", "message"), [
    ({"client_id": None}, "config.client_id: required field missing"),
    ({"client_secret": None}, "at least one of 'client_secret', 'client_private_key'"),
    ({"client_auth_method": "private_key_jwt", "client_secret": None},
     "config.client_private_key: required field missing"),
    ({"client_auth_method": "private_key_jwt", "client_private_key": "not a key"}, "expected a PEM private key"),
    ({"introspect": False, "accept_opaque_tokens": True}, "accept_opaque_tokens needs introspect"),
])
def test_incomplete_introspection_configs_are_refused_by_kong(kong: Kong, idp: LocalIdP, change: dict[str, Any],
                                                              message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kong.plugin(sensitive_config(idp, **change))


def test_a_private_key_kong_cannot_judge_leaves_introspection_unusable(kong: Kong, idp: LocalIdP,
                                                                       minter: Minter) -> None:
    """Shaped like a PEM (Kong's pattern), but not a key: only the plugin can tell, at start. The
    instance starts, introspection answers 503 without calling anyone, and Kong's error log names
    the field and the plugin."""
    not_a_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----"
    entity = kong.plugin(sensitive_config(idp, client_auth_method="private_key_jwt", client_secret=None,
                                          client_private_key=not_a_key))
    res = kong.request(entity, bearer(minter.token()))
    assert res.status == 503 and not res.proxied
    assert any(e.startswith("[err]") and "config.client_private_key: not an unencrypted PEM private key" in e
               and entity.id in e for e in kong.error_log), kong.error_log
    assert idp.introspection_requests == 0


# --- 5. the answer rules, without a server ----------------------------------------------------

RULES = Rules(issuer="https://kc/realms/r", audiences=frozenset({"api"}), verify_audience=True,
              authorized_parties=frozenset(), algorithms=frozenset({"RS256"}), leeway=0,
              max_token_age=None, max_token_size=8192)
NOW = 1_000_000.0
ACTIVE = {"active": True, "iss": "https://kc/realms/r", "aud": "api", "typ": "Bearer", "exp": NOW + 100}


def test_judge_active_answers_are_reused_until_ttl_or_exp() -> None:
    assert judge(ACTIVE, None, RULES, NOW, ttl=30, negative_ttl=10).deadline == NOW + 30
    assert judge(ACTIVE, None, RULES, NOW, ttl=300, negative_ttl=10).deadline == NOW + 100
    assert judge(ACTIVE, None, RULES, NOW, ttl=0, negative_ttl=10).deadline == NOW
    assert judge(ACTIVE, None, RULES, NOW, 30, 10).refusal is None


@pytest.mark.parametrize(("answer", "refusal"), [
    ({"active": False}, errors.TokenInactive),
    ({**ACTIVE, "iss": "https://kc/realms/other"}, errors.WrongIssuer),
    ({**ACTIVE, "aud": "billing"}, errors.WrongAudience),
    ({**ACTIVE, "typ": "Refresh"}, errors.NotAnAccessToken),
    ({**ACTIVE, "exp": NOW - 1}, errors.Expired),
])
def test_judge_refusals_use_the_negative_ttl(answer: dict[str, Any], refusal: type[errors.Refusal]) -> None:
    verdict = judge(answer, None, RULES, NOW, ttl=30, negative_ttl=10)
    assert verdict.refusal is refusal and verdict.deadline == NOW + 10


@pytest.mark.parametrize("active", ["true", 1, None])
def test_judge_refuses_answers_without_a_boolean_active(active: object) -> None:
    from kong_plugin_kcauth.idp.http import FetchError

    with pytest.raises(FetchError):
        judge({**ACTIVE, "active": active}, None, RULES, NOW, 30, 10)
