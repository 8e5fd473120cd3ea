"""Key set behaviour with a fake provider and a fake clock: selection, rotation, rate limits,
single-flight and stale serving."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kong_plugin_kcauth import errors, http
from kong_plugin_kcauth.keys import Jwk, KeySet, KeySource, key_agrees, parse_jwks, select_key
from tests.harness.idp import SigningKey

ISS = "https://sso.example.com/realms/acme"
SOURCE = KeySource(jwks_uri=None, discovery_url=ISS + "/.well-known/openid-configuration", issuer=ISS,
                   refresh_interval=300, min_refresh_interval=10, max_stale=3600, timeout=1)


class Provider:
    def __init__(self, *keys: SigningKey) -> None:
        self.keys = [k.jwk() for k in keys]
        self.down = False
        self.fetches: list[str] = []
        self.delay = 0.0
        self.issuer = ISS

    def __call__(self, url: str, timeout: float, *, revalidate: bool, ca: str | None = None) -> dict[str, Any]:
        self.fetches.append(url)
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise http.FetchError("down")
        if url.endswith("openid-configuration"):
            return {"issuer": self.issuer, "jwks_uri": ISS + "/certs"}
        return {"keys": list(self.keys)}

    @property
    def jwks_fetches(self) -> int:
        return sum(1 for u in self.fetches if u.endswith("/certs"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_idle(ks: KeySet) -> None:
    for _ in range(200):
        if ks._inflight is None:
            return
        time.sleep(0.01)
    raise AssertionError("refresh did not finish")


def test_selection_rules() -> None:
    rsa, ec = SigningKey("RS256"), SigningKey("ES256")
    keys = parse_jwks({"keys": [rsa.jwk(), ec.jwk(), rsa.jwk(use="enc") | {"kid": "enc"},
                                {"kty": "oct", "k": "c2VjcmV0", "use": "sig", "kid": "hmac"},
                                "junk", {"use": "sig", "kty": "RSA", "kid": "broken", "n": "AQAB"}]})
    assert set(keys) == {rsa.kid, ec.kid}, "enc, symmetric and broken keys are skipped"
    assert select_key(keys, rsa.kid, "RS256") is not None
    assert select_key(keys, rsa.kid, "PS256") is None, "the key names RS256"
    assert select_key(keys, rsa.kid, "ES256") is None, "wrong key type"
    assert select_key(keys, ec.kid, "ES384") is None, "wrong curve"
    assert select_key(keys, None, "ES256") is not None, "one unambiguous key without kid"
    two = parse_jwks({"keys": [rsa.jwk(), SigningKey("RS256").jwk()]})
    assert select_key(two, None, "RS256") is None, "ambiguous without kid"


def test_key_without_alg_fits_its_family() -> None:
    jwk = Jwk(kid="k", kty="RSA", alg=None, crv=None, key=None)
    assert key_agrees(jwk, "RS256") and key_agrees(jwk, "PS512") and not key_agrees(jwk, "ES256")
    assert key_agrees(Jwk("e", "OKP", None, "Ed25519", None), "EdDSA")


def test_short_rsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = SigningKey("RS256", private=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    assert parse_jwks({"keys": [weak.jwk()]}) == {}


def test_discovery_then_keys_and_issuer_mismatch() -> None:
    key = SigningKey("RS256")
    provider, clock = Provider(key), Clock()
    ks = KeySet(SOURCE, provider, clock)
    assert ks.key_for(key.kid, "RS256") is not None
    assert provider.fetches[0].endswith("openid-configuration")

    provider2 = Provider(key)
    provider2.issuer = ISS + "/evil"
    with pytest.raises(errors.KeysUnavailable):
        KeySet(SOURCE, provider2, Clock()).key_for(key.kid, "RS256")


def test_unknown_kid_refetch_is_rate_limited() -> None:
    key = SigningKey("RS256")
    provider, clock = Provider(key), Clock()
    ks = KeySet(SOURCE, provider, clock)
    ks.key_for(key.kid, "RS256")
    clock.now += 11
    for i in range(100):
        with pytest.raises(errors.UnknownKey):
            ks.key_for(f"random-{i}", "RS256")
    assert provider.jwks_fetches == 2, "one initial download, one for the first unknown kid"

    rotated = SigningKey("RS256")
    provider.keys.append(rotated.jwk())
    with pytest.raises(errors.UnknownKey):
        ks.key_for(rotated.kid, "RS256")  # still inside the rate-limit window
    clock.now += 10
    assert ks.key_for(rotated.kid, "RS256") is not None, "rotation picked up after the window"
    assert provider.jwks_fetches == 3


def test_a_new_kid_right_after_a_download_is_fetched() -> None:
    key, rotated = SigningKey("RS256"), SigningKey("RS256")
    provider, clock = Provider(key), Clock()
    ks = KeySet(SOURCE, provider, clock)
    ks.key_for(key.kid, "RS256")
    provider.keys.append(rotated.jwk())
    clock.now += 1
    assert ks.key_for(rotated.kid, "RS256") is not None, "a rotation is not held back by routine downloads"


def test_background_refresh_and_stale_keys_while_down() -> None:
    key = SigningKey("RS256")
    provider, clock = Provider(key), Clock()
    ks = KeySet(SOURCE, provider, clock)
    ks.key_for(key.kid, "RS256")
    provider.down = True
    clock.now += 301
    assert ks.key_for(key.kid, "RS256") is not None, "held keys serve while refreshing"
    wait_idle(ks)
    clock.now += 3000
    assert ks.key_for(key.kid, "RS256") is not None, "still inside max_stale"
    wait_idle(ks)
    clock.now += 300
    with pytest.raises(errors.KeysUnavailable):
        ks.key_for(key.kid, "RS256")
    provider.down = False
    clock.now += 10
    assert ks.key_for(key.kid, "RS256") is not None, "recovers once the provider is back"


def test_removed_key_is_refused_after_refresh() -> None:
    old, new = SigningKey("RS256"), SigningKey("RS256")
    provider, clock = Provider(old, new), Clock()
    ks = KeySet(SOURCE, provider, clock)
    ks.key_for(old.kid, "RS256")
    provider.keys = [new.jwk()]
    clock.now += 301
    ks.key_for(new.kid, "RS256")  # triggers the background refresh
    wait_idle(ks)
    clock.now += 11
    with pytest.raises(errors.UnknownKey):
        ks.key_for(old.kid, "RS256")


def test_nothing_held_and_provider_down_is_503_without_hammering() -> None:
    provider, clock = Provider(), Clock()
    provider.down = True
    ks = KeySet(SOURCE, provider, clock)
    for _ in range(50):
        with pytest.raises(errors.KeysUnavailable):
            ks.key_for("k", "RS256")
    assert len(provider.fetches) == 1, "failed attempts are rate-limited too"


def test_concurrent_first_requests_share_one_download() -> None:
    key = SigningKey("RS256")
    provider = Provider(key)
    provider.delay = 0.2
    ks = KeySet(SOURCE, provider)
    results: list[Any] = []

    def worker() -> None:
        results.append(ks.key_for(key.kid, "RS256"))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 20 and all(r is not None for r in results)
    assert provider.jwks_fetches == 1
