"""A config that cannot work is refused: by Kong's validation of the schema kcauth dumps, and,
should one reach the plugin anyway, by the plugin at instance start with the same message (the
one definition in config.py is enforced twice)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import bearer
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

FORBIDDEN = [
    {"algorithms": ["HS256"]}, {"algorithms": ["none"]}, {"algorithms": []}, {"leeway": -5}, {"leeway": 100000},
    {"jwks_uri": "file:///etc/passwd"}, {"jwks_uri": "gopher://sso/certs"}, {"issuer": "ftp://sso/realms/a"},
    {"max_token_size": 0}, {"realm": 'kong", error="x'}, {"token_cache_size": -1}, {"http_timeout": 60},
    {"introspection_endpoint": "file:///x"}, {"provider_url": "http://sso/path"}, {"redis": {"port": 0}},
    {"redis": {"timeout": 0}}, {"redis": {"secret": "too short"}}, {"required_roles": ["admin"]},
    {"claim_headers": {"X A": "sub"}}, {"claim_headers": {"X-A": ""}}, {"scopes_match": "some"},
]


@pytest.mark.parametrize("bad", FORBIDDEN, ids=lambda c: str(c)[:48])
def test_kong_refuses_it_and_so_does_the_plugin(kong: Kong, idp: LocalIdP, minter: Minter, bad: dict[str, Any]) -> None:
    good = {"issuer": idp.issuer, "audiences": ["orders-api"]}
    with pytest.raises(ValueError) as refused:
        kong.plugin({**good, **bad})
    kong_message = str(refused.value)
    entity = kong.plugin(good)
    entity.validated = False
    for name, value in bad.items():  # as if it had reached the plugin server past Kong
        entity.config[name] = {**entity.config[name], **value} if isinstance(value, dict) and name == "redis" else value
    res = kong.request(entity, bearer(minter.token()))
    assert res.status == 500 and not res.proxied, "Kong answers 500 when the instance cannot start"
    plugin_message = next(e for e in res.errors if "starting instance" in e)
    assert plugin_message.split("starting instance: ")[1] in kong_message, (plugin_message, kong_message)
