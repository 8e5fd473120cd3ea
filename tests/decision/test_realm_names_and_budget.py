"""issuers.py in isolation: which names a template accepts, and the lookup budget."""

from __future__ import annotations

import pytest

from kong_plugin_kcauth.decision.issuers import Lookup, RealmDirectory, Template, realm_name

TEMPLATE = Template.parse("https://sso.example.com/realms/{realm}")


@pytest.mark.parametrize("iss", [
    "https://sso.example.com/realms/acme", "https://sso.example.com/realms/a", "https://sso.example.com/realms/a.b-c_d",
    "https://sso.example.com/realms/" + "x" * 64, "https://sso.example.com/realms/-x",
])
def test_realm_names_of_the_template(iss: str) -> None:
    assert TEMPLATE.realm_of(iss) == iss.rpartition("/")[2]
    assert TEMPLATE.issuer(iss.rpartition("/")[2]) == iss


@pytest.mark.parametrize("iss", [
    "https://sso.example.com/realms/", "https://sso.example.com/realms",
    "https://sso.example.com/realms/a/b",
    "https://sso.example.com/realms/..", "https://sso.example.com/realms/a..b", "https://sso.example.com/realms/.a",
    "https://sso.example.com/realms/%2e%2e", "https://sso.example.com/realms/a%2Fb",
    "https://sso.example.com/realms/a b",
    "https://sso.example.com/realms/" + "x" * 65, "https://SSO.example.com/realms/acme",
    "HTTPS://sso.example.com/realms/acme", "https://sso.example.com/Realms/acme", "http://sso.example.com/realms/acme",
    "https://sso.example.com.evil/realms/acme", "https://evil/https://sso.example.com/realms/acme",
    "https://sso.example.com/realms/acme/", "https://sso.example.com/realms/acme\n", "https://sso.example.com/realms/é",
])
def test_lookalikes_are_no_realm(iss: str) -> None:
    assert TEMPLATE.realm_of(iss) is None


def test_a_suffix_after_the_realm() -> None:
    template = Template.parse("https://sso.example.com/t/{realm}/oidc")
    assert template.realm_of("https://sso.example.com/t/acme/oidc") == "acme"
    assert template.realm_of("https://sso.example.com/t/acme/oidcx") is None
    assert template.realm_of("https://sso.example.com/t//oidc") is None


def test_realm_name_of_a_listed_issuer() -> None:
    assert realm_name("https://sso.example.com/realms/acme") == "acme"
    assert realm_name("https://sso.example.com/realms/acme/") == "acme"
    assert realm_name("https://login.example.com") == "https://login.example.com"


def test_the_budget_counts_lookups_under_way_and_those_that_found_no_realm() -> None:
    now = [0.0]
    directory = RealmDirectory(3, clock=lambda: now[0])
    assert [directory.reserve() for _ in range(4)] == [True, True, True, False], "three at once at most"
    directory.settle("found", Lookup.FOUND)
    directory.settle("gone", Lookup.MISSING)
    now[0] = 30.0
    directory.settle("down", Lookup.FAILED)
    assert directory.known("gone") is Lookup.MISSING and directory.known("down") is Lookup.FAILED
    assert directory.known("found") is None
    assert [directory.reserve(), directory.reserve()] == [True, False], "two spent this minute: one left"
    directory.settle("found-too", Lookup.FOUND)
    now[0] = 60.5  # the first spend left the window, the second has not: a sliding minute
    assert [directory.reserve() for _ in range(3)] == [True, True, False]
    directory.settle("found-3", Lookup.FOUND)
    directory.settle("found-4", Lookup.FOUND)
    now[0] = 90.5
    assert [directory.reserve() for _ in range(4)] == [True, True, True, False], "nothing spent in the last minute"


def test_realms_that_exist_do_not_spend_the_budget() -> None:
    directory = RealmDirectory(2, clock=lambda: 0.0)
    for _ in range(100):
        assert directory.reserve()
        directory.settle("tenant", Lookup.FOUND)
