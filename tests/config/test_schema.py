"""The config definition: Kong's schema, the typed config and the documented reference agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kong_plugin_kcauth import __version__
from kong_plugin_kcauth.config import Config, ConfigError, kong_config_record, kong_schema
from kong_plugin_kcauth.config.schema import reference_markdown
from tests.harness import kong_schema as kong

REPO = Path(__file__).resolve().parents[2]


def plugin_schema() -> dict[str, Any]:
    return {"name": "kcauth", "fields": [{"config": kong_config_record()}]}


def config_field() -> dict[str, Any]:
    return plugin_schema()["fields"][0]["config"]


def test_schema_passes_kongs_metaschema() -> None:
    assert kong.check_plugin_schema(plugin_schema()) == []
    assert len(plugin_schema()["fields"][0]["config"]["entity_checks"]) >= 9, "the rules between fields ride along"


def test_every_field_is_described() -> None:
    assert kong.check_descriptions(plugin_schema()) == []


def test_a_minimal_config_defaulted_by_kong_is_a_working_config() -> None:
    raw = kong.apply_defaults(config_field(), {"issuer": "https://sso.example.com/realms/acme",
                                               "audiences": ["orders-api"]})
    assert kong.validate_config(config_field(), raw) == []
    config = Config.from_kong(raw)
    assert config.algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert config.discovery_url == "https://sso.example.com/realms/acme/.well-known/openid-configuration"
    assert config.verify_audience and config.leeway == 10


def test_typed_config_ignores_kongs_own_keys() -> None:
    raw = kong.kong_config_for_instance(
        config_field(), kong.apply_defaults(config_field(), {"issuer": "https://a/realms/b", "audiences": ["x"]}),
        plugin_id="p1", seq=3, route_id="r1")
    assert Config.from_kong(raw).issuer == "https://a/realms/b"


@pytest.mark.parametrize(("change", "message"), [
    ({"audiences": []}, "audiences must name at least one audience"),
    ({"jwks_max_stale": 10, "jwks_refresh_interval": 300},
     "config.jwks_max_stale: value should be between 3600 and 604800"),
    ({"claim_headers": {"authorization": "sub"}}, "config.claim_headers: 'authorization' is reserved"),
    ({"claim_headers": {"host": "sub"}}, "config.claim_headers: 'host' is reserved"),
    ({"claim_headers": {"x-consumer-id": "sub"}}, "config.claim_headers: 'x-consumer-id' is reserved"),
    ({"claim_headers": {"X-A": "sub", "x-a": "azp"}}, "config.claim_headers: invalid value: X-A"),
    ({"claim_headers": {"x a": "sub"}}, "config.claim_headers: invalid value: x a"),
    ({"claim_headers": {"x-a": "a..b"}}, "config.claim_headers: the claim path has an empty segment"),
    ({"consumer_claim": "/a//b"}, "config.consumer_claim: the claim path has an empty segment"),
    ({"required_scopes": ['a"b']}, 'config.required_scopes.1: invalid value: a"b'),
    ({"authenticated_group": "   "}, "config.authenticated_group: invalid value"),
    ({"required_roles": [":x"]}, "config.required_roles.1: invalid value: :x"),
    ({"leeway": "10"}, "config.leeway: expected an integer"),
    ({"issuer": None}, "config.@entity: at least one issuer is needed: one of 'issuer', 'issuers', "
                       "'issuer_template'"),
    ({"issuer": None, "issuers": []}, "at least one issuer is needed"),
    ({"issuers": [{"issuer": "ftp://x"}]}, "config.issuers.1.issuer: invalid value: ftp://x"),
    ({"issuers": [None]}, "config.issuers.1: required field missing"),
    ({"issuers": [{"audiences": ["a"]}]}, "config.issuers.1.issuer: required field missing"),
    ({"issuers": [{"issuer": "https://a/realms/c", "audiences": []}]},
     "config.issuers.1.audiences: length must be at least 1"),
    ({"issuer_template": "https://a/realms/"}, "config.issuer_template: expected an http"),
    ({"issuer_template": "https://{realm}/realms/x"}, "config.issuer_template: expected an http"),
    ({"issuer_template": "https://a/realms/{realm}/{realm}"}, "config.issuer_template: expected an http"),
    ({"issuer_template": "https://a/realms/{realm}?x"}, "config.issuer_template: expected an http"),
])
def test_combinations_kong_cannot_express_fail_the_instance_start(change: dict[str, Any], message: str) -> None:
    raw = kong.apply_defaults(config_field(), {"issuer": "https://a/realms/b", "audiences": ["x"]})
    raw.update(change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_kong(raw)
    assert any(message in problem for problem in kong.validate_config(config_field(), raw)), "Kong refuses it too"


def test_fingerprint_changes_with_any_setting() -> None:
    base = Config.from_kong({"issuer": "https://a/realms/b", "audiences": ["x"]})
    other = Config.from_kong({"issuer": "https://a/realms/b", "audiences": ["x"], "leeway": 11})
    assert base.fingerprint() == Config.from_kong({"issuer": "https://a/realms/b", "audiences": ["x"]}).fingerprint()
    assert base.fingerprint() != other.fingerprint()


def test_the_documented_reference_matches_the_schema() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    start = page.index("<!-- config-reference:start -->\n") + len("<!-- config-reference:start -->\n")
    end = page.index("<!-- config-reference:end -->")
    assert page[start:end] == reference_markdown(kong_schema()), \
        "run `make reference` and paste it into docs/configuration.md"


def test_version_is_the_package_version() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
