"""Several issuers on one route (`issuers`) and multi-tenant realms (`issuer_template`), through
real plugin servers and LocalIdPs: each issuer's tokens pass under its own rules and keys; a
token of no configured issuer, or of a lookalike, is refused with nothing fetched; revocations
stay per issuer; and the template's bounds hold under a flood of random realm names."""

from __future__ import annotations

import random
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import (
    API,
    at_once,
    bearer,
    free_port,
    guard_config,
    own_gateway,
    receiver_config,
    started_idp,
)
from tests.harness.idp import LocalIdP, Minter, SigningKey
from tests.harness.kong import Kong, rss_mb
from tests.harness.pushes import RECEIVER_PATH, logout_token, post_logout, push_not_before

BILLING = "billing-api"


@pytest.fixture
def other() -> Iterator[LocalIdP]:
    server = started_idp()
    yield server
    server.stop()


@pytest.fixture
def tenants() -> Iterator[LocalIdP]:
    """One provider serving many realms under /realms/<name> (404 for any other name)."""
    server = started_idp()
    server.realms = {f"tenant-{i}" for i in range(1000)}
    yield server
    server.stop()


def listed(a: LocalIdP, b: LocalIdP, **extra: Any) -> dict[str, Any]:
    """A route of issuer `a` (audience orders-api) and `b` (its own audience, billing-api)."""
    return guard_config(a, issuers=[{"issuer": b.issuer, "audiences": [BILLING]}], **extra)


def template_of(idp: LocalIdP) -> str:
    return f"{idp.origin}/realms/{{realm}}"


def tenant_token(idp: LocalIdP, realm: str, **claims: Any) -> str:
    return Minter(f"{idp.origin}/realms/{realm}", idp.primary).token(**claims)  # type: ignore[attr-defined]


def requests_at(*idps: LocalIdP) -> int:
    """Every request any of them answered (discovery, key sets, introspection, unknown paths)."""
    return sum(sum(i.paths.values()) + i.introspection_requests for i in idps)


def test_each_listed_issuer_under_its_own_audiences_and_keys(kong: Kong, idp: LocalIdP, other: LocalIdP) -> None:
    entity = kong.plugin(listed(idp, other))
    mine = Minter(idp.issuer, idp.primary).token()  # type: ignore[attr-defined]
    theirs = Minter(other.issuer, other.primary, audience=BILLING).token()  # type: ignore[attr-defined]
    res = kong.request(entity, bearer(mine))
    assert res.status == 200 and res.upstream("x-auth-issuer") == [idp.issuer]
    res = kong.request(entity, bearer(theirs))
    assert res.status == 200 and res.upstream("x-auth-issuer") == [other.issuer]
    # `other`'s audiences are its own: orders-api is the plugin-level audience of `idp` only.
    assert kong.request(entity, bearer(Minter(other.issuer, other.primary).token())).status == 401  # type: ignore[attr-defined]
    # Keys are per issuer: `other`'s iss signed with `idp`'s key is no token of `other`.
    forged = Minter(other.issuer, idp.primary, audience=BILLING).token()  # type: ignore[attr-defined]
    assert kong.request(entity, bearer(forged)).status == 401


def test_a_client_header_naming_the_issuer_never_reaches_the_upstream(kong: Kong, idp: LocalIdP,
                                                                       other: LocalIdP) -> None:
    entity = kong.plugin(listed(idp, other))
    token = Minter(other.issuer, other.primary, audience=BILLING).token()  # type: ignore[attr-defined]
    res = kong.request(entity, [*bearer(token), ("X-Auth-Issuer", idp.issuer), ("x_auth_issuer", idp.issuer)])
    assert res.status == 200
    assert res.upstream("x-auth-issuer") == [other.issuer] and not res.upstream("x_auth_issuer")


@pytest.mark.parametrize("lookalike", [
    "third", "slash", "case", "prefix", "suffix", "host", "dot-segment", "encoded", "userinfo", "not a string"])
def test_no_listed_issuer_no_fetch(kong: Kong, idp: LocalIdP, other: LocalIdP, lookalike: str) -> None:
    third = started_idp()
    try:
        entity = kong.plugin(listed(idp, other))
        for token in (Minter(idp.issuer, idp.primary).token(),  # type: ignore[attr-defined]
                      Minter(other.issuer, other.primary, audience=BILLING).token()):  # type: ignore[attr-defined]
            assert kong.request(entity, bearer(token)).status == 200  # both key sets are held now
        iss: Any = {
            "third": third.issuer, "slash": idp.issuer + "/", "case": idp.issuer.replace("realms", "Realms"),
            "prefix": idp.issuer[:-1], "suffix": idp.issuer + "x",
            "host": idp.issuer.replace("127.0.0.1", "localhost"),
            "dot-segment": idp.issuer.replace("/realms/", "/realms/../realms/"),
            "encoded": idp.issuer.replace("/realms/", "/%72ealms/"),
            "userinfo": idp.issuer.replace("http://", "http://user@"), "not a string": [idp.issuer],
        }[lookalike]
        before = requests_at(idp, other, third)
        with_third_key = Minter(idp.issuer, third.primary).raw_token(iss=iss)  # type: ignore[attr-defined]
        with_held_key = Minter(idp.issuer, idp.primary).raw_token(iss=iss)  # type: ignore[attr-defined]
        res = kong.request(entity, bearer(with_third_key))
        assert res.status == 401
        assert 'error_description="The access token is invalid"' in res.headers["WWW-Authenticate"]
        res = kong.request(entity, bearer(with_held_key))  # signed by a held key: the reason is told
        assert res.status == 401 and "issued by another issuer" in res.headers["WWW-Authenticate"]
        assert requests_at(idp, other, third) == before, "nothing was fetched for either token"
    finally:
        third.stop()


def test_a_logout_revokes_only_its_issuers_session(kong: Kong, idp: LocalIdP, other: LocalIdP) -> None:
    """The same sid in two realms: one realm's logout (verified with its own keys) ends only its own."""
    guard = kong.plugin(listed(idp, other))
    receiver = kong.plugin(receiver_config(idp, issuers=[{"issuer": other.issuer}]))
    mine = Minter(idp.issuer, idp.primary).token(sid="shared-sid")  # type: ignore[attr-defined]
    theirs = Minter(other.issuer, other.primary, audience=BILLING).token(sid="shared-sid")  # type: ignore[attr-defined]
    assert [kong.request(guard, bearer(t)).status for t in (mine, theirs)] == [200, 200]
    assert post_logout(kong, receiver, logout_token(other, sid="shared-sid")).status == 200
    assert [kong.request(guard, bearer(t)).status for t in (mine, theirs)] == [200, 401]
    # A logout token of `other` signed with `idp`'s key is no logout of `other`.
    res = post_logout(kong, receiver, logout_token(other, key=idp.primary, sid="x"))  # type: ignore[attr-defined]
    assert res.status == 400 and res.body["error_description"] == "invalid signature"
    assert post_logout(kong, receiver, logout_token(idp, sid="shared-sid")).status == 200
    assert kong.request(guard, bearer(mine)).status == 401


def test_issuer_groups_name_the_realm(kong: Kong, idp: LocalIdP, other: LocalIdP) -> None:
    entity = kong.plugin(listed(idp, other, issuer_groups=True))
    res = kong.request(entity, bearer(Minter(other.issuer, other.primary, audience=BILLING).token()))  # type: ignore[attr-defined]
    assert f"issuer:{other.realm}" in res.ctx_shared["authenticated_groups"]
    assert f"issuer:{idp.realm}" not in res.ctx_shared["authenticated_groups"]


# --- issuer_template ----------------------------------------------------------------------------

def test_a_thousand_realms_on_one_template(kong: Kong, tenants: LocalIdP) -> None:
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API]})
    realms = sorted(tenants.realms or ())
    tokens = {realm: tenant_token(tenants, realm) for realm in realms}
    slices = [realms[i::8] for i in range(8)]
    statuses = at_once(8, lambda: [kong.request(entity, bearer(tokens[r])).status for r in slices.pop()])
    assert sorted(s for batch in statuses for s in batch) == [200] * len(realms)
    assert tenants.discovery_requests == len(realms), "one discovery per realm"
    assert tenants.unknown_realm_requests == 0
    before = requests_at(tenants)
    res = kong.request(entity, bearer(tokens["tenant-7"]))
    assert res.status == 200 and res.upstream("x-auth-issuer") == [f"{tenants.origin}/realms/tenant-7"]
    assert requests_at(tenants) == before, "held realms cost nothing"


def test_a_flood_of_random_realm_names_costs_a_few_lookups(kong: Kong, tenants: LocalIdP) -> None:
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API],
                          "unknown_realms_per_minute": 5})
    held = tenant_token(tenants, "tenant-1")
    assert kong.request(entity, bearer(held)).status == 200
    rss_before = rss_mb(kong.server.pid)
    names = ["".join(random.choices(string.ascii_lowercase, k=12)) for _ in range(4_000)]
    tokens = [tenant_token(tenants, name) for name in names]
    chunks = [tokens[i::16] for i in range(16)]
    started = time.monotonic()
    answers = at_once(16, lambda: [kong.request(entity, bearer(t)).status for t in chunks.pop()], timeout=300)
    minutes = int((time.monotonic() - started) // 60) + 1
    statuses = [s for batch in answers for s in batch]
    assert len(statuses) == 4_000 and set(statuses) <= {401, 503}
    assert tenants.unknown_realm_requests <= 5 * minutes, "a few lookups per minute, not one per name"
    assert kong.request(entity, bearer(held)).status == 200, "held realms are not affected"
    growth = rss_mb(kong.server.pid) - rss_before
    print(f"RSS growth after 4,000 random realm names: {growth:+.1f} MB")
    assert growth < 32


@pytest.mark.parametrize("outage", ["503", "garbage", "timeout"])
def test_a_flood_during_a_provider_outage_costs_the_budget(kong: Kong, tenants: LocalIdP, outage: str) -> None:
    """Lookups that fail (not a 404) spend the budget too, and are not held as realms: random
    realm names during an outage, then the same names with the provider back, cost at most
    `unknown_realms_per_minute` lookups a minute, and held realms keep working throughout."""
    budget = 4
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API], "http_timeout": 0.5,
                          "unknown_realms_per_minute": budget, "max_realms": 3})
    held = tenant_token(tenants, "tenant-1")
    assert kong.request(entity, bearer(held)).status == 200
    rss_before = rss_mb(kong.server.pid)
    before = requests_at(tenants)
    started = time.monotonic()
    if outage == "503":
        tenants.fail_with = 503
    elif outage == "garbage":
        tenants.garbage = b"<html>not json</html>"
    else:
        tenants.delay = 1.0  # past http_timeout
    names = ["".join(random.choices(string.ascii_lowercase, k=12)) for _ in range(300)]
    tokens = [tenant_token(tenants, name) for name in names]
    chunks = [tokens[i::8] for i in range(8)]
    answers = at_once(8, lambda: [kong.request(entity, bearer(t)).status for t in chunks.pop()], timeout=120)
    assert sorted({s for batch in answers for s in batch}) == [503], "the provider could not say: 503, never 401"
    assert kong.request(entity, bearer(held)).status == 200, "held realms are not affected"
    tenants.fail_with, tenants.garbage, tenants.delay = None, None, 0.0
    again = [kong.request(entity, bearer(t)).status for t in tokens]  # the provider is back
    assert set(again) <= {401, 503}, "no random name became a realm"
    realms = [tenant_token(tenants, f"tenant-{i}") for i in range(100, 106)]
    minutes = int((time.monotonic() - started) // 60) + 1
    spent = requests_at(tenants) - before
    assert spent <= budget * minutes, f"{spent} provider requests for 600 names: at most {budget} a minute"
    # Realms that exist are looked up freely, once the failed names' minute is over.
    assert kong.request(entity, bearer(held)).status == 200
    statuses = [kong.request(entity, bearer(t)).status for t in realms]
    assert set(statuses) <= {200, 503}
    growth = rss_mb(kong.server.pid) - rss_before
    print(f"{outage}: {spent} provider requests for 600 lookups; RSS {growth:+.1f} MB")
    assert growth < 32


@pytest.mark.parametrize("claims", [{"exp": 1_000}, {"aud": "another-api"}, {"typ": "ID"}, {"azp": "stranger"}],
                         ids=["expired", "audience", "id-token", "azp"])
def test_a_token_its_realm_would_refuse_costs_no_lookup(kong: Kong, tenants: LocalIdP, claims: dict[str, Any]) -> None:
    """The claims that need no key are judged under the realm's rules before the realm is looked
    up: an expired or mis-addressed token of an existing realm not held yet fetches nothing."""
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API],
                          "authorized_parties": ["test-cli"]})
    before = requests_at(tenants)
    res = kong.request(entity, bearer(tenant_token(tenants, "tenant-42", **claims)))
    assert res.status == 401 and 'error_description="The access token is invalid"' in res.headers["WWW-Authenticate"]
    assert requests_at(tenants) == before, "nothing was fetched"
    assert kong.request(entity, bearer(tenant_token(tenants, "tenant-42"))).status == 200
    assert requests_at(tenants) > before


def test_a_refused_token_of_a_listed_issuer_downloads_no_key_set(kong: Kong, idp: LocalIdP) -> None:
    """A listed issuer whose keys could not be had at instance start: an expired token does not
    make kcauth download them; a valid one does."""
    idp.fail_with = 503
    entity = kong.plugin(guard_config(idp, jwks_min_refresh_interval=1))
    minter = Minter(idp.issuer, idp.primary)  # type: ignore[attr-defined]
    assert kong.request(entity, bearer(minter.token())).status == 503
    idp.fail_with = None
    time.sleep(1.1)  # past jwks_min_refresh_interval: a download may be made again
    before = requests_at(idp)
    res = kong.request(entity, bearer(minter.token(exp=1_000)))
    assert res.status == 401 and requests_at(idp) == before, "an expired token fetched nothing"
    assert kong.request(entity, bearer(minter.token())).status == 200


def test_a_realm_created_after_start_is_picked_up(kong: Kong, tenants: LocalIdP) -> None:
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API]})
    assert kong.request(entity, bearer(tenant_token(tenants, "tenant-3"))).status == 200
    assert tenants.realms is not None
    tenants.realms.add("created-later")
    assert kong.request(entity, bearer(tenant_token(tenants, "created-later"))).status == 200


def test_a_realm_the_provider_does_not_know_is_remembered(kong: Kong, tenants: LocalIdP) -> None:
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API],
                          "unknown_realms_per_minute": 7})
    token = tenant_token(tenants, "no-such-realm")
    assert [kong.request(entity, bearer(token)).status for _ in range(5)] == [401] * 5
    assert tenants.unknown_realm_requests == 1


@pytest.mark.parametrize("iss", [
    "HTTP://{host}/realms/tenant-1", "{origin}/Realms/tenant-1", "{origin}/realms/tenant-1/x",
    "{origin}/realms/tenant-1/", "{origin}/realms/", "{origin}/realms/..", "{origin}/realms/%2e%2e",
    "{origin}/realms/a%2Fb", "{origin}/realms/.hidden", "{origin}/realms/a..b", "{origin}/realms/" + "a" * 65,
    "http://localhost:{port}/realms/tenant-1", "{origin}0/realms/tenant-1", "{origin}/x/realms/tenant-1",
    "{origin}/realms/tenant 1", "{origin}/realms/t\u00e9nant",
])
def test_lookalikes_of_the_template_fetch_nothing(kong: Kong, tenants: LocalIdP, iss: str) -> None:
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API]})
    claimed = iss.format(origin=tenants.origin, host=f"127.0.0.1:{tenants.port}", port=tenants.port)
    before = requests_at(tenants)
    token = Minter(claimed, tenants.primary).token()  # type: ignore[attr-defined]
    assert kong.request(entity, bearer(token)).status == 401
    assert requests_at(tenants) == before


def test_template_keys_come_from_the_template_origin_only(kong: Kong, tenants: LocalIdP, other: LocalIdP) -> None:
    """A realm's discovery document naming a key set elsewhere (a realm's own frontend URL can) is
    not followed."""
    tenants.discovery_jwks_uri = other.jwks_uri
    entity = kong.plugin({"issuer_template": template_of(tenants), "audiences": [API]})
    assert kong.request(entity, bearer(tenant_token(tenants, "tenant-9"))).status == 503
    assert requests_at(other) == 0


def test_template_revocations_are_per_realm(kong: Kong, tenants: LocalIdP) -> None:
    template = template_of(tenants)
    guard = kong.plugin({"issuer_template": template, "audiences": [API]})
    receiver = kong.plugin({"issuer_template": template, "mode": "revocation_receiver", "audiences": ["test-cli"]})
    a, b = (tenant_token(tenants, r, sid="same-sid") for r in ("tenant-20", "tenant-21"))
    assert [kong.request(guard, bearer(t)).status for t in (a, b)] == [200, 200]
    logout = Minter(f"{tenants.origin}/realms/tenant-21", tenants.primary)  # type: ignore[attr-defined]
    res = post_logout(kong, receiver, logout_token(_AsIssuer(tenants, logout.issuer), sid="same-sid"))
    assert res.status == 200, res.body
    assert [kong.request(guard, bearer(t)).status for t in (a, b)] == [200, 401]


class _AsIssuer:
    """A LocalIdP seen as one of its template realms (for logout_token)."""

    def __init__(self, idp: LocalIdP, issuer: str) -> None:
        self.issuer = issuer
        self.primary = idp.primary  # type: ignore[attr-defined]


def test_a_not_before_push_applies_to_the_issuer_whose_key_signed_it(kong: Kong, idp: LocalIdP,
                                                                    other: LocalIdP) -> None:
    guard = kong.plugin(listed(idp, other))
    receiver = kong.plugin(receiver_config(idp, issuers=[{"issuer": other.issuer}]))
    issued = int(time.time()) - 5
    mine = Minter(idp.issuer, idp.primary).token(iat=issued)  # type: ignore[attr-defined]
    theirs = Minter(other.issuer, other.primary, audience=BILLING).token(iat=issued)  # type: ignore[attr-defined]
    assert [kong.request(guard, bearer(t)).status for t in (mine, theirs)] == [200, 200]  # key sets held
    push = push_not_before(other, "test-cli", int(time.time()))
    res = kong.request(receiver, [], method="POST", path=RECEIVER_PATH + "/k_push_not_before", body=push.encode())
    assert res.status == 200, res.body
    assert [kong.request(guard, bearer(t)).status for t in (mine, theirs)] == [200, 401]
    stranger = push_not_before(other, "test-cli", int(time.time()), key=SigningKey("RS256"))
    res = kong.request(receiver, [], method="POST", path=RECEIVER_PATH + "/k_push_not_before", body=stranger.encode())
    assert res.status == 400 and res.body["error_description"] == "invalid signature"


def test_metrics_and_decisions_name_the_issuer(idp: LocalIdP, other: LocalIdP, tenants: LocalIdP) -> None:
    """Listed issuers by their own name; a template's realms under the template (bounded labels)."""
    port = free_port()
    with own_gateway(extra_args=f"--metrics 127.0.0.1:{port}") as gateway:
        entity = gateway.plugin(listed(idp, other, log_decision=True))
        res = gateway.request(entity, bearer(Minter(other.issuer, other.primary, audience=BILLING).token()))  # type: ignore[attr-defined]
        assert res.status == 200 and res.serialized["kcauth"]["issuer"] == other.issuer
        template = gateway.plugin({"issuer_template": template_of(tenants), "audiences": [API]})
        for realm in ("tenant-1", "tenant-2"):
            assert gateway.request(template, bearer(tenant_token(tenants, realm))).status == 200
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert f'kcauth_requests_total{{decision="allowed",issuer="{other.issuer}",reason="allowed"}} 1.0' in text
    assert f'kcauth_requests_total{{decision="allowed",issuer="{template_of(tenants)}",reason="allowed"}} 2.0' in text
    realm_label = f'issuer="{tenants.origin}/realms/tenant-1"'
    assert not [line for line in text.splitlines() if realm_label in line and
                not line.startswith("kcauth_jwks_age_seconds")], "a template realm labels only its key set's age"
