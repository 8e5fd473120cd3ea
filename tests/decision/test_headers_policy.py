"""Upstream header encoding, claim paths, groups and the scope/role policy."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from kong_plugin_kcauth import errors
from kong_plugin_kcauth.decision.headers import (
    MAX_REQUEST_HEADERS,
    HeaderPlan,
    all_seen,
    changes,
    encode,
    groups_for,
    upstream_headers,
)
from kong_plugin_kcauth.decision.policy import Policy, authorize, satisfied
from kong_plugin_kcauth.tokens.claims import claim_at, parse_claim_path, roles_of, scopes_of

CLAIMS = {
    "sub": "u1", "scope": "openid orders:read",
    "realm_access": {"roles": ["user", "admin"]},
    "resource_access": {"orders-api": {"roles": ["reader"]}, "urn:x:app": {"roles": ["w"]},
                        "bad": {"roles": "notalist"}},
    "https://example.com/tenant": "t1",
    "n": 3, "f": 1.5, "b": False, "null": None,
}


@pytest.mark.parametrize(("value", "wire"), [
    ("alice", "alice"),
    ("a b", "a b"),
    (" padded ", "%20padded%20"),
    ("100%", "100%25"),
    ("a\r\nX-Evil: 1", "a%0D%0AX-Evil: 1"),
    ("tab\there", "tab%09here"),
    ("del\x7f", "del%7F"),
    ("José", "Jos%C3%A9"),
    ("日本", "%E6%97%A5%E6%9C%AC"),
    (3, "3"), (1.5, "1.5"), (True, "true"), (False, "false"),
    (["a", "b"], '["a","b"]'),
    ({"k": ["v\n"]}, '{"k":["v\\n"]}'),
    (["é\x7f"], '["\\u00e9\\u007f"]'),
])
def test_encoding(value: object, wire: str) -> None:
    assert encode(value) == wire
    assert all(32 <= ord(c) < 127 for c in wire), "only printable ASCII reaches a header"
    if isinstance(value, str):
        assert unquote(wire) == value, "strings decode back exactly"
    if isinstance(value, (list, dict)):
        assert json.loads(wire) == value


def test_absent_and_null_claims_encode_to_nothing() -> None:
    assert encode(None) is None


def test_claim_paths() -> None:
    assert parse_claim_path("a.b") == ("a", "b")
    assert parse_claim_path("/https:~1~1example.com~1tenant") == ("https://example.com/tenant",)
    assert claim_at(CLAIMS, parse_claim_path("/https:~1~1example.com~1tenant")) == "t1"
    assert claim_at(CLAIMS, ("resource_access", "orders-api", "roles")) == ["reader"]
    assert claim_at(CLAIMS, ("sub", "deeper")) is None
    assert claim_at(CLAIMS, ("missing",)) is None
    for bad in ("", "a..b", ".a", "/a//b"):
        with pytest.raises(ValueError):
            parse_claim_path(bad)


def test_upstream_headers_set_or_remove_every_configured_name() -> None:
    plan = HeaderPlan.compile({"X-Sub": "sub", "X-Missing": "nope", "X-Null": "null",
                               "X-Long": "resource_access"}, max_length=40, strip_authorization=True)
    assert upstream_headers(plan, CLAIMS) == {
        "X-Sub": "u1", "X-Missing": [], "X-Null": [], "X-Long": [], "Authorization": [],
    }


def test_changes_keep_removals_of_carried_headers_only() -> None:
    plan = HeaderPlan.compile({"X-Sub": "sub", "X-Missing": "nope", "X-Empty": "empty"}, max_length=40,
                              strip_authorization=True)
    headers = upstream_headers(plan, {**CLAIMS, "empty": ""})
    assert changes(headers, {"authorization": ["Bearer t"]}) == {"X-Sub": "u1", "X-Empty": "", "Authorization": []}
    assert changes(headers, {"authorization": ["Bearer t"], "x-missing": ["forged"]})["X-Missing"] == []


def test_a_header_map_at_kongs_limit_may_hide_lines() -> None:
    assert all_seen({"a": ["1"] * (MAX_REQUEST_HEADERS - 2), "b": "2"})
    assert not all_seen({"a": ["1"] * (MAX_REQUEST_HEADERS - 1), "b": "2"})


def test_roles_and_scopes() -> None:
    assert roles_of(CLAIMS) == {"realm:user", "realm:admin", "orders-api:reader", "urn:x:app:w"}
    assert scopes_of(CLAIMS) == {"openid", "orders:read"}
    assert roles_of({"realm_access": "x", "resource_access": []}) == frozenset()


def test_groups() -> None:
    assert groups_for(CLAIMS, "kcauth:authenticated", True) == [
        "kcauth:authenticated", "orders-api:reader", "realm:admin", "realm:user", "urn:x:app:w"]
    assert groups_for(CLAIMS, "g", False) == ["g"]


def test_policy_modes() -> None:
    held = frozenset({"a", "b"})
    assert satisfied((), frozenset(), "all")
    assert satisfied(("a", "b"), held, "all")
    assert not satisfied(("a", "c"), held, "all")
    assert satisfied(("a", "c"), held, "any")
    assert not satisfied(("c", "d"), held, "any")


def test_authorize() -> None:
    authorize(Policy(("orders:read",), "all", ("realm:admin", "urn:x:app:w"), "all"), CLAIMS)
    with pytest.raises(errors.InsufficientScope) as scope_refusal:
        authorize(Policy(("orders:write",)), CLAIMS)
    assert scope_refusal.value.required_scopes == ("orders:write",)
    with pytest.raises(errors.InsufficientScope) as role_refusal:
        authorize(Policy(roles=("realm:root",)), CLAIMS)
    assert role_refusal.value.required_scopes == ()


def test_challenges() -> None:
    assert errors.challenge(errors.MissingToken(), "kong") == 'Bearer realm="kong"'
    assert errors.challenge(errors.Expired(), "api") == (
        'Bearer realm="api", error="invalid_token", error_description="The access token expired"')
    reply = errors.answer(errors.KeysUnavailable(), "kong")
    assert (reply.status, reply.headers) == (503, {"Retry-After": "5"})
    reply = errors.answer(errors.InternalFault(), "kong")
    assert (reply.status, reply.body, reply.headers) == (500, {"message": "An unexpected error occurred"}, {})
