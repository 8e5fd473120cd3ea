"""Identity headers are kcauth's (or Kong's) alone: whatever the config, a client's own copy of a
claim header or of Kong's consumer headers never reaches the upstream, in any spelling."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import bearer, guard_config, round_trips
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

KONG_HEADERS = ["X-Consumer-ID", "X-Consumer-Username", "X-Consumer-Custom-ID", "X-Credential-Identifier",
                "X-Anonymous-Consumer", "X-Consumer-Groups", "X-Authenticated-Groups", "X-Authenticated-Scope",
                "X-Authenticated-Userid"]
KEY_AUTH_CONSUMER = {"id": str(uuid.uuid4()), "username": "partner"}
KEY_AUTH_CREDENTIAL = {"id": str(uuid.uuid4())}


def test_kong_consumer_headers_never_pass_without_consumer_mapping(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    res = kong.request(entity, bearer(minter.token()) + [(name, "forged") for name in KONG_HEADERS])
    assert res.status == 200
    for name in KONG_HEADERS:
        assert res.upstream(name) == [], name
    assert res.consumer is None
    assert "kong.client.get_credential" in res.pdk_calls, "Kong was asked whether anyone authenticated"
    clean = kong.request(entity, bearer(minter.token()))
    assert round_trips(clean) == ["kong.request.get_headers", "kong.service.request.set_headers",
                                  "kong.ctx.shared.set"], \
        "asking costs a round trip only when a client sends such a header"


def test_another_auth_plugin_that_ran_first_keeps_its_headers(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """key-auth (priority 1250) ran before kcauth (980) and authenticated a consumer: its
    headers are Kong's, kept; a client's underscore spelling of them is still removed."""
    entity = kong.plugin(guard_config(idp))
    res = kong.request(entity, bearer(minter.token()) + [("X-Consumer-ID", "forged"), ("X_Consumer_ID", "forged")],
                       authenticated_by=(KEY_AUTH_CONSUMER, KEY_AUTH_CREDENTIAL))
    assert res.status == 200
    assert res.upstream("X-Consumer-ID") == [KEY_AUTH_CONSUMER["id"]]
    assert res.upstream("X-Credential-Identifier") == [KEY_AUTH_CREDENTIAL["id"]]
    assert res.upstream("X_Consumer_ID") == []
    assert res.consumer == KEY_AUTH_CONSUMER, "kcauth maps no consumer here, so Kong's stays"


@pytest.mark.parametrize("spelling", ["X_Auth_Subject", "x_auth_subject", "X-Auth_Subject", "X_CONSUMER_USERNAME",
                                      "x_authenticated_groups"])
def test_underscore_spellings_are_removed(kong: Kong, idp: LocalIdP, minter: Minter, spelling: str) -> None:
    """Kong's nginx passes underscores in header names (`underscores_in_headers on`), and WSGI,
    CGI and many frameworks read `X_Auth_Subject` as `X-Auth-Subject`."""
    entity = kong.plugin(guard_config(idp))
    res = kong.request(entity, bearer(minter.token()) + [(spelling, "forged")])
    assert res.status == 200
    assert [v for n, v in res.upstream_headers if n.lower() == spelling.lower()] == []
    assert res.upstream("X-Auth-Subject") == [minter.claims()["sub"]]
    unrelated = kong.request(entity, bearer(minter.token()) + [("X_Request_Tag", "kept")])
    assert unrelated.upstream("X_Request_Tag") == ["kept"], "only spellings of managed headers go"


def test_the_anonymous_consumer_clears_every_identity_header(kong: Kong, idp: LocalIdP) -> None:
    anonymous = {"id": str(uuid.uuid4()), "username": "anonymous"}
    kong.consumers = [anonymous]
    try:
        entity = kong.plugin(guard_config(idp, anonymous="anonymous"))
        res = kong.request(entity, [(name, "forged") for name in KONG_HEADERS] + [("X_Auth_Subject", "forged"),
                                                                                 ("X-Auth-Subject", "forged")])
        assert res.status == 200 and res.consumer == anonymous
        assert res.upstream("X-Anonymous-Consumer") == ["true"]
        assert res.upstream("X-Consumer-ID") == [anonymous["id"]]
        for name in set(KONG_HEADERS) - {"X-Anonymous-Consumer", "X-Consumer-ID", "X-Consumer-Username"}:
            assert res.upstream(name) == [], name
        assert res.upstream("X-Auth-Subject") == [] and res.upstream("X_Auth_Subject") == []
    finally:
        kong.consumers = []


FORGED_LAST = [("X_Auth_Subject", "forged"), ("X-Consumer-Username", "forged"), ("X_Consumer_ID", "forged"),
               ("X-Auth-Subject", "forged")]


@pytest.mark.parametrize("lines", [150, 998])
def test_copies_past_kongs_default_header_limit_are_removed(kong: Kong, idp: LocalIdP, minter: Minter,
                                                             lines: int) -> None:
    """Kong hands a plugin 100 header lines unless asked for more (lua_max_req_headers,
    kong/pdk/request.lua): copies hidden past them are seen and removed all the same."""
    entity = kong.plugin(guard_config(idp))
    filler = [(f"X-Fill-{i}", "x") for i in range(lines - len(FORGED_LAST) - 1)]
    res = kong.request(entity, bearer(minter.token()) + filler + FORGED_LAST)
    assert res.status == 200 and res.proxied
    for name, _ in FORGED_LAST:
        assert [v for n, v in res.upstream_headers if n.lower() == name.lower() and v == "forged"] == [], name
    assert res.upstream("X-Auth-Subject") == [minter.claims()["sub"]]


def test_more_header_lines_than_kong_hands_over_are_refused(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """At Kong's most (1000 lines) the rest is out of sight: refused (431), never proxied."""
    entity = kong.plugin(guard_config(idp))
    filler = [(f"X-Fill-{i}", "x") for i in range(1000)]
    res = kong.request(entity, bearer(minter.token()) + filler + FORGED_LAST)
    assert (res.status, res.proxied, res.body) == (431, False, {"message": "Request Header Fields Too Large"})
    assert "WWW-Authenticate" not in res.headers


def test_removals_go_only_where_the_request_has_the_header(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """A removal of a header the request does not carry changes nothing: not sent, and when
    nothing changes at all there is no set_headers round trip."""
    entity = kong.plugin(guard_config(idp, run_on_preflight=False))
    preflight = kong.request(entity, [("Origin", "https://app.example")], method="OPTIONS")
    assert preflight.proxied and "kong.service.request.set_headers" not in preflight.pdk_calls
    carrying = kong.request(entity, [("Origin", "https://app.example"), ("x_auth_subject", "forged")],
                            method="OPTIONS")
    assert carrying.proxied and carrying.upstream("x_auth_subject") == []
    assert "kong.service.request.set_headers" in carrying.pdk_calls
