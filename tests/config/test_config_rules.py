"""One set of constraints, enforced twice: the plugin's own checks (schema.py, luapattern.py)
agree with Kong's validation of the schema it dumps (the harness port of kong/db/schema)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kong_plugin_kcauth.config import Config, ConfigError, kong_config_record, kong_schema, luapattern
from tests.harness import kong_schema as kong

CONFIG_FIELD = kong_config_record()  # fields and entity checks, as --dump reports them


def patterns(fields: list[dict[str, Any]]) -> set[str]:
    """Every Lua pattern in a schema: `match` and `match_none`, of fields and of their parts."""
    found: set[str] = set()
    for entry in fields:
        for spec in entry.values():
            for part in (spec, spec.get("elements", {}), spec.get("keys", {}), spec.get("values", {})):
                found.update([part["match"]] if "match" in part else [])
                found.update(rule["pattern"] for rule in part.get("match_none", []))
            found |= patterns(spec.get("fields", []))
    return found


PATTERNS = sorted(patterns(kong_schema()))
SAMPLES = ["", "a", "A-b_c", "X-Auth-Subject", "x a", "https://sso/realms/a", "http://h:1", "ftp://x", "realm:admin",
           ":x", "a:", "a\"b", "a\\b", "\x01", "caf\u00e9", "%", "a..b", ".a", "a.", "/a//b", "/", "~", "[", "]",
           "orders:read", "a b", "\t", "x" * 50, "Host", "hOsT", "%w", "é", "\U0001f600"]


@given(st.text(max_size=12) | st.sampled_from(SAMPLES))
def test_lua_patterns_match_as_in_lua(value: str) -> None:
    for pattern in PATTERNS:
        assert luapattern.find(value, pattern) == kong.lua_match(value, pattern), (pattern, value)


def test_the_patterns_are_the_configs() -> None:
    assert "^https?://" in PATTERNS and len(PATTERNS) >= 4


def field_values(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    anything = st.none() | st.booleans() | st.integers(-10, 10 ** 6) | st.floats() | st.text(max_size=6)
    kind = spec["type"]
    if kind == "string":
        return st.sampled_from(SAMPLES) | anything
    if kind in ("integer", "number"):
        low, high = spec.get("between", [-5, 10 ** 6])
        return st.integers(int(low) - 2, int(high) + 2) | st.floats(low - 1, high + 1) | anything
    if kind == "array":
        element = st.sampled_from(list(spec["elements"].get("one_of", [])) + SAMPLES) | anything
        return st.lists(element, max_size=3) | anything
    if kind == "map":
        return st.dictionaries(st.sampled_from(SAMPLES), st.sampled_from(SAMPLES) | anything, max_size=2) | anything
    return anything


FIELDS = {name: spec for f in kong_schema() for name, spec in f.items() if spec["type"] != "record"}


# What only the plugin can check, at instance start: the key itself, the CA file on the node.
INSTANCE_START_ONLY = {"tls_ca_bundle", "client_private_key"}


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_the_plugin_refuses_exactly_what_kong_refuses(name: str, data: st.DataObject) -> None:
    value = data.draw(field_values(FIELDS[name]))
    raw = kong.apply_defaults(CONFIG_FIELD, {"issuer": "https://sso/realms/a", "audiences": ["api"]})
    raw[name] = value
    kong_problems = kong.validate_config(CONFIG_FIELD, raw)
    try:
        Config.from_kong(raw)
        plugin_problems: list[str] = []
    except ConfigError as exc:
        plugin_problems = str(exc).split("; ")
    if kong_problems:
        assert plugin_problems and set(plugin_problems) <= set(kong_problems), (value, kong_problems, plugin_problems)
    else:
        assert not plugin_problems or name in INSTANCE_START_ONLY, (value, plugin_problems)


@given(st.text(alphabet="a./~0", max_size=8))
def test_claim_path_rules_are_the_parsers(path: str) -> None:
    from kong_plugin_kcauth.config.settings import _CLAIM_PATH_RULES
    from kong_plugin_kcauth.tokens.claims import parse_claim_path

    try:
        parse_claim_path(path)
        parses = True
    except ValueError:
        parses = False
    refused = path == "" or any(luapattern.find(path, rule["pattern"]) for rule in _CLAIM_PATH_RULES)
    assert parses == (not refused), path


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e999])
def test_non_finite_numbers_are_refused_by_kong_with_the_plugins_words(value: float) -> None:
    """cjson decodes 1e999 to inf and LuaJIT's tonumber reads "nan": Kong's number type takes both."""
    raw = kong.apply_defaults(CONFIG_FIELD, {"issuer": "https://sso/realms/a", "audiences": ["api"]})
    raw["http_timeout"] = value
    kong_problems = kong.validate_config(CONFIG_FIELD, raw)
    assert kong_problems
    with pytest.raises(ConfigError) as refused:
        Config.from_kong(raw)
    assert str(refused.value).split("; ") == kong_problems
