"""Key sets: where the keys that verify tokens come from, and what happens when they change or
cannot be had. A reader looking for key rotation, unknown-kid floods, embedded key locations,
outages and held keys, provider errors, provider_url or workers sharing one key set finds them
here, in three sections:

1. pure KeySet logic, with a fake provider and a fake clock: selection, rotation, rate limits,
   single-flight and stale serving;
2. through the real plugin server and the Kong-side harness, against a local IdP (the tests that
   must hold in both server modes use `each_mode_kong`);
3. against the real Keycloak: rotation of the realm's key providers.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from kong_plugin_kcauth import errors
from kong_plugin_kcauth.idp import http
from kong_plugin_kcauth.idp.keys import KeySet, KeySource
from kong_plugin_kcauth.tokens.jwk import Jwk, key_agrees, parse_jwks, select_key
from tests.conftest import bearer, guard_config
from tests.harness.idp import LocalIdP, Minter, SigningKey, forge, jwt_part
from tests.harness.kong import Kong, PluginServerProcess
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, MakeRoute, access_token

# --- 1. pure KeySet logic: a fake provider, a fake clock ----------------------------------------

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


# --- 2. through the plugin server, against a local IdP ------------------------------------------

def test_key_rotation_new_kid_is_picked_up(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    # The core's logic, the same under every server mode: run under the default one.
    entity = kong.plugin(guard_config(idp, jwks_min_refresh_interval=1))
    assert kong.request(entity, bearer(minter.token())).status == 200
    rotated = SigningKey("RS256")
    idp.keys.append(rotated.jwk())
    time.sleep(1.1)
    assert kong.request(entity, bearer(minter.token(key=rotated))).status == 200
    idp.keys[:] = [rotated.jwk()]
    old = minter.token()
    time.sleep(1.1)
    # The old key still sits in the held set until the next refresh; force one with a new kid.
    assert kong.request(entity, bearer(minter.token(key=SigningKey("RS256")))).status == 401
    assert kong.request(entity, bearer(old)).status == 401, "a key gone from the realm is refused"


def test_random_kid_flood_causes_few_downloads(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    assert kong.request(entity, bearer(minter.token())).status == 200
    before = idp.jwks_requests
    attacker = SigningKey("RS256")
    started = time.monotonic()
    for _ in range(1000):
        forged = minter.token(key=attacker, headers={"kid": uuid.uuid4().hex})
        assert kong.request(entity, bearer(forged)).status == 401
    elapsed = time.monotonic() - started
    allowed = 1 + int(elapsed // 10)  # one per jwks_min_refresh_interval (10 s default)
    assert idp.jwks_requests - before <= allowed, (idp.jwks_requests - before, elapsed)


def test_embedded_key_locations_are_never_fetched(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    attacker_idp = LocalIdP().start()
    try:
        attacker = SigningKey("RS256")
        attacker_idp.keys.append(attacker.jwk())
        entity = kong.plugin(guard_config(idp))
        token = minter.token(key=attacker, headers={"jku": attacker_idp.jwks_uri, "x5u": attacker_idp.jwks_uri,
                                                    "jwk": attacker.jwk()}, iss=idp.issuer)
        assert kong.request(entity, bearer(token)).status == 401
        forged_iss = minter.token(key=attacker, iss=attacker_idp.issuer)
        assert kong.request(entity, bearer(forged_iss)).status == 401
        assert attacker_idp.jwks_requests == 0 and attacker_idp.discovery_requests == 0
    finally:
        attacker_idp.stop()


def test_forged_none_token_with_known_kid(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    token = forge({"alg": "none", "kid": idp.primary.kid}, minter.claims())  # type: ignore[attr-defined]
    assert kong.request(entity, bearer(token)).status == 401


def test_held_keys_survive_an_outage_and_none_held_is_503(each_mode_kong: Kong, idp: LocalIdP,
                                                          minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(guard_config(idp, jwks_refresh_interval=10))
    assert kong.request(entity, bearer(minter.token())).status == 200
    idp.stop()
    assert kong.request(entity, bearer(minter.token())).status == 200, "held keys keep working"

    dead = LocalIdP()  # never started: its port refuses connections
    dead_entity = kong.plugin(guard_config(dead, http_timeout=0.5))
    token = Minter(dead.issuer, SigningKey("RS256")).token()
    res = kong.request(dead_entity, bearer(token))
    assert res.status == 503
    assert res.headers["Retry-After"] == "5"
    assert res.body == {"message": "The identity provider cannot be reached"}
    assert "WWW-Authenticate" not in res.headers
    dead._server.server_close()


def test_provider_errors_and_garbage_are_503(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    idp.fail_with = 500
    entity = kong.plugin(guard_config(idp))
    assert kong.request(entity, bearer(minter.token())).status == 503


def test_provider_url_reaches_a_provider_whose_issuer_names_another_host(kong: Kong, idp: LocalIdP) -> None:
    idp.public_origin = "http://sso.invalid:8080"  # what tokens say; not resolvable from here
    token = Minter(idp.issuer, idp.primary).token()  # type: ignore[attr-defined]
    direct = kong.plugin(guard_config(idp, http_timeout=0.5))
    assert kong.request(direct, bearer(token)).status == 503, "the issuer's host cannot be reached"
    internal = kong.plugin(guard_config(idp, provider_url=idp.origin))
    res = kong.request(internal, bearer(token))
    assert res.status == 200, res.headers
    assert idp.discovery_requests >= 1 and idp.jwks_requests >= 1
    wrong_iss = Minter(f"{idp.origin}/realms/{idp.realm}", idp.primary).token()  # type: ignore[attr-defined]
    assert kong.request(internal, bearer(wrong_iss)).status == 401, "the issuer is still matched exactly"


def test_several_workers_share_one_key_set(plugin_server: PluginServerProcess, idp: LocalIdP, minter: Minter) -> None:
    gateway = Kong(plugin_server, workers=4)
    try:
        entity = gateway.plugin(guard_config(idp))
        for _ in range(8):
            assert gateway.request(entity, bearer(minter.token())).status == 200
        starts = gateway.rpc.calls.count("plugin.StartInstance")
        assert starts == 4, "Kong starts one instance per worker"
        assert idp.jwks_requests == 1, "but they share one process-wide key set"
    finally:
        gateway.rpc.close()


# --- 3. against the real Keycloak: the realm's key providers rotate -----------------------------

@pytest.mark.keycloak
def test_key_rotation_without_restart(kong: Kong, kc_admin: KeycloakAdmin, route: MakeRoute,
                                      key_providers: dict[str, str]) -> None:
    entity = route(jwks_min_refresh_interval=1)
    old = access_token(kc_admin)
    assert kong.request(entity, bearer(old)).status == 200
    old_kid = jwt_part(old, 0)["kid"]
    # Key metadata names the component (key provider) that holds each key.
    old_component = next(k["providerId"] for k in kc_admin.list_keys(REALM)["keys"] if k["kid"] == old_kid)

    kc_admin.add_key_provider(REALM, "rsa-generated", priority=500, algorithm="RS256", name="rotated")
    new = access_token(kc_admin)
    new_kid = jwt_part(new, 0)["kid"]
    assert new_kid != old_kid
    time.sleep(1.1)
    assert kong.request(entity, bearer(new)).status == 200, "new key picked up without a restart"
    assert kong.request(entity, bearer(old)).status == 200, "the old key is still published"

    key_providers["old"] = old_component
    kc_admin.set_key_provider_enabled(REALM, old_component, False)
    time.sleep(1.1)
    # Any unknown kid makes the plugin refresh its key set (at most once a second here).
    stranger = Minter(kc_admin.issuer(REALM), SigningKey("RS256")).token()
    assert kong.request(entity, bearer(stranger)).status == 401
    res = kong.request(route(jwks_min_refresh_interval=1, leeway=11), bearer(old))
    assert res.status == 401 and "unknown key" in res.headers["WWW-Authenticate"]
    assert kong.request(entity, bearer(new)).status == 200
