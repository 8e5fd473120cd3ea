"""Kong's auth-plugin conventions, with the semantics of its bundled key-auth and jwt handlers
(kong/plugins/key-auth/handler.lua): logical OR with `anonymous`, `run_on_preflight`, groups
for ACL. The plugin server command as an operator runs it is in tests/pluginserver/test_plugin_server_process.py."""

from __future__ import annotations

import uuid

from tests.conftest import bearer, guard_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

PARTNER = {"id": str(uuid.uuid4()), "username": "partner"}
PARTNER_KEY = {"id": str(uuid.uuid4())}
ANONYMOUS = {"id": str(uuid.uuid4()), "username": "anonymous"}


def test_with_anonymous_a_request_another_auth_plugin_authenticated_is_left_to_it(
        kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """key-auth: "we're already authenticated, and we're configured for using anonymous,
    hence we're in a logical OR between auth methods and we're already done"."""
    kong.consumers = [ANONYMOUS, PARTNER]
    try:
        either = kong.plugin(guard_config(idp, anonymous="anonymous"))
        res = kong.request(either, [("X-Auth-Subject", "forged")], authenticated_by=(PARTNER, PARTNER_KEY))
        assert res.status == 200 and res.proxied
        assert res.consumer == PARTNER and res.credential == PARTNER_KEY, "the other plugin's consumer stays"
        assert res.upstream("X-Auth-Subject") == [], "kcauth's headers never carry a client's value"
        assert res.upstream("X-Consumer-ID") == [PARTNER["id"]]
        assert "authenticated_groups" not in res.ctx_shared

        token = kong.request(either, bearer(minter.token()))
        assert token.status == 200 and token.upstream("X-Auth-Subject") == [minter.claims()["sub"]]
        nothing = kong.request(either, [])
        assert nothing.status == 200 and nothing.consumer == ANONYMOUS, "neither: the anonymous consumer"

        both = kong.plugin(guard_config(idp))  # no anonymous: AND
        assert kong.request(both, [], authenticated_by=(PARTNER, PARTNER_KEY)).status == 401
    finally:
        kong.consumers = []


def test_preflight_requests_pass_only_when_told(kong: Kong, idp: LocalIdP) -> None:
    strict = kong.plugin(guard_config(idp))
    assert kong.request(strict, [], method="OPTIONS").status == 401, "run_on_preflight is on by default"
    lenient = kong.plugin(guard_config(idp, run_on_preflight=False))
    res = kong.request(lenient, [("X-Auth-Subject", "forged")], method="OPTIONS")
    assert res.status == 200 and res.proxied and res.upstream("X-Auth-Subject") == []
    assert kong.request(lenient, [], method="GET").status == 401
    assert kong.request(lenient, [], method="OPTIONS", acl_allow=["kcauth:authenticated"]).status == 401, \
        "like key-auth's, the preflight carries no groups: Kong's ACL still refuses it"


def test_keycloak_groups_are_handed_to_acl(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp, groups_claim="groups"))
    token = minter.token(groups=["/staff/admins", "ops", 7, ""])
    res = kong.request(entity, bearer(token), acl_allow=["group:/staff/admins"])
    assert res.status == 200
    assert {"group:/staff/admins", "group:ops", "kcauth:authenticated", "realm:user"} <= set(
        res.ctx_shared["authenticated_groups"])
    assert "group:7" not in res.ctx_shared["authenticated_groups"]
    assert kong.request(entity, bearer(minter.token()), acl_allow=["group:ops"]).status == 403
    off = kong.plugin(guard_config(idp))
    assert not any(g.startswith("group:") for g in kong.request(off, bearer(token)).ctx_shared["authenticated_groups"])
