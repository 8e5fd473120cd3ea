"""What a realm-signed token's JSON can hold: every time claim is a finite number within a sane
range, the JSON is strict (no NaN/Infinity), and no arithmetic on a claim can raise (500).
Through the real plugin server, tokens signed with the realm's key."""

from __future__ import annotations

import time

import pytest

from tests.conftest import bearer, guard_config
from tests.harness.idp import LocalIdP, Minter, SigningKey, sign_payload
from tests.harness.kong import Kong

NOW = int(time.time())
HUGE = 10 ** 400


@pytest.mark.parametrize("claims", [
    {"exp": float("nan")}, {"exp": float("inf")}, {"exp": -float("inf")}, {"exp": HUGE}, {"exp": -HUGE},
    {"iat": float("nan")}, {"iat": HUGE}, {"iat": -HUGE}, {"nbf": float("nan")}, {"nbf": -HUGE},
    {"exp": -1}, {"exp": 253402300800}, {"iat": "now"}, {"exp": [4102444800]},  # fixed: the id is the value
], ids=lambda c: "-".join(f"{k}={str(v)[:12]}" for k, v in c.items()))
def test_broken_times_are_401_malformed(kong: Kong, idp: LocalIdP, minter: Minter, claims: dict[str, object]) -> None:
    for config in ({}, {"max_token_age": 600}):
        entity = kong.plugin(guard_config(idp, **config))
        res = kong.request(entity, bearer(minter.raw_token(**claims)))
        assert res.status == 401 and not res.proxied and res.errors == [], (res.status, res.errors)
        assert 'error_description="The access token is malformed"' in res.headers["WWW-Authenticate"]


@pytest.mark.parametrize("payload", [
    b'{"exp": 1e999, "iss": "x"}', b'{"exp": NaN}', b'{"exp": Infinity}', b'{"a": "\\ud800"}',
    b'\xef\xbb\xbf{"exp": 1}', b'\xff\xfe{\x00}\x00', b'[1]',
])
def test_json_that_is_not_strict_is_malformed(kong: Kong, idp: LocalIdP, payload: bytes) -> None:
    entity = kong.plugin(guard_config(idp))
    res = kong.request(entity, bearer(sign_payload(payload, idp.primary)))  # type: ignore[attr-defined]
    assert res.status == 401 and res.errors == []
    assert 'error_description="The access token is malformed"' in res.headers["WWW-Authenticate"]


def test_numbers_that_are_fine_are_fine(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    now = int(time.time())
    token = minter.raw_token(exp=now + 60.5, iat=float(now), nbf=now - 1, big_number=HUGE, ratio=1.5e300)
    assert kong.request(entity, bearer(token)).status == 200
    other_key = minter.raw_token(key=SigningKey("RS256"), exp=HUGE)
    assert kong.request(entity, bearer(other_key)).status == 401
