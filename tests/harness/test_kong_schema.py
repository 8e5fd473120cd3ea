"""Unit tests of tests/harness/kong_schema.py, the Python copy of Kong 3.9.3's schema rules.

Each expected message is Kong's own text (kong/db/schema/init.lua validation_errors,
kong/db/schema/metaschema.lua meta_errors) at the path this module reports it under.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tests.harness import kong_schema as ks

DESC = "A description long enough for Kong."


def f(type_: str, **attrs: Any) -> dict[str, Any]:
    """A field definition with a valid description."""
    return {"type": type_, "description": DESC, **attrs}


def plugin_schema(*fields: dict[str, Any], **config_attrs: Any) -> dict[str, Any]:
    """The shape kong-pdk's -dump gives: {name, fields: [{config: record}]} (server.py get_plugin_info)."""
    return {"name": "kcauth", "fields": [{"config": {"type": "record", "fields": list(fields), **config_attrs}}]}


def config_of(*fields: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    return {"type": "record", "fields": list(fields), **attrs}


VALID_SCHEMA = plugin_schema(
    {"issuer": f("string", required=True, match="^https?://", referenceable=True)},
    {"leeway": f("integer", default=10, between=[0, 300])},
    {"timeout": f("number", default=3.0, gt=0)},
    {"verify": f("boolean", default=True)},
    {"mode": f("string", default="all", one_of=["all", "any"])},
    {"audiences": f("array", elements={"type": "string"}, default=[])},
    {"groups": f("set", elements={"type": "string", "len_max": 64}, default=["a"])},
    {"headers": f("map", keys={"type": "string"}, values={"type": "string"}, default={"X-Sub": "sub"})},
    {"cache": f("record", fields=[
        {"size": f("integer", default=100)},
        {"ttl": f("number", default=1.5)},
    ])},
    {"rules": f("array", elements={"type": "record", "fields": [
        {"path": f("string", required=True, starts_with="/")},
        {"methods": f("set", elements={"type": "string", "one_of": ["GET", "POST"]}, default=["GET"])},
    ]}, default=[])},
    {"secret": f("string", referenceable=True, encrypted=True)},
    entity_checks=[{"mutually_exclusive": ["audiences", "secret"]}],
)


def meta(schema: dict[str, Any]) -> list[str]:
    return ks.check_plugin_schema(json.loads(json.dumps(schema)))


def with_field(name: str, fdef: dict[str, Any]) -> dict[str, Any]:
    return plugin_schema({name: fdef})


# ---------------------------------------------------------------- metaschema: valid schemas


def test_valid_schema_passes_every_check() -> None:
    assert meta(VALID_SCHEMA) == []
    assert ks.check_descriptions(VALID_SCHEMA) == []
    assert ks.check_lua_patterns(VALID_SCHEMA) == []


def test_schema_without_fields_in_config_record_is_valid() -> None:
    assert meta(plugin_schema()) == []


def test_empty_object_is_an_empty_fields_array_as_in_lua() -> None:
    # cjson decodes {} and [] to the same empty table.
    assert meta({"name": "kcauth", "fields": [{"config": {"type": "record", "fields": {}}}]}) == []


def test_function_type_passes_like_in_kong() -> None:
    # "function" is one of Schema.valid_types, so the metaschema accepts it.
    assert meta(with_field("cb", f("function"))) == []


def test_referenceable_is_not_restricted_to_strings_by_the_metaschema() -> None:
    # metaschema.lua's attribute_types has no entry for referenceable (nor encrypted).
    assert meta(with_field("n", f("integer", referenceable=True, encrypted=True))) == []
    assert meta(with_field("n", f("string", referenceable="yes"))) == ["config.n.referenceable: expected a boolean"]


# ---------------------------------------------------------------- metaschema: violations


def test_bad_type() -> None:
    errs = meta(with_field("x", f("text")))
    assert errs == ["config.x.type: expected one of: array, set, string, number, boolean, integer, "
                    "foreign, map, record, function, json"]


def test_missing_type() -> None:
    errs = meta(with_field("x", {"description": DESC}))
    assert "config.x.type: required field missing" in errs
    assert "config.x: missing type declaration" in errs


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("array"), "config.x: field of type 'array' must declare 'elements'"),
    (f("set"), "config.x: field of type 'set' must declare 'elements'"),
    (f("map", values={"type": "string"}), "config.x: field of type 'map' must declare 'keys'"),
    (f("map", keys={"type": "string"}), "config.x: field of type 'map' must declare 'values'"),
    (f("record"), "config.x: field of type 'record' must declare 'fields'"),
])
def test_containers_must_declare_their_parts(fdef: dict[str, Any], expected: str) -> None:
    assert meta(with_field("x", fdef)) == [expected]


def test_abstract_record_needs_no_fields() -> None:
    assert meta(with_field("x", f("record", abstract=True))) == []


def test_unknown_attribute() -> None:
    assert meta(with_field("x", f("string", frobnicate=True))) == ["config.x.frobnicate: unknown field"]


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("boolean", one_of=[True]), "config.x: field of type 'boolean' cannot have attribute 'one_of'"),
    (f("string", between=[1, 2]), "config.x: field of type 'string' cannot have attribute 'between'"),
    (f("integer", match="^a"), "config.x: field of type 'integer' cannot have attribute 'match'"),
    (f("boolean", len_eq=1), "config.x: field of type 'boolean' cannot have attribute 'len_eq'"),
    (f("string", timestamp=True), "config.x: field of type 'string' cannot have attribute 'timestamp'"),
    (f("map", keys={"type": "string"}, values={"type": "string"}, transient=True),
     "config.x: field of type 'map' cannot have attribute 'transient'"),
])
def test_attributes_restricted_to_some_types(fdef: dict[str, Any], expected: str) -> None:
    assert meta(with_field("x", fdef)) == [expected]


@pytest.mark.parametrize(("fdef", "expected"), [
    (f("integer", between=[1, 2, 3]), "config.x.between: length must be 2"),
    (f("integer", between=[1, "2"]), "config.x.between.2: expected a number"),
    (f("string", one_of="a"), "config.x.one_of: expected an array"),
    (f("string", len_min=1.5), "config.x.len_min: expected an integer"),
    (f("string", required="yes"), "config.x.required: expected a boolean"),
    (f("string", match=5), "config.x.match: expected a string"),
    (f("string", match_any={"err": "no"}), "config.x.match_any.patterns: required field missing"),
    (f("string", on_delete="drop"), "config.x.on_delete: expected one of: restrict, cascade, null"),
    (f("string", custom_validator="lua code"), "config.x.custom_validator: expected a function"),
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
    # strings get len_min = 1 unless they say otherwise
    (f("string", default=""), "config.x.default: length must be at least 1"),
    (f("array", elements={"type": "string"}, default=["a", 2]), "config.x.default.2: expected a string"),
    (f("record", fields=[{"a": f("integer")}], default={"a": "1"}), "config.x.default.a: expected an integer"),
    (f("record", fields=[{"a": f("integer")}], default={"b": 1}), "config.x.default.b: unknown field"),
    (f("string", required=True, default=None), "config.x.default: required field missing"),
])
def test_default_must_validate_against_its_field(fdef: dict[str, Any], expected: str) -> None:
    assert meta(with_field("x", fdef)) == [expected]


def test_default_that_validates_is_fine() -> None:
    assert meta(with_field("x", f("string", default="", len_min=0))) == []
    assert meta(with_field("x", f("string", default=None))) == []  # a null default on an optional field


def test_default_of_a_foreign_field_is_trusted_by_the_metaschema() -> None:
    assert meta(with_field("c", {"type": "foreign", "reference": "consumers", "default": {"id": "x"}})) == []


def test_default_of_array_without_elements_cannot_be_validated() -> None:
    errs = meta(with_field("x", f("array", default=[])))
    assert errs == ["config.x.default: error in schema prevents from validating this field",
                    "config.x: field of type 'array' must declare 'elements'"]


@pytest.mark.parametrize(("desc", "expected"), [
    ("too short", ["config.x.description: length must be at least 10"]),  # 9 bytes
    ("ten bytes!", []),
    ("é" * 5, []),  # 10 bytes in UTF-8: Kong measures bytes, not characters
    ("a" * 500, []),
    ("a" * 501, ["config.x.description: length must be at most 500"]),
    (42, ["config.x.description: expected a string"]),
])
def test_description_length_is_checked_by_the_metaschema(desc: Any, expected: list[str]) -> None:
    assert meta(with_field("x", {"type": "string", "description": desc})) == expected


def test_nested_record_and_elements_errors_are_reported_by_name() -> None:
    schema = with_field("outer", f("record", fields=[
        {"inner": f("strng")},
        {"list": f("array", elements={"type": "array"})},
    ]))
    errs = meta(schema)
    assert "config.outer.inner.type: expected one of: array, set, string, number, boolean, integer, " \
           "foreign, map, record, function, json" in errs
    assert "config.outer.list.elements: field of type 'array' must declare 'elements'" in errs


def test_element_definitions_are_validated_recursively() -> None:
    errs = meta(with_field("x", f("array", elements={"type": "string", "one_of": "a"})))
    assert errs == ["config.x.elements.one_of: expected an array"]


def test_fields_entries_must_be_single_key_tables() -> None:
    two = {"name": "kcauth", "fields": [{"config": {"type": "record", "fields": [
        {"a": f("string"), "b": f("string")}]}}]}
    assert meta(two) == ["config.fields[1]: length must be 1"]
    not_table = {"name": "kcauth", "fields": [{"config": {"type": "record", "fields": ["a"]}}]}
    assert meta(not_table) == ["config.fields[1]: expected a map",
                               "config.fields: each entry in fields must be a sub-table"]
    assert meta({"name": "kcauth", "fields": [{"config": {"type": "record", "fields": [{}]}}]}) == [
        "config.fields[1]: length must be 1", "config.fields: field entry table is empty"]
    assert meta({"name": "kcauth", "fields": {"config": {}}}) == ["fields: expected an array"]


def test_schema_level_keys() -> None:
    assert meta({"fields": []}) == ["name: field required for entity check"]
    assert meta({"name": "kcauth"}) == ["fields: field required for entity check"]
    assert meta({**plugin_schema(), "primary_key": ["id"]}) == ["primary_key: unknown field"]
    assert meta({**plugin_schema(), "check": "x"}) == ["check: expected a function"]
    assert ks.check_plugin_schema(None) == ["(schema): expected a table, got nil"]


def test_field_entity_check_unique_across_ws_needs_unique() -> None:
    errs = meta(with_field("x", f("string", unique_across_ws=True)))
    assert errs == ["config.x.unique: required field missing",
                    "config.x.@entity: failed conditional validation given value of field 'unique_across_ws'"]


def test_entity_checks_shape() -> None:
    ok = plugin_schema({"a": f("string")}, {"b": f("string")}, entity_checks=[
        {"at_least_one_of": ["a", "b"]},
        {"conditional": {"if_field": "a", "if_match": {"eq": "x"}, "then_field": "b",
                         "then_match": {"required": True}}},
    ])
    assert meta(ok) == []
    two_in_one = plugin_schema({"a": f("string")}, entity_checks=[{"at_least_one_of": ["a"], "only_one_of": ["a"]}])
    assert meta(two_in_one) == [
        "config.entity_checks.1.@entity: exactly one of these fields must be non-empty: 'at_least_one_of', "
        "'conditional_at_least_one_of', 'only_one_of', 'distinct', 'conditional', 'custom_entity_check', "
        "'mutually_required', 'mutually_exclusive', 'mutually_exclusive_sets'"]
    unknown = plugin_schema({"a": f("string")}, entity_checks=[{"exactly_two_of": ["a"]}])
    assert "config.entity_checks.1.exactly_two_of: unknown field" in meta(unknown)


def test_shorthand_fields_need_a_function_and_cannot_come_from_json() -> None:
    schema = plugin_schema({"a": f("string")}, shorthand_fields=[{"old_a": {"type": "string"}}])
    assert meta(schema) == ["config.old_a.func: required field missing"]


def test_json_schema_inline_is_unsupported() -> None:
    with pytest.raises(ks.UnsupportedByHarness):
        meta(with_field("j", f("json", json_schema={"inline": {"type": "object"}})))


# ---------------------------------------------------------------- plugin subschema rules


def test_extra_top_level_fields_must_exist_in_the_plugins_entity() -> None:
    schema = {"name": "kcauth", "fields": [{"config": config_of()}, {"colour": f("string")}]}
    assert meta(schema) == [
        "error initializing schema for plugin: error in definition of 'kcauth': colour: cannot create a new field"]


def test_top_level_fields_must_keep_the_entity_types() -> None:
    schema = {"name": "kcauth", "fields": [{"config": f("string")}]}
    assert meta(schema) == [
        "error initializing schema for plugin: error in definition of 'kcauth': config: cannot change type "
        "in a specialized field"]
    protocols = {"name": "kcauth", "fields": [
        {"config": config_of()},
        {"protocols": f("set", elements={"type": "string", "one_of": ["http", "https"]}, default=["https"])},
        {"consumer": {"type": "foreign", "reference": "consumers", "eq": None}},
    ]}
    assert meta(protocols) == []


def test_foreign_references_must_be_known_entities() -> None:
    schema = {"name": "kcauth", "fields": [{"config": config_of()},
                                           {"route": {"type": "foreign", "reference": "pathways"}}]}
    assert meta(schema) == [
        "error initializing schema for plugin: schema refers to an invalid foreign entity: pathways"]


def test_kong_does_not_require_a_config_record_but_the_harness_can() -> None:
    schema = {"name": "kcauth", "fields": [{"protocols": f("set", elements={"type": "string"})}]}
    assert ks.check_plugin_schema(schema) == []
    assert ks.check_plugin_schema(schema, require_config=True) == [
        "config: [harness rule] the schema has no 'config' record; Kong 3.9.3 loads it, but then refuses "
        "every configuration"]


def test_plugin_info_from_a_kong_pdk_dump() -> None:
    dump = json.dumps([{"Name": "kcauth", "Priority": 1000, "Version": "0.1.0", "Phases": ["access"],
                        "Schema": VALID_SCHEMA}])
    info, errs = ks.load_external_plugin_info(dump)
    assert errs == []
    assert info is not None and info["schema"] == VALID_SCHEMA and info["protocol"] == "MsgPack:1"
    _, errs = ks.load_external_plugin_info([{"Name": "k", "Priority": 1.5, "Version": "1.0.0.1",
                                             "Phases": [], "Schema": {}}])
    assert errs == ['Plugin "k" cannot be loaded because its PRIORITY field is not a valid integer number, got: "1.5".',
                    'Plugin "k" cannot be loaded because its VERSION field does not follow the "x.y.z" format, '
                    'got: "1.0.0.1".']
    _, errs = ks.load_external_plugin_info({"Protocol": "MsgPack:1", "Plugins": [
        {"Name": "k", "Version": "1.0", "Phases": [], "Schema": {}}]})
    assert errs == ["no configuration schema found for plugin: k (no Priority: 'no plugin found')"]
    assert ks.load_external_plugin_info("not json")[1][0].startswith("failed decoding plugin info")


# ---------------------------------------------------------------- project rule: descriptions


def test_descriptions_everywhere() -> None:
    schema = plugin_schema(
        {"a": {"type": "string"}},
        {"b": {"type": "string", "description": "short"}},
        {"c": f("record", fields=[{"d": {"type": "integer"}}])},
        {"e": f("array", elements={"type": "record", "fields": [{"g": {"type": "string"}}]})},
        {"h": f("map", keys={"type": "string"}, values={"type": "record", "fields": [{"i": {"type": "string"}}]})},
        {"j": f("array", elements={"type": "array", "elements": {"type": "record", "fields": [
            {"k": {"type": "string", "description": "x" * 501}}]}})},
    )
    assert ks.check_descriptions(schema) == [
        "config.a: missing description",
        "config.b: description must be 10 to 500 characters, got 5",
        "config.c.d: missing description",
        "config.e.elements.g: missing description",
        "config.h.values.i: missing description",
        "config.j.elements.elements.k: description must be 10 to 500 characters, got 501",
    ]


def test_descriptions_count_characters_and_exempt_only_an_undescribed_config_wrapper() -> None:
    assert ks.check_descriptions(plugin_schema({"a": {"type": "string", "description": "é" * 10}})) == []
    described = plugin_schema(description="short")
    assert ks.check_descriptions(described) == ["config: description must be 10 to 500 characters, got 5"]
    assert ks.check_descriptions({"name": "x", "fields": [{"other": {"type": "string"}}]}) == [
        "other: missing description"]


def test_check_lua_patterns_reports_malformed_and_unsupported() -> None:
    schema = plugin_schema({"a": f("string", match="[a-")}, {"b": f("string", not_match="%bxy")},
                           {"c": f("array", elements={"type": "string", "match_any": {"patterns": ["ok", "(x"]}})})
    assert ks.check_lua_patterns(schema) == [
        "config.a.match: '[a-': malformed pattern (missing ']')",
        "config.b.not_match: '%bxy': Lua pattern '%bxy': %b (balanced match) has no Python regex equivalent",
        "config.c.elements.match_any.patterns.2: '(x': unfinished capture",
    ]


def test_kong_accepts_one_of_values_of_another_type_but_the_lint_does_not() -> None:
    schema = plugin_schema({"n": f("integer", one_of=[1, "2"], not_one_of=[1.5])},
                           {"s": f("string", one_of=["a", True])},
                           {"l": f("array", elements={"type": "string"}, referenceable=True)},
                           {"ok": f("array", elements={"type": "string", "referenceable": True})},
                           {"p": f("string", match="(x")})
    assert meta(schema) == []
    assert ks.lint_plugin_schema(schema) == [
        "config.p.match: '(x': unfinished capture",
        'config.n.one_of.2: "2" is not of the field\'s type \'integer\'',
        "config.n.not_one_of.1: 1.5 is not of the field's type 'integer'",
        "config.s.one_of.2: true is not of the field's type 'string'",
        "config.l.referenceable: has no effect on a field of type 'array' (Kong honours it on strings, "
        "e.g. on the elements of an array)",
    ]
    assert ks.lint_plugin_schema(VALID_SCHEMA) == []


def test_check_plugin_dump_chains_the_loading_steps() -> None:
    good = [{"Name": "kcauth", "Priority": 1000, "Version": "0.1.0", "Phases": ["access"], "Schema": VALID_SCHEMA}]
    assert ks.check_plugin_dump(json.dumps(good)) == []
    bad = [{**good[0], "Schema": with_field("x", f("text"))}]
    assert ks.check_plugin_dump(bad) == ["config.x.type: expected one of: array, set, string, number, boolean, "
                                         "integer, foreign, map, record, function, json"]


# ---------------------------------------------------------------- apply_defaults


CONFIG = VALID_SCHEMA["fields"][0]["config"]


def test_defaults_for_a_missing_config() -> None:
    assert ks.apply_defaults(CONFIG, None) == {
        "leeway": 10, "timeout": 3.0, "verify": True, "mode": "all", "audiences": [], "groups": ["a"],
        "headers": {"X-Sub": "sub"}, "cache": {"size": 100, "ttl": 1.5}, "rules": [], "secret": None,
        # issuer is required and has no default: it stays absent and validation says so
    }


def test_given_values_win_and_explicit_null_stays_null() -> None:
    out = ks.apply_defaults(CONFIG, {"issuer": "https://idp", "leeway": 0, "secret": None, "mode": None,
                                     "cache": {"size": 5}})
    assert out["issuer"] == "https://idp"
    assert out["leeway"] == 0
    assert out["secret"] is None
    assert out["mode"] is None  # explicit null is kept, not replaced by the default
    assert out["cache"] == {"size": 5, "ttl": 1.5}  # nested defaults fill in around given values


def test_nested_records_expand_unless_declared_not_required() -> None:
    field = config_of(
        {"auto": f("record", fields=[{"n": f("integer", default=1)}, {"deep": f("record", fields=[
            {"m": f("string", default="x")}])}])},
        {"optional": f("record", required=False, fields=[{"n": f("integer", default=1)}])},
        {"optional_default": f("record", required=False, default={}, fields=[{"n": f("integer", default=1)}])},
    )
    assert ks.apply_defaults(field, {}) == {
        "auto": {"n": 1, "deep": {"m": "x"}},  # make_records_required: records are required by default
        "optional": None,
        "optional_default": {},  # a non-required record's default is copied as-is, not expanded
    }


def test_required_and_optional_scalars_without_defaults() -> None:
    field = config_of({"req": f("string", required=True)}, {"opt": f("string")}, {"arr": f("array", elements={
        "type": "string"})})
    assert ks.apply_defaults(field, {}) == {"opt": None, "arr": None}


def test_records_inside_arrays_and_maps_get_their_defaults() -> None:
    field = config_of(
        {"rules": f("array", elements={"type": "record", "fields": [
            {"path": f("string")}, {"verb": f("string", default="GET")}]})},
        {"by_name": f("map", keys={"type": "string"}, values={"type": "record", "fields": [
            {"weight": f("integer", default=1)}]})},
    )
    out = ks.apply_defaults(field, {"rules": [{"path": "/a"}, {"path": "/b", "verb": "POST"}],
                                    "by_name": {"x": {}, "y": {"weight": 3}}})
    assert out == {"rules": [{"path": "/a", "verb": "GET"}, {"path": "/b", "verb": "POST"}],
                   "by_name": {"x": {"weight": 1}, "y": {"weight": 3}}}


def test_sets_are_deduplicated_with_lua_equality() -> None:
    field = config_of({"s": f("set", elements={"type": "string"})}, {"n": f("set", elements={"type": "number"})},
                      {"b": f("set", elements={"type": "any"})})
    out = ks.apply_defaults(field, {"s": ["b", "a", "b", "a"], "n": [1, 1.0, 2], "b": [True, 1, True]})
    assert out == {"s": ["b", "a"], "n": [1, 2], "b": [True, 1]}


def test_defaults_are_deep_copies_and_input_is_untouched() -> None:
    field = config_of({"l": f("array", elements={"type": "string"}, default=["x"])})
    before = copy.deepcopy(field)
    given: dict[str, Any] = {}
    out = ks.apply_defaults(field, given)
    out["l"].append("y")
    assert ks.apply_defaults(field, {})["l"] == ["x"]
    assert field == before and given == {}


def test_lua_quirks_of_defaulting() -> None:
    field = config_of({"r": f("record", fields=[{"n": f("integer", default=1)}])},
                      {"a": f("array", elements={"type": "string"})},
                      {"id": f("string", auto=True, uuid=True)})
    out = ks.apply_defaults(field, {"r": False, "a": {}})
    assert out["r"] == {"n": 1}  # `value or handle_missing_field(...)`: false is replaced
    assert out["a"] == []  # an empty table given for an array is an (empty) array
    assert re.fullmatch(r"[0-9a-f-]{36}", out["id"])


# ---------------------------------------------------------------- validate_config


def valid_config(**over: Any) -> dict[str, Any]:
    return ks.apply_defaults(CONFIG, {"issuer": "https://idp.example/realms/x", **over})


def test_valid_config() -> None:
    assert ks.validate_config(CONFIG, valid_config()) == []
    # validation applies defaults itself, like Kong's validate_field on a record
    assert ks.validate_config(CONFIG, {"issuer": "https://x"}) == []


@pytest.mark.parametrize(("over", "expected"), [
    ({"leeway": 1.5}, "config.leeway: expected an integer"),
    ({"leeway": True}, "config.leeway: expected an integer"),
    ({"timeout": "3"}, "config.timeout: expected a number"),
    ({"verify": 1}, "config.verify: expected a boolean"),
    ({"mode": 1}, "config.mode: expected a string"),
    ({"mode": ""}, "config.mode: expected one of: all, any"),  # one_of runs before len_min
    ({"issuer": ""}, "config.issuer: length must be at least 1"),
    ({"audiences": "a"}, "config.audiences: expected an array"),
    ({"audiences": {"a": 1}}, "config.audiences: expected an array"),
    ({"audiences": ["a", 2, None]}, None),
    ({"groups": "a"}, "config.groups: expected a set"),
    ({"headers": "x"}, "config.headers: expected a map"),
    ({"headers": {"X": 1}}, "config.headers: expected a string"),
    ({"cache": 5}, "config.cache: expected a record"),
    ({"cache": {"size": "1"}}, "config.cache.size: expected an integer"),
    ({"cache": {"colour": 1}}, "config.cache.colour: unknown field"),
    ({"colour": "red"}, "config.colour: unknown field"),
    ({"issuer": None}, "config.issuer: required field missing"),
    ({"rules": [{"path": "/ok"}, {"methods": ["GET"]}]}, "config.rules.2.path: required field missing"),
    ({"rules": [{"path": "nope"}]}, "config.rules.1.path: should start with: /"),
    ({"rules": [{"path": "/a", "methods": ["PUT"]}]}, "config.rules.1.methods.1: expected one of: GET, POST"),
])
def test_type_and_presence_errors(over: dict[str, Any], expected: str | None) -> None:
    errs = ks.validate_config(CONFIG, valid_config(**over))
    if expected is None:  # array elements are required and typed, reported by 1-based index
        assert errs == ["config.audiences.2: expected a string", "config.audiences.3: required field missing"]
    else:
        assert errs == [expected]


def test_missing_required_field() -> None:
    assert ks.validate_config(CONFIG, ks.apply_defaults(CONFIG, {})) == ["config.issuer: required field missing"]
    assert ks.validate_config(CONFIG, None) == ["config: required field missing"]


def test_integer_accepts_integral_floats() -> None:
    assert ks.validate_config(CONFIG, valid_config(leeway=2.0)) == []


@pytest.mark.parametrize(("fdef", "value", "expected"), [
    (f("string", one_of=["a", "b"]), "c", "expected one of: a, b"),
    (f("number", one_of=[1, 2.5]), 3, "expected one of: 1, 2.5"),
    (f("string", not_one_of=["root"]), "root", "must not be one of: root"),
    (f("integer", between=[1, 10]), 11, "value should be between 1 and 10"),
    (f("integer", between=[1, 10]), 0, "value should be between 1 and 10"),
    (f("number", gt=0), 0, "value must be greater than 0"),
    (f("number", gt=0.5), 0.5, "value must be greater than 0.5"),
    (f("string", eq="x"), "y", "value must be x"),
    (f("string", ne="x"), "x", "value must not be x"),
    (f("string", len_eq=3), "ab", "length must be 3"),
    (f("string", len_min=3), "ab", "length must be at least 3"),
    (f("string", len_max=3), "abcd", "length must be at most 3"),
    (f("string", len_max=3), "éé", "length must be at most 3"),  # 4 bytes
    (f("array", elements={"type": "string"}, len_min=2), ["a"], "length must be at least 2"),
    (f("array", elements={"type": "string"}, len_max=1), ["a", "b"], "length must be at most 1"),
    (f("set", elements={"type": "string"}, len_eq=1), ["a", "b"], "length must be 1"),
    (f("map", keys={"type": "string"}, values={"type": "string"}, len_max=1), {"a": "1", "b": "2"},
     "length must be at most 1"),
    (f("string", match="^%d+$"), "12a", "invalid value: 12a"),
    (f("string", not_match="%s"), "a b", "invalid value: a b"),
    (f("string", match_all=[{"pattern": "^a", "err": "must start with a"}, {"pattern": "z$"}]), "ab",
     "invalid value: ab"),
    (f("string", match_all=[{"pattern": "^a", "err": "must start with a"}]), "b", "must start with a"),
    (f("string", match_none=[{"pattern": "%.%.", "err": "no dot-dot"}]), "a..b", "no dot-dot"),
    (f("string", match_any={"patterns": ["^http://", "^https://"], "err": "needs a URL"}), "ftp://x",
     "needs a URL"),
    (f("string", match_any={"patterns": ["^x"]}), "y", "invalid value: y"),
    (f("string", starts_with="https://"), "http://x", "should start with: https://"),
    (f("string", uuid=True), "not-a-uuid", "expected a valid UUID"),
    (f("string", is_regex=True), "a(", "not a valid regex: a("),
    (f("integer", timestamp=True), 0, "expected a valid timestamp"),
    (f("array", elements={"type": "string"}, contains="openid"), ["email"], "expected to contain: openid"),
    (f("array", elements={"type": "string"}, mutually_exclusive_subsets=[["a", "b"], ["c"]]), ["a", "c"],
     "these sets are mutually exclusive: ('a', 'b'), ('c')"),
    (f("string", match="^%d+$", err="digits only"), "x", "digits only"),
])
def test_validators(fdef: dict[str, Any], value: Any, expected: str) -> None:
    field = config_of({"v": fdef})
    assert ks.validate_config(field, {"v": value}) == [f"config.v: {expected}"]


@pytest.mark.parametrize(("fdef", "value"), [
    (f("string", one_of=["a", "b"]), "b"),
    (f("integer", between=[1, 10]), 10),
    (f("string", match="^%d+$"), "123"),
    (f("string", uuid=True), "7C3B1E2A-0000-4000-8000-000000000000"),
    (f("string", len_min=0), ""),
    (f("string", match_any={"patterns": ["^http://", "^https://"]}), "https://x"),
    (f("array", elements={"type": "string"}, contains="openid"), ["email", "openid"]),
])
def test_validators_pass(fdef: dict[str, Any], value: Any) -> None:
    assert ks.validate_config(config_of({"v": fdef}), {"v": value}) == []


def test_first_failing_validator_in_kong_order_wins() -> None:
    # validators_order: one_of runs before len_min/match
    field = config_of({"v": f("string", one_of=["abc"], len_min=5, match="^z")})
    assert ks.validate_config(field, {"v": "ab"}) == ["config.v: expected one of: abc"]


def test_vault_references_skip_the_validators_of_referenceable_strings() -> None:
    field = config_of({"secret": f("string", referenceable=True, len_max=5, match="^s")},
                      {"plain": f("string", len_max=5)})
    assert ks.validate_config(field, {"secret": "{vault://env/kc-secret}", "plain": "ok"}) == []
    assert ks.validate_config(field, {"secret": "{vault://env/kc-secret", "plain": "ok"}) == [
        "config.secret: length must be at most 5"]
    assert ks.validate_config(field, {"plain": "{vault://env/x}"}) == ["config.plain: length must be at most 5"]


def test_updated_at_is_never_validated() -> None:
    # Schema.new's unvalidated_fields: a quirk that applies to records too.
    field = config_of({"updated_at": f("integer")})
    assert ks.validate_config(field, {"updated_at": "yesterday"}) == []


def test_foreign_values_need_an_id() -> None:
    field = config_of({"c": {"type": "foreign", "reference": "consumers"}})
    assert ks.validate_config(field, {"c": {"id": "x"}}) == ["config.c.id: expected a valid UUID"]
    assert ks.validate_config(field, {"c": "x"}) == ["config.c.id: missing primary key"]
    assert ks.validate_config(field, {"c": {"id": "7c3b1e2a-0000-4000-8000-000000000000"}}) == []


# ---------------------------------------------------------------- entity checks


def checked(*checks: dict[str, Any]) -> dict[str, Any]:
    return config_of({"a": f("string")}, {"b": f("string")}, {"c": f("integer", default=0)}, entity_checks=list(checks))


@pytest.mark.parametrize(("check", "config", "expected"), [
    ({"at_least_one_of": ["a", "b"]}, {}, ["config.@entity: at least one of these fields must be non-empty: 'a', 'b'"]),
    ({"at_least_one_of": ["a", "b"]}, {"a": ""}, ["config.a: length must be at least 1",
                                                   "config.@entity: at least one of these fields must be non-empty: "
                                                   "'a', 'b'"]),
    ({"at_least_one_of": ["a", "b"]}, {"b": "x"}, []),
    ({"only_one_of": ["a", "b"]}, {"a": "x", "b": "y"},
     ["config.@entity: exactly one of these fields must be non-empty: 'a', 'b'"]),
    ({"only_one_of": ["a", "b"]}, {}, ["config.@entity: exactly one of these fields must be non-empty: 'a', 'b'"]),
    ({"only_one_of": ["a", "b"]}, {"b": "y"}, []),
    ({"mutually_exclusive": ["a", "b"]}, {"a": "x", "b": "y"},
     ["config.@entity: only one or none of these fields must be set: 'a', 'b'"]),
    ({"mutually_exclusive": ["a", "b"]}, {}, []),
    ({"mutually_required": ["a", "b"]}, {"a": "x"},
     ["config.@entity: all or none of these fields must be set: 'a', 'b'"]),
    ({"mutually_required": ["a", "b"]}, {"a": "x", "b": "y"}, []),
    ({"distinct": ["a", "b"]}, {"a": "x", "b": "x"},
     ["config.@entity: values of these fields must be distinct: 'a', 'b'"]),
    ({"mutually_exclusive_sets": {"set1": ["a"], "set2": ["b", "c"]}}, {"a": "x", "c": 1},
     ["config.@entity: these sets are mutually exclusive: ('a'), ('c')"]),
    ({"conditional": {"if_field": "a", "if_match": {"eq": "x"}, "then_field": "b", "then_match": {"required": True}}},
     {"a": "x"}, ["config.b: required field missing",
                  "config.@entity: failed conditional validation given value of field 'a'"]),
    ({"conditional": {"if_field": "a", "if_match": {"eq": "x"}, "then_field": "b", "then_match": {"required": True}}},
     {"a": "y"}, []),
    ({"conditional": {"if_field": "a", "if_match": {"one_of": ["x"]}, "then_field": "c",
                      "then_match": {"between": [1, 5]}, "then_err": "c must be set when a is %s"}},
     {"a": "x"}, ["config.c: value should be between 1 and 5", "config.@entity: c must be set when a is a"]),
    ({"conditional_at_least_one_of": {"if_field": "c", "if_match": {"gt": 0}, "then_at_least_one_of": ["a", "b"]}},
     {"c": 1}, ["config.@entity: at least one of these fields must be non-empty: 'a', 'b'"]),
    ({"conditional_at_least_one_of": {"if_field": "c", "if_match": {"gt": 0}, "then_at_least_one_of": ["a", "b"]}},
     {"c": 0}, []),
])
def test_entity_checks(check: dict[str, Any], config: dict[str, Any], expected: list[str]) -> None:
    assert ks.validate_config(checked(check), config) == expected


def test_entity_checks_skip_vault_references() -> None:
    field = config_of({"a": f("string", referenceable=True)}, {"b": f("string")},
                      entity_checks=[{"mutually_exclusive": ["a", "b"]}])
    assert ks.validate_config(field, {"a": "{vault://env/a}", "b": "y"}) == []
    assert ks.validate_config(field, {"a": "x", "b": "y"}) == [
        "config.@entity: only one or none of these fields must be set: 'a', 'b'"]


def test_entity_checks_of_nested_records_and_dotted_names() -> None:
    field = config_of({"inner": f("record", fields=[{"x": f("string")}, {"y": f("string")}],
                                  entity_checks=[{"at_least_one_of": ["x", "y"]}])},
                      {"z": f("string")},
                      entity_checks=[{"mutually_required": ["inner.x", "z"]}])
    assert ks.validate_config(field, {"inner": {"x": "1"}}) == [
        "config.@entity: all or none of these fields must be set: 'inner.x', 'z'"]
    assert ks.validate_config(field, {"z": "1"}) == [
        "config.inner.@entity: at least one of these fields must be non-empty: 'x', 'y'",
        "config.@entity: all or none of these fields must be set: 'inner.x', 'z'"]


def test_unsupported_things_raise_rather_than_pass() -> None:
    with pytest.raises(ks.UnsupportedByHarness):
        ks.validate_config(checked({"custom_entity_check": {"field_sources": ["a"]}}), {"a": "x"})
    with pytest.raises(ks.UnsupportedByHarness):
        ks.validate_config(config_of({"j": f("json", json_schema={"inline": {}})}), {"j": {}})
    with pytest.raises(ks.UnsupportedByHarness):
        ks.validate_config(config_of({"v": f("string", match="%b()")}), {"v": "(x)"})
    with pytest.raises(ks.KongLuaError):
        ks.validate_config(config_of({"v": f("string", one_of=None)}), {"v": "x"})


# ---------------------------------------------------------------- Lua patterns


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    ("^%a+$", ["abc", "ABC"], ["ab1", "", "a b"]),
    ("^%d+$", ["0123"], ["12a", "١٢"]),  # Arabic-Indic digits are not %d in the C locale
    ("^%l+$", ["abc"], ["aBc"]),
    ("^%u+$", ["ABC"], ["AbC"]),
    ("^%s$", [" ", "\t", "\n", "\v", "\f", "\r"], ["a", "\u00a0"]),
    ("^%w+$", ["a1B2"], ["a_1"]),
    ("^%x+$", ["09afAF"], ["0g"]),
    ("^%p+$", ["!-/:@[`{~"], ["a", " "]),
    ("^%c$", ["\x00", "\x1f", "\x7f"], ["a", " "]),
    ("^%g+$", ["a!~"], ["a b"]),
    ("^%D+$", ["ab"], ["a1"]),
    ("^%S+$", ["ab"], ["a b"]),
    ("^%z$", ["\x00"], ["0"]),
    ("%.", ["a.b"], ["ab"]),
    ("^a.c$", ["abc", "a.c", "a\nc"], ["ac"]),
    ("^.$", ["a"], ["é"]),  # one byte: é is two
    ("^..$", ["é"], ["a"]),
    ("b", ["abc"], ["xyz"]),  # string.match searches anywhere
    ("^b", ["bc"], ["abc"]),
    ("b$", ["ab"], ["ba"]),
    ("a^b", ["a^b"], ["ab"]),  # ^ is only an anchor at the start
    ("a$b", ["a$b"], ["ab"]),  # $ is only an anchor at the end
    ("^*a", ["*a"], ["a"]),  # a quantifier with nothing before it is a literal
    ("^ab*c$", ["ac", "abbc"], ["abd"]),
    ("^ab+c$", ["abc", "abbc"], ["ac"]),
    ("^ab-c$", ["ac", "abbc"], ["adc"]),
    ("^ab?c$", ["ac", "abc"], ["abbc"]),
    ("^[a-c]+$", ["abcabc"], ["abd"]),
    ("^[^0-9]+$", ["abc"], ["a1"]),
    ("^[%a_][%w_]*$", ["_id", "x9"], ["9x"]),
    ("^[]]$", ["]"], ["["]),  # ']' first in a set is a member
    ("^[^]]$", ["a"], ["]"]),
    ("^[%]%-]+$", ["]-"], ["a"]),
    ("^[a-]$", ["a", "-"], ["b"]),
    ("^[%d.]+$", ["1.2.3"], ["1,2"]),
    ("^(a+)%1$", ["aaaa", "aa"], ["aaa", "ab"]),
    ("^()a$", ["a"], ["b"]),
    ("%f[%a]the%f[%A]", ["the cat", "see the"], ["other", "then"]),
    ("^[+-]?%d+$", ["-12", "+3", "4"], ["1-2"]),
    ("^https?://[%w.-]+/realms/[%w-]+$", ["https://kc.example.com/realms/my-realm"],
     ["https://kc.example.com/realms/", "ftp://kc/realms/x"]),
])
def test_lua_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    for s in yes:
        assert ks.lua_match(s, pattern), (pattern, s)
    for s in no:
        assert not ks.lua_match(s, pattern), (pattern, s)


def test_lua_pattern_translation_text() -> None:
    assert ks.lua_pattern_to_regex("^%d+$") == r"\A[\x30-\x39]+\Z"
    assert ks.lua_pattern_to_regex("a-") == r"\x61*?"
    assert ks.lua_pattern_to_regex("%.") == r"\x2e"
    assert ks.lua_pattern_to_regex(".") == r"[\x00-\xff]"


@pytest.mark.parametrize(("pattern", "message"), [
    ("[a", "malformed pattern (missing ']')"),
    ("a%", "malformed pattern (ends with '%')"),
    ("(a", "unfinished capture"),
    ("a)", "invalid pattern capture"),
    ("%1", "invalid capture index"),
    ("(a%1)", "invalid capture index"),
    ("%fa", "missing '[' after '%f' in pattern"),
])
def test_malformed_lua_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ks.LuaPatternError, match=re.escape(message)):
        ks.lua_match("a", pattern)


def test_balanced_match_is_unsupported() -> None:
    with pytest.raises(ks.UnsupportedByHarness):
        ks.lua_match("(a)", "%b()")


# ---------------------------------------------------------------- kong_config_for_instance


PLUGIN_ID = "5a0f1b7e-1111-4000-8000-000000000001"
ROUTE_ID = "5a0f1b7e-2222-4000-8000-000000000002"


def test_instance_config_adds_get_plugin_config_keys() -> None:
    cfg = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 7, route_id=ROUTE_ID)
    assert cfg == {
        "issuer": "https://x", "leeway": 10, "timeout": 3, "verify": True, "mode": "all", "audiences": [],
        "groups": ["a"], "headers": {"X-Sub": "sub"}, "cache": {"size": 100, "ttl": 1.5}, "rules": [],
        # "secret" was null: select-context processing drops nulls, so it is absent, not null
        "route_id": ROUTE_ID,
        "__plugin_id": PLUGIN_ID,
        "__ws_id": ks.DEFAULT_WORKSPACE_ID,
        "__key__": f"plugins:kcauth:{ROUTE_ID}::::{ks.DEFAULT_WORKSPACE_ID}",
        "__seq__": 7,
    }
    assert "service_id" not in cfg and "consumer_id" not in cfg and "plugin_instance_name" not in cfg
    assert isinstance(cfg["timeout"], int)  # cjson prints 3.0 as 3


def test_instance_config_global_plugin_and_all_ids() -> None:
    cfg = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 1, route_id="r",
                                      service_id="s", consumer_id="c", plugin_name="other", ws_id="w",
                                      instance_name="named")
    assert (cfg["route_id"], cfg["service_id"], cfg["consumer_id"], cfg["plugin_instance_name"]) == ("r", "s", "c",
                                                                                                      "named")
    assert cfg["__key__"] == "plugins:other:r:s:c::w" and cfg["__ws_id"] == "w"
    glob = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 1)
    assert glob["__key__"] == f"plugins:kcauth:::::{ks.DEFAULT_WORKSPACE_ID}"
    assert "route_id" not in glob


def test_instance_config_drops_nulls_everywhere_and_keeps_empty_containers() -> None:
    field = config_of({"a": f("string")},
                      {"r": f("record", fields=[{"x": f("string")}, {"y": f("integer", default=1)}])},
                      {"l": f("array", elements={"type": "record", "fields": [{"k": f("string")}]})},
                      {"m": f("map", keys={"type": "string"}, values={"type": "string"}, default={})})
    cfg = ks.kong_config_for_instance(field, {"l": [{}]}, PLUGIN_ID, 1)
    assert {k: v for k, v in cfg.items() if not k.startswith("__")} == {"r": {"y": 1}, "l": [{}], "m": {}}
    assert json.loads(json.dumps(cfg)) == cfg


def test_instance_config_numbers_go_through_cjson() -> None:
    field = config_of({"n": f("number")}, {"i": f("integer")})
    cfg = ks.kong_config_for_instance(field, {"n": 0.1, "i": 10 ** 16}, PLUGIN_ID, 1)
    assert cfg["n"] == 0.1
    assert cfg["i"] == 1e16 and isinstance(cfg["i"], float)  # "%.16g" prints 1e+16


def test_instance_config_rejects_invalid_config() -> None:
    with pytest.raises(ValueError, match=re.escape("config.issuer: required field missing")):
        ks.kong_config_for_instance(CONFIG, {}, PLUGIN_ID, 1)


def test_instance_config_resolves_vault_references_when_asked() -> None:
    field = config_of({"secret": f("string", referenceable=True)},
                      {"list": f("array", elements={"type": "string", "referenceable": True})},
                      {"missing": f("string", referenceable=True)})
    vault = {"{vault://env/s}": "s3cret", "{vault://env/l}": "item"}
    cfg = ks.kong_config_for_instance(field, {"secret": "{vault://env/s}", "list": ["a", "{vault://env/l}"],
                                              "missing": "{vault://env/none}"}, PLUGIN_ID, 1,
                                      resolve_reference=vault.get)
    assert cfg["secret"] == "s3cret" and cfg["list"] == ["a", "item"] and cfg["missing"] == ""
    assert cfg["$refs"] == {"secret": "{vault://env/s}", "list": {"2": "{vault://env/l}"},
                            "missing": "{vault://env/none}"}
    plain = ks.kong_config_for_instance(field, {"secret": "{vault://env/s}"}, PLUGIN_ID, 1)
    assert plain["secret"] == "{vault://env/s}" and "$refs" not in plain


def test_start_instance_request() -> None:
    cfg = ks.kong_config_for_instance(CONFIG, {"issuer": "https://x"}, PLUGIN_ID, 3)
    req = ks.start_instance_request("kcauth", cfg)
    assert req["Name"] == "kcauth"
    assert json.loads(req["Config"]) == cfg
