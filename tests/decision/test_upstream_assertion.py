"""The upstream assertion through the real plugin server: signed on the guard, verified by the
documented upstream code (docs/upstream-identity.md's Python example, run as is) with PyJWKClient
against the JWK Set the `assertion_keys` route serves over real HTTP; refused for another route,
request, audience, once expired, or signed by another key; never a client's copy; a key rotation
verified throughout; and the configs Kong or the instance refuse."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kong_plugin_kcauth.config import Config, ConfigError
from tests.conftest import REPO, bearer, guard_config
from tests.harness.gateway import Gateway, Route
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong, PluginEntity

DOC = REPO / "docs" / "upstream-identity.md"
KEYS_PATH = "/.well-known/kcauth-keys"


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


EC_KEY = ec.generate_private_key(ec.SECP256R1())
NEXT_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def documented_verifier(path: Path = DOC) -> dict[str, Any]:
    """The Python example of the docs page, executed as written: its namespace."""
    text = path.read_text()
    block = re.search(r"<!-- tested: python[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert block is not None, "the docs page lost its tested Python example"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), str(path), "exec"), namespace)  # noqa: S102 - the documented code itself
    return namespace


VERIFY = documented_verifier()


def assertion_config(key: Any = EC_KEY, **extra: Any) -> dict[str, Any]:
    return {"audience": "orders", "private_key": pem(key), **extra}


def keys_config(key: Any = EC_KEY, **extra: Any) -> dict[str, Any]:
    return {"mode": "assertion_keys", "verify_audience": False,
            "upstream_assertion": {"private_key": pem(key), **extra}}


class Keys:
    """The keys route served over real HTTP, and an upstream's PyJWKClient of it."""

    def __init__(self, kong: Kong, config: dict[str, Any]) -> None:
        self.kong = kong
        self.route = Route("kcauth-keys", [KEYS_PATH], "http://127.0.0.1:9", strip_path=False,
                           kcauth=kong.plugin(config))
        self.gateway = Gateway(kong, [self.route]).serve()
        self.url = self.gateway.url + KEYS_PATH
        self.client = jwt.PyJWKClient(self.url, lifespan=300)

    def publish(self, config: dict[str, Any]) -> None:
        assert self.route.kcauth is not None
        self.route.kcauth = self.kong.update(self.route.kcauth, config)


@pytest.fixture
def keys(kong: Kong) -> Iterator[Keys]:
    published = Keys(kong, keys_config())
    yield published
    published.gateway.stop()


def signed(kong: Kong, entity: PluginEntity, token: str, method: str = "GET", path: str = "/orders/1",
           extra: list[tuple[str, str]] | None = None) -> str:
    res = kong.request(entity, bearer(token) + (extra or []), method=method, path=path)
    assert res.status == 200 and res.proxied, (res.status, res.body, kong.error_log[-3:])
    values = res.upstream("x-auth-assertion")
    assert len(values) == 1, values
    return str(values[0])


def verify(keys: Keys, assertion: str, method: str = "GET", path: str = "/orders/1", **options: Any) -> dict[str, Any]:
    claims: dict[str, Any] = VERIFY["verified_identity"](assertion, method, path, keys=keys.client, **options)
    return claims


def test_the_assertion_verifies_with_the_published_keys(kong: Kong, idp: LocalIdP, minter: Minter,
                                                        keys: Keys) -> None:
    entity = kong.plugin(guard_config(idp, upstream_assertion=assertion_config()))
    res = kong.request(entity, bearer(minter.token()), method="GET", path="/orders/1")
    claims = verify(keys, str(res.upstream("x-auth-assertion")[0]))
    token = minter.claims()
    assert claims["sub"] == token["sub"] and claims["kc_iss"] == idp.issuer
    assert claims["claims"]["x-auth-subject"] == token["sub"] == res.upstream("x-auth-subject")[0]
    assert claims["claims"]["x-auth-realm-roles"] == token["realm_access"]["roles"], "values, decoded"
    assert claims["iss"] == "kcauth" and claims["aud"] == "orders" and claims["exp"] - claims["iat"] == 30
    assert (claims["htm"], claims["htp"]) == ("GET", "/orders/1")
    header = jwt.get_unverified_header(str(res.upstream("x-auth-assertion")[0]))
    published = json.loads(_get(keys.url))
    assert header["kid"] == published["keys"][0]["kid"] and header["alg"] == "ES256"
    again = signed(kong, entity, minter.token())
    assert verify(keys, again)["jti"] != claims["jti"], "one assertion per request"


def test_the_keys_route_answers_get_only_and_cacheable(kong: Kong, keys: Keys) -> None:
    assert keys.route.kcauth is not None
    res = kong.request(keys.route.kcauth, method="GET", path=KEYS_PATH)
    assert res.status == 200 and res.headers["Content-Type"] == "application/jwk-set+json"
    assert res.headers["Cache-Control"] == "public, max-age=300"
    (jwk,) = json.loads(res.body)["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}, "public members only"
    assert kong.request(keys.route.kcauth, method="POST", path=KEYS_PATH).status == 405


@pytest.mark.parametrize(("key", "algorithm"), [(ED_KEY, "EdDSA"), (RSA_KEY, "PS256"), (RSA_KEY, "RS256")])
def test_each_algorithm_verifies(kong: Kong, idp: LocalIdP, minter: Minter, key: Any, algorithm: str) -> None:
    published = Keys(kong, keys_config(key, algorithm=algorithm))
    try:
        entity = kong.plugin(guard_config(idp, upstream_assertion=assertion_config(key, algorithm=algorithm)))
        assertion = signed(kong, entity, minter.token())
        assert jwt.get_unverified_header(assertion)["alg"] == algorithm
        assert verify(published, assertion)["sub"] == minter.claims()["sub"]
    finally:
        published.gateway.stop()


def test_an_assertion_for_anything_else_fails(kong: Kong, idp: LocalIdP, minter: Minter, keys: Keys) -> None:
    orders = kong.plugin(guard_config(idp, upstream_assertion=assertion_config()))
    billing = kong.plugin(guard_config(idp, upstream_assertion=assertion_config(audience="billing")))
    assertion = signed(kong, orders, minter.token(), "GET", "/orders/1")
    verify(keys, assertion)
    with pytest.raises(jwt.InvalidAudienceError):  # another route's upstream
        verify(keys, assertion, audience="billing")
    verify(keys, signed(kong, billing, minter.token(), "GET", "/billing/7"), "GET", "/billing/7", audience="billing")
    with pytest.raises(jwt.InvalidTokenError, match="another request"):  # same upstream, another route
        verify(keys, assertion, "GET", "/orders/2")
    with pytest.raises(jwt.InvalidTokenError, match="another request"):  # another method
        verify(keys, assertion, "DELETE", "/orders/1")
    with pytest.raises(jwt.InvalidIssuerError):
        verify(keys, assertion, issuer="another-gateway")


def test_an_expired_assertion_fails(kong: Kong, idp: LocalIdP, minter: Minter, keys: Keys) -> None:
    entity = kong.plugin(guard_config(idp, upstream_assertion=assertion_config(ttl=2)))
    assertion = signed(kong, entity, minter.token())
    verify(keys, assertion, leeway=0)  # iat is whole seconds: valid for more than 1 s from now
    time.sleep(3.1)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(keys, assertion, leeway=0)


def test_an_assertion_signed_by_another_key_fails(kong: Kong, idp: LocalIdP, minter: Minter, keys: Keys) -> None:
    entity = kong.plugin(guard_config(idp, upstream_assertion=assertion_config()))
    genuine = signed(kong, entity, minter.token())
    header, payload = (json.loads(_b64d(part)) for part in genuine.split(".")[:2])
    claims = {**payload, "sub": "mallory"}
    resigned = jwt.encode(claims, NEXT_KEY, algorithm="ES256", headers={"kid": header["kid"], "typ": header["typ"]})
    with pytest.raises(jwt.InvalidSignatureError):  # the published key's kid, another key's signature
        verify(keys, resigned)
    own_kid = jwt.encode(claims, NEXT_KEY, algorithm="ES256")
    with pytest.raises(jwt.PyJWKClientError):  # a kid the gateway does not publish
        verify(keys, own_kid)
    tampered = genuine.split(".")
    tampered[1] = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(keys, ".".join(tampered))


@pytest.mark.parametrize("on", [True, False])
def test_a_client_copy_never_reaches_the_upstream(kong: Kong, idp: LocalIdP, minter: Minter, keys: Keys,
                                                  on: bool) -> None:
    config = assertion_config() if on else {}
    entity = kong.plugin(guard_config(idp, upstream_assertion=config))
    genuine = signed(kong, kong.plugin(guard_config(idp, upstream_assertion=assertion_config())), minter.token())
    forged = [("X-Auth-Assertion", genuine), ("x_auth_assertion", "forged"), ("X_Auth_Assertion", "forged")]
    res = kong.request(entity, bearer(minter.token()) + forged, method="GET", path="/orders/1")
    assert res.status == 200
    names = [n.lower() for n, _ in res.upstream_headers]
    assert "x_auth_assertion" not in names
    if on:
        (value,) = res.upstream("x-auth-assertion")
        assert value != genuine and verify(keys, str(value))
    else:
        assert res.upstream("x-auth-assertion") == []
    refused = kong.request(entity, forged, method="GET", path="/orders/1")
    assert refused.status == 401 and not refused.proxied


def test_the_anonymous_consumer_gets_no_assertion(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    anonymous = {"id": "5d4a5b3e-52a1-4b0a-9f7e-6f1f0a9d6b11", "username": "anonymous"}
    kong.consumers = [anonymous]
    try:
        entity = kong.plugin(guard_config(idp, anonymous="anonymous", upstream_assertion=assertion_config()))
        res = kong.request(entity, [("X-Auth-Assertion", "forged")])
        assert res.status == 200 and res.upstream("x-auth-assertion") == []
    finally:
        kong.consumers = []


def test_a_mapped_consumer_is_in_the_assertion(kong: Kong, idp: LocalIdP, minter: Minter, keys: Keys) -> None:
    consumer = {"id": "0b9c6c41-3c2e-4b7e-8d36-1c0f7c1a9e20", "username": minter.claims()["azp"]}
    kong.consumers = [consumer]
    try:
        entity = kong.plugin(guard_config(idp, consumer_claim="azp", upstream_assertion=assertion_config()))
        claims = verify(keys, signed(kong, entity, minter.token()))
        assert claims["consumer"] == consumer
    finally:
        kong.consumers = []


def test_a_key_rotation_verifies_throughout(kong: Kong, idp: LocalIdP, minter: Minter, keys: Keys) -> None:
    """docs/upstream-identity.md's procedure: publish the next key, wait for the upstreams' JWK Set
    caches, sign with it, retire the old key once its assertions expired. The upstream here
    caches the set for 1 s (its `lifespan`) and, as PyJWKClient does, fetches it again for an
    unknown kid only after a 30 s cooldown: only publishing first keeps it verifying."""
    upstream = jwt.PyJWKClient(keys.url, lifespan=1)

    def check(assertion: str, client: jwt.PyJWKClient = upstream) -> None:
        VERIFY["verified_identity"](assertion, "GET", "/orders/1", keys=client)

    guard = kong.plugin(guard_config(idp, upstream_assertion=assertion_config(EC_KEY)))
    before = signed(kong, guard, minter.token())
    check(before)  # the upstream holds the old set
    keys.publish(keys_config(EC_KEY, public_keys=[public_pem(NEXT_KEY)]))  # 1. publish the next key
    check(before)
    time.sleep(1.2)  # ... and wait for the upstreams' caches
    check(before)
    guard = kong.update(guard, guard_config(idp, upstream_assertion=assertion_config(NEXT_KEY)))  # 2. sign with it
    keys.publish(keys_config(NEXT_KEY, public_keys=[public_pem(EC_KEY)]))
    after = signed(kong, guard, minter.token())
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    for client in (upstream, jwt.PyJWKClient(keys.url)):  # the upstream's cached set, and a new one
        check(before, client)
        check(after, client)
    keys.publish(keys_config(NEXT_KEY))  # 3. retire the old key once its assertions expired
    check(signed(kong, guard, minter.token()), jwt.PyJWKClient(keys.url))
    with pytest.raises(jwt.PyJWKClientError):
        check(before, jwt.PyJWKClient(keys.url))


@pytest.mark.parametrize(("change", "message"), [
    ({"upstream_assertion": {"audience": "orders"}}, "config.upstream_assertion.private_key: required field missing"),
    ({"upstream_assertion": {"audience": "orders", "private_key": "not a pem"}},
     "config.upstream_assertion.private_key: expected a PEM private key"),
    ({"upstream_assertion": {**assertion_config(), "algorithm": "HS256"}},
     "config.upstream_assertion.algorithm: expected one of: ES256, EdDSA, RS256, PS256"),
    ({"upstream_assertion": {**assertion_config(), "ttl": 3600}},
     "config.upstream_assertion.ttl: value should be between 1 and 300"),
    ({"upstream_assertion": {**assertion_config(), "header": "authorization"}}, "'authorization' is reserved"),
    ({"upstream_assertion": {**assertion_config(), "header": "X_Consumer_ID"}}, "is reserved"),
    ({"mode": "assertion_keys", "verify_audience": False}, "config.upstream_assertion.private_key: required field"),
    ({"mode": "revocation_receiver", "upstream_assertion": assertion_config()}, "set on guard routes"),
    ({"upstream_assertion": {**assertion_config(), "public_keys": ["nope"]}}, "expected a PEM public key"),
])
def test_kong_refuses_a_config_that_cannot_work(kong: Kong, change: dict[str, Any], message: str) -> None:
    config = {"issuer": "https://sso.example.com/realms/acme", "audiences": ["orders-api"], **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        kong.plugin(config)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_kong(config)


@pytest.mark.parametrize(("key", "algorithm"), [(EC_KEY, "EdDSA"), (ED_KEY, "ES256"), (EC_KEY, "RS256"),
                                                (rsa.generate_private_key(public_exponent=65537, key_size=1024),
                                                 "RS256")])
def test_a_key_that_does_not_fit_the_algorithm_is_refused_at_instance_start(kong: Kong, idp: LocalIdP,
                                                                             minter: Minter, key: Any,
                                                                             algorithm: str) -> None:
    config = guard_config(idp, upstream_assertion=assertion_config(key, algorithm=algorithm))
    with pytest.raises(ConfigError, match=f"config.upstream_assertion.private_key: the key does not sign {algorithm}"):
        Config.from_kong(config)
    res = kong.request(kong.plugin(config), bearer(minter.token()))
    assert res.status == 500 and not res.proxied, "closed: no request proxied without its assertion"


def test_the_header_cannot_be_a_claim_header(idp: LocalIdP) -> None:
    config = guard_config(idp, upstream_assertion=assertion_config(header="x-auth-subject"))
    with pytest.raises(ConfigError, match="config.upstream_assertion.header: 'x-auth-subject' is already a claim"):
        Config.from_kong(config)


def _b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the local gateway
        return str(resp.read().decode())
