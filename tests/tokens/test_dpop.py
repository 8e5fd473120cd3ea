"""DPoP-bound tokens (RFC 9449) through real plugin servers: Keycloak-shaped bound tokens (`typ`
DPoP, `cnf.jkt` plus Keycloak's own member) presented with fresh proofs pass; every proof defect
of section 4.3 gets the RFC's challenge; the route's `dpop` setting; nonces; single use across
two plugin server processes sharing Redis; introspection answers checked against the binding."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from kong_plugin_kcauth.tokens.dpop import token_hash
from tests.conftest import bearer, guard_config, own_gateway, sensitive_config
from tests.harness.dpop import BASE, PATH, URL, Client, bound_token, dpop_headers
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong
from tests.services.redis import RedisServer


@pytest.fixture
def client() -> Client:
    return Client()


def test_a_bound_token_with_fresh_proofs_passes(kong: Kong, idp: LocalIdP, minter: Minter, client: Client) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE))
    token = bound_token(minter, client)
    for _ in range(3):  # remembered after the first, the proof checked every time
        res = kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH)
        assert res.status == 200, res.headers
    assert "kong.request.get_method" in res.pdk_calls


def test_a_bound_token_as_bearer_is_refused(kong: Kong, idp: LocalIdP, minter: Minter, client: Client) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE))
    token = bound_token(minter, client)
    assert kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH).status == 200
    res = kong.request(entity, bearer(token), path=PATH)
    assert res.status == 401
    challenge = res.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="kong", error="invalid_token"') and ", DPoP " in challenge


def test_bearer_requests_cost_no_extra_round_trip(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    res = kong.request(kong.plugin(guard_config(idp)), bearer(minter.token()))
    assert res.status == 200
    assert not any(c.startswith(("kong.request.get_forwarded", "kong.request.get_method")) for c in res.pdk_calls)
    assert "DPoP" not in kong.request(kong.plugin(guard_config(idp)), bearer("x.y.z")).headers["WWW-Authenticate"]


PROOF_DEFECTS: dict[str, Any] = {
    "replayed": None,
    "another method": lambda c, t: c.proof(t, method="POST"),
    "another URL": lambda c, t: c.proof(t, url=BASE + "/orders/43"),
    "another host": lambda c, t: c.proof(t, url="https://api.example.org" + PATH),
    "query ignored, path not": lambda c, t: c.proof(t, url=URL + "/"),
    "another key": lambda c, t: Client().proof(t),
    "stale iat": lambda c, t: c.proof(t, iat=int(time.time()) - 600),
    "future iat": lambda c, t: c.proof(t, iat=int(time.time()) + 600),
    "wrong ath": lambda c, t: c.proof(t, ath=token_hash(t + "x")),
    "no ath": lambda c, t: c.proof(t, ath=None),
    "no jti": lambda c, t: c.proof(t, jti=None),
    "wrong typ": lambda c, t: c.proof(t, header={"typ": "jwt"}),
    "private key in jwk": lambda c, t: c.proof(t, header={"jwk": {**c.jwk, "d": "AAAA"}}),
    "symmetric jwk": lambda c, t: c.proof(t, header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
    "no jwk": lambda c, t: jwt.encode({"jti": "1", "htm": "GET", "htu": URL, "iat": int(time.time()),
                                       "ath": token_hash(t)}, c.key.private, algorithm="ES256",
                                      headers={"typ": "dpop+jwt"}),
    "bad signature": lambda c, t: c.proof(t)[:-6] + "AAAAAA",
    "alg none": lambda c, t: jwt.encode({"htm": "GET"}, None, algorithm="none",
                                        headers={"typ": "dpop+jwt", "jwk": c.jwk}),
    "not a JWT": lambda c, t: "garbage",
    "kty a list": lambda c, t: c.proof(t, header={"jwk": {**c.jwk, "kty": ["EC"]}}),
    "crv a number": lambda c, t: c.proof(t, header={"jwk": {**c.jwk, "crv": 256}}),
    "jwk a string": lambda c, t: c.proof(t, header={"jwk": "key"}),
    "RSA key for ES256": lambda c, t: c.proof(t, header={"jwk": Client("RS256").jwk}),
    "htu a list": lambda c, t: c.proof(t, htu=[URL]),
    "htu no URL": lambda c, t: c.proof(t, htu="//api.example.com" + PATH),
    # Python's urlsplit reads these hosts as the API's; RFC 3986 allows no `\\` and no user-info here.
    "htu another host behind a backslash": lambda c, t: c.proof(t, htu="https://evil.com\\@api.example.com" + PATH),
    "htu user-info": lambda c, t: c.proof(t, htu="https://evil.com@api.example.com" + PATH),
    "htu a space": lambda c, t: c.proof(t, htu="https://api.example.com /orders/42"),
    "iat a string": lambda c, t: c.proof(t, iat="now"),
    "jti a number": lambda c, t: c.proof(t, jti=7),
}


@pytest.mark.parametrize("defect", list(PROOF_DEFECTS))
def test_each_proof_defect_gets_the_dpop_challenge(kong: Kong, idp: LocalIdP, minter: Minter, client: Client,
                                                   defect: str) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE))
    token = bound_token(minter, client)
    if defect == "replayed":
        proof = client.proof(token)
        assert kong.request(entity, dpop_headers(token, proof), path=PATH).status == 200
    else:
        proof = PROOF_DEFECTS[defect](client, token)
    res = kong.request(entity, dpop_headers(token, proof), path=PATH, query="page=2")
    assert res.status == 401, (defect, res.headers)
    challenge = res.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="kong", DPoP realm="kong", error="invalid_dpop_proof"'), challenge
    assert challenge.endswith('algs="ES256 EdDSA PS256 RS256"')
    assert res.errors == []


def test_one_dpop_header_exactly(kong: Kong, idp: LocalIdP, minter: Minter, client: Client) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE))
    token = bound_token(minter, client)
    twice = [*dpop_headers(token, client.proof(token)), ("DPoP", client.proof(token))]
    for headers in (dpop_headers(token, None), twice):
        res = kong.request(entity, headers, path=PATH)
        assert res.status == 401 and 'error="invalid_dpop_proof"' in res.headers["WWW-Authenticate"]


def test_an_unbound_token_under_the_dpop_scheme_is_refused(kong: Kong, idp: LocalIdP, minter: Minter,
                                                           client: Client) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE))
    token = minter.token()
    res = kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH)
    assert res.status == 401 and 'DPoP realm="kong", error="invalid_token"' in res.headers["WWW-Authenticate"]


def test_a_dpop_typ_without_its_key_is_malformed(kong: Kong, idp: LocalIdP, minter: Minter, client: Client) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE))
    token = minter.token(typ="DPoP")
    assert kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH).status == 401


def test_required_refuses_bearer_and_off_refuses_dpop(kong: Kong, idp: LocalIdP, minter: Minter,
                                                      client: Client) -> None:
    required = kong.plugin(guard_config(idp, public_base_url=BASE, dpop="required"))
    res = kong.request(required, bearer(minter.token()), path=PATH)
    assert res.status == 401 and res.headers["WWW-Authenticate"] == 'DPoP realm="kong", algs="ES256 EdDSA PS256 RS256"'
    token = bound_token(minter, client)
    assert kong.request(required, dpop_headers(token, client.proof(token)), path=PATH).status == 200
    off = kong.plugin(guard_config(idp, dpop="off"))
    res = kong.request(off, dpop_headers(token, client.proof(token)), path=PATH)
    assert res.status == 401 and res.headers["WWW-Authenticate"] == 'Bearer realm="kong"'
    assert kong.request(off, bearer(token)).status == 401, "bound tokens never pass as Bearer"
    assert kong.request(off, bearer(minter.token())).status == 200


def test_nonces(kong: Kong, idp: LocalIdP, minter: Minter, client: Client) -> None:
    entity = kong.plugin(guard_config(idp, public_base_url=BASE, dpop_nonce=True))
    token = bound_token(minter, client)
    res = kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH)
    assert res.status == 401 and 'error="use_dpop_nonce"' in res.headers["WWW-Authenticate"]
    nonce = res.headers["DPoP-Nonce"]
    assert kong.request(entity, dpop_headers(token, client.proof(token, nonce=nonce)), path=PATH).status == 200
    res = kong.request(entity, dpop_headers(token, client.proof(token, nonce="made-up")), path=PATH)
    assert res.status == 401 and res.headers["DPoP-Nonce"] == nonce


def test_the_url_kong_sees_and_forwarded_headers_from_trusted_addresses_only(kong: Kong, idp: LocalIdP,
                                                                             minter: Minter, client: Client) -> None:
    entity = kong.plugin(guard_config(idp))
    token = bound_token(minter, client)
    direct = [("Host", "API.example.com:8000")]
    proof = client.proof(token, url="http://api.example.com:8000" + PATH)
    assert kong.request(entity, [*dpop_headers(token, proof), *direct], path=PATH).status == 200
    forwarded = [("Host", "kong.internal"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example.com"),
                 ("X-Forwarded-Port", "443")]
    for trusted, status in ((False, 401), (True, 200)):
        res = kong.request(entity, [*dpop_headers(token, client.proof(token)), *forwarded], path=PATH, trusted=trusted)
        assert res.status == status, (trusted, res.headers)


def test_introspection_answers_must_agree_with_the_binding(kong: Kong, idp: LocalIdP, minter: Minter,
                                                           client: Client) -> None:
    entity = kong.plugin(sensitive_config(idp, public_base_url=BASE, introspection_cache_ttl=0))
    token = bound_token(minter, client)
    assert kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH).status == 200
    idp.answer_override = {"cnf": {"jkt": Client().jkt}}
    assert kong.request(entity, dpop_headers(token, client.proof(token)), path=PATH).status == 401
    idp.answer_override = {}
    # An opaque or lightweight token bound only in the answer is still proof-checked.
    unbound = minter.token()
    idp.answer_override = {"token_type": "DPoP"}
    assert kong.request(entity, dpop_headers(unbound, client.proof(unbound)), path=PATH).status == 401


@pytest.fixture
def shared_pair(redis_server: RedisServer) -> Iterator[tuple[Kong, Kong]]:
    if not redis_server.running:
        redis_server.restart()
    with own_gateway() as first, own_gateway() as second:
        yield first, second


def test_a_proof_is_single_use_across_processes_sharing_redis(shared_pair: tuple[Kong, Kong], idp: LocalIdP,
                                                              minter: Minter, client: Client,
                                                              redis_server: RedisServer) -> None:
    config = guard_config(idp, public_base_url=BASE, redis=redis_server.plugin_config())
    first, second = shared_pair
    here, there = first.plugin(config), second.plugin(config)
    token = bound_token(minter, client)
    proof = client.proof(token)
    assert first.request(here, dpop_headers(token, proof), path=PATH).status == 200
    res = second.request(there, dpop_headers(token, proof), path=PATH)
    assert res.status == 401 and "used before" in res.headers["WWW-Authenticate"]
    assert second.request(there, dpop_headers(token, client.proof(token)), path=PATH).status == 200
