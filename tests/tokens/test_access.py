"""Token validation rules, without the plugin server: the access token's rules (tokens/access.py)
over the JWS layer, the signature checked as the guard does, with a real key set (idp/keys.py)
whose provider is a function."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kong_plugin_kcauth import errors
from kong_plugin_kcauth.idp.keys import KeySet, KeySource
from kong_plugin_kcauth.tokens import access, jws
from kong_plugin_kcauth.tokens.access import Rules, audiences_of, check_claims
from kong_plugin_kcauth.tokens.claims import Claims
from tests.harness.idp import DROP, Minter, SigningKey, forge

ISS = "https://sso.example.com/realms/acme"
RULES = Rules(issuer=ISS, audiences=frozenset({"orders-api"}), verify_audience=True,
              authorized_parties=frozenset(), algorithms=frozenset({"RS256", "ES256", "EdDSA"}),
              leeway=10, max_token_age=None, max_token_size=8192)
KEY = SigningKey("RS256")
MINTER = Minter(ISS, KEY)


class Keys(KeySet):
    """A key set whose provider serves `key` and counts the downloads; held, as after instance start."""

    def __init__(self, key: SigningKey) -> None:
        self.downloads = 0

        def fetch(url: str, timeout: float, **_: Any) -> dict[str, Any]:
            self.downloads += 1
            return {"keys": [key.jwk()]}

        super().__init__(KeySource(jwks_uri="https://sso.example.com/certs", discovery_url="", issuer=ISS,
                                   refresh_interval=300, min_refresh_interval=10, max_stale=3600, timeout=1), fetch)
        self.refresh(wait=True)


KEYS = Keys(KEY)


def validate(token: str, rules: Rules, keys: KeySet, now: float) -> Claims:
    """As the guard does: the JWS, the claim rules, then the signature (guard.Guard.evaluate)."""
    signed = access.parse(token, rules.max_token_size, rules.algorithms)
    keys.verify(signed, access.refusal(signed.claims, rules, now))
    return signed.claims


def claims(**kw: Any) -> dict[str, Any]:
    return MINTER.claims(**kw)


def test_valid_token_returns_its_claims() -> None:
    token = MINTER.token()
    assert validate(token, RULES, KEYS, time.time())["preferred_username"] == "alice"


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_other_asymmetric_algorithms_verify(alg: str) -> None:
    key = SigningKey(alg)
    token = Minter(ISS, key).token()
    assert validate(token, RULES, Keys(key), time.time())["iss"] == ISS


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "a b.c.d", "e30.e30.!!", "W10.e30.AA", "e30.W10.AA", ".e30.AA",
                                   "e30..AA"])
def test_malformed_compact_forms(token: str) -> None:
    with pytest.raises(errors.MalformedToken):
        jws.parse(token, 8192, frozenset({"RS256"}))


def test_claims_are_checked_before_any_key_download() -> None:
    keys = Keys(KEY)
    before = keys.downloads
    token = MINTER.token(iss="https://other/realms/acme", headers={"kid": "a-kid-not-held"})
    with pytest.raises(errors.InvalidToken):
        validate(token, RULES, keys, time.time())
    with pytest.raises(errors.WrongIssuer):  # signed by a held key: the reason is told
        validate(MINTER.token(iss="https://other/realms/acme"), RULES, keys, time.time())
    assert keys.downloads == before, "no key download for a token that fails its claims"


@pytest.mark.parametrize("overrides", [{"iss": "https://other/realms/acme"}, {"aud": ["guess"]},
                                       {"exp": 1}, {"typ": "ID"}])
def test_a_forger_is_not_told_which_claim_rule_failed(overrides: dict[str, Any]) -> None:
    """Claims come first (no key download), but the specific reason is only for tokens signed
    by a realm key: a forger cannot probe the accepted issuer, audiences or clients."""
    forged = MINTER.token(key=SigningKey("RS256"), headers={"kid": KEY.kid}, **overrides)
    with pytest.raises(errors.InvalidToken) as refused:
        validate(forged, RULES, KEYS, time.time())
    assert type(refused.value) is errors.InvalidToken
    unknown_kid = MINTER.token(key=SigningKey("RS256"), **overrides)
    with pytest.raises(errors.InvalidToken):
        validate(unknown_kid, RULES, KEYS, time.time())


def test_a_valid_signature_from_another_key_fails() -> None:
    token = MINTER.token(key=SigningKey("RS256"), headers={"kid": KEY.kid})
    with pytest.raises(errors.BadSignature):
        validate(token, RULES, KEYS, time.time())


def test_header_typ_must_be_an_access_token_type() -> None:
    for typ, ok in [("JWT", True), ("at+jwt", True), ("application/at+jwt", True), ("AT+JWT", True),
                    ("logout+jwt", False), ("JWE", False)]:
        token = forge({"alg": "RS256", "typ": typ, "kid": KEY.kid}, claims())
        if ok:
            with pytest.raises(errors.BadSignature):  # header accepted, forged signature refused
                validate(token, RULES, KEYS, time.time())
        else:
            with pytest.raises(errors.NotAnAccessToken):
                validate(token, RULES, KEYS, time.time())
    with pytest.raises(errors.MalformedToken):
        validate(forge({"alg": "RS256", "typ": 7, "kid": KEY.kid}, claims()), RULES, KEYS, time.time())


@pytest.mark.parametrize(("overrides", "refusal"), [
    ({"exp": DROP}, errors.MalformedToken),
    ({"exp": "tomorrow"}, errors.MalformedToken),
    ({"exp": True}, errors.MalformedToken),
    ({"iss": ISS + "/"}, errors.WrongIssuer),
    ({"iss": ISS.upper()}, errors.WrongIssuer),
    ({"iss": [ISS]}, errors.WrongIssuer),
    ({"typ": "ID"}, errors.NotAnAccessToken),
    ({"typ": DROP}, errors.NotAnAccessToken),
    ({"aud": ["orders"]}, errors.WrongAudience),
    ({"aud": [["orders-api"]]}, errors.WrongAudience),
    ({"aud": {"orders-api": 1}}, errors.WrongAudience),
])
def test_claim_refusals(overrides: dict[str, Any], refusal: type[errors.Refusal]) -> None:
    with pytest.raises(refusal):
        check_claims(claims(**overrides), RULES, time.time())


def test_time_rules_use_the_leeway_on_each_side() -> None:
    now = 1_000_000.0
    base = {"iat": now, "nbf": now}
    check_claims(claims(**base, exp=now - 10), RULES, now)
    with pytest.raises(errors.Expired):
        check_claims(claims(**base, exp=now - 11), RULES, now)
    check_claims(claims(exp=now + 60, iat=now, nbf=now + 10), RULES, now)
    with pytest.raises(errors.NotYetValid):
        check_claims(claims(exp=now + 60, iat=now, nbf=now + 11), RULES, now)
    with pytest.raises(errors.NotYetValid):
        check_claims(claims(exp=now + 60, iat=now + 11), RULES, now)


def test_max_token_age_needs_and_bounds_iat() -> None:
    now = 1_000_000.0
    rules = Rules(**{**RULES.__dict__, "max_token_age": 60})
    check_claims(claims(exp=now + 60, iat=now - 70), rules, now)
    with pytest.raises(errors.TooOld):
        check_claims(claims(exp=now + 60, iat=now - 71), rules, now)
    with pytest.raises(errors.MalformedToken):
        check_claims(claims(exp=now + 60, iat=DROP), rules, now)


def test_authorized_parties() -> None:
    rules = Rules(**{**RULES.__dict__, "authorized_parties": frozenset({"web"})})
    check_claims(claims(azp="web"), rules, time.time())
    for azp in ("test-cli", ["web"], None):
        with pytest.raises(errors.WrongAuthorizedParty):
            check_claims(claims(azp=azp), rules, time.time())


def test_audience_check_can_be_off() -> None:
    rules = Rules(**{**RULES.__dict__, "verify_audience": False, "audiences": frozenset()})
    check_claims(claims(aud=DROP), rules, time.time())


def test_audiences_of() -> None:
    assert audiences_of({"aud": "a"}) == {"a"}
    assert audiences_of({"aud": ["a", 1, None, "b"]}) == {"a", "b"}
    assert audiences_of({}) == frozenset()


def test_size_limit_comes_first() -> None:
    with pytest.raises(errors.TokenTooLarge):
        validate("x" * 8193, RULES, KEYS, time.time())
