"""Verified tokens are remembered, through the real plugin server: per configuration (a token one
route accepted is judged again under another route's rules) and only until they expire. The
cache itself, without a server, is tests/decision/test_cache.py."""

from __future__ import annotations

import time

from tests.conftest import bearer, guard_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong


def test_valid_tokens_are_remembered_per_configuration(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    open_route = kong.plugin(guard_config(idp))
    admin_route = kong.plugin(guard_config(idp, required_roles=["realm:admin"]))
    token = minter.token()
    assert kong.request(open_route, bearer(token)).status == 200
    assert kong.request(open_route, bearer(token)).status == 200
    assert kong.request(admin_route, bearer(token)).status == 403, \
        "a token accepted under one config is not accepted under another config's rules"
    assert kong.request(open_route, bearer(token)).status == 200


def test_cached_tokens_are_refused_once_expired(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp, leeway=0))
    token = minter.token(exp=int(time.time()) + 2)
    assert kong.request(entity, bearer(token)).status == 200
    time.sleep(3.1)
    res = kong.request(entity, bearer(token))
    assert res.status == 401
    assert 'error_description="The access token expired"' in res.headers["WWW-Authenticate"]
