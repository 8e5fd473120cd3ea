"""Unit tests of tests/harness/kong_schema.py, the port of Kong 3.9.3's schema engine, for what
kcauth's dumped schema uses.

Each expected message is Kong's own text (kong/db/schema/init.lua validation_errors,
kong/db/schema/metaschema.lua meta_errors) at the path the port reports it under.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from tests.harness import kong_schema as ks

DESC = "A description long enough for Kong."
KONG_TYPES = "array, set, string, number, boolean, integer, foreign, map, record, function, json"


def f(type_: str, **attrs: Any) -> dict[str, Any]:
    """A field definition with a valid description."""
    return {"type": type_, "description": DESC, **attrs}


def config_of(*fields: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    return {"type": "record", "fields": list(fields), **attrs}


def plugin_schema(*fields: dict[str, Any], **config_attrs: Any) -> dict[str, Any]:
    """The shape of a -dump's Schema: {name, fields: [{config: record}]}."""
    return {"name": "kcauth", "fields": [{"config": config_of(*fields, **config_attrs)}]}


def meta(schema: dict[str, Any]) -> list[str]:
    return ks.check_plugin_schema(json.loads(json.dumps(schema)))


def with_field(name: str, fdef: dict[str, Any]) -> dict[str, Any]:
    return plugin_schema({name: fdef})


def validate(fdef: dict[str, Any], value: Any) -> list[str]:
    return ks.validate_config(config_of({"v": fdef}), {"v": value})


# ---------------------------------------------------------------- the real dump


@lru_cache(maxsize=1)
def real_dump() -> dict[str, Any]:
    """The Schema that `kcauth-pluginserver --dump` hands Kong."""
    out = subprocess.run([str(Path(sys.executable).with_name("kcauth-pluginserver")), "--dump"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    schema: dict[str, Any] = json.loads(out)[0]["Schema"]
    return schema


def dump_field(schema: dict[str, Any], pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first config field of the dump for which `pred` holds."""
    return next(spec for entry in schema["fields"][0]["config"]["fields"] for spec in entry.values() if pred(spec))


def test_the_real_dump_loads_in_kong() -> None:
    schema = real_dump()
    assert ks.check_plugin_schema(schema) == []
    assert ks.check_descriptions(schema) == []
    config = schema["fields"][0]["config"]
    assert {"conditional", "conditional_at_least_one_of"} <= {next(iter(c)) for c in config["entity_checks"]}


@pytest.mark.parametrize(("break_it", "expected"), [
    (lambda s: dump_field(s, lambda d: "between" in d).update(between=[0]), r"\.between: length must be 2$"),
    (lambda s: dump_field(s, lambda d: "one_of" in d and "default" in d).update(default="nope"),
     r"\.default: expected one of: "),
    (lambda s: dump_field(s, lambda d: d["type"] == "string").update(type="url"),
     rf"\.type: expected one of: {KONG_TYPES}$"),
    (lambda s: dump_field(s, lambda d: d["type"] == "array").pop("elements"),
     r": field of type 'array' must declare 'elements'$"),
    (lambda s: dump_field(s, lambda d: d["type"] == "integer").update(match="^1"),
     r": field of type 'integer' cannot have attribute 'match'$"),
    (lambda s: dump_field(s, lambda d: "description" in d).update(description="too short"),
     r"\.description: length must be at least 10$"),
    (lambda s: s["fields"][0]["config"]["entity_checks"][0]["conditional"].update(then_match={"required": "yes"}),
     r"^config\.entity_checks\.1\.conditional\.then_match\.required: expected a boolean$"),
    (lambda s: s["fields"][0]["config"]["entity_checks"][0]["conditional"].update(if_field="no_such_field"),
     r"^config\.entity_checks\.1\.conditional: \[harness rule\] 'no_such_field' is no field of this record"),
    (lambda s: s["fields"].append({"colour": f("string")}),
     r"^error initializing schema for plugin: error in definition of 'kcauth': colour: cannot create a new field$"),
    (lambda s: dump_field(s, lambda d: d["type"] == "array").update(type="set"), r"type 'set': not covered"),
])
def test_a_broken_dump_is_refused(break_it: Callable[[dict[str, Any]], Any], expected: str) -> None:
    schema = copy.deepcopy(real_dump())
    break_it(schema)
    errs = ks.check_plugin_schema(schema)
    assert any(re.search(expected, e) for e in errs), errs


def test_the_real_dump_as_kong_stores_and_reads_a_config() -> None:
    config = real_dump()["fields"][0]["config"]
    fields = {n: d for e in config["fields"] for n, d in e.items()}
    optional = [n for n, d in fields.items() if d.get("required") is False and "default" not in d
                and n not in ("issuer", "issuers", "issuer_template")]  # one of them is needed
    given = {"issuer": "https://sso.example.com/realms/acme", "audiences": ["orders-api"], optional[0]: None}
    stored = ks.apply_defaults(config, given)
    assert stored[optional[0]] is None and stored[optional[1]] is None  # given null, or absent: stored null
    assert ks.validate_config(config, stored) == []
    read = ks.kong_config_for_instance(config, given, "plugin-1", 1)
    assert optional[0] not in read and optional[1] not in read  # a read drops nulls
    defaults = {n: d["default"] for n, d in fields.items() if "default" in d and n not in given}
    assert {n: read[n] for n in defaults} == defaults
    for name, record in ((n, d) for n, d in fields.items() if d["type"] == "record"):  # expanded, nulls dropped
        assert read[name] == {n: d["default"] for e in record["fields"] for n, d in e.items() if "default" in d}


# ---------------------------------------------------------------- metaschema: what Kong loads


VALID_SCHEMA = plugin_schema(
    {"issuer": f("string", required=True, match="^https?://", referenceable=True)},
    {"leeway": f("integer", default=10, between=[0, 300])},
    {"timeout": f("number", default=3.0, gt=0)},
    {"verify": f("boolean", default=False)},
    {"mode": f("string", default="all", one_of=["all", "any"])},
    {"audiences": f("array", elements={"type": "string", "len_max": 64}, default=[], len_min=0)},
    {"headers": f("map", keys={"type": "string", "match_none": [{"pattern": "^host$", "err": "reserved"}]},
                  values={"type": "string"}, default={"x-sub": "sub"})},
    {"cache": f("record", fields=[
        {"size": f("integer", default=100)},
        {"ttl": f("number", default=1.5)},
    ])},
    {"secret": f("string", referenceable=True, encrypted=True, err="a secret, please")},
    entity_checks=[{"conditional": {"if_field": "verify", "if_match": {"eq": True}, "then_field": "audiences",
                                    "then_match": {"len_min": 1}, "then_err": "%s needs audiences"}},
                   {"conditional_at_least_one_of": {"if_field": "mode", "if_match": {"one_of": ["any"]},
                                                    "then_at_least_one_of": ["secret", "issuer"]}}],
)
CONFIG = VALID_SCHEMA["fields"][0]["config"]


def test_a_valid_schema_passes() -> None:
    assert meta(VALID_SCHEMA) == []
    assert meta(plugin_schema()) == []
    # cjson decodes {} and [] to the same empty table
    assert meta({"name": "kcauth", "fields": [{"config": {"type": "record", "fields": {}}}]}) == []


def test_kong_does_not_require_a_config_record() -> None:
    assert meta({"name": "kcauth", "fields": []}) == []


def test_referenceable_and_encrypted_are_not_restricted_by_the_metaschema() -> None:
    # attribute_types has no entry for them; on an integer they have no effect
    assert meta(with_field("n", f("integer", referenceable=True, encrypted=True))) == []
    assert meta(with_field("s", f("string", referenceable="yes"))) == ["config.s.referenceable: expected a boolean"]


def test_bad_and_missing_types() -> None:
    assert meta(with_field("x", f("text"))) == [f"config.x.type: expected one of: {KONG_TYPES}"]
    assert meta(with_field("x", {"description": DESC})) == ["config.x.type: required field missing",
                                                            "config.x: missing type declaration"]


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("array"), "config.x: field of type 'array' must declare 'elements'"),
    (f("map", values={"type": "string"}), "config.x: field of type 'map' must declare 'keys'"),
    (f("map", keys={"type": "string"}), "config.x: field of type 'map' must declare 'values'"),
    (f("record"), "config.x: field of type 'record' must declare 'fields'"),
    (f("array", elements="string"), "config.x: 'elements' must be a table"),
])
def test_containers_must_declare_their_parts(fdef: dict[str, Any], expected: str) -> None:
    errs = meta(with_field("x", fdef))
    assert expected in errs


def test_an_attribute_kong_does_not_know() -> None:
    assert meta(with_field("x", f("string", frobnicate=True))) == ["config.x.frobnicate: unknown field"]


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("boolean", one_of=[True]), "config.x: field of type 'boolean' cannot have attribute 'one_of'"),
    (f("array", elements={"type": "string"}, one_of=[["a"]]),
     "config.x: field of type 'array' cannot have attribute 'one_of'"),
    (f("string", between=[1, 2]), "config.x: field of type 'string' cannot have attribute 'between'"),
    (f("integer", match="^a"), "config.x: field of type 'integer' cannot have attribute 'match'"),
    (f("array", elements={"type": "string", "between": [1, 2]}),
     "config.x.elements: field of type 'string' cannot have attribute 'between'"),
])
def test_attributes_restricted_to_some_types(fdef: dict[str, Any], expected: str) -> None:
    assert meta(with_field("x", fdef)) == [expected]


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("integer", between=[1, 2, 3]), "config.x.between: length must be 2"),
    (f("integer", between=[1, "2"]), "config.x.between.2: expected a number"),
    (f("string", one_of="a"), "config.x.one_of: expected an array"),
    (f("string", one_of=["a", None]), "config.x.one_of.2: required field missing"),
    (f("string", len_min=1.5), "config.x.len_min: expected an integer"),
    (f("string", len_max="3"), "config.x.len_max: expected an integer"),
    (f("number", gt="0"), "config.x.gt: expected a number"),
    (f("string", required="yes"), "config.x.required: expected a boolean"),
    (f("string", encrypted=1), "config.x.encrypted: expected a boolean"),
    (f("string", match=5), "config.x.match: expected a string"),
    (f("string", err=5), "config.x.err: expected a string"),
    (f("string", match_none=[{"err": "no"}]), "config.x.match_none.1.pattern: required field missing"),
    (f("string", match_none=[{"pattern": "a", "err": 1}]), "config.x.match_none.1.err: expected a string"),
    (f("string", match_none=[{"pattern": "a", "colour": 1}]), "config.x.match_none.1.colour: unknown field"),
    (f("string", match_none={"pattern": "a"}), "config.x.match_none: expected an array"),
])
def test_attribute_types(fdef: dict[str, Any], expected: str) -> None:
    assert meta(with_field("x", fdef)) == [expected]


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("string", default=5), "config.x.default: expected a string"),
    (f("integer", default=1.5), "config.x.default: expected an integer"),
    (f("number", default="1"), "config.x.default: expected a number"),
    (f("boolean", default="true"), "config.x.default: expected a boolean"),
    # the default must pass the field's validators too
    (f("string", default="some", one_of=["all", "any"]), "config.x.default: expected one of: all, any"),
    (f("integer", default=500, between=[0, 300]), "config.x.default: value should be between 0 and 300"),
    (f("string", default=""), "config.x.default: length must be at least 1"),  # strings: len_min 1 unless said
    (f("array", elements={"type": "string"}, default=["a", 2]), "config.x.default.2: expected a string"),
    (f("map", keys={"type": "string"}, values={"type": "string"}, default={"a": 1}),
     "config.x.default: expected a string"),
    (f("record", fields=[{"a": f("integer")}], default={"a": "1"}), "config.x.default.a: expected an integer"),
    (f("record", fields=[{"a": f("integer")}], default={"b": 1}), "config.x.default.b: unknown field"),
    (f("string", required=True, default=None), "config.x.default: required field missing"),
])
def test_a_default_must_validate_against_its_field(fdef: dict[str, Any], expected: str) -> None:
    assert meta(with_field("x", fdef)) == [expected]


def test_defaults_that_validate() -> None:
    assert meta(with_field("x", f("string", default="", len_min=0))) == []
    assert meta(with_field("x", f("string", default=None))) == []  # a null default on an optional field
    assert meta(with_field("x", f("string", default="{vault://env/x}", referenceable=True, len_min=40))) == []


def test_a_default_the_field_cannot_validate() -> None:
    # validating the default indexes `elements`: a Lua error, caught by validate_fields' pcall
    assert meta(with_field("x", f("array", default=[]))) == [
        "config.x.default: error in schema prevents from validating this field",
        "config.x: field of type 'array' must declare 'elements'"]


@pytest.mark.parametrize(("desc", "expected"), [
    ("too short", ["config.x.description: length must be at least 10"]),  # 9 bytes
    ("ten bytes!", []),
    ("é" * 5, []),  # 10 bytes in UTF-8: Kong measures bytes, not characters
    ("a" * 500, []),
    ("a" * 501, ["config.x.description: length must be at most 500"]),
    ("é" * 251, ["config.x.description: length must be at most 500"]),
    (42, ["config.x.description: expected a string"]),
])
def test_the_metaschema_checks_the_description_length_in_bytes(desc: Any, expected: list[str]) -> None:
    assert meta(with_field("x", {"type": "string", "description": desc})) == expected


def test_nested_definitions_are_checked_and_named() -> None:
    errs = meta(with_field("outer", f("record", fields=[
        {"inner": f("strng")},
        {"list": f("array")},
        {"tags": f("array", elements={"type": "string", "one_of": "a"})},
    ])))
    assert errs == [f"config.outer.inner.type: expected one of: {KONG_TYPES}",
                    "config.outer.tags.elements.one_of: expected an array",
                    "config.outer.list: field of type 'array' must declare 'elements'"]


def test_fields_entries_must_be_single_key_tables() -> None:
    def config_fields(fields: Any) -> dict[str, Any]:
        return {"name": "kcauth", "fields": [{"config": {"type": "record", "fields": fields}}]}
    assert meta(config_fields([{"a": f("string"), "b": f("string")}])) == ["config.fields[1]: length must be 1"]
    assert meta(config_fields(["a"])) == ["config.fields[1]: expected a map",
                                          "config.fields: each entry in fields must be a sub-table"]
    assert meta(config_fields([{}])) == ["config.fields[1]: length must be 1",
                                         "config.fields: field entry table is empty"]
    assert meta(config_fields([{"a": "string"}])) == ["config.a: expected a record", "config.a: 'a' must be a table"]
    assert meta({"name": "kcauth", "fields": {"config": {}}}) == ["fields: expected an array"]


def test_schema_level_keys() -> None:
    assert meta({"fields": []}) == ["name: field required for entity check"]
    assert meta({"name": "kcauth"}) == ["fields: field required for entity check"]
    assert meta({"name": None, "fields": []}) == ["name: required field missing"]
    assert meta({**plugin_schema(), "primary_key": ["id"]}) == ["primary_key: unknown field"]
    assert ks.check_plugin_schema(None) == ["(schema): expected a table, got nil"]


def test_top_level_fields_as_entity_new_subschema_checks_them() -> None:
    assert meta({"name": "kcauth", "fields": [{"config": config_of()}, {"colour": f("string")}]}) == [
        "error initializing schema for plugin: error in definition of 'kcauth': colour: cannot create a new field"]
    assert meta({"name": "kcauth", "fields": [{"config": f("string")}]}) == [
        "error initializing schema for plugin: error in definition of 'kcauth': config: cannot change type in a "
        "specialized field"]


def test_entity_check_shapes() -> None:
    two_in_one = plugin_schema({"a": f("string")}, entity_checks=[{
        "conditional": {"if_field": "a", "if_match": {"eq": "x"}, "then_field": "a", "then_match": {"len_min": 2}},
        "conditional_at_least_one_of": {"if_field": "a", "if_match": {"eq": "x"}, "then_at_least_one_of": ["a"]}}])
    every_checker = ("'at_least_one_of', 'conditional_at_least_one_of', 'only_one_of', 'distinct', 'conditional', "
                     "'custom_entity_check', 'mutually_required', 'mutually_exclusive', 'mutually_exclusive_sets'")
    expected_one = f"config.entity_checks.1.@entity: exactly one of these fields must be non-empty: {every_checker}"
    assert meta(two_in_one) == [expected_one]
    assert meta(plugin_schema({"a": f("string")}, entity_checks=[{}])) == [expected_one]
    assert meta(plugin_schema({"a": f("string")}, entity_checks=[{"exactly_two_of": ["a"]}])) == [
        "config.entity_checks.1.exactly_two_of: unknown field", expected_one]
    assert meta(plugin_schema({"a": f("string")}, entity_checks=["a"])) == [
        "config.entity_checks.1: expected a record"]
    bad_parts = plugin_schema({"a": f("string")}, entity_checks=[{"conditional": {
        "if_field": 5, "if_match": {"eq": "x", "colour": 1}, "then_field": "a", "then_match": "required"}}])
    assert meta(bad_parts) == ["config.entity_checks.1.conditional.if_field: expected a string",
                               "config.entity_checks.1.conditional.if_match.colour: unknown field",
                               "config.entity_checks.1.conditional.then_match: expected a record"]
    bad_list = plugin_schema({"a": f("string")}, entity_checks=[{"conditional_at_least_one_of": {
        "if_field": "a", "if_match": {"eq": "x"}, "then_at_least_one_of": "a", "then_err": ["no"]}}])
    where = "config.entity_checks.1.conditional_at_least_one_of"
    assert meta(bad_list) == [f"{where}.then_at_least_one_of: expected an array",
                              f"{where}.then_err: expected a string"]


def test_entity_checks_kong_loads_but_cannot_run() -> None:
    no_match = plugin_schema({"a": f("string")}, {"b": f("string")}, entity_checks=[
        {"conditional": {"if_field": "a", "if_match": {"eq": "x"}, "then_field": "b"}}])
    assert meta(no_match) == [
        "config.entity_checks.1.conditional: [harness rule] no 'then_match': Kong loads this schema, then fails with "
        "a Lua error validating a config"]
    typo = plugin_schema({"a": f("string")}, {"r": f("record", fields=[{"b": f("string")}])}, entity_checks=[
        {"conditional_at_least_one_of": {"if_field": "a", "if_match": {"eq": "x"},
                                         "then_at_least_one_of": ["r.b", "r.c"]}}])
    assert meta(typo) == [
        "config.entity_checks.1.conditional_at_least_one_of: [harness rule] 'r.c' is no field of this record: Kong "
        "loads this schema, then fails with a Lua error or never sees the field"]
    with pytest.raises(ks.SchemaRefused, match="no field of this record"):
        ks.validate_config(typo["fields"][0]["config"], {})


def test_a_malformed_pattern_loads_but_fails_validation() -> None:
    schema = with_field("x", f("string", match="[a-"))
    assert meta(schema) == ["config.x.match: [harness rule] '[a-': malformed pattern (missing ']'): Kong loads "
                            "this schema, then string.match fails (a Lua error) on the values it checks"]


# ---------------------------------------------------------------- what the port leaves out


@pytest.mark.parametrize(("fdef", "where"), [
    (f("set", elements={"type": "string"}), "config.x.type: type 'set'"),
    ({"type": "foreign", "reference": "consumers"}, "config.x.reference: attribute 'reference'"),
    (f("json", json_schema={"inline": {}}), "config.x.json_schema: attribute 'json_schema'"),
    (f("function"), "config.x.type: type 'function'"),
    (f("string", unique=True), "config.x.unique: attribute 'unique'"),
    (f("string", not_match="a"), "config.x.not_match: attribute 'not_match'"),
    (f("string", len_eq=2), "config.x.len_eq: attribute 'len_eq'"),
    (f("string", default="a", eq=None), "config.x.eq: a null attribute"),
    (f("array", elements={"type": "integer"}), "config.x.elements.type: type 'integer' of elements/keys/values"),
    (f("array", elements={"type": "string", "referenceable": True}),
     "config.x.elements.referenceable: attribute 'referenceable' of elements/keys/values"),
    (f("map", keys={"type": "string"}, values={"type": "string", "default": "a"}),
     "config.x.values.default: attribute 'default' of elements/keys/values"),
    (f("string", match="^(a)$"), "config.x.match: Lua pattern '^(a)$': captures are not covered"),
    (f("string", match_none=[{"pattern": "%b()"}]), "config.x.match_none.1.pattern: Lua pattern '%b()': %b are"),
    (f("string", match="%f[%a]"), "config.x.match: Lua pattern '%f[%a]': %f are not covered"),
])
def test_what_the_port_leaves_out_is_refused(fdef: dict[str, Any], where: str) -> None:
    errs = meta(with_field("x", fdef))
    assert any(e.startswith(where) for e in errs) and all("not covered" in e for e in errs), errs
    with pytest.raises(ks.UnsupportedByHarness):
        ks.validate_config(config_of({"x": fdef}), {})


@pytest.mark.parametrize(("checks", "where"), [
    ([{"at_least_one_of": ["a"]}], "config.entity_checks.1.at_least_one_of: entity checker 'at_least_one_of'"),
    ([{"conditional_at_least_one_of": {"if_field": "a", "if_match": {"eq": "x"}, "then_at_least_one_of": ["a"],
                                       "else_match": {"eq": "y"}}}],
     "config.entity_checks.1.conditional_at_least_one_of.else_match: 'else_match'"),
    ([{"conditional": {"if_field": "a", "if_match": {"not_one_of": ["x"]}, "then_field": "a",
                       "then_match": {"required": True}}}],
     "config.entity_checks.1.conditional.if_match.not_one_of: 'not_one_of' in a condition"),
    ([{"conditional": None}], "config.entity_checks.1.conditional: a null entity check"),
])
def test_entity_checks_the_port_leaves_out_are_refused(checks: list[Any], where: str) -> None:
    errs = meta(plugin_schema({"a": f("string")}, entity_checks=checks))
    assert errs and errs[0].startswith(where) and "not covered" in errs[0], errs


def test_schema_level_parts_the_port_leaves_out_are_refused() -> None:
    assert meta({**plugin_schema(), "entity_checks": []}) == [
        "entity_checks: a schema-level 'entity_checks': not covered by this port of Kong's schema engine"]
    assert meta({"name": "kcauth", "fields": [{"config": config_of()}, {"protocols": f("array", elements={
        "type": "string"})}]}) == ["protocols: a top-level field other than 'config': not covered by this port of "
                                   "Kong's schema engine"]


# ---------------------------------------------------------------- project rule: descriptions


def test_descriptions_everywhere() -> None:
    schema = plugin_schema(
        {"a": {"type": "string"}},
        {"b": {"type": "string", "description": "short"}},
        {"c": f("record", fields=[{"d": {"type": "integer"}}])},
        {"e": f("array", elements={"type": "string"})},  # elements need none
    )
    assert ks.check_descriptions(schema) == [
        "config.a: missing description",
        "config.b: description must be 10 to 500 characters, got 5",
        "config.c.d: missing description",
    ]


def test_descriptions_count_characters_and_exempt_only_an_undescribed_config_wrapper() -> None:
    assert ks.check_descriptions(plugin_schema({"a": {"type": "string", "description": "é" * 10}})) == []
    assert ks.check_descriptions(plugin_schema(description="short")) == [
        "config: description must be 10 to 500 characters, got 5"]
    assert ks.check_descriptions({"name": "x", "fields": [{"other": {"type": "string"}}]}) == [
        "other: missing description"]


# ---------------------------------------------------------------- apply_defaults: what Kong stores


def test_defaults_for_a_missing_config() -> None:
    assert ks.apply_defaults(CONFIG, None) == {
        "leeway": 10, "timeout": 3.0, "verify": False, "mode": "all", "audiences": [], "headers": {"x-sub": "sub"},
        "cache": {"size": 100, "ttl": 1.5}, "secret": None,
        # issuer is required and has no default: it stays absent, and validation says so
    }


def test_given_values_win_and_an_explicit_null_stays_null() -> None:
    out = ks.apply_defaults(CONFIG, {"issuer": "https://idp", "leeway": 0, "secret": None, "mode": None,
                                     "cache": {"size": 5}, "colour": "red"})
    assert out["issuer"] == "https://idp" and out["leeway"] == 0 and out["secret"] is None
    assert out["mode"] is None  # not replaced by the default
    assert out["cache"] == {"size": 5, "ttl": 1.5}  # nested defaults fill in around given values
    assert out["colour"] == "red"  # kept for validation to report


def test_records_expand_unless_declared_not_required() -> None:
    field = config_of(
        {"auto": f("record", fields=[{"n": f("integer", default=1)}, {"deep": f("record", fields=[
            {"m": f("string", default="x")}])}])},
        {"optional": f("record", required=False, fields=[{"n": f("integer", default=1)}])},
        {"optional_default": f("record", required=False, default={}, fields=[{"n": f("integer", default=1)}])},
    )
    assert ks.apply_defaults(field, {}) == {
        "auto": {"n": 1, "deep": {"m": "x"}},  # make_records_required: records are required unless they say
        "optional": None,
        "optional_default": {},  # a record that is not required gets its default as-is, not expanded
    }
    assert ks.apply_defaults(field, {"auto": False})["auto"] == {"n": 1, "deep": {"m": "x"}}  # `value or default`


def test_fields_without_defaults() -> None:
    field = config_of({"req": f("string", required=True)}, {"opt": f("string")},
                      {"arr": f("array", elements={"type": "string"})})
    assert ks.apply_defaults(field, {}) == {"opt": None, "arr": None}


def test_defaults_are_copies_and_the_input_is_untouched() -> None:
    field = config_of({"l": f("array", elements={"type": "string"}, default=["x"])},
                      {"a": f("array", elements={"type": "string"})})
    before = copy.deepcopy(field)
    given: dict[str, Any] = {"a": {}}
    out = ks.apply_defaults(field, given)
    out["l"].append("y")
    assert ks.apply_defaults(field, {})["l"] == ["x"]
    assert field == before and given == {"a": {}}
    assert out["a"] == []  # make_array: an empty table given for an array is an array


# ---------------------------------------------------------------- validate_config: types and presence


def valid_config(**over: Any) -> dict[str, Any]:
    return ks.apply_defaults(CONFIG, {"issuer": "https://idp.example/realms/x", **over})


def test_a_valid_config() -> None:
    assert ks.validate_config(CONFIG, valid_config()) == []
    assert ks.validate_config(CONFIG, {"issuer": "https://x"}) == []  # validate_field processes a record first


@pytest.mark.parametrize(("over", "expected"), [
    ({"leeway": 1.5}, ["config.leeway: expected an integer"]),
    ({"leeway": True}, ["config.leeway: expected an integer"]),
    ({"timeout": "3"}, ["config.timeout: expected a number"]),
    ({"verify": 1}, ["config.verify: expected a boolean"]),
    ({"mode": 1}, ["config.mode: expected a string"]),
    ({"issuer": ""}, ["config.issuer: length must be at least 1"]),
    ({"audiences": "a"}, ["config.audiences: expected an array"]),
    ({"audiences": {"a": "b"}}, ["config.audiences: expected an array"]),
    ({"audiences": ["a", 2, None, "b" * 65]}, ["config.audiences.2: expected a string",
                                               "config.audiences.3: required field missing",
                                               "config.audiences.4: length must be at most 64"]),
    ({"headers": "x"}, ["config.headers: expected a map"]),
    ({"headers": {"x-a": 1}}, ["config.headers: expected a string"]),
    ({"headers": {"x-a": None}}, ["config.headers: required field missing"]),
    ({"headers": {"host": "sub"}}, ["config.headers: reserved"]),
    ({"headers": ["sub"]}, ["config.headers: expected a string"]),  # key 1
    ({"cache": 5}, ["config.cache: expected a record"]),
    ({"cache": {"size": "1"}}, ["config.cache.size: expected an integer"]),
    ({"cache": {"colour": 1}}, ["config.cache.colour: unknown field"]),
    ({"cache": ["x"]}, ["config.cache.1: unknown field"]),  # a JSON array for a record keeps its keys
    ({"cache": None}, ["config.cache: required field missing"]),
    ({"colour": "red"}, ["config.colour: unknown field"]),
    ({"issuer": None}, ["config.issuer: required field missing"]),
])
def test_types_and_presence(over: dict[str, Any], expected: list[str]) -> None:
    assert ks.validate_config(CONFIG, valid_config(**over)) == expected


def test_a_missing_required_field() -> None:
    assert ks.validate_config(CONFIG, ks.apply_defaults(CONFIG, {})) == ["config.issuer: required field missing"]
    assert ks.validate_config(CONFIG, None) == ["config: required field missing"]
    assert ks.validate_config(CONFIG, ks.MISSING) == ["config: required field missing"]


def test_integers_accept_integral_floats_and_updated_at_is_never_validated() -> None:
    assert ks.validate_config(CONFIG, valid_config(leeway=2.0)) == []
    # Schema.new's unvalidated_fields, a quirk that holds in records too
    assert ks.validate_config(config_of({"updated_at": f("integer")}), {"updated_at": "yesterday"}) == []


# ---------------------------------------------------------------- validators


@pytest.mark.parametrize(("fdef", "good", "bad", "message"), [
    (f("boolean", eq=True), True, False, "value must be true"),
    (f("string", eq="x"), "x", "y", "value must be x"),
    (f("integer", eq=1), 1.0, 2, "value must be 1"),
    (f("string", one_of=["a", "b"]), "b", "c", "expected one of: a, b"),
    (f("number", one_of=[1, 2.5]), 1.0, 3, "expected one of: 1, 2.5"),
    (f("integer", one_of=[1, 2]), 2, True, "expected an integer"),
    (f("number", gt=0), 0.001, 0, "value must be greater than 0"),
    (f("number", gt=0.5), 1, 0.5, "value must be greater than 0.5"),
    (f("integer", between=[1, 10]), 10, 11, "value should be between 1 and 10"),
    (f("integer", between=[1, 10]), 1, 0, "value should be between 1 and 10"),
    (f("number", between=[0.01, 5]), 0.01, 0.001, "value should be between 0 and 5"),  # %d truncates
    (f("string", len_min=3), "abc", "ab", "length must be at least 3"),
    (f("string", len_min=3), "é.", "é", "length must be at least 3"),  # bytes
    (f("array", elements={"type": "string"}, len_min=1), ["a"], [], "length must be at least 1"),
    (f("string", len_max=3), "abc", "abcd", "length must be at most 3"),
    (f("string", len_max=3), "é", "éé", "length must be at most 3"),
    (f("array", elements={"type": "string"}, len_max=1), ["a"], ["a", "b"], "length must be at most 1"),
    (f("map", keys={"type": "string"}, values={"type": "string"}, len_max=1), {"a": "1"}, {"a": "1", "b": "2"},
     "length must be at most 1"),
    (f("string", match="^%d+$"), "123", "12a", "invalid value: 12a"),
    (f("string", match="%S"), " x ", "  ", "invalid value:   "),
    (f("string", match_none=[{"pattern": "%.%.", "err": "no dot-dot"}]), "a.b", "a..b", "no dot-dot"),
    (f("string", match_none=[{"pattern": "^/"}]), "a/", "/a", "invalid value: /a"),
    (f("string", match="^%d+$", err="digits only"), "1", "x", "digits only"),
    (f("string", one_of=["abcde"], len_min=5, match="^a"), "abcde", "ab", "expected one of: abcde"),  # Kong's order
    (f("string", len_min=5, match_none=[{"pattern": "a", "err": "no a"}], match="^z"), "zzzzz", "zza",
     "length must be at least 5"),
    (f("string", match_none=[{"pattern": "a", "err": "no a"}], match="^z"), "z", "ya", "no a"),
])
def test_validators(fdef: dict[str, Any], good: Any, bad: Any, message: str) -> None:
    assert validate(fdef, good) == []
    assert validate(fdef, bad) == [f"config.v: {message}"]


def test_strings_take_len_min_1_unless_they_say_otherwise() -> None:
    assert validate(f("string"), "") == ["config.v: length must be at least 1"]
    assert validate(f("string", len_min=0), "") == []


def test_a_validator_that_does_not_fit_its_type_is_a_lua_error() -> None:
    # the metaschema restricts neither gt nor len_min to types
    assert meta(with_field("v", f("string", gt=1))) == []
    with pytest.raises(ks.KongLuaError, match="attempt to compare"):
        validate(f("string", gt=1), "a")
    with pytest.raises(ks.KongLuaError, match="attempt to get length of a boolean"):
        validate(f("boolean", len_min=1), True)


def test_vault_references_skip_the_validators_of_referenceable_strings() -> None:
    secret = f("string", referenceable=True, len_max=5, match="^s")
    assert validate(secret, "{vault://env/kc-secret}") == []
    assert validate(secret, "{vault://env/kc-secret") == ["config.v: length must be at most 5"]
    assert validate(f("string", len_max=5), "{vault://env/x}") == ["config.v: length must be at most 5"]
    assert validate(secret, 5) == ["config.v: expected a string"]  # the type is still checked


def test_is_reference() -> None:
    assert ks.is_reference("{vault://env/x}") and ks.is_reference("{vault://}")
    assert not any(ks.is_reference(v) for v in ("{vault://x", "{vault:/x}", "vault://x}", " {vault://x}", 5, None))


# ---------------------------------------------------------------- entity checks


CHECKED = config_of(
    {"mode": f("string", default="guard", one_of=["guard", "receiver"])},
    {"verify": f("boolean", default=True)},
    {"audiences": f("array", elements={"type": "string"}, default=[])},
    {"issuer": f("string", required=True)},
    {"secret": f("string", referenceable=True)},
    {"key": f("string", referenceable=True, len_min=10)},
    {"redis": f("record", fields=[{"host": f("string")}, {"secret": f("string", len_min=4)}])},
)


def checked(*checks: dict[str, Any]) -> dict[str, Any]:
    return {**CHECKED, "entity_checks": list(checks)}


def conditional(if_field: str, if_match: dict[str, Any], then_field: str, then_match: dict[str, Any],
                **more: Any) -> dict[str, Any]:
    return {"conditional": {"if_field": if_field, "if_match": if_match, "then_field": then_field,
                            "then_match": then_match, **more}}


def at_least_one(if_field: str, if_match: dict[str, Any], names: list[str], **more: Any) -> dict[str, Any]:
    return {"conditional_at_least_one_of": {"if_field": if_field, "if_match": if_match,
                                            "then_at_least_one_of": names, **more}}


AUDIENCES = conditional("verify", {"eq": True}, "audiences", {"len_min": 1}, then_err="%s needs an audience")
RECEIVER = conditional("mode", {"eq": "receiver"}, "secret", {"required": True}, then_err="not used")
CREDENTIALS = at_least_one("mode", {"eq": "receiver"}, ["secret", "key"], then_err="give one of %s")


@pytest.mark.parametrize(("check", "config", "expected"), [
    (AUDIENCES, {"audiences": ["a"]}, []),
    (AUDIENCES, {"verify": False}, []),
    (AUDIENCES, {}, ["config.audiences: length must be at least 1", "config.@entity: verify needs an audience"]),
    (conditional("verify", {"eq": True}, "audiences", {"len_min": 1}), {},
     ["config.audiences: length must be at least 1",
      "config.@entity: failed conditional validation given value of field 'verify'"]),
    (RECEIVER, {}, []),
    (RECEIVER, {"mode": "receiver", "secret": "s"}, []),
    # `required` is handled first, and without then_err
    (RECEIVER, {"mode": "receiver"}, ["config.secret: required field missing",
                                      "config.@entity: failed conditional validation given value of field 'mode'"]),
    (RECEIVER, {"mode": None}, []),  # null does not match eq (and mode may be null)
    # the then_match validators on top of the field's own, which the overlay inherits
    (conditional("mode", {"eq": "receiver"}, "key", {"match": "^k"}), {"mode": "receiver", "key": "short"},
     ["config.key: length must be at least 10",
      "config.@entity: failed conditional validation given value of field 'mode'"]),
    # a required if_field missing: the check cannot run (its message replaces "required field missing")
    (conditional("issuer", {"eq": "x"}, "secret", {"required": True}), {"issuer": ks.MISSING},
     ["config.issuer: field required for entity check"]),
    # dotted names reach into records
    (conditional("redis.host", {"required": True}, "redis.secret", {"required": True}), {"redis": {"host": "h"}},
     ["config.redis.secret: required field missing",
      "config.@entity: failed conditional validation given value of field 'redis.host'"]),
    (conditional("redis.host", {"required": True}, "redis.secret", {"required": True}), {}, []),
    (CREDENTIALS, {}, []),
    (CREDENTIALS, {"mode": "receiver", "key": "{vault://env/key}"}, []),
    (CREDENTIALS, {"mode": "receiver", "secret": "s"}, []),
    (CREDENTIALS, {"mode": "receiver"}, ["config.@entity: give one of 'secret', 'key'"]),
    (at_least_one("mode", {"eq": "receiver"}, ["secret", "audiences"]), {"mode": "receiver"},
     ["config.@entity: at least one of these fields must be non-empty: 'secret', 'audiences'"]),  # [] is empty
    (at_least_one("mode", {"eq": "receiver"}, ["secret"]), {"mode": "receiver", "secret": ""},
     ["config.secret: length must be at least 1",  # runs with invalid fields
      "config.@entity: at least one of these fields must be non-empty: 'secret'"]),
    (at_least_one("mode", {"eq": "receiver"}, ["redis.host"]), {"mode": "receiver", "redis": {"host": "h"}}, []),
])
def test_entity_checks(check: dict[str, Any], config: dict[str, Any], expected: list[str]) -> None:
    given = {k: v for k, v in {"issuer": "i", **config}.items() if v is not ks.MISSING}
    assert ks.validate_config(checked(check), given) == expected


def test_a_vault_reference_in_a_referenceable_field_skips_the_whole_check() -> None:
    field = checked(conditional("secret", {"required": True}, "key", {"required": True}),
                    at_least_one("secret", {"required": True}, ["key"]))
    assert ks.validate_config(field, {"issuer": "i", "secret": "{vault://env/s}"}) == []
    assert ks.validate_config(field, {"issuer": "i", "secret": "s"}) == [
        "config.key: required field missing",
        "config.@entity: failed conditional validation given value of field 'secret'",
        "config.@entity: at least one of these fields must be non-empty: 'key'"]


def test_entity_checks_of_a_nested_record() -> None:
    field = config_of({"r": f("record", fields=[{"a": f("boolean", default=False)}, {"b": f("string")}],
                              entity_checks=[conditional("a", {"eq": True}, "b", {"required": True})])})
    assert ks.validate_config(field, {"r": {"a": True}}) == [
        "config.r.b: required field missing",
        "config.r.@entity: failed conditional validation given value of field 'a'"]
    assert ks.validate_config(field, {}) == []


# ---------------------------------------------------------------- Lua patterns


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    ("^%a+$", ["abc", "ABC"], ["ab1", "", "a b", "é"]),
    ("^%d+$", ["0123"], ["12a", "١٢"]),  # Arabic-Indic digits are not %d in the C locale
    ("^%l+$", ["abc"], ["aBc"]),
    ("^%u+$", ["ABC"], ["AbC"]),
    ("^%s$", [" ", "\t", "\n", "\v", "\f", "\r"], ["a", "\u00a0"]),
    ("^%w+$", ["a1B2"], ["a_1"]),
    ("^%x+$", ["09afAF"], ["0g"]),
    ("^%p+$", ["!-/:@[`{~"], ["a", " "]),
    ("^%c$", ["\x00", "\x1f", "\x7f"], ["a", " "]),
    ("^%g+$", ["a!~"], ["a b"]),
    ("^%z$", ["\x00"], ["0"]),
    ("^%D%S%A$", ["a-1"], ["1-1", "a 1", "a-b"]),
    ("^%q%%%.$", ["q%."], ["q%a"]),  # any other escaped character stands for itself
    ("%.", ["a.b"], ["ab"]),
    ("^a.c$", ["abc", "a.c", "a\nc"], ["ac"]),
    ("^.$", ["a"], ["é"]),  # one byte: é is two
    ("^..$", ["é"], ["a"]),
    ("b", ["abc"], ["xyz"]),  # string.match searches anywhere
    ("", ["", "a"], []),
    ("^b", ["bc"], ["abc"]),
    ("b$", ["ab"], ["ba"]),
    ("^$", [""], ["a"]),
    ("a^b", ["a^b"], ["ab"]),  # ^ is an anchor only at the start
    ("a$b", ["a$b"], ["ab"]),  # $ is an anchor only at the end
    ("^*a", ["*a"], ["a"]),  # a quantifier with nothing before it is a literal
    ("^ab*c$", ["ac", "abbc"], ["abd"]),
    ("^ab+c$", ["abc", "abbc"], ["ac"]),
    ("^ab-c$", ["ac", "abbc"], ["adc"]),
    ("^ab?c$", ["ac", "abc"], ["abbc"]),
    ("^a*ab$", ["ab", "aaab"], ["b"]),  # backtracking
    ("^a-b-$", ["aab", "a"], ["ba"]),
    ("^x?x$", ["x", "xx"], ["xxx"]),
    ("^[a-c]+$", ["abcabc"], ["abd"]),
    ("^[^0-9]+$", ["abc"], ["a1"]),
    ("^[%a_][%w_]*$", ["_id", "x9"], ["9x"]),
    ("^[]]$", ["]"], ["["]),  # ']' first in a set is a member
    ("^[^]]$", ["a"], ["]"]),
    ("^[%]%-]+$", ["]-"], ["a"]),
    ("^[a-]$", ["a", "-"], ["b"]),
    ("^[]-~!#-[]+$", ["a", "]", "~", "!", "#", "["], ['"', " ", "\\", "é"]),
    ("^[%d.]+$", ["1.2.3"], ["1,2"]),
    ("^[^%c\"\\]+$", ["ab"], ['a"', "a\\", "a\x01"]),
    ("^[+-]?%d+$", ["-12", "+3", "4"], ["1-2"]),
    ("^https?://[^/]+$", ["https://kc.example.com:8443", "http://h"], ["https://kc/realms", "ftp://x"]),
])
def test_lua_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    for s in yes:
        assert ks.lua_match(s, pattern), (pattern, s)
    for s in no:
        assert not ks.lua_match(s, pattern), (pattern, s)


@pytest.mark.parametrize(("pattern", "message"), [
    ("[a", "malformed pattern (missing ']')"),
    ("[]", "malformed pattern (missing ']')"),
    ("a%", "malformed pattern (ends with '%')"),
])
def test_malformed_lua_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ks.LuaPatternError, match=re.escape(message)):
        ks.lua_match("a", pattern)


@pytest.mark.parametrize("pattern", ["(a)", "a)", "()", "%b()", "%f[%a]", "%1"])
def test_pattern_features_the_port_leaves_out(pattern: str) -> None:
    with pytest.raises(ks.UnsupportedByHarness, match="not covered"):
        ks.lua_match("(a)", pattern)


# ---------------------------------------------------------------- kong_config_for_instance: what the plugin gets


PLUGIN_ID = "5a0f1b7e-1111-4000-8000-000000000001"
ROUTE_ID = "5a0f1b7e-2222-4000-8000-000000000002"


def test_the_instance_config_is_the_read_config_and_get_plugin_configs_keys() -> None:
    cfg = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 7, route_id=ROUTE_ID)
    assert cfg == {
        "issuer": "https://x", "leeway": 10, "timeout": 3, "verify": False, "mode": "all", "audiences": [],
        "headers": {"x-sub": "sub"}, "cache": {"size": 100, "ttl": 1.5},
        # "secret" was stored as null: a read drops it, so it is absent, not null
        "route_id": ROUTE_ID,
        "__plugin_id": PLUGIN_ID,
        "__ws_id": ks.DEFAULT_WORKSPACE_ID,
        "__key__": f"plugins:kcauth:{ROUTE_ID}::::{ks.DEFAULT_WORKSPACE_ID}",
        "__seq__": 7,
    }
    assert isinstance(cfg["timeout"], int)  # cjson prints 3.0 as 3


def test_the_instance_config_of_a_global_plugin_and_with_every_id() -> None:
    cfg = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 1, route_id="r", service_id="s",
                                      consumer_id="c", plugin_name="other", ws_id="w", instance_name="named")
    assert (cfg["route_id"], cfg["service_id"], cfg["consumer_id"], cfg["plugin_instance_name"]) == (
        "r", "s", "c", "named")
    assert cfg["__key__"] == "plugins:other:r:s:c::w" and cfg["__ws_id"] == "w"
    glob = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 1)
    assert glob["__key__"] == f"plugins:kcauth:::::{ks.DEFAULT_WORKSPACE_ID}"
    assert not {"route_id", "service_id", "consumer_id", "plugin_instance_name"} & set(glob)


def test_a_read_drops_nulls_and_empty_strings_and_keeps_empty_containers() -> None:
    field = config_of({"a": f("string")}, {"e": f("string", len_min=0, default="")},
                      {"r": f("record", fields=[{"x": f("string")}, {"y": f("integer", default=1)}])},
                      {"l": f("array", elements={"type": "string"})},
                      {"m": f("map", keys={"type": "string"}, values={"type": "string"}, default={})})
    cfg = ks.kong_config_for_instance(field, {"l": []}, PLUGIN_ID, 1)
    assert {k: v for k, v in cfg.items() if not k.startswith("__")} == {"e": "", "r": {"y": 1}, "l": [], "m": {}}
    assert json.dumps({k: cfg[k] for k in ("l", "m")}) == '{"l": [], "m": {}}'


def test_a_read_of_a_stored_row_kong_never_validated() -> None:
    # plugin.StartInstance of a config that reached the database past validation (validate=False)
    field = config_of({"n": f("integer", required=True, default=5)}, {"s": f("string")},
                      {"m": f("map", keys={"type": "string"}, values={"type": "string"})})
    cfg = ks.kong_config_for_instance(field, {"n": None, "s": "", "m": [], "colour": 1}, PLUGIN_ID, 1,
                                      validate=False)
    # a required field read as null gets its default; "" is dropped; an unknown key is dropped;
    # an empty table given for a map is encoded as {}
    assert {k: v for k, v in cfg.items() if not k.startswith("__")} == {"n": 5, "m": {}}
    floored = ks.kong_config_for_instance(field, {"n": 2.7}, PLUGIN_ID, 1, validate=False)
    assert floored["n"] == 2 and isinstance(floored["n"], int)


def test_numbers_reach_the_plugin_through_cjson() -> None:
    field = config_of({"n": f("number")}, {"i": f("integer")})
    cfg = ks.kong_config_for_instance(field, {"n": 0.1, "i": 10 ** 16}, PLUGIN_ID, 1)
    assert cfg["n"] == 0.1
    assert cfg["i"] == 1e16 and isinstance(cfg["i"], float)  # "%.16g" prints 1e+16


def test_an_invalid_config_starts_no_instance() -> None:
    with pytest.raises(ValueError, match=re.escape("config.issuer: required field missing")):
        ks.kong_config_for_instance(CONFIG, {}, PLUGIN_ID, 1)


def test_a_read_resolves_vault_references_when_asked() -> None:
    field = config_of({"secret": f("string", referenceable=True)}, {"gone": f("string", referenceable=True)},
                      {"plain": f("string")},
                      {"redis": f("record", fields=[{"password": f("string", referenceable=True)}])})
    vault = {"{vault://env/s}": "s3cret", "{vault://env/p}": "pw"}
    given = {"secret": "{vault://env/s}", "gone": "{vault://env/none}", "plain": "{vault://env/s}",
             "redis": {"password": "{vault://env/p}"}}
    cfg = ks.kong_config_for_instance(field, given, PLUGIN_ID, 1, resolve_reference=vault.get)
    assert (cfg["secret"], cfg["gone"], cfg["plain"]) == ("s3cret", "", "{vault://env/s}")  # unresolved: ""
    assert cfg["$refs"] == {"secret": "{vault://env/s}", "gone": "{vault://env/none}"}
    assert cfg["redis"] == {"password": "pw", "$refs": {"password": "{vault://env/p}"}}
    unresolved = ks.kong_config_for_instance(field, given, PLUGIN_ID, 1)  # a control plane, the Admin API
    assert unresolved["secret"] == "{vault://env/s}" and "$refs" not in unresolved
