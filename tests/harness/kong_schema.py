"""Kong 3.9.3's schema engine, ported to Python as far as kcauth's dumped schema needs it.

Written from Kong's source at tag ``3.9.3``; each function names the Kong file and function it
follows:

* ``kong/db/schema/metaschema.lua``      -- ``MetaSchema.MetaSubSchema`` (what a plugin schema may
  say) and its ``check`` function (``check_fields`` / ``check_field``).
* ``kong/db/schema/init.lua``            -- ``Schema:validate_field``, ``validate_fields``,
  ``Schema:validate``, ``run_entity_check``, ``Schema.validators``, ``Schema.entity_checkers``,
  ``handle_missing_field``, ``adjust_field_for_context``, ``Schema:process_auto_fields``,
  ``compatible_fields``, ``Schema.new_subschema``.
* ``kong/db/schema/entity.lua``          -- ``Entity.new_subschema`` / ``make_records_required``.
* ``kong/db/schema/plugin_loader.lua``   -- ``load_subschema``: MetaSubSchema, then the subschema.
* ``kong/db/dao/init.lua``               -- ``check_insert`` (insert = process, then validate),
  ``DAO:row_to_entity`` (a read = ``process_auto_fields(row, "select")``), ``DAO:cache_key``.
* ``kong/runloop/plugins_iterator.lua``  -- ``get_plugin_config``; ``kong/runloop/plugin_servers/
  rpc/mp_rpc.lua`` -- ``plugin.StartInstance`` (``cjson.safe`` encoding).
* ``kong/pdk/vault.lua``                 -- ``is_reference``.
* LuaJIT ``src/lib_string.c``            -- ``string.match``: ``match``, ``classend``,
  ``match_class``, ``matchbracketclass``, ``max_expand``, ``min_expand``, ``str_find_aux``.

Covered, as Kong does it (what ``kcauth-pluginserver --dump`` uses):

* field types ``string``, ``integer``, ``number``, ``boolean``, ``record`` (nested, with
  ``fields`` and ``entity_checks``), ``array`` of strings, ``map`` of strings to strings;
* attributes ``required``, ``default``, ``description``, ``referenceable``, ``encrypted`` (no
  effect on validation), ``err``, ``elements``, ``keys``, ``values``, ``fields``, ``entity_checks``;
  on ``elements``/``keys``/``values`` only ``type``, ``description``, ``err`` and the validators;
* validators ``eq``, ``one_of``, ``gt``, ``between``, ``len_min``, ``len_max``, ``match``,
  ``match_none``, in Kong's order, with Kong's messages (``len_eq`` runs for the metaschema only);
* entity checkers ``conditional`` and ``conditional_at_least_one_of`` (``if_field``, ``if_match``,
  ``then_field`` / ``then_at_least_one_of``, ``then_match``, ``then_err``; conditions use
  ``required`` and the validators above), as ``run_entity_check`` runs them (missing and null
  fields, vault references skip the check, dotted names into nested records);
* vault references (``{vault://...}``) on referenceable strings: they skip the validators, and a
  read can resolve them (``$refs``);
* the plugin loader's checks: the MetaSubSchema (field types and the attributes each needs or may
  not have, the type of every attribute, ``description`` of 10 to 500 bytes, ``default`` validated
  against its field, the shape of entity checks), then ``Entity.new_subschema`` (only a ``config``
  record at the top);
* Lua patterns: anchors, ``.``, ``%`` classes and escapes, sets, the quantifiers ``* + - ?``.

Left out (kcauth cannot need them): the types ``set``, ``foreign``, ``json``, ``function``; the
attributes ``auto``, ``unique``, ``unique_across_ws``, ``abstract``, ``immutable``, ``transient``,
``deprecation``, ``shorthand_fields``, ``json_schema``, ``on_delete``, ``examples``,
``reference``, ``generate_admin_api``; the validators ``ne``, ``len_eq``, ``not_one_of``,
``starts_with``, ``not_match``, ``match_all``, ``match_any``, ``contains``, ``timestamp``,
``uuid``, ``is_regex``, ``custom_validator``, ``mutually_exclusive_subsets``; the entity checkers
``at_least_one_of``, ``only_one_of``, ``distinct``, ``mutually_required``, ``mutually_exclusive``,
``mutually_exclusive_sets``, ``custom_entity_check`` and the ``else_*`` part of
``conditional_at_least_one_of``; schema-level ``entity_checks``, ``shorthand_fields``,
``transformations``, ``check``; top-level fields other than ``config``; attributes set to null
(but ``default``); referenceable ``elements``/``keys``/``values``; Lua pattern captures, ``%b``,
``%f`` and back-references; the contexts ``update``/``upsert`` and the ``nulls`` option of
process_auto_fields; the plugin loader's checks outside the schema (the ``-dump``'s Priority
and Version: kong/db/dao/plugins.lua). A schema using any of these is refused
(:func:`check_plugin_schema` names each, and :func:`apply_defaults`, :func:`validate_config`,
:func:`kong_config_for_instance` raise :class:`UnsupportedByHarness`): port the piece from the
Kong file named above, with its tests, before using it. Those three take only a config record
:func:`check_plugin_schema` accepts (else :class:`SchemaRefused`), so the engine only ever runs
on schemas Kong loads.

Representation of Lua values:

* Lua ``nil`` (a key that is not there) is an **absent dict key**; internally :data:`MISSING`.
* ``ngx.null`` / ``cjson.null`` (JSON ``null``) is ``None``.
* Lua tables are ``dict`` or ``list``; an empty ``{}`` is also an empty sequence, as in Lua.
* Strings are measured and matched as UTF-8 bytes, as Lua does (``#s``, ``string.match``).

Where Kong itself fails with a Lua error (a validator that does not fit its field's type, say),
:class:`KongLuaError` is raised.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "MISSING",
    "KONG_VERSION",
    "DEFAULT_WORKSPACE_ID",
    "KongHarnessError",
    "UnsupportedByHarness",
    "SchemaRefused",
    "KongLuaError",
    "LuaPatternError",
    "check_plugin_schema",
    "check_descriptions",
    "apply_defaults",
    "validate_config",
    "kong_config_for_instance",
    "lua_match",
    "is_reference",
]

KONG_VERSION: Final = "3.9.3"

# kong.default_workspace is a random UUID made when the database is bootstrapped
# (kong/db/dao/workspaces.lua); a fixed stand-in keeps __key__ reproducible.
DEFAULT_WORKSPACE_ID: Final = "00000000-0000-4000-8000-000000000000"


class _Missing:
    """Lua ``nil``: the value of a key that is not in the table."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class KongHarnessError(Exception):
    """Base class of this module's own exceptions."""


class UnsupportedByHarness(KongHarnessError, NotImplementedError):
    """The schema uses something Kong has but this port does not cover."""


class SchemaRefused(KongHarnessError):
    """Kong would not load this schema (or would load it, then fail validating any config)."""


class KongLuaError(KongHarnessError):
    """Kong itself would fail with a Lua runtime error here (an Admin API 500)."""


class LuaPatternError(KongLuaError, ValueError):
    """A malformed Lua pattern: ``string.match`` raises."""


# --------------------------------------------------------------------------------------
# What Kong knows and what this port covers (kong/db/schema/metaschema.lua, init.lua)
# --------------------------------------------------------------------------------------

# Schema.valid_types in source order (Kong's own "expected one of" list is in hash order).
_KONG_TYPES: Final = ("array", "set", "string", "number", "boolean", "integer", "foreign", "map", "record",
                      "function", "json")
_TYPES: Final = frozenset({"string", "integer", "number", "boolean", "array", "map", "record"})
# metaschema.lua `validators`, then the other field attributes of `field_schema`.
_KONG_VALIDATORS: Final = ("between", "eq", "ne", "gt", "len_eq", "len_min", "len_max", "match", "not_match",
                           "match_all", "match_none", "match_any", "starts_with", "one_of", "not_one_of",
                           "contains", "is_regex", "timestamp", "uuid", "custom_validator",
                           "mutually_exclusive_subsets")
_KONG_ATTRIBUTES: Final = frozenset({
    "type", "required", "reference", "description", "examples", "auto", "unique", "unique_across_ws",
    "on_delete", "default", "abstract", "generate_admin_api", "immutable", "err", "encrypted", "referenceable",
    "json_schema", "transient", "deprecation", *_KONG_VALIDATORS, "elements", "keys", "values", "fields",
    "entity_checks", "shorthand_fields",
})
# Schema.validators_order, the covered ones (len_eq: the metaschema's own use only).
_VALIDATORS_ORDER: Final = ("eq", "one_of", "gt", "between", "len_eq", "len_min", "len_max", "match_none", "match")
_COVERED_VALIDATORS: Final = frozenset(_VALIDATORS_ORDER) - {"len_eq"}
_ATTRIBUTES: Final = frozenset({"type", "required", "default", "description", "referenceable", "encrypted", "err",
                                "elements", "keys", "values", "fields", "entity_checks", *_COVERED_VALIDATORS})
_PART_ATTRIBUTES: Final = frozenset({"type", "description", "err", *_COVERED_VALIDATORS})
# metaschema.lua `entity_checkers`, in source order, and the keys of the covered ones' arguments.
_KONG_CHECKERS: Final = ("at_least_one_of", "conditional_at_least_one_of", "only_one_of", "distinct", "conditional",
                         "custom_entity_check", "mutually_required", "mutually_exclusive", "mutually_exclusive_sets")
_CHECKER_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "conditional": ("if_field", "if_match", "then_field", "then_match", "then_err"),
    "conditional_at_least_one_of": ("if_field", "if_match", "then_at_least_one_of", "then_err"),
}
_KONG_CHECKER_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "conditional": _CHECKER_KEYS["conditional"],
    "conditional_at_least_one_of": (*_CHECKER_KEYS["conditional_at_least_one_of"], "else_match",
                                    "else_then_at_least_one_of", "else_then_err"),
}
# What the checkers read unchecked: Kong fails with a Lua error where one is missing.
_CHECKER_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "conditional": ("if_field", "if_match", "then_field", "then_match"),
    "conditional_at_least_one_of": ("if_field", "if_match", "then_at_least_one_of"),
}
# metaschema.lua `conditional_validators`: what if_match / then_match may say.
_KONG_CONDITION_KEYS: Final = frozenset({"required", "elements", "keys", "values", *_KONG_VALIDATORS})
_CONDITION_KEYS: Final = frozenset({"required", *_COVERED_VALIDATORS})
# The fields of the `plugins` entity (kong/db/schema/entities/plugins.lua) a plugin schema could
# specialise besides `config`.
_PLUGINS_ENTITY_FIELDS: Final = frozenset({"id", "name", "instance_name", "created_at", "updated_at", "route",
                                           "service", "consumer", "protocols", "enabled", "tags"})

# --------------------------------------------------------------------------------------
# Messages: init.lua validation_errors, metaschema.lua meta_errors
# --------------------------------------------------------------------------------------

_E: Final = {
    "ARRAY": "expected an array",
    "MAP": "expected a map",
    "RECORD": "expected a record",
    "STRING": "expected a string",
    "NUMBER": "expected a number",
    "BOOLEAN": "expected a boolean",
    "INTEGER": "expected an integer",
    "EQ": "value must be %s",
    "GT": "value must be greater than %s",
    "BETWEEN": "value should be between %d and %d",
    "LEN_EQ": "length must be %d",
    "LEN_MIN": "length must be at least %d",
    "LEN_MAX": "length must be at most %d",
    "MATCH": "invalid value: %s",
    "MATCH_NONE": "invalid value: %s",
    "ONE_OF": "expected one of: %s",
    "REQUIRED": "required field missing",
    "UNKNOWN": "unknown field",
    "REQUIRED_FOR_ENTITY_CHECK": "field required for entity check",
    "CONDITIONAL": "failed conditional validation given value of field '%s'",
    "CONDITIONAL_AT_LEAST_ONE_OF": "at least one of these fields must be non-empty: %s",
    "ONLY_ONE_OF": "exactly one of these fields must be non-empty: %s",
    "SCHEMA_CANNOT_VALIDATE": "error in schema prevents from validating this field",
    "SCHEMA_TYPE": "invalid type: %s",
    "SUBSCHEMA_BAD_TYPE": "error in definition of '%s': %s: cannot change type in a specialized field",
    "SUBSCHEMA_BAD_FIELD": "error in definition of '%s': %s: cannot create a new field",
}

_META_E: Final = {
    "ATTRIBUTE": "field of type '%s' cannot have attribute '%s'",
    "REQUIRED": "field of type '%s' must declare '%s'",
    "TABLE": "'%s' must be a table",
    "TYPE": "missing type declaration",
    "FIELD_EMPTY": "field entry table is empty",
    "FIELDS_ARRAY": "each entry in fields must be a sub-table",
}

# --------------------------------------------------------------------------------------
# Lua values
# --------------------------------------------------------------------------------------


def _truthy(v: Any) -> bool:
    """Lua truthiness: only nil and false are false (ngx.null, 0 and "" are true)."""
    return v is not MISSING and v is not False


def _is_table(v: Any) -> bool:
    return isinstance(v, (dict, list))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _attr(t: Any, key: Any) -> Any:
    """``t[key]``; MISSING (nil) when absent or when t is no table."""
    if isinstance(t, dict):
        return t.get(key, MISSING)
    if isinstance(t, list) and isinstance(key, int) and not isinstance(key, bool):
        return t[key - 1] if 1 <= key <= len(t) else MISSING
    return MISSING


def _lua_len(v: Any) -> int:
    """The ``#`` operator: the bytes of a string, the border of a table."""
    if isinstance(v, str):
        return len(v.encode("utf-8"))
    if isinstance(v, list):
        return len(v)
    if isinstance(v, dict):
        n = 0
        while (n + 1) in v:
            n += 1
        return n
    raise KongLuaError(f"attempt to get length of a {_lua_type(v)} value")


def _seq(v: Any) -> list[Any]:
    """``v[1] .. v[#v]`` of a table, what ``for i = 1, #v`` visits."""
    if isinstance(v, list):
        return v
    if not isinstance(v, dict):
        raise KongLuaError(f"attempt to index a {_lua_type(v)} value")
    return [v[i] for i in range(1, _lua_len(v) + 1)]


def _is_sequence(v: Any) -> bool:
    """init.lua is_sequence: keys exactly 1..n (an empty table is one)."""
    return isinstance(v, list) or (isinstance(v, dict) and _lua_len(v) == len(v))


def _lua_pairs(t: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(t, dict):
        yield from list(t.items())
    else:
        yield from enumerate(list(t), 1)


def _lua_type(v: Any) -> str:
    if v is MISSING:
        return "nil"
    if isinstance(v, bool):
        return "boolean"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    return "table" if _is_table(v) else "userdata"


def _lua_eq(a: Any, b: Any) -> bool:
    """Lua ``==``: numbers by value (1 == 1.0), strings and booleans by type and value, tables by identity."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if a is None or isinstance(a, (str, bool)):
        return type(a) is type(b) and a == b
    return a is b


def _lua_tostring(v: Any) -> str:
    if _is_number(v):  # LUAI_NUMFFORMAT "%.14g"
        f = float(v)
        return "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else format(f, ".14g")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    return "nil" if v is MISSING else "userdata: NULL" if v is None else f"{_lua_type(v)}: 0x{id(v):08x}"


def _lua_format(fmt: Any, *args: Any) -> str:
    """LuaJIT 2.1's ``fmt:format(...)`` for the items Kong's messages use: %s (any value, as
    tostring gives it), %d (a number, truncated), %%."""
    if not isinstance(fmt, str):
        raise KongLuaError(f"attempt to index a {_lua_type(fmt)} value (:format)")
    out: list[str] = []
    rest = iter(args)
    i = 0
    while i < len(fmt):
        if fmt[i] != "%":
            out.append(fmt[i])
            i += 1
            continue
        spec = fmt[i + 1:i + 2]
        i += 2
        if spec == "%":
            out.append("%")
            continue
        arg: Any = next(rest, _NO_VALUE)
        if spec not in ("s", "d"):
            raise UnsupportedByHarness(f"format item %{spec} in {fmt!r} is not covered by this port")
        if arg is _NO_VALUE or (spec == "d" and not _is_number(arg)):
            raise KongLuaError(f"bad argument to 'format' in {fmt!r}")
        out.append(_lua_tostring(arg) if spec == "s" else str(math.trunc(arg)))
    return "".join(out)


_NO_VALUE: Final = object()


def _quoted_list(words: list[Any]) -> str:
    """init.lua quoted_list."""
    return ", ".join(f"({_quoted_list(_seq(w))})" if _is_table(w) else f"'{_lua_tostring(w)}'" for w in words)


def is_reference(value: Any) -> bool:
    """kong/pdk/vault.lua is_reference: a string starting with ``{vault://`` and ending with ``}``."""
    return isinstance(value, str) and value.startswith("{vault://") and value.endswith("}")


def _is_nonempty(v: Any) -> bool:
    """init.lua is_nonempty: not nil, not null, not an empty table, not ""."""
    return not (v is MISSING or v is None or (_is_table(v) and not v) or v == "")


def _get_field(tbl: Any, name: str) -> Any:
    """init.lua get_field: ``t["x.y"]`` is ``t.x.y``."""
    if tbl is MISSING or tbl is None:
        return MISSING
    if not isinstance(name, str):
        raise KongLuaError(f"bad argument #1 to 'find' (string expected, got {_lua_type(name)})")
    hd, dot, tl = name.partition(".")
    return _get_field(_attr(tbl, hd), tl) if dot else _attr(tbl, name)


def _set_field(tbl: dict[Any, Any], name: str, value: Any) -> None:
    """init.lua set_field (assigning nil removes the key)."""
    hd, dot, tl = name.partition(".")
    if dot:
        sub = tbl.get(hd)
        if not isinstance(sub, dict):
            sub = tbl[hd] = {}
        _set_field(sub, tl, value)
    elif value is MISSING:
        tbl.pop(name, None)
    else:
        tbl[name] = value


def _fields_list(schema: Any) -> list[tuple[str, dict[str, Any]]]:
    """Schema:each_field: the ``{ name = def }`` entries of a schema's (or record's) ``fields``."""
    fields = _attr(schema, "fields")
    if not _is_table(fields):
        raise KongLuaError(f"attempt to index 'fields' (a {_lua_type(fields)} value)")
    out: list[tuple[str, dict[str, Any]]] = []
    for item in _seq(fields):
        if not isinstance(item, dict) or not item or not isinstance(next(iter(item.values())), dict):
            raise KongLuaError("malformed entry in 'fields'")
        out.append(next(iter(item.items())))
    return out


def _entries(fields: Any) -> list[tuple[Any, Any]]:
    """The ``name, def`` pairs of the entries of a ``fields`` value, skipping what is no table (the
    metaschema reports that, and entries of more than one pair)."""
    return [pair for e in fields if isinstance(e, dict) for pair in e.items()] if isinstance(fields, list) else []


def _schema_field(record: Any, name: str) -> Any:
    """init.lua get_schema_field: a (dotted) name through records (allow_record_fields_by_name)."""
    if not isinstance(name, str):
        raise KongLuaError(f"bad argument #1 to 'find' (string expected, got {_lua_type(name)})")
    hd, dot, tl = name.partition(".")
    fdef = dict(_entries(_attr(record, "fields"))).get(hd) if isinstance(record, dict) else None
    return _schema_field(fdef, tl) if dot and fdef is not None else fdef


# --------------------------------------------------------------------------------------
# Lua patterns: LuaJIT src/lib_string.c
# --------------------------------------------------------------------------------------
# LuaJIT matches bytes with its own C-locale character table (lj_char.c); the classes are
# %a %c %d %g %l %p %s %u %w %x and %z, upper case for the complement; any other escaped
# character stands for itself. A pattern is compiled to its items (each a set of bytes and a
# quantifier), which `_match` runs as match() / max_expand() / min_expand() do.

def _ctype(pred: Callable[[int], bool]) -> frozenset[int]:
    return frozenset(c for c in range(256) if pred(c))


_ALL_BYTES: Final = frozenset(range(256))
_DIGIT = _ctype(lambda c: 48 <= c <= 57)
_UPPER = _ctype(lambda c: 65 <= c <= 90)
_LOWER = _ctype(lambda c: 97 <= c <= 122)
_ALNUM = _UPPER | _LOWER | _DIGIT
_GRAPH = _ctype(lambda c: 33 <= c <= 126)
_LUA_CLASSES: Final[dict[int, frozenset[int]]] = {ord(k): v for k, v in {
    "a": _UPPER | _LOWER, "c": _ctype(lambda c: c < 32 or c == 127), "d": _DIGIT, "g": _GRAPH, "l": _LOWER,
    "p": _GRAPH - _ALNUM, "s": _ctype(lambda c: 9 <= c <= 13 or c == 32), "u": _UPPER, "w": _ALNUM,
    "x": _DIGIT | _ctype(lambda c: 65 <= c <= 70 or 97 <= c <= 102), "z": frozenset({0}),
}.items()}


def _class_bytes(cl: int) -> frozenset[int]:
    """match_class: the bytes ``%`` followed by ``cl`` matches."""
    if 0x41 <= cl <= 0x7A and (cl | 0x20) in _LUA_CLASSES:
        s = _LUA_CLASSES[cl | 0x20]
        return s if cl & 0x20 else _ALL_BYTES - s
    return frozenset({cl})


def _class_end(p: bytes, i: int) -> int:
    """classend: the index just past the single-character class starting at p[i]."""
    c = p[i]
    i += 1
    if c == 0x25:  # '%'
        if i >= len(p):
            raise LuaPatternError("malformed pattern (ends with '%')")
        return i + 1
    if c == 0x5B:  # '['
        if i < len(p) and p[i] == 0x5E:  # '^'
            i += 1
        while True:  # the first character after '[' or '[^' is a member, even ']'
            if i >= len(p):
                raise LuaPatternError("malformed pattern (missing ']')")
            i += 2 if p[i] == 0x25 and i + 1 < len(p) else 1
            if i < len(p) and p[i] == 0x5D:
                return i + 1
    return i


def _bracket_bytes(p: bytes, start: int, ec: int) -> frozenset[int]:
    """matchbracketclass: the bytes of the set ``p[start] == '['`` .. ``p[ec] == ']'``."""
    k = start
    negate = p[k + 1] == 0x5E
    if negate:
        k += 1
    members: set[int] = set()
    k += 1
    while k < ec:
        if p[k] == 0x25:
            k += 1
            members |= _class_bytes(p[k])
        elif p[k + 1] == 0x2D and k + 2 < ec:  # a range: x-y
            members |= set(range(p[k], p[k + 2] + 1))
            k += 2
        else:
            members.add(p[k])
        k += 1
    return _ALL_BYTES - members if negate else frozenset(members)


_Pattern = tuple[bool, tuple[tuple[frozenset[int], int], ...], bool]


@lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> _Pattern:
    """A pattern as (anchored at the start, items, anchored at the end).

    str_find_aux: a leading '^' anchors; match(): a '$' anchors only as the last character, any
    other '^' or '$' is a literal, and a quantifier follows a single-character class. Raised
    eagerly, whatever the subject (Lua raises only when the matcher reaches the item):
    LuaPatternError for what Lua refuses, UnsupportedByHarness for what this port leaves out.
    """
    p = pattern.encode("utf-8")
    n = len(p)
    anchored = n > 0 and p[0] == 0x5E
    i = 1 if anchored else 0
    items: list[tuple[frozenset[int], int]] = []
    while i < n:
        c = p[i]
        if c in b"()" or (c == 0x25 and i + 1 < n and p[i + 1] in b"bf0123456789"):
            what = "captures" if c in b"()" else "back-references" if p[i + 1] in b"0123456789" else f"%{chr(p[i + 1])}"
            raise UnsupportedByHarness(f"Lua pattern {pattern!r}: {what} are not covered by this port")
        if c == 0x24 and i == n - 1:
            return anchored, tuple(items), True
        end = _class_end(p, i)
        cls = (_ALL_BYTES if c == 0x2E else _class_bytes(p[i + 1]) if c == 0x25
               else _bracket_bytes(p, i, end - 1) if c == 0x5B else frozenset({c}))
        quantifier = p[end] if end < n and p[end] in b"?*+-" else 0
        items.append((cls, quantifier))
        i = end + (quantifier != 0)
    return anchored, tuple(items), False


def _match(s: bytes, i: int, items: tuple[tuple[frozenset[int], int], ...], k: int, end_anchor: bool) -> bool:
    """match(): whether items[k:] match at s[i] (the '?', '*', '+', '-' and plain cases)."""
    while k < len(items):
        cls, quantifier = items[k]
        m = i < len(s) and s[i] in cls
        if quantifier == 0x3F:  # '?'
            if m and _match(s, i + 1, items, k + 1, end_anchor):
                return True
            k += 1
        elif quantifier in (0x2A, 0x2B):  # '*', '+': max_expand
            if quantifier == 0x2B:
                if not m:
                    return False
                i += 1
            j = i
            while j < len(s) and s[j] in cls:
                j += 1
            return any(_match(s, x, items, k + 1, end_anchor) for x in range(j, i - 1, -1))
        elif quantifier == 0x2D:  # '-': min_expand
            while not _match(s, i, items, k + 1, end_anchor):
                if not (i < len(s) and s[i] in cls):
                    return False
                i += 1
            return True
        else:
            if not m:
                return False
            i += 1
            k += 1
    return not end_anchor or i == len(s)


def lua_match(subject: str, pattern: str) -> bool:
    """Whether ``subject:match(pattern)`` is truthy (str_find_aux: tried at every start unless anchored)."""
    anchored, items, end_anchor = _compile_pattern(pattern)
    s = subject.encode("utf-8")
    return any(_match(s, i, items, 0, end_anchor) for i in range(1 if anchored else len(s) + 1))


# --------------------------------------------------------------------------------------
# Validators: init.lua Schema.validators
# --------------------------------------------------------------------------------------

_ValidatorResult = tuple[bool, str | None]


def _cmp(value: Any, limit: Any, op: Callable[[Any, Any], bool]) -> bool:
    if (_is_number(value) and _is_number(limit)) or (isinstance(value, str) and isinstance(limit, str)):
        return op(value, limit)
    raise KongLuaError(f"attempt to compare {_lua_type(value)} with {_lua_type(limit)}")


def _str_match(value: Any, pattern: Any) -> bool:
    """``value:match(pattern)``: a method of strings only; a number pattern is coerced to a string."""
    if not isinstance(value, str):
        raise KongLuaError(f"attempt to index a {_lua_type(value)} value (value:match)")
    if not (isinstance(pattern, str) or _is_number(pattern)):
        raise KongLuaError(f"bad argument #1 to 'match' (string expected, got {_lua_type(pattern)})")
    return lua_match(value, _lua_tostring(pattern))


def _v_eq(value: Any, wanted: Any, field: dict[str, Any]) -> _ValidatorResult:
    return (True, None) if _lua_eq(value, wanted) else (False, _E["EQ"] % _lua_tostring(wanted))


def _v_one_of(value: Any, options: Any, field: dict[str, Any]) -> _ValidatorResult:
    options = _seq(options)
    if any(_lua_eq(value, o) for o in options):
        return True, None
    for i, o in enumerate(options, 1):  # table.concat takes strings and numbers only
        if not (isinstance(o, str) or _is_number(o)):
            raise KongLuaError(f"invalid value (at index {i}) in table for 'concat'")
    return False, _E["ONE_OF"] % ", ".join(_lua_tostring(o) for o in options)


def _v_gt(value: Any, limit: Any, field: dict[str, Any]) -> _ValidatorResult:
    return (True, None) if _cmp(value, limit, lambda a, b: a > b) else (False, _E["GT"] % _lua_tostring(limit))


def _v_between(value: Any, limits: Any, field: dict[str, Any]) -> _ValidatorResult:
    lo, hi = _attr(limits, 1), _attr(limits, 2)
    if _cmp(value, lo, lambda a, b: a < b) or _cmp(value, hi, lambda a, b: a > b):
        return False, _lua_format(_E["BETWEEN"], lo, hi)
    return True, None


def _v_len(name: str, op: Callable[[int, Any], bool]) -> Callable[[Any, Any, dict[str, Any]], _ValidatorResult]:
    """make_length_validator: ``#value``, plus one per pair for a map."""
    def check(value: Any, n: Any, field: dict[str, Any]) -> _ValidatorResult:
        length = _lua_len(value) + (len(value) if field.get("type") == "map" else 0)
        if op(length, n) if _is_number(n) else _cmp(length, n, op):
            return True, None
        return False, _lua_format(_E[name], n)
    return check


def _v_match(value: Any, pattern: Any, field: dict[str, Any]) -> _ValidatorResult:
    return (True, None) if _str_match(value, pattern) else (False, _E["MATCH"] % value)


def _v_match_none(value: Any, rules: Any, field: dict[str, Any]) -> _ValidatorResult:
    for rule in _seq(rules):
        if _str_match(value, _attr(rule, "pattern")):
            err = _attr(rule, "err")
            return False, None if err is MISSING else err
    return True, None


_VALIDATORS: Final[dict[str, Callable[[Any, Any, dict[str, Any]], _ValidatorResult]]] = {
    "eq": _v_eq,
    "one_of": _v_one_of,
    "gt": _v_gt,
    "between": _v_between,
    "len_eq": _v_len("LEN_EQ", lambda a, b: a == b),
    "len_min": _v_len("LEN_MIN", lambda a, b: a >= b),
    "len_max": _v_len("LEN_MAX", lambda a, b: a <= b),
    "match_none": _v_match_none,
    "match": _v_match,
}

# --------------------------------------------------------------------------------------
# Validation: init.lua Schema:validate_field, validate_fields, Schema:validate
# --------------------------------------------------------------------------------------

Err = Any  # a message, or a table {key: Err, "@entity": [message, ...]} as Kong's error tables


def _validate_field(field: dict[str, Any], value: Any) -> tuple[bool, Err]:
    """Schema:validate_field. ``value`` None is ngx.null."""
    if value is None:
        eq = field.get("eq", MISSING)
        if eq is not MISSING:
            return False, _E["EQ"] % _lua_tostring(eq)
        return (False, _E["REQUIRED"]) if _truthy(field.get("required", MISSING)) else (True, None)

    ftype = field.get("type", MISSING)
    len_min = field.get("len_min", MISSING)
    if ftype == "array":
        if not _is_sequence(value):
            return False, _E["ARRAY"]
        ok, err = _validate_elements(field, value)
        if not ok:
            return False, err
    elif ftype == "map":
        if not _is_table(value):
            return False, _E["MAP"]
        keys, values = field.get("keys"), field.get("values")
        if not isinstance(keys, dict) or not isinstance(values, dict):
            raise KongLuaError("attempt to index field 'keys' or 'values' (not a table)")
        for k, v in _lua_pairs(value):  # field.keys.required = true; field.values.required = true
            for part, x in ((keys, k), (values, v)):
                ok, err = _validate_field({**part, "required": True}, x)
                if not ok:
                    return False, err
    elif ftype == "record":
        if not _is_table(value):
            return False, _E["RECORD"]
        errs = _validate_record(field, _process_auto_fields(field, value, "insert"))
        if errs:
            return False, errs
    elif ftype == "integer":
        if not (_is_number(value) and math.isfinite(value) and value == math.floor(value)):
            return False, _E["INTEGER"]
    elif ftype == "string":
        if not isinstance(value, str):
            return False, _E["STRING"]
        if len_min is MISSING:
            len_min = 1  # "empty strings are not accepted by default"
        if _truthy(field.get("referenceable", MISSING)) and is_reference(value):
            return True, None
    elif ftype == "number":
        if not _is_number(value):
            return False, _E["NUMBER"]
    elif ftype == "boolean":
        if not isinstance(value, bool):
            return False, _E["BOOLEAN"]
    elif ftype in _KONG_TYPES:
        raise UnsupportedByHarness(f"fields of type '{ftype}' are not covered by this port")
    elif ftype != "any":  # "any": the metaschema's internal marker, validators only
        return False, _lua_format(_E["SCHEMA_TYPE"], ftype)

    for name in _VALIDATORS_ORDER:
        arg = len_min if name == "len_min" else field.get(name, MISSING)
        if arg is MISSING:
            continue
        ok, err = _VALIDATORS[name](value, arg, field)
        if not ok:
            if err is None:
                err = _lua_format(_E[name.upper()], value)
            custom = field.get("err", MISSING)  # `field.err or err`
            return False, err if custom is MISSING else custom
    return True, None


def _validate_elements(field: dict[str, Any], value: Any) -> tuple[bool, Err]:
    """validate_elements: every element is required; errors keyed by 1-based index."""
    elements = field.get("elements")
    if not isinstance(elements, dict):
        raise KongLuaError(f"attempt to index field 'elements' (a {_lua_type(elements)} value)")
    errs: dict[int, Err] = {}
    for i, v in enumerate(_seq(value), 1):
        ok, err = _validate_field({**elements, "required": True}, v)
        if not ok:
            errs[i] = err
    return (False, errs) if errs else (True, None)


def _validate_record(schema: dict[str, Any], data: dict[Any, Any]) -> dict[Any, Err]:
    """Schema:validate(input, full_check = true): fields, then required ones, then entity checks."""
    errors = _validate_fields(schema, data)
    for name, fdef in _fields_list(schema):
        if _truthy(fdef.get("required", MISSING)) and data.get(name, MISSING) in (None, MISSING):
            errors[name] = _E["REQUIRED"]
    for check in _seq(schema.get("entity_checks", [])):  # run_entity_checks / run_checks
        if not isinstance(check, dict):
            raise KongLuaError(f"bad argument #1 to 'next' (table expected, got {_lua_type(check)})")
        checker, arg = next(iter(check.items()), (None, MISSING))
        if _truthy(arg) and arg is not None:
            _run_entity_check(schema, checker, data, arg, errors)
    return errors


def _validate_fields(schema: dict[str, Any], data: dict[Any, Any]) -> dict[Any, Err]:
    """validate_fields: each key against its field; unknown keys are errors."""
    errors: dict[Any, Err] = {}
    by_name = dict(_fields_list(schema))
    for k, v in list(data.items()):
        fdef = by_name.get(_lua_tostring(k))  # self.fields[tostring(k)]
        if fdef is not None and fdef.get("type") == "self":
            # the metaschema's `default = { type = "self" }`: the value is validated against the
            # field definition holding it, under pcall
            try:
                ok, err = _validate_field(data, v)
            except KongLuaError:
                ok, err = False, _E["SCHEMA_CANNOT_VALIDATE"]
        elif k == "updated_at":  # Schema.new: unvalidated_fields
            continue
        elif fdef is None:
            ok, err = False, _E["UNKNOWN"]
        else:
            ok, err = _validate_field(fdef, v)
        if not ok:
            errors[k] = err
    return errors


# --------------------------------------------------------------------------------------
# Entity checks: init.lua Schema.entity_checkers, run_entity_check
# --------------------------------------------------------------------------------------

_CheckResult = tuple[bool, Any, Any]  # ok, the checker's error, a custom error (then_err)


def _overlay(schema: dict[str, Any], name: str, match: Any) -> dict[str, Any]:
    """``setmetatable(match, { __index = get_schema_field(schema, name) })``."""
    if not isinstance(match, dict):
        raise KongLuaError(f"bad argument #1 to 'setmetatable' (table expected, got {_lua_type(match)})")
    return {**(_schema_field(schema, name) or {}), **match}


def _ec_conditional(entity: dict[str, Any], arg: Any, schema: dict[str, Any], errors: dict[Any, Err]) -> _CheckResult:
    """Schema.entity_checkers.conditional."""
    if_field, then_field, then_match = _attr(arg, "if_field"), _attr(arg, "then_field"), _attr(arg, "then_match")
    if_value = _get_field(entity, if_field)
    then_value = _get_field(entity, then_field)
    if then_value is MISSING:
        then_value = None
    ok, _ = _validate_field(_overlay(schema, if_field, _attr(arg, "if_match")), if_value)
    if not ok:
        return True, None, None
    if _attr(then_match, "required") is True and then_value is None:  # "Handle `required`"
        _set_field(errors, then_field, _E["REQUIRED"])
        return False, if_field, None
    ok, err = _validate_field(_overlay(schema, then_field, then_match), then_value)
    if ok:
        return True, None, None
    _set_field(errors, then_field, err)
    then_err = _attr(arg, "then_err")
    return False, if_field, None if then_err is MISSING else _lua_format(then_err, if_field)


def _ec_conditional_at_least_one_of(entity: dict[str, Any], arg: Any, schema: dict[str, Any],
                                    errors: dict[Any, Err]) -> _CheckResult:
    """Schema.entity_checkers.conditional_at_least_one_of, without its else_* branch."""
    if_value = _get_field(entity, _attr(arg, "if_field"))
    if if_value is MISSING:
        return True, None, None
    ok, _ = _validate_field(_overlay(schema, _attr(arg, "if_field"), _attr(arg, "if_match")), if_value)
    if not ok:
        return True, None, None
    names = _seq(_attr(arg, "then_at_least_one_of"))
    if any(_is_nonempty(_get_field(entity, n)) for n in names):
        return True, None, None
    names_list = _quoted_list(names)
    then_err = _attr(arg, "then_err")
    return False, names_list, None if then_err is MISSING else _lua_format(then_err, names_list)


def _ec_only_one_of(entity: dict[str, Any], names: Any, schema: dict[str, Any], errors: dict[Any, Err]) -> _CheckResult:
    """Schema.entity_checkers.only_one_of (the metaschema uses it on entity check entries)."""
    names = _seq(names)
    ok = sum(_is_nonempty(_get_field(entity, n)) for n in names) == 1
    return (True, None, None) if ok else (False, _quoted_list(names), None)


class _Checker:
    def __init__(self, fn: Callable[[dict[str, Any], Any, dict[str, Any], dict[Any, Err]], _CheckResult], *,
                 run_with_missing_fields: bool, field_sources: tuple[str, ...] | None = None,
                 required_sources: frozenset[str] = frozenset()):
        self.fn = fn
        self.run_with_missing_fields = run_with_missing_fields
        self.field_sources = field_sources
        # conditional's required_fields is keyed by source name; conditional_at_least_one_of's
        # is an array, which run_entity_check indexes by name: nothing of it is ever required.
        self.required_sources = required_sources


# All three run with invalid fields (run_with_invalid_fields = true).
_ENTITY_CHECKERS: Final[dict[str, _Checker]] = {
    "conditional": _Checker(_ec_conditional, run_with_missing_fields=False, field_sources=("if_field", "then_field"),
                            required_sources=frozenset({"if_field"})),
    "conditional_at_least_one_of": _Checker(_ec_conditional_at_least_one_of, run_with_missing_fields=True,
                                            field_sources=("if_field", "then_at_least_one_of")),
    "only_one_of": _Checker(_ec_only_one_of, run_with_missing_fields=False),
}


def _run_entity_check(schema: dict[str, Any], name: Any, data: dict[Any, Any], arg: Any,
                      errors: dict[Any, Err]) -> None:
    """run_entity_check, with full_check = true."""
    checker = _ENTITY_CHECKERS.get(name)
    if checker is None:
        if name in _KONG_CHECKERS:
            raise UnsupportedByHarness(f"entity checker '{name}' is not covered by this port")
        raise KongLuaError(f"attempt to index a nil value (entity checker '{name}')")
    fields_to_check: list[str] = []
    required: set[str] = set()
    for source in checker.field_sources or ():
        v = _attr(arg, source)
        names = [v] if isinstance(v, str) else _seq(v) if _is_table(v) else []
        fields_to_check += names
        if source in checker.required_sources:
            required.update(n for n in names if isinstance(n, str))
    if checker.field_sources is None:
        fields_to_check = _seq(arg)
        required = {n for n in fields_to_check if isinstance(n, str)}
    if not all(isinstance(fname, str) for fname in fields_to_check):
        raise KongLuaError("bad argument #1 to 'find' (string expected): an entity check field name")

    check_input: dict[str, Any] = {}
    missing: list[str] = []
    all_nil = True
    for fname in fields_to_check:
        value = _get_field(data, fname)
        sfield = _schema_field(schema, fname)
        if value is MISSING:
            if not checker.run_with_missing_fields and fname in required:
                if sfield is None:
                    raise KongLuaError(f"attempt to index a nil value (entity check field '{fname}')")
                if not _truthy(sfield.get("nilable", MISSING)):
                    missing.append(fname)
        else:
            all_nil = False
            # "Don't run if any of the values is a reference in a referenceable field"
            if (sfield is not None and sfield.get("type") == "string"
                    and _truthy(sfield.get("referenceable", MISSING)) and is_reference(value)):
                return
        _set_field(check_input, fname, value)
    # (every checker here runs with invalid fields, so errors on its fields do not stop it)
    if all_nil and not checker.run_with_missing_fields:  # "none of the fields are present"
        return
    if missing:  # "a required field is missing"
        for fname in missing:
            _set_field(errors, fname, _E["REQUIRED_FOR_ENTITY_CHECK"])
        return
    ok, err, custom = checker.fn(check_input, arg, schema, errors)
    if not ok:
        errors.setdefault("@entity", []).append(custom if custom is not None else _lua_format(_E[name.upper()], err))


# --------------------------------------------------------------------------------------
# Defaults and reads: init.lua handle_missing_field, adjust_field_for_context, process_auto_fields
# --------------------------------------------------------------------------------------


def _handle_missing_field(field: dict[str, Any], value: Any) -> Any:
    """handle_missing_field."""
    if "default" in field:
        default = copy.deepcopy(field["default"])
        # (an array's default gets cjson.array_mt: an empty one stays a JSON array)
        return [] if field.get("type") == "array" and default == {} else default
    if _truthy(field.get("nilable", MISSING)):  # "If `nilable` (metaschema only)"
        return value
    if field.get("required", MISSING) is not True:
        return None  # "If not `required`, it is nullable."
    if field.get("type") == "record":
        # "if the missing field is a record, expand its structure to obtain any nested defaults"
        return _process_auto_fields(field, {}, "insert")
    return MISSING  # "If `required`, it will fail later."


def _adjust_field_for_context(field: dict[str, Any], value: Any, context: str,
                              resolver: Callable[[str], Any] | None) -> Any:
    """adjust_field_for_context (contexts "insert" and "select")."""
    if context == "select" and value is None and field.get("required", MISSING) is True:
        return _handle_missing_field(field, value)
    ftype = field.get("type")
    # should_recurse_record: not null, and given or required
    if ftype == "record" and value is not None and (value is not MISSING or field.get("required") is True):
        if not _truthy(value):  # `value or handle_missing_field(...)`: false counts too
            value = _handle_missing_field(field, value)
        if _is_table(value):
            return _process_auto_fields(field, value, context, resolver)
    elif ftype in ("array", "map") and _is_table(value):
        if ftype == "array" and value == {}:
            value = []  # make_array: a sequence gets cjson.array_mt
        sub = field.get("elements" if ftype == "array" else "values")
        if isinstance(sub, dict):  # (for kcauth's strings a no-op; the metaschema nests records)
            if isinstance(value, list):
                value = [_adjust_field_for_context(sub, v, context, resolver) for v in value]
            else:
                value = {k: _adjust_field_for_context(sub, v, context, resolver) for k, v in value.items()}
    if value is MISSING:
        return _handle_missing_field(field, value)
    return value


def _process_auto_fields(schema: dict[str, Any], value: Any, context: str,
                         resolver: Callable[[str], Any] | None = None) -> dict[Any, Any]:
    """Schema:process_auto_fields(data, context, nulls = false), contexts "insert" and "select".

    A select resolves vault references when given a resolver (Kong's nodes do; a control plane
    and the Admin API do not): ``resolve_reference`` gives ``deref or ""``, and the references
    are kept under ``"$refs"``.
    """
    # (a record given as a JSON array keeps its 1-based keys)
    data = copy.deepcopy(value) if isinstance(value, dict) else dict(enumerate(copy.deepcopy(value), 1))
    fields = _fields_list(schema)
    refs: dict[str, Any] = {}
    for key, field in fields:
        v = _adjust_field_for_context(field, data.get(key, MISSING), context, resolver)
        if context == "select":
            if v is None:
                v = MISSING  # "if value == null and not nulls then value = nil"
            elif field.get("type") == "integer" and _is_number(v):
                v = math.floor(v)
            if (resolver is not None and field.get("type") == "string"
                    and _truthy(field.get("referenceable", MISSING)) and is_reference(v)):
                refs[key] = v
                got = resolver(v)
                v = got if got is not None and got is not False else ""
        if v is MISSING:
            data.pop(key, None)
        else:
            data[key] = v
    if context != "select":
        return data
    by_name = dict(fields)
    for key in list(data):
        fdef = by_name.get(key) if isinstance(key, str) else None
        if fdef is None:
            del data[key]  # a read drops what the schema does not know
        elif fdef.get("type") == "string" and data[key] == "" and key not in refs:
            len_min = fdef.get("len_min", 1)  # `(field.len_min or 1) > 0`
            if len_min > 0:
                del data[key]
    if refs:
        data["$refs"] = refs
    return data


# --------------------------------------------------------------------------------------
# The MetaSubSchema, as data: kong/db/schema/metaschema.lua, the covered part
# --------------------------------------------------------------------------------------


def _build_metasubschema() -> dict[str, Any]:
    match_list = {"type": "array", "elements": {"type": "record", "fields": [
        {"pattern": {"type": "string", "required": True}},
        {"err": {"type": "string"}},
    ]}}
    validators: list[dict[str, Any]] = [
        {"between": {"type": "array", "elements": {"type": "number"}, "len_eq": 2}},
        {"eq": {"type": "any"}},
        {"gt": {"type": "number"}},
        {"len_min": {"type": "integer"}},
        {"len_max": {"type": "integer"}},
        {"match": {"type": "string"}},
        {"match_none": match_list},
        {"one_of": {"type": "array", "elements": {"type": "any"}}},
    ]
    field_schema: list[dict[str, Any]] = [
        {"type": {"type": "string", "one_of": list(_KONG_TYPES), "required": True}},
        {"required": {"type": "boolean"}},
        {"description": {"type": "string", "len_min": 10, "len_max": 500}},
        {"default": {"type": "self"}},
        {"err": {"type": "string"}},
        {"encrypted": {"type": "boolean"}},
        {"referenceable": {"type": "boolean"}},
        *validators,
    ]
    for entry in field_schema:  # "Most of the above are optional" (not the recursive ones below)
        data = next(iter(entry.values()))
        data["nilable"] = not _truthy(data.get("required", MISSING))
    fields_array = {"type": "array", "elements": {
        "type": "map", "keys": {"type": "string"}, "values": {"type": "record", "fields": field_schema},
        "required": True, "len_eq": 1,
    }}
    field_schema += [
        {"elements": {"type": "record", "fields": field_schema}},
        {"keys": {"type": "record", "fields": field_schema}},
        {"values": {"type": "record", "fields": field_schema}},
        {"fields": fields_array},
    ]
    conditional_validators = [{"required": {"type": "boolean"}}, *validators]
    covered_checkers: dict[str, dict[str, Any]] = {
        "conditional_at_least_one_of": {"type": "record", "fields": [
            {"if_field": {"type": "string"}},
            {"if_match": {"type": "record", "fields": conditional_validators}},
            {"then_at_least_one_of": {"type": "array", "elements": {"type": "string"}}},
            {"then_err": {"type": "string"}},
        ]},
        "conditional": {"type": "record", "fields": [
            {"if_field": {"type": "string"}},
            {"if_match": {"type": "record", "fields": conditional_validators}},
            {"then_field": {"type": "string"}},
            {"then_match": {"type": "record", "fields": conditional_validators}},
            {"then_err": {"type": "string"}},
        ]},
    }
    # Kong's other checkers stand here only so that only_one_of names all nine (the coverage
    # check refuses them before the metaschema runs); Kong lists them in hash order, here in
    # source order.
    checkers = [{name: covered_checkers.get(name, {"type": "any"})} for name in _KONG_CHECKERS]
    field_schema.append({"entity_checks": {"type": "array", "nilable": True, "elements": {
        "type": "record", "fields": checkers, "entity_checks": [{"only_one_of": list(_KONG_CHECKERS)}],
    }}})
    return {"name": "metasubschema", "fields": [
        {"name": {"type": "string", "required": True}},
        {"fields": fields_array},
    ]}


_META_SUB_SCHEMA: Final = _build_metasubschema()

# metaschema.lua required_attributes and attribute_types, the covered part.
_REQUIRED_ATTRIBUTES: Final = {"array": ("elements",), "map": ("keys", "values"), "record": ("fields",)}
_ATTRIBUTE_TYPES: Final = {"between": frozenset({"integer", "number"}), "match": frozenset({"string"}),
                           "one_of": frozenset({"string", "number", "integer"})}


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _meta_check_fields(schema: Any, path: str, out: list[str]) -> None:
    """check_fields: the MetaSubSchema's `check` function, on each entry of `fields`."""
    fields = _attr(schema, "fields")
    if not _is_table(fields):
        out.append(f"{_join(path, 'fields')}: {_META_E['FIELDS_ARRAY']}")
        return
    for item in _seq(fields):
        if not _is_table(item):
            out.append(f"{_join(path, 'fields')}: {_META_E['FIELDS_ARRAY']}")
            return
        if not item:
            out.append(f"{_join(path, 'fields')}: {_META_E['FIELD_EMPTY']}")
            return
        k, field = next(_lua_pairs(item))
        name = _lua_tostring(k)
        if _is_table(field):
            _meta_check_field(field, _join(path, name), out)
        else:
            out.append(f"{_join(path, name)}: {_META_E['TABLE'] % name}")


def _meta_check_field(field: Any, path: str, out: list[str]) -> None:
    """check_field (Kong keys these errors by field name; here they carry the whole path)."""
    ftype = _attr(field, "type")
    if not _truthy(ftype):
        out.append(f"{path}: {_META_E['TYPE']}")
        return
    for attr in _REQUIRED_ATTRIBUTES.get(ftype, ()) if isinstance(ftype, str) else ():
        if not _truthy(_attr(field, attr)):
            out.append(f"{path}: {_META_E['REQUIRED'] % (ftype, attr)}")
    for attr, _ in _lua_pairs(field):
        if attr in _ATTRIBUTE_TYPES and not (isinstance(ftype, str) and ftype in _ATTRIBUTE_TYPES[attr]):
            out.append(f"{path}: {_META_E['ATTRIBUTE'] % (_lua_tostring(ftype), attr)}")
    for name in ("elements", "keys", "values"):
        sub = _attr(field, name)
        if _truthy(sub):
            if _is_table(sub):
                _meta_check_field(sub, _join(path, name), out)
            else:
                out.append(f"{path}: {_META_E['TABLE'] % name}")
    if _truthy(_attr(field, "fields")):
        _meta_check_fields(field, path, out)


def _render_meta_errors(err: Err, data: Any, path: str) -> list[str]:
    """Flatten a metaschema error table, naming each `fields` entry after its field."""
    if not isinstance(err, dict):
        return [f"{path or '(schema)'}: {err}"]
    out: list[str] = []
    for k, sub in err.items():
        if k == "@entity":
            out.extend(f"{_join(path, '@entity')}: {m}" for m in sub)
            continue
        sub_data = _attr(data, k)
        if k == "fields" and isinstance(sub, dict) and isinstance(sub_data, list):
            for idx, e in sub.items():
                item = _attr(sub_data, idx)
                if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
                    name = next(iter(item))
                    out.extend(_render_meta_errors(e, item[name], _join(path, name)))
                else:
                    out.extend(_render_meta_errors(e, item, _join(path, f"fields[{idx}]")))
            continue
        out.extend(_render_meta_errors(sub, sub_data, _join(path, _lua_tostring(k))))
    return out


# --------------------------------------------------------------------------------------
# Coverage: what this port leaves out, and what Kong loads but cannot run
# --------------------------------------------------------------------------------------


def _survey(schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Walk a plugin schema for what it uses that this port does not cover (``uncovered``) and for
    what Kong would load, then fail on when validating a config (``broken``: a malformed Lua
    pattern, an entity check missing a part it reads or naming no field of its record)."""
    uncovered: list[str] = []
    broken: list[str] = []

    def not_covered(path: str, what: str) -> None:
        uncovered.append(f"{path}: {what}: not covered by this port of Kong's schema engine")

    def patterns(fdef: dict[str, Any], path: str) -> None:
        rules = [(fdef.get("match"), f"{path}.match")]
        rules_none = fdef.get("match_none")
        for i, rule in enumerate(rules_none if isinstance(rules_none, list) else [], 1):
            if isinstance(rule, dict):
                rules.append((rule.get("pattern"), f"{path}.match_none.{i}.pattern"))
                if "err" in rule and rule["err"] is None:
                    not_covered(f"{path}.match_none.{i}.err", "a null attribute")
        for pattern, where in rules:
            if isinstance(pattern, str):
                try:
                    _compile_pattern(pattern)
                except UnsupportedByHarness as e:
                    uncovered.append(f"{where}: {e}")
                except LuaPatternError as e:
                    broken.append(f"{where}: [harness rule] {pattern!r}: {e}: Kong loads this schema, then "
                                  "string.match fails (a Lua error) on the values it checks")

    def field(fdef: Any, path: str, part: bool) -> None:
        if not isinstance(fdef, dict):
            return
        if part and path.endswith(".elements") and fdef.get("type") == "record":
            # An array of records: metaschema.lua (line 309) gives `elements` the whole field
            # schema, and the engine runs a record element like any record (validate_elements,
            # adjust_field_for_context), so it is covered as a record field.
            part = False
        allowed = _PART_ATTRIBUTES if part else _ATTRIBUTES
        for k, v in fdef.items():
            if k in _KONG_ATTRIBUTES and k not in allowed:
                not_covered(f"{path}.{k}", f"attribute '{k}'{' of elements/keys/values' if part else ''}")
            elif v is None and k != "default" and k in allowed:
                not_covered(f"{path}.{k}", "a null attribute")
        ftype = fdef.get("type")
        if isinstance(ftype, str) and ftype in _KONG_TYPES and ftype not in (("string",) if part else _TYPES):
            not_covered(f"{path}.type", f"type '{ftype}'{' of elements/keys/values' if part else ''}")
        patterns(fdef, path)
        for name in ("elements", "keys", "values"):
            field(fdef.get(name), f"{path}.{name}", True)
        for name, sub in _entries(fdef.get("fields")):
            field(sub, f"{path}.{name}", False)
        checks = fdef.get("entity_checks")
        for i, check in enumerate(checks if isinstance(checks, list) else [], 1):
            entity_check(check, fdef, f"{path}.entity_checks.{i}")

    def entity_check(check: Any, record: dict[str, Any], path: str) -> None:
        for name, arg in check.items() if isinstance(check, dict) else ():
            where = f"{path}.{name}"
            if name in _KONG_CHECKERS and name not in _CHECKER_KEYS:
                not_covered(where, f"entity checker '{name}'")
            elif name in _CHECKER_KEYS and arg is None:
                not_covered(where, "a null entity check")
            elif name in _CHECKER_KEYS and isinstance(arg, dict):
                for key, v in arg.items():
                    if key in _KONG_CHECKER_KEYS[name] and key not in _CHECKER_KEYS[name]:
                        not_covered(f"{where}.{key}", f"'{key}'")
                    elif key in _CHECKER_KEYS[name] and v is None:
                        not_covered(f"{where}.{key}", "a null attribute")
                    elif key in ("if_match", "then_match") and isinstance(v, dict):
                        for mk, mv in v.items():
                            if mk in _KONG_CONDITION_KEYS and mk not in _CONDITION_KEYS:
                                not_covered(f"{where}.{key}.{mk}", f"'{mk}' in a condition")
                            elif mk in _CONDITION_KEYS and mv is None:
                                not_covered(f"{where}.{key}.{mk}", "a null attribute")
                        patterns(v, f"{where}.{key}")
                lua_error = "Kong loads this schema, then fails with a Lua error validating a config"
                for key in _CHECKER_NEEDS[name]:
                    if key not in arg:
                        broken.append(f"{where}: [harness rule] no '{key}': {lua_error}")
                listed = arg.get("then_at_least_one_of")
                names = [arg.get("if_field"), arg.get("then_field"), *(listed if isinstance(listed, list) else [])]
                for n in names:
                    if isinstance(n, str) and _schema_field(record, n) is None:
                        broken.append(f"{where}: [harness rule] '{n}' is no field of this record: Kong loads this "
                                      "schema, then fails with a Lua error or never sees the field")

    for key in schema:
        if key in ("entity_checks", "shorthand_fields", "transformations", "check"):
            not_covered(key, f"a schema-level '{key}'")
    for name, sub in _entries(schema.get("fields")):
        if name in _PLUGINS_ENTITY_FIELDS:
            not_covered(str(name), "a top-level field other than 'config'")
        field(sub, str(name), False)
    return uncovered, broken


def _schema_problems(schema: Any) -> tuple[list[str], list[str]]:
    """(uncovered, refused): see :func:`check_plugin_schema`."""
    if not isinstance(schema, dict):
        return [], [f"(schema): expected a table, got {_lua_type(MISSING if schema is None else schema)}"]
    uncovered, broken = _survey(schema)
    if uncovered:
        return uncovered, []
    try:
        errors = _validate_record(_META_SUB_SCHEMA, schema)
        # run_self_check: every field that is not nilable must be there (that error replaces any
        # other on the key), or the MetaSubSchema's check function does not run.
        absent = [name for name in ("name", "fields") if name not in schema]
        for name in absent:
            errors[name] = _E["REQUIRED_FOR_ENTITY_CHECK"]
        msgs = _render_meta_errors(errors, schema, "")
        if not absent:
            _meta_check_fields(schema, "", msgs)
    except KongLuaError as e:
        return [], [f"(schema): Kong would fail with a Lua error validating this schema: {e}"]
    if msgs:
        return [], list(dict.fromkeys(msgs))
    init_err = "error initializing schema for plugin: "
    for name, fdef in _fields_list(schema):  # Schema.new_subschema: the first error only
        if name != "config":
            return [], [init_err + _E["SUBSCHEMA_BAD_FIELD"] % (schema["name"], name)]
        if fdef.get("type") != "record":  # compatible_fields with the abstract `config` record
            return [], [init_err + _E["SUBSCHEMA_BAD_TYPE"] % (schema["name"], name)]
    return [], broken


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def check_plugin_schema(schema: Any) -> list[str]:
    """Would Kong 3.9.3 load this external plugin's schema? Returns error strings ([] = yes).

    ``schema`` is the ``Schema`` of a plugin server's ``-dump``, handed as-is to
    kong/db/schema/plugin_loader.lua ``load_subschema``, which runs, in order:

    1. ``MetaSchema.MetaSubSchema:validate(schema)``: ``name`` is required, ``fields`` too; any
       other key is an "unknown field"; every field definition is validated against the field
       schema (the type, each attribute's type, ``description`` 10 to 500 bytes, ``default``
       against the field itself, ``between`` pairs, ``one_of`` arrays, ``match_none`` rules,
       nested ``elements``/``keys``/``values``/``fields``, each entity check holding exactly one
       checker, and its parts); then its ``check`` function (check_fields / check_field: the
       attributes a type must declare, those it cannot have, each ``fields`` entry a table).
    2. Only if that passed, ``Entity.new_subschema``: every top-level field must be one of the
       ``plugins`` entity's with a compatible type (here: a ``config`` record). Kong stops at the
       first such error.

    Kong does not require a ``config`` field. Before Kong's checks, the schema is surveyed for
    what this port does not cover (see the module docstring); if it uses any, only those are
    reported. After them come the harness rules, for what Kong loads but then fails on when it
    validates a config: malformed Lua patterns, entity checks missing a part they read or naming
    a field their record does not have. Messages are Kong's texts after a path that names fields
    by key (``config.ttl.type: expected one of: ...``); Kong's own error table uses indexes, and
    keys its ``check`` function's errors by field name only.
    """
    uncovered, refused = _schema_problems(schema)
    return uncovered or refused


def check_descriptions(schema: Any) -> list[str]:
    """Project rule: every field has a ``description`` of 10 to 500 characters.

    Walks every entry of every ``fields`` array, recursively (records, and records under
    ``elements``/``keys``/``values``); the ``elements``/``keys``/``values`` definitions are no
    fields and need none. The top-level ``config`` entry is exempt when it has no description at
    all: kong-pdk's ``-dump`` makes that wrapper without one. Kong's metaschema separately limits
    any description given to 10..500 *bytes*.
    """
    out: list[str] = []

    def walk_fields(container: Any, path: str, top: bool) -> None:
        fields = _attr(container, "fields")
        for item in fields if isinstance(fields, list) else []:
            if not isinstance(item, dict) or len(item) != 1:
                out.append(f"{_join(path, 'fields')}: malformed field entry {item!r}")
                continue
            name, fdef = next(iter(item.items()))
            fpath = _join(path, str(name))
            if not isinstance(fdef, dict):
                out.append(f"{fpath}: field definition is not a table")
                continue
            desc = fdef.get("description", MISSING)
            if not (top and name == "config" and desc is MISSING):
                if not isinstance(desc, str):
                    out.append(f"{fpath}: missing description")
                elif not 10 <= len(desc) <= 500:
                    out.append(f"{fpath}: description must be 10 to 500 characters, got {len(desc)}")
            walk_nested(fdef, fpath)

    def walk_nested(fdef: dict[str, Any], path: str) -> None:
        if fdef.get("type") == "record" or "fields" in fdef:
            walk_fields(fdef, path, False)
        for attr in ("elements", "keys", "values"):
            sub = fdef.get(attr)
            if isinstance(sub, dict):
                walk_nested(sub, _join(path, attr))

    walk_fields(schema, "", True)
    return out


_PREPARED: dict[str, dict[str, Any]] = {}


def _make_records_required(field: dict[str, Any]) -> None:
    """entity.lua make_records_required: a record that does not say `required` becomes required."""
    if "required" not in field:
        field["required"] = True
    for _, sub in _fields_list(field):
        if sub.get("type") == "record":
            _make_records_required(sub)


def _prepared(config_field: Any) -> dict[str, Any]:
    """The ``config`` field as Kong holds it once the plugin is loaded (Entity.new_subschema runs
    make_records_required over it), once :func:`check_plugin_schema` accepts it (the engine
    never changes it)."""
    if not isinstance(config_field, dict) or config_field.get("type") != "record":
        raise ValueError("config_field must be a record field definition: {'type': 'record', 'fields': [...]}")
    try:
        key = json.dumps(config_field)
    except (TypeError, ValueError) as e:
        raise UnsupportedByHarness(f"a config field that is no JSON: {e}") from None
    if key not in _PREPARED:
        uncovered, refused = _schema_problems({"name": "kcauth", "fields": [{"config": config_field}]})
        if uncovered:
            raise UnsupportedByHarness("; ".join(uncovered))
        if refused:
            raise SchemaRefused("; ".join(refused))
        field = copy.deepcopy(config_field)
        _make_records_required(field)
        _PREPARED[key] = field
    return _PREPARED[key]


def _defaults(field: dict[str, Any], config: Any) -> dict[str, Any]:
    out = _adjust_field_for_context(field, MISSING if config is None else config, "insert", None)
    if out is None:
        return {}  # only for a config record declared `required: false` (Kong stores null)
    if not isinstance(out, dict):
        raise ValueError(f"config must be a table, got {_lua_type(out)}")
    return out


def _problems(field: dict[str, Any], config: Any) -> list[str]:
    ok, err = _validate_field(field, None if config is MISSING else config)
    return [] if ok else list(dict.fromkeys(_flatten(err, "config")))


def _flatten(err: Err, path: str) -> list[str]:
    """Flattened error paths, as kong/db/errors.lua flatten_errors builds them ("config.a.2")."""
    if not isinstance(err, dict):
        return [f"{path}: {err}"]
    out: list[str] = []
    for k, sub in err.items():
        if k == "@entity":
            out.extend(f"{_join(path, '@entity')}: {m}" for m in sub)
        else:
            out.extend(_flatten(sub, _join(path, _lua_tostring(k))))
    return out


def apply_defaults(config_field: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """The plugin ``config`` as Kong stores it on insert.

    kong/db/dao/init.lua check_insert -> init.lua Schema:process_auto_fields(entity, "insert") ->
    adjust_field_for_context -> handle_missing_field, on the config field as Kong holds it
    (make_records_required):

    * ``config`` None means "no config given" (Lua nil): every default is filled in. Inside the
      config, ``None`` is JSON null (ngx.null) and stays null.
    * A missing field gets a deep copy of its ``default``; without one, a field that is not
      required becomes null, a required record becomes a record of its fields' defaults
      (recursively), and any other required field stays absent (validation then says "required
      field missing").
    * A record given is processed recursively; one given as ``false`` is replaced by its
      defaults. An empty ``{}`` given for an array becomes ``[]``. Unknown keys are kept
      (validation reports them). The input is not mutated.
    """
    return _defaults(_prepared(config_field), config)


def validate_config(config_field: dict[str, Any], config: Any) -> list[str]:
    """Kong's validation of a plugin ``config`` value: ``Schema:validate_field`` on the record.

    A record is processed with ``process_auto_fields(value, "insert")`` and then validated with
    ``Schema:validate``: each field's type and validators, unknown keys, ``required`` (null or
    absent), then the record's entity checks. Returns Kong's messages after flattened paths, as
    kong/db/errors.lua builds them: ``config.leeway: value should be between 0 and 300``,
    ``config.audiences.2: expected a string``, ``config.@entity: ...``. A map reports its first
    failing key or value, under the map's path, as Kong does.
    """
    return _problems(_prepared(config_field), config)


def _cjson(v: Any) -> Any:
    """A value as the plugin server decodes Kong's ``cjson.safe`` encoding of it: numbers are
    printed with "%.16g" (globalpatches.lua: CJSON_MAX_PRECISION), so ``2.0`` arrives as ``2``."""
    if isinstance(v, dict):
        return {_lua_tostring(k): _cjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_cjson(x) for x in v]
    if _is_number(v):
        if not math.isfinite(v):
            raise ValueError("Cannot serialise number: must not be NaN or Infinity")
        return json.loads(format(float(v), ".16g"))
    return v


def _maps_as_objects(field: dict[str, Any], record: dict[Any, Any]) -> dict[Any, Any]:
    """An empty table without cjson.array_mt encodes as ``{}``: an empty map given as ``[]``."""
    by_name = dict(_fields_list(field))
    for key, value in record.items():
        ftype = by_name[key].get("type") if key in by_name else None
        if ftype == "map" and value == []:
            record[key] = {}
        elif ftype == "record" and isinstance(value, dict):
            _maps_as_objects(by_name[key], value)
    return record


def kong_config_for_instance(config_field: dict[str, Any], config: dict[str, Any] | None, plugin_id: str,
                             seq: int, route_id: str | None = None, service_id: str | None = None,
                             consumer_id: str | None = None, *, plugin_name: str = "kcauth",
                             ws_id: str = DEFAULT_WORKSPACE_ID, instance_name: str | None = None,
                             resolve_reference: Callable[[str], Any] | None = None,
                             validate: bool = True) -> dict[str, Any]:
    """The table Kong JSON-encodes into ``plugin.StartInstance``'s ``Config``, as the plugin decodes it.

    1. The config is stored as on insert (:func:`apply_defaults`; with ``validate``, ValueError
       if :func:`validate_config` objects, as the Admin API would).
    2. Kong reads plugins back through ``DAO:row_to_entity`` (plugins_iterator.lua reads them
       without the ``nulls`` option): ``process_auto_fields(row, "select")``. So **null fields
       are dropped, not sent as null**; fields missing from the row get their defaults; a
       required field stored as null gets its default; integers are floored; strings equal to
       "" are dropped unless the field allows them (``len_min = 0``); unknown keys are dropped.
       With ``resolve_reference`` (a data plane or traditional node resolves vault references),
       a referenceable string holding ``{vault://...}`` becomes ``resolve_reference(ref)``
       (``""`` when it gives nothing) and the reference is listed under ``"$refs"``; without
       it, references are left as they are.
    3. plugins_iterator.lua ``get_plugin_config`` adds ``route_id``, ``service_id``,
       ``consumer_id``, ``plugin_instance_name`` (each only when set: nil keys are absent from
       cjson's output), ``__plugin_id``, ``__ws_id``, ``__key__`` (``DAO:cache_key``'s fast
       path: ``plugins:<name>:<route>:<service>:<consumer>::<ws_id>``) and ``__seq__``.
    4. rpc/mp_rpc.lua encodes it with ``cjson.safe``: numbers through "%.16g", empty arrays stay
       ``[]``, empty maps ``{}``.
    """
    field = _prepared(config_field)
    stored = _defaults(field, config)
    if validate:
        problems = _problems(field, stored)
        if problems:
            raise ValueError("; ".join(problems))
    read = _adjust_field_for_context(field, stored, "select", resolve_reference)
    cfg = _maps_as_objects(field, read if isinstance(read, dict) else {})  # `plugin.config or {}`
    for key, value in (("route_id", route_id), ("service_id", service_id), ("consumer_id", consumer_id),
                       ("plugin_instance_name", instance_name)):
        if value is not None:
            cfg[key] = value
    cfg["__plugin_id"] = plugin_id
    cfg["__ws_id"] = ws_id
    cfg["__key__"] = f"plugins:{plugin_name}:{route_id or ''}:{service_id or ''}:{consumer_id or ''}::{ws_id or ''}"
    cfg["__seq__"] = seq
    return _cjson(cfg)  # type: ignore[no-any-return]
