"""A config that cannot work is refused: by Kong's validation of the schema kcauth dumps, and,
should one reach the plugin anyway, by the plugin at instance start with the same message (the
one definition in config.py is enforced twice)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import CLIENT_SECRET, bearer, guard_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

FORBIDDEN = [
    {"algorithms": ["HS256"]}, {"algorithms": ["none"]}, {"algorithms": []}, {"leeway": -5}, {"leeway": 100000},
    {"jwks_uri": "file:///etc/passwd"}, {"jwks_uri": "gopher://sso/certs"}, {"issuer": "ftp://sso/realms/a"},
    {"max_token_size": 0}, {"realm": 'kong", error="x'}, {"token_cache_size": -1}, {"http_timeout": 60},
    {"introspection_endpoint": "file:///x"}, {"provider_url": "http://sso/path"}, {"redis": {"port": 0}},
    {"redis": {"timeout": 0}}, {"redis": {"secret": "too short"}}, {"required_roles": ["admin"]},
    {"claim_headers": {"x a": "sub"}}, {"claim_headers": {"x-a": ""}}, {"scopes_match": "some"},
    # Rules between fields (the config record's entity checks):
    {"introspect": True, "client_secret": "s"},  # no client_id
    {"introspect": True, "client_id": "api"},  # no client_secret under client_secret_basic
    {"introspect": True, "client_id": "api", "client_auth_method": "client_secret_post"},
    {"introspect": True, "client_id": "api", "client_auth_method": "private_key_jwt"},  # no key
    {"introspect": True, "client_id": "api", "client_auth_method": "private_key_jwt", "client_private_key": "secret!"},
    {"introspect": True, "client_id": "api", "client_private_key": "-----BEGIN PRIVATE KEY-----\nx"},  # basic + key
    {"mode": "revocation_receiver", "audiences": []}, {"mode": "revocation_receiver", "verify_audience": False},
    {"claim_headers": {"authorization": "sub"}}, {"claim_headers": {"host": "sub"}},
    {"claim_headers": {"content-length": "sub"}}, {"claim_headers": {"x-consumer-id": "azp"}},
    {"claim_headers": {"X-User": "sub", "x-user": "azp"}},  # one name twice, in two cases
    {"verify_audience": True, "audiences": []}, {"accept_opaque_tokens": True},
    {"consumer_required": True}, {"redis": {"host": "redis.internal"}},
    {"revocation_feed": {"client_id": "kcauth-feed"}},  # no secret
    # Redis by Kong's names: `tls` (deprecated) must not contradict `ssl`; a Sentinel set up whole
    {"redis": {"host": "r", "secret": "s" * 32, "tls": False, "ssl": True}},
    {"redis": {"sentinel_master": "kc", "secret": "s" * 32}},  # no sentinel_nodes
    {"redis": {"sentinel_nodes": [{"host": "s1"}], "secret": "s" * 32}},  # no sentinel_master
    {"redis": {"sentinel_master": "kc", "sentinel_nodes": [{"host": "s1"}]}},  # no secret
    {"redis": {"host": "r", "sentinel_master": "kc", "sentinel_nodes": [{"host": "s1"}], "secret": "s" * 32}},
    {"redis": {"sentinel_master": "kc", "sentinel_role": "slave", "sentinel_nodes": [{"host": "s1"}],
               "secret": "s" * 32}},
    {"redis": {"sentinel_master": "kc", "sentinel_nodes": [{"port": 26379}], "secret": "s" * 32}},  # no host
    {"redis": {"cluster_nodes": [{"ip": "c1"}]}},  # no secret
    {"redis": {"cluster_nodes": [{"ip": "c1"}], "host": "r", "secret": "s" * 32}},
    {"redis": {"cluster_nodes": [{"ip": "c1"}], "sentinel_master": "kc", "sentinel_nodes": [{"host": "s1"}],
               "secret": "s" * 32}},
    {"redis": {"cluster_nodes": [{"ip": "c1"}], "database": 1, "secret": "s" * 32}},
    {"redis": {"cluster_nodes": [], "secret": "s" * 32}}, {"redis": {"keepalive_pool_size": 0}},
    {"revocation_feed": {"client_id": "kcauth-feed", "client_secret": "s", "interval": 0}},
    # URL fields: a host, no user-info, query, fragment, whitespace or backslash; origins nothing after:
    {"public_base_url": "https://api.example.com?x=1"}, {"public_base_url": "https://api.example.com#f"},
    {"provider_url": "http://sso?x=1"}, {"provider_url": "http://user@sso"}, {"issuer": "http://"},
    {"issuer": "https://sso.example.com/realms/a?x"}, {"issuer": "https://sso.example.com/realms/a#f"},
    {"jwks_uri": "http://"}, {"jwks_uri": "https://:443/certs"}, {"introspection_endpoint": "https://"},
    {"introspection_endpoint": "https://kc@sso/introspect"}, {"jwks_uri": "https://sso/realms/a b/certs"},
    {"issuer": "https://evil.com\\@sso.example.com/realms/a"}, {"issuers": [{"issuer": "http://"}]},
    {"issuers": [{"issuer": "https://sso/realms/b", "provider_url": "http://kc?x"}]},
    {"issuer_template": "https://u@sso/realms/{realm}"}, {"issuer_template": "https:///realms/{realm}"},
    # Reserved claim headers in any spelling (WSGI and CGI read `_` as `-`):
    {"claim_headers": {"x_consumer_id": "azp"}}, {"claim_headers": {"x_forwarded_for": "sub"}},
    {"claim_headers": {"x-forwarded-path": "sub"}}, {"claim_headers": {"x_real_ip": "sub"}},
    {"claim_headers": {"x_kong_request_id": "jti"}}, {"claim_headers": {"via": "sub"}},
    # the feed derives the realm's admin API from a Keycloak realm issuer:
    {"issuer": "https://login.example.com/tenant", "revocation_feed": {"client_id": "f", "client_secret": "s"}},
    # the Shared Signals receiver: a secret, a Keycloak realm issuer, a poll interval in range
    {"ssf": {"client_id": "kcauth-ssf"}}, {"ssf": {"client_id": "r", "client_secret": "s", "poll_interval": 0}},
    {"issuer": "https://login.example.com/tenant", "ssf": {"client_id": "r", "client_secret": "s"}},
    {"ssf": {"delivery": "sometimes"}}, {"ssf": {"push_url": "https://gw.example/kcauth/revocations"}},  # poll
    {"ssf": {"client_id": "r", "client_secret": "s", "delivery": "push"}},  # no push_url
    {"ssf": {"delivery": "push", "push_url": "https://gw.example/kcauth/revocations"}},  # on a guard
    {"ssf": {"delivery": "push", "push_url": "https://gw.example/r?x=1"}},
    # ... and an `issuers` entry's own client: a secret, a Keycloak realm issuer
    {"issuers": [{"issuer": "https://sso.example.com/realms/b", "ssf": {"client_id": "r"}}]},
    {"issuers": [{"issuer": "https://login.example.com/tenant", "ssf": {"client_id": "r", "client_secret": "s"}}]},
]
RECORDS = ("redis", "revocation_feed", "ssf")


@pytest.mark.parametrize("bad", FORBIDDEN, ids=lambda c: str(c)[:48])
def test_kong_refuses_it_and_so_does_the_plugin(kong: Kong, idp: LocalIdP, minter: Minter, bad: dict[str, Any]) -> None:
    good = guard_config(idp)
    with pytest.raises(ValueError) as refused:
        kong.plugin({**good, **bad})
    kong_message = str(refused.value)
    entity = kong.plugin(good)
    entity.validated = False
    for name, value in bad.items():  # as if it had reached the plugin server past Kong
        entity.config[name] = {**entity.config[name], **value} if name in RECORDS else value
    res = kong.request(entity, bearer(minter.token()))
    assert res.status == 500 and not res.proxied, "Kong answers 500 when the instance cannot start"
    plugin_message = next(e for e in res.errors if "starting instance" in e)
    assert plugin_message.split("starting instance: ")[1] in kong_message, (plugin_message, kong_message)


def test_the_admin_api_answers_400_naming_the_field(kong: Kong, idp: LocalIdP) -> None:
    """DB-less Kong's `POST /config` (the stand-in's Admin API) refuses a kong.yml whose kcauth
    config breaks a rule between fields, with Kong's message, before anything runs."""
    import requests

    from tests.harness.gateway import Gateway

    gateway = Gateway(kong, [])
    admin = gateway.serve_admin()
    try:
        config = guard_config(idp, introspect=True, client_id="orders-api")
        doc = {"_format_version": "3.0", "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [
            {"name": "r", "paths": ["/r"], "plugins": [{"name": "kcauth", "config": config}]}]}]}
        res = requests.post(f"{admin}/config", json=doc, timeout=10)
        assert res.status_code == 400
        assert "config.@entity: introspect needs the client's credentials" in res.json()["message"]
        config["client_secret"] = CLIENT_SECRET
        assert requests.post(f"{admin}/config", json=doc, timeout=10).status_code == 201
    finally:
        gateway.stop()


@pytest.mark.parametrize("bad", [{"algorithms": ["HS256"]}, {"algorithms": ["none"]}, {"leeway": -1},
                                 {"issuer": "ftp://x"}, {"required_roles": ["admin"]}])
def test_kong_refuses_bad_configs(kong: Kong, idp: LocalIdP, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        kong.plugin(guard_config(idp, **bad))


def test_invalid_config_fails_closed_at_instance_start(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    entity.validated = False  # as if it reached the plugin server past Kong's validation
    entity.config["verify_audience"] = True
    entity.config["audiences"] = []
    res = kong.request(entity, bearer(minter.token()))
    assert res.status == 500 and not res.proxied
    assert any("audiences must name at least one audience" in e for e in res.errors), res.errors
