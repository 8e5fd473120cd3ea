"""Kong 3.9.3's schema machinery, re-implemented in Python for an external (plugin-server) plugin.

Everything here was written from a reading of Kong's own source at tag ``3.9.3``; each
function names the file (and lines) it follows. The Kong paths cited are:

* ``kong/db/schema/metaschema.lua``      -- ``MetaSchema.MetaSubSchema``: what a plugin schema may say.
* ``kong/db/schema/init.lua``            -- ``Schema:validate_field``, ``validate_fields``,
  ``Schema:validate``, ``handle_missing_field``, ``adjust_field_for_context``,
  ``Schema:process_auto_fields``, the validators and the entity checkers.
* ``kong/db/schema/entity.lua``          -- ``Entity.new_subschema`` / ``make_records_required``.
* ``kong/db/schema/plugin_loader.lua``   -- ``load_subschema``: metaschema check, then subschema.
* ``kong/db/schema/entities/plugins.lua`` -- the ``plugins`` entity a plugin schema specialises.
* ``kong/db/dao/plugins.lua``            -- ``load_plugin_handler``: PRIORITY / VERSION checks.
* ``kong/db/dao/init.lua``               -- ``check_insert`` (insert = process + validate),
  ``DAO:row_to_entity`` (every read = ``process_auto_fields(row, "select", options.nulls)``),
  ``DAO:cache_key``.
* ``kong/runloop/plugin_servers/process.lua``, ``init.lua``, ``plugin.lua``, ``rpc/mp_rpc.lua``
  -- how the ``-dump`` output is read and how ``plugin.StartInstance`` is sent.
* ``kong/runloop/plugins_iterator.lua``  -- ``get_plugin_config``: the extra keys of the instance config.
* ``kong/pdk/vault.lua``                 -- ``is_reference``.

Representation of Lua values (the one thing to keep in mind when reading or calling this module):

* Lua ``nil`` (a key that is not there) is an **absent dict key**; internally the sentinel
  :data:`MISSING` stands for it.
* ``ngx.null`` / ``cjson.null`` (JSON ``null``) is Python ``None``. Kong's cjson decodes a JSON
  ``null`` to ``ngx.null`` and encodes ``ngx.null`` back to ``null``, so ``None`` round-trips.
* Lua tables are ``dict`` (string keys) or ``list`` (a sequence). As in Lua, an empty ``{}`` is
  also an empty sequence, and a ``list`` is accepted wherever Lua accepts "a table".
* Strings are measured and matched as UTF-8 bytes, as Lua does (``#s``, ``string.match``).

What Kong does but this module cannot, and therefore refuses loudly (raising
:class:`UnsupportedByHarness`) instead of silently accepting:
``json``-typed fields (JSON-schema validation), ``custom_entity_check`` and ``custom_validator``
(Lua functions cannot come out of a plugin server's JSON dump anyway), and the Lua pattern item
``%b`` (balanced match). Where Kong itself would die with a Lua runtime error (a null validator
argument, a field of unknown type...) :class:`KongLuaError` is raised.
"""

from __future__ import annotations

import copy
import json
import math
import re
import secrets
import string as _string
import time
import uuid as _uuid
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "MISSING",
    "KONG_VERSION",
    "DEFAULT_WORKSPACE_ID",
    "KongHarnessError",
    "UnsupportedByHarness",
    "KongLuaError",
    "LuaPatternError",
    "check_plugin_schema",
    "check_descriptions",
    "check_lua_patterns",
    "lint_plugin_schema",
    "check_plugin_dump",
    "load_external_plugin_info",
    "prepare_config_field",
    "apply_defaults",
    "validate_config",
    "kong_config_for_instance",
    "start_instance_request",
    "lua_pattern_to_regex",
    "lua_match",
    "is_reference",
]

KONG_VERSION: Final = "3.9.3"

# kong.default_workspace is a random UUID made when the database is bootstrapped
# (kong/db/dao/workspaces.lua:25); a fixed stand-in keeps __key__ reproducible.
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
    """Kong would evaluate this, but the harness cannot do so faithfully."""


class KongLuaError(KongHarnessError):
    """Kong itself would raise a Lua runtime error here (an Admin API 500, or a failed start)."""


class LuaPatternError(KongLuaError, ValueError):
    """A malformed Lua pattern: ``string.match`` would raise."""


# --------------------------------------------------------------------------------------
# Messages: kong/db/schema/init.lua:64-141 (validation_errors), metaschema.lua:418-435.
# --------------------------------------------------------------------------------------

_E: Final = {
    "ARRAY": "expected an array",
    "SET": "expected a set",
    "MAP": "expected a map",
    "RECORD": "expected a record",
    "STRING": "expected a string",
    "NUMBER": "expected a number",
    "BOOLEAN": "expected a boolean",
    "INTEGER": "expected an integer",
    "FUNCTION": "expected a function",
    "EQ": "value must be %s",
    "NE": "value must not be %s",
    "GT": "value must be greater than %s",
    "BETWEEN": "value should be between %d and %d",
    "LEN_EQ": "length must be %d",
    "LEN_MIN": "length must be at least %d",
    "LEN_MAX": "length must be at most %d",
    "MATCH": "invalid value: %s",
    "NOT_MATCH": "invalid value: %s",
    "MATCH_ALL": "invalid value: %s",
    "MATCH_NONE": "invalid value: %s",
    "MATCH_ANY": "invalid value: %s",
    "STARTS_WITH": "should start with: %s",
    "CONTAINS": "expected to contain: %s",
    "ONE_OF": "expected one of: %s",
    "NOT_ONE_OF": "must not be one of: %s",
    "IS_REGEX": "not a valid regex: %s",
    "TIMESTAMP": "expected a valid timestamp",
    "UUID": "expected a valid UUID",
    "VALIDATION": "failed validating: %s",
    "REQUIRED": "required field missing",
    "UNKNOWN": "unknown field",
    "REQUIRED_FOR_ENTITY_CHECK": "field required for entity check",
    "CONDITIONAL": "failed conditional validation given value of field '%s'",
    "AT_LEAST_ONE_OF": "at least one of these fields must be non-empty: %s",
    "CONDITIONAL_AT_LEAST_ONE_OF": "at least one of these fields must be non-empty: %s",
    "ONLY_ONE_OF": "exactly one of these fields must be non-empty: %s",
    "DISTINCT": "values of these fields must be distinct: %s",
    "MUTUALLY_REQUIRED": "all or none of these fields must be set: %s",
    "MUTUALLY_EXCLUSIVE": "only one or none of these fields must be set: %s",
    "MUTUALLY_EXCLUSIVE_SETS": "these sets are mutually exclusive: %s",
    "SCHEMA_CANNOT_VALIDATE": "error in schema prevents from validating this field",
    "SCHEMA_TYPE": "invalid type: %s",
    "SCHEMA_BAD_REFERENCE": "schema refers to an invalid foreign entity: %s",
    "MISSING_PK": "missing primary key",
    "SUBSCHEMA_BAD_TYPE": "error in definition of '%s': %s: cannot change type in a specialized field",
    "SUBSCHEMA_BAD_FIELD": "error in definition of '%s': %s: cannot create a new field",
    "SUBSCHEMA_UNDEFINED_FIELD": "error in definition of '%s': %s: abstract field was not specialized",
    "SUBSCHEMA_ABSTRACT_FIELD": "error in schema definition: abstract field was not specialized",
}

_META_E: Final = {
    "ATTRIBUTE": "field of type '%s' cannot have attribute '%s'",
    "REQUIRED": "field of type '%s' must declare '%s'",
    "TABLE": "'%s' must be a table",
    "TYPE": "missing type declaration",
    "FIELD_EMPTY": "field entry table is empty",
    "FIELDS_ARRAY": "each entry in fields must be a sub-table",
    "JSON_PARENT_KEY": "value must be a field name of the parent schema",
    "JSON_PARENT_KEY_TYPE": "value must be a string field of the parent schema",
}

# Schema.valid_types (init.lua:144-156), in source order: Lua's keys() order is
# unspecified, so Kong's own "expected one of" list for `type` comes out in hash order.
_VALID_TYPES: Final = ("array", "set", "string", "number", "boolean", "integer",
                       "foreign", "map", "record", "function", "json")

# Schema.validators_order (init.lua:388-420): the first failing validator wins.
_VALIDATORS_ORDER: Final = (
    "eq", "ne", "not_one_of", "one_of", "gt", "timestamp", "uuid", "is_regex", "between",
    "len_eq", "len_min", "len_max", "starts_with", "not_match", "match_none", "match",
    "match_all", "match_any", "contains", "custom_validator", "mutually_exclusive_subsets",
)

# constants.lua:137-155 CORE_ENTITIES: what a `foreign` field at the top of a plugin
# schema may reference (Schema.new -> get_foreign_schema_for_field, init.lua:2326-2335).
_CORE_ENTITIES: Final = frozenset({
    "workspaces", "consumers", "certificates", "services", "routes", "snis", "upstreams",
    "targets", "plugins", "tags", "ca_certificates", "clustering_data_planes", "parameters",
    "vaults", "key_sets", "keys", "filter_chains",
})

# The field types of the `plugins` entity (entities/plugins.lua:16-29 and the typedefs it
# uses), which a plugin subschema may specialise but not extend (init.lua:2605-2646).
_PLUGINS_ENTITY_FIELDS: Final[dict[str, dict[str, Any]]] = {
    "id": {"type": "string"},
    "name": {"type": "string"},
    "instance_name": {"type": "string"},
    "created_at": {"type": "integer"},
    "updated_at": {"type": "integer"},
    "route": {"type": "foreign"},
    "service": {"type": "foreign"},
    "consumer": {"type": "foreign"},
    "config": {"type": "record", "abstract": True},
    "protocols": {"type": "set", "elements": {"type": "string"}},
    "enabled": {"type": "boolean"},
    "tags": {"type": "set", "elements": {"type": "string"}},
}

# --------------------------------------------------------------------------------------
# Lua value helpers
# --------------------------------------------------------------------------------------


def _truthy(v: Any) -> bool:
    """Lua truthiness: only nil and false are false (ngx.null, 0 and "" are true)."""
    return v is not MISSING and v is not False


def _attr(t: Any, key: Any) -> Any:
    """``t[key]`` for a Lua table; MISSING (nil) when absent or when t is not a keyed table."""
    if isinstance(t, dict):
        return t.get(key, MISSING)
    if isinstance(t, list) and isinstance(key, int) and not isinstance(key, bool):
        return t[key - 1] if 1 <= key <= len(t) else MISSING
    return MISSING


def _is_table(v: Any) -> bool:
    return isinstance(v, (dict, list))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _lua_pairs(t: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(t, dict):
        yield from list(t.items())
    elif isinstance(t, list):
        yield from enumerate(list(t), 1)


def _is_sequence(v: Any) -> bool:
    """init.lua:444-466 is_sequence: keys are exactly 1..n (an empty table is a sequence)."""
    if isinstance(v, list):
        return True
    if isinstance(v, dict):
        keys = list(v)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
            return False
        return sorted(keys) == list(range(1, len(keys) + 1))
    return False


def _seq(v: Any) -> list[Any] | None:
    """The elements ``v[1..#v]`` of a sequence, or None if v is not a sequence."""
    if isinstance(v, list):
        return v
    if isinstance(v, dict) and _is_sequence(v):
        return [v[i] for i in range(1, len(v) + 1)]
    return None


def _lua_len(v: Any) -> int:
    """The ``#`` operator: bytes of a string, border of a table."""
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


def _lua_type(v: Any) -> str:
    if v is MISSING:
        return "nil"
    if v is None:
        return "userdata"
    if isinstance(v, bool):
        return "boolean"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if _is_table(v):
        return "table"
    if callable(v):
        return "function"
    return "userdata"


def _lua_key(v: Any) -> tuple[Any, ...]:
    """How a value behaves as a Lua table key (1 == 1.0, true ~= 1, tables by identity)."""
    if isinstance(v, bool):
        return ("b", v)
    if _is_number(v):
        return ("n", float(v))
    if isinstance(v, str):
        return ("s", v)
    if v is None:
        return ("null",)
    return ("t", id(v))


def _lua_eq(a: Any, b: Any) -> bool:
    return _lua_key(a) == _lua_key(b)


def _num_str(n: float | int) -> str:
    """LuaJIT number -> string (LUAI_NUMFFORMAT "%.14g")."""
    f = float(n)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return format(f, ".14g")


def _lua_tostring(v: Any) -> str:
    if v is None:
        return "userdata: NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_number(v):
        return _num_str(v)
    if isinstance(v, str):
        return v
    if v is MISSING:
        return "nil"
    return f"{_lua_type(v)}: 0x{id(v):08x}"


def _lua_format(fmt: str, *args: Any) -> str:
    """string.format for the %s / %d / %% items Kong's messages use."""
    out: list[str] = []
    it = iter(args)
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            spec = fmt[i + 1]
            i += 2
            if spec == "%":
                out.append("%")
                continue
            arg = next(it, MISSING)
            if spec == "s":
                if not (isinstance(arg, str) or _is_number(arg)):
                    raise KongLuaError(f"bad argument to 'format' (string expected, got {_lua_type(arg)})")
                out.append(_lua_tostring(arg))
            elif spec == "d":
                if not isinstance(arg, (int, float)) or isinstance(arg, bool):
                    raise KongLuaError(f"bad argument to 'format' (number expected, got {_lua_type(arg)})")
                out.append(str(math.trunc(arg)))  # (LUA_INTFRM_T) cast in lib_string.c
            else:
                raise KongLuaError(f"harness _lua_format does not know %{spec}")
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _concat(items: list[Any], sep: str) -> str:
    """table.concat: strings and numbers only."""
    parts = []
    for i, x in enumerate(items, 1):
        if not (isinstance(x, str) or _is_number(x)):
            raise KongLuaError(f"invalid value (at index {i}) in table for 'concat'")
        parts.append(_lua_tostring(x))
    return sep.join(parts)


def _quoted_list(words: list[Any]) -> str:
    """init.lua:185-196 quoted_list."""
    msg = []
    for w in words:
        if _is_table(w):
            msg.append("(%s)" % _quoted_list(_seq(w) or []))
        else:
            msg.append("'%s'" % _lua_tostring(w))
    return ", ".join(msg)


def is_reference(value: Any) -> bool:
    """kong/pdk/vault.lua:79-91 is_reference: starts with ``{vault://`` and ends with ``}``."""
    return isinstance(value, str) and value.startswith("{vault://") and value.endswith("}")


def _is_nonempty(v: Any) -> bool:
    """init.lua:429-438 is_nonempty."""
    if v is MISSING or v is None:
        return False
    if _is_table(v) and len(v) == 0:
        return False
    if isinstance(v, str) and v == "":
        return False
    return True


def _get_field(tbl: Any, name: str) -> Any:
    """init.lua:472-482 get_field: ``t["x.y"]`` is ``t.x.y``."""
    if tbl is MISSING or tbl is None:
        return MISSING
    hd, dot, tl = name.partition(".")
    if not dot:
        return _attr(tbl, name)
    return _get_field(_attr(tbl, hd), tl)


def _set_field(tbl: dict[Any, Any], name: str, value: Any) -> None:
    """init.lua:488-501 set_field (assigning nil removes)."""
    hd, dot, tl = name.partition(".")
    if not dot:
        if value is MISSING:
            tbl.pop(name, None)
        else:
            tbl[name] = value
        return
    sub = tbl.get(hd)
    if not isinstance(sub, dict):
        sub = {}
        tbl[hd] = sub
    _set_field(sub, tl, value)


def _fields_list(schema: Any) -> list[tuple[str, dict[str, Any]]]:
    """The ``{ name = def }`` entries of a schema's (or record field's) ``fields`` array."""
    fields = _attr(schema, "fields")
    items = _seq(fields)
    if items is None:
        raise KongLuaError(f"attempt to index 'fields' (a {_lua_type(fields)} value)")
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, dict) or not item:
            raise KongLuaError("malformed entry in 'fields'")
        name, fdef = next(iter(item.items()))
        if not isinstance(fdef, dict):
            raise KongLuaError(f"field '{name}' is a {_lua_type(fdef)}, not a table")
        out.append((name, fdef))
    return out


def _field_map(schema: Any) -> dict[str, dict[str, Any]]:
    return {name: fdef for name, fdef in _fields_list(schema)}


def _get_schema_field(schema: Any, name: str) -> dict[str, Any] | None:
    """init.lua:507-517 get_schema_field (records are reachable by name: allow_record_fields_by_name)."""
    hd, dot, tl = name.partition(".")
    fdef = _field_map(schema).get(hd)
    if not dot or fdef is None:
        return fdef
    return _get_schema_field(fdef, tl)


def _overlay(base: dict[str, Any] | None, top: Any) -> dict[str, Any]:
    """``setmetatable(top, { __index = base })``: attributes of `top` win."""
    merged = dict(base or {})
    if isinstance(top, dict):
        merged.update(top)
    return merged


# --------------------------------------------------------------------------------------
# Lua patterns -> Python regular expressions
# --------------------------------------------------------------------------------------
# LuaJIT's matcher (what OpenResty runs Kong on) works on bytes, in the C locale. Its
# classes are %a %c %d %g %l %p %s %u %w %x and %z, upper case for the complement; any
# other escaped character stands for itself. The translation below compiles each
# single-character class to an explicit byte set, so `.`, `[^...]`, %S ... see bytes,
# as Lua does. Limits: %b (balanced match) raises UnsupportedByHarness; malformed
# patterns raise LuaPatternError eagerly, where Lua only raises when the matcher
# reaches the bad item; a back-reference to a position capture never matches (as in
# LuaJIT); at most Python's group limit of captures.

def _ctype(pred: Callable[[int], bool]) -> frozenset[int]:
    return frozenset(c for c in range(256) if pred(c))


_DIGIT = _ctype(lambda c: 48 <= c <= 57)
_UPPER = _ctype(lambda c: 65 <= c <= 90)
_LOWER = _ctype(lambda c: 97 <= c <= 122)
_ALPHA = _UPPER | _LOWER
_ALNUM = _ALPHA | _DIGIT
_GRAPH = _ctype(lambda c: 33 <= c <= 126)
_LUA_CLASSES: Final[dict[str, frozenset[int]]] = {
    "a": _ALPHA,
    "c": _ctype(lambda c: c < 32 or c == 127),
    "d": _DIGIT,
    "g": _GRAPH,
    "l": _LOWER,
    "p": _GRAPH - _ALNUM,
    "s": _ctype(lambda c: 9 <= c <= 13 or c == 32),
    "u": _UPPER,
    "w": _ALNUM,
    "x": _DIGIT | _ctype(lambda c: 65 <= c <= 70 or 97 <= c <= 102),
    "z": frozenset({0}),
}
_ALL_BYTES: Final = frozenset(range(256))


def _class_bytes(cl: int) -> frozenset[int]:
    """match_class: the bytes a ``%x`` item matches."""
    ch = chr(cl)
    if ch.isascii() and ch.isalpha() and ch.lower() in _LUA_CLASSES:
        s = _LUA_CLASSES[ch.lower()]
        return s if ch.islower() else _ALL_BYTES - s
    return frozenset({cl})


def _class_end(p: bytes, i: int) -> int:
    """classEnd: index just past the single-character class starting at p[i]."""
    n = len(p)
    c = p[i]
    i += 1
    if c == 0x25:  # '%'
        if i >= n:
            raise LuaPatternError("malformed pattern (ends with '%')")
        return i + 1
    if c == 0x5B:  # '['
        if i < n and p[i] == 0x5E:  # '^'
            i += 1
        while True:  # the first character after '[' / '[^' is always a member, even ']'
            if i >= n:
                raise LuaPatternError("malformed pattern (missing ']')")
            cc = p[i]
            i += 1
            if cc == 0x25 and i < n:
                i += 1
            if i < n and p[i] == 0x5D:
                return i + 1
    return i


def _bracket_set(p: bytes, start: int, ec: int) -> frozenset[int]:
    """matchbracketclass: the byte set of ``p[start] == '['`` .. ``p[ec] == ']'``."""
    k = start
    sig = True
    if p[k + 1] == 0x5E:
        sig = False
        k += 1
    members: set[int] = set()
    k += 1
    while k < ec:
        if p[k] == 0x25:
            k += 1
            members |= _class_bytes(p[k])
        elif k + 1 < len(p) and p[k + 1] == 0x2D and k + 2 < ec:  # a-z
            members |= set(range(p[k], p[k + 2] + 1))
            k += 2
        else:
            members.add(p[k])
        k += 1
    return frozenset(members) if sig else _ALL_BYTES - members


def _set_rx(s: frozenset[int]) -> str:
    if not s:
        return "(?!)"
    if len(s) == 1:
        return "\\x%02x" % next(iter(s))
    vals = sorted(s)
    parts = []
    lo = prev = vals[0]
    for v in [*vals[1:], -2]:
        if v == prev + 1:
            prev = v
            continue
        parts.append("\\x%02x" % lo if lo == prev else "\\x%02x-\\x%02x" % (lo, prev))
        lo = prev = v
    return "[" + "".join(parts) + "]"


def _frontier_rx(s: frozenset[int]) -> str:
    """%f[set]: previous byte (NUL at the start) not in set, current byte (NUL at the end) in set."""
    cls = _set_rx(s)
    neg = _set_rx(_ALL_BYTES - s)
    before = f"(?<={neg})" if 0 in s else f"(?<!{cls})"
    after = f"(?={cls}|\\Z)" if 0 in s else f"(?={cls})"
    return before + after


@lru_cache(maxsize=1024)
def _compile_lua_pattern(pattern: str) -> re.Pattern[bytes]:
    p = pattern.encode("utf-8")
    n = len(p)
    out: list[str] = []
    i = 0
    if n and p[0] == 0x5E:  # '^' anchors only as the very first character
        out.append("\\A")
        i = 1
    ncap = 0
    open_caps: list[int] = []
    positions: set[int] = set()
    while i < n:
        c = p[i]
        if c == 0x28:  # '('
            ncap += 1
            if i + 1 < n and p[i + 1] == 0x29:  # position capture
                positions.add(ncap)
                out.append("()")
                i += 2
            else:
                open_caps.append(ncap)
                out.append("(")
                i += 1
            continue
        if c == 0x29:  # ')'
            if not open_caps:
                raise LuaPatternError("invalid pattern capture")
            open_caps.pop()
            out.append(")")
            i += 1
            continue
        if c == 0x24 and i == n - 1:  # '$' anchors only as the very last character
            out.append("\\Z")
            i += 1
            continue
        if c == 0x25 and i + 1 < n:
            nx = p[i + 1]
            if nx == 0x62:  # %b
                raise UnsupportedByHarness(
                    f"Lua pattern {pattern!r}: %b (balanced match) has no Python regex equivalent")
            if nx == 0x66:  # %f
                i += 2
                if i >= n or p[i] != 0x5B:
                    raise LuaPatternError("missing '[' after '%f' in pattern")
                end = _class_end(p, i)
                out.append(_frontier_rx(_bracket_set(p, i, end - 1)))
                i = end
                continue
            if 0x30 <= nx <= 0x39:  # back-reference %1-%9
                idx = nx - 0x30
                if idx < 1 or idx > ncap or idx in open_caps:
                    raise LuaPatternError("invalid capture index")
                out.append("(?!)" if idx in positions else "(?:\\%d)" % idx)
                i += 2
                continue
        # a single-character class, maybe followed by a quantifier
        end = _class_end(p, i)
        if c == 0x2E:  # '.'
            cls: frozenset[int] = _ALL_BYTES
        elif c == 0x25:
            cls = _class_bytes(p[i + 1])
        elif c == 0x5B:
            cls = _bracket_set(p, i, end - 1)
        else:
            cls = frozenset({c})
        item = _set_rx(cls)
        if end < n and p[end] in b"*+-?":
            item += {0x2A: "*", 0x2B: "+", 0x2D: "*?", 0x3F: "?"}[p[end]]
            end += 1
        out.append(item)
        i = end
    if open_caps:
        raise LuaPatternError("unfinished capture")
    return re.compile("".join(out).encode("ascii"))


def lua_pattern_to_regex(pattern: str) -> str:
    """The Python (bytes) regular expression source equivalent to a Lua pattern."""
    return _compile_lua_pattern(pattern).pattern.decode("ascii")


def lua_match(subject: str, pattern: str) -> bool:
    """Whether ``subject:match(pattern)`` is truthy (string.match: search, not anchored)."""
    return _compile_lua_pattern(pattern).search(subject.encode("utf-8")) is not None


# --------------------------------------------------------------------------------------
# Validators: init.lua:212-385
# --------------------------------------------------------------------------------------

_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

_ValidatorResult = tuple[bool, str | None]


def _str_match(value: Any, pattern: Any) -> bool:
    if not isinstance(value, str) or not isinstance(pattern, str):
        raise KongLuaError(f"string.match on a {_lua_type(value)} with a {_lua_type(pattern)} pattern")
    return lua_match(value, pattern)


def _cmp(value: Any, limit: Any, op: Callable[[Any, Any], bool]) -> bool:
    if (_is_number(value) and _is_number(limit)) or (isinstance(value, str) and isinstance(limit, str)):
        return op(value, limit)
    raise KongLuaError(f"attempt to compare {_lua_type(value)} with {_lua_type(limit)}")


def _length(value: Any, field: dict[str, Any]) -> int:
    """make_length_validator (init.lua:162-175): a map's length is #value plus its pairs."""
    n = _lua_len(value)
    if field.get("type") == "map":
        n += len(value)
    return n


def _v_between(value: Any, limits: Any, field: dict[str, Any]) -> _ValidatorResult:
    lo, hi = _attr(limits, 1), _attr(limits, 2)
    if _cmp(value, lo, lambda a, b: a < b) or _cmp(value, hi, lambda a, b: a > b):
        return False, _lua_format(_E["BETWEEN"], lo, hi)
    return True, None


def _v_eq(value: Any, wanted: Any, field: dict[str, Any]) -> _ValidatorResult:
    if _lua_eq(value, wanted):
        return True, None
    return False, _E["EQ"] % ("null" if wanted is None else _lua_tostring(wanted))


def _v_ne(value: Any, wanted: Any, field: dict[str, Any]) -> _ValidatorResult:
    if not _lua_eq(value, wanted):
        return True, None
    return False, _E["NE"] % ("null" if wanted is None else _lua_tostring(value))


def _v_gt(value: Any, limit: Any, field: dict[str, Any]) -> _ValidatorResult:
    if _cmp(value, limit, lambda a, b: a > b):
        return True, None
    return False, _E["GT"] % _lua_tostring(limit)


def _v_len(name: str, op: Callable[[int, Any], bool]) -> Callable[[Any, Any, dict[str, Any]], _ValidatorResult]:
    def check(value: Any, n: Any, field: dict[str, Any]) -> _ValidatorResult:
        if not _is_number(n):
            raise KongLuaError(f"attempt to compare number with {_lua_type(n)}")
        if op(_length(value, field), n):
            return True, None
        return False, _lua_format(_E[name], n)
    return check


def _v_match(value: Any, pattern: Any, field: dict[str, Any]) -> _ValidatorResult:
    if _str_match(value, pattern):
        return True, None
    return False, _E["MATCH"] % value


def _v_not_match(value: Any, pattern: Any, field: dict[str, Any]) -> _ValidatorResult:
    if _str_match(value, pattern):
        return False, _E["NOT_MATCH"] % value
    return True, None


def _opt_err(e: Any) -> str | None:
    return e if isinstance(e, str) else None


def _v_match_all(value: Any, lst: Any, field: dict[str, Any]) -> _ValidatorResult:
    for item in _seq(lst) or []:
        if not _str_match(value, _attr(item, "pattern")):
            return False, _opt_err(_attr(item, "err"))
    return True, None


def _v_match_none(value: Any, lst: Any, field: dict[str, Any]) -> _ValidatorResult:
    for item in _seq(lst) or []:
        if _str_match(value, _attr(item, "pattern")):
            return False, _opt_err(_attr(item, "err"))
    return True, None


def _v_match_any(value: Any, arg: Any, field: dict[str, Any]) -> _ValidatorResult:
    for pat in _seq(_attr(arg, "patterns")) or []:
        if _str_match(value, pat):
            return True, None
    return False, _opt_err(_attr(arg, "err"))


def _v_starts_with(value: Any, expected: Any, field: dict[str, Any]) -> _ValidatorResult:
    if not isinstance(value, str) or not isinstance(expected, str):
        raise KongLuaError("starts_with needs strings")
    if not value.encode("utf-8").startswith(expected.encode("utf-8")):
        return False, _E["STARTS_WITH"] % expected
    return True, None


def _v_one_of(value: Any, options: Any, field: dict[str, Any]) -> _ValidatorResult:
    opts = _seq(options) or []
    if any(_lua_eq(value, o) for o in opts):
        return True, None
    return False, _E["ONE_OF"] % _concat(opts, ", ")


def _v_not_one_of(value: Any, options: Any, field: dict[str, Any]) -> _ValidatorResult:
    opts = _seq(options) or []
    if any(_lua_eq(value, o) for o in opts):
        return False, _E["NOT_ONE_OF"] % _concat(opts, ", ")
    return True, None


def _v_timestamp(value: Any, arg: Any, field: dict[str, Any]) -> _ValidatorResult:
    return (True, None) if _cmp(value, 0, lambda a, b: a > b) else (False, None)


def _v_uuid(value: Any, arg: Any, field: dict[str, Any]) -> _ValidatorResult:
    if _lua_len(value) != 36:
        return False, None
    return (True, None) if _UUID_RE.search(value) else (False, None)


def _v_is_regex(value: Any, arg: Any, field: dict[str, Any]) -> _ValidatorResult:
    # Kong compiles with PCRE (ngx.re.match); Python's `re` is the nearest stand-in.
    try:
        re.compile(value)
    except (re.error, TypeError):
        return False, None
    return True, None


def _v_contains(value: Any, wanted: Any, field: dict[str, Any]) -> _ValidatorResult:
    if any(_lua_eq(x, wanted) for x in _seq(value) or []):
        return True, None
    return False, _lua_format(_E["CONTAINS"], wanted)


def _v_custom_validator(value: Any, fn: Any, field: dict[str, Any]) -> _ValidatorResult:
    if not callable(fn):
        raise KongLuaError(f"attempt to call a {_lua_type(fn)} value (custom_validator)")
    res = fn(value)
    if isinstance(res, tuple):
        ok = res[0]
        err = res[1] if len(res) > 1 else None
        return bool(_truthy(ok) and ok is not None), err
    return bool(_truthy(res) and res is not None), None


def _v_mutually_exclusive_subsets(value: Any, subsets: Any, field: dict[str, Any]) -> _ValidatorResult:
    union: dict[tuple[Any, ...], Any] = {}
    for subset in _seq(subsets) or []:
        for elem in _seq(subset) or []:
            union[_lua_key(elem)] = subset
    member_of: list[Any] = []
    seen: set[int] = set()
    for val in _seq(value) or []:
        subset = union.get(_lua_key(val))
        if subset is not None and id(subset) not in seen:
            seen.add(id(subset))
            member_of.append(subset)
    if len(member_of) <= 1:
        return True, None
    return False, _E["MUTUALLY_EXCLUSIVE_SETS"] % _quoted_list(member_of)


_VALIDATORS: Final[dict[str, Callable[[Any, Any, dict[str, Any]], _ValidatorResult]]] = {
    "between": _v_between,
    "eq": _v_eq,
    "ne": _v_ne,
    "gt": _v_gt,
    "len_eq": _v_len("LEN_EQ", lambda a, b: a == b),
    "len_min": _v_len("LEN_MIN", lambda a, b: a >= b),
    "len_max": _v_len("LEN_MAX", lambda a, b: a <= b),
    "match": _v_match,
    "not_match": _v_not_match,
    "match_all": _v_match_all,
    "match_none": _v_match_none,
    "match_any": _v_match_any,
    "starts_with": _v_starts_with,
    "one_of": _v_one_of,
    "not_one_of": _v_not_one_of,
    "timestamp": _v_timestamp,
    "uuid": _v_uuid,
    "is_regex": _v_is_regex,
    "contains": _v_contains,
    "custom_validator": _v_custom_validator,
    "mutually_exclusive_subsets": _v_mutually_exclusive_subsets,
}

# --------------------------------------------------------------------------------------
# Schema:validate_field and friends: init.lua:838-1240, 2106-2145
# --------------------------------------------------------------------------------------

Err = Any  # str, or a dict {key: Err, "@entity": [str, ...]} as Kong's error tables


def _validate_field(field: dict[str, Any], value: Any) -> tuple[bool, Err]:
    """Schema:validate_field (init.lua:874-1030). `value` None is ngx.null."""
    if value is None:
        if "ne" in field and field["ne"] is None:
            return False, _opt_err(field.get("err")) or _E["NE"] % "null"
        eq = field.get("eq", MISSING)
        if eq is not MISSING and eq is not None:
            return False, _E["EQ"] % _lua_tostring(eq)
        if _truthy(field.get("required", MISSING)):
            return False, _E["REQUIRED"]
        return True, None

    if "eq" in field and field["eq"] is None:
        return False, _opt_err(field.get("err")) or _E["EQ"] % "null"

    if _truthy(field.get("abstract", MISSING)):
        return False, _E["SUBSCHEMA_ABSTRACT_FIELD"]

    ftype = field.get("type", MISSING)
    len_min_default = False
    if ftype in ("array", "set"):
        if not _is_sequence(value):
            return False, _E["ARRAY" if ftype == "array" else "SET"]
        ok, err = _validate_elements(field, value)
        if not ok:
            return False, err
    elif ftype == "map":
        if not _is_table(value):
            return False, _E["MAP"]
        keys, values = field.get("keys"), field.get("values")
        if not isinstance(keys, dict) or not isinstance(values, dict):
            raise KongLuaError("map field without 'keys'/'values' tables")
        for k, v in _lua_pairs(value):
            ok, err = _validate_field({**keys, "required": True}, k)
            if not ok:
                return False, err
            ok, err = _validate_field({**values, "required": True}, v)
            if not ok:
                return False, err
    elif ftype == "record":
        if not _is_table(value):
            return False, _E["RECORD"]
        errs = _validate_record_value(field, value)
        if errs:
            return False, errs
    elif ftype == "foreign":
        # The foreign schema's validate_primary_key (init.lua:1532-1567); every core
        # entity's primary key is `id`, typedefs.uuid (auto, uuid = true).
        pk = _attr(value, "id") if _is_table(value) else MISSING
        if not _truthy(pk):
            return False, {"id": _E["MISSING_PK"]}
        if pk is None:
            return False, {"id": _E["REQUIRED"]}
        ok, err = _validate_field({"type": "string", "uuid": True, "auto": True}, pk)
        if not ok:
            return False, {"id": err}
    elif ftype == "integer":
        if not (_is_number(value) and math.isfinite(value) and value == math.floor(value)):
            return False, _E["INTEGER"]
    elif ftype == "string":
        if not isinstance(value, str):
            return False, _E["STRING"]
        # "empty strings are not accepted by default" (init.lua:990-993)
        len_min_default = "len_min" not in field
        if _truthy(field.get("referenceable", MISSING)) and is_reference(value):
            return True, None
    elif ftype == "function":
        if not callable(value):
            return False, _E["FUNCTION"]
    elif ftype == "number":
        if not _is_number(value):
            return False, _E["NUMBER"]
    elif ftype == "boolean":
        if not isinstance(value, bool):
            return False, _E["BOOLEAN"]
    elif ftype == "json":
        raise UnsupportedByHarness("fields of type 'json' (JSON-schema validation) are not supported")
    elif ftype != "any":
        if not isinstance(ftype, str):
            raise KongLuaError(f"bad argument to 'format' (field type is a {_lua_type(ftype)})")
        return False, _E["SCHEMA_TYPE"] % ftype

    for k in _VALIDATORS_ORDER:
        arg = field.get(k, MISSING)
        if k == "len_min" and len_min_default:
            arg = 1
        if arg is MISSING:
            continue
        if arg is None and k != "ne":
            raise KongLuaError(f"validator '{k}' has a null argument")
        ok, err = _VALIDATORS[k](value, arg, field)
        if not ok:
            if err is None:
                err = _lua_format(_E.get(k.upper(), _E["VALIDATION"]), value)
            return False, _opt_err(field.get("err")) or err
    return True, None


def _validate_elements(field: dict[str, Any], value: Any) -> tuple[bool, Err]:
    """validate_elements (init.lua:838-855): elements are required; errors by 1-based index."""
    elements = field.get("elements")
    if not isinstance(elements, dict):
        raise KongLuaError(f"attempt to index field 'elements' (a {_lua_type(elements)} value)")
    elements = {**elements, "required": True}
    errs: dict[int, Err] = {}
    for i, v in enumerate(_seq(value) or [], 1):
        ok, err = _validate_field(elements, v)
        if not ok:
            errs[i] = err
    return (True, None) if not errs else (False, errs)


def _validate_record_value(field: dict[str, Any], value: Any) -> dict[Any, Err]:
    """A record value: process_auto_fields(value, "insert"), then Schema:validate (init.lua:949-961)."""
    processed = _process_auto_fields(field, value, "insert")
    return _validate_schema(field, processed, full_check=True)


def _validate_schema(schema: dict[str, Any], data: dict[Any, Any], full_check: bool = True) -> dict[Any, Err]:
    """Schema:validate (init.lua:2106-2145) without subschemas or a `check` function."""
    errors = _validate_fields(schema, data)
    for name, fdef in _fields_list(schema):
        if _truthy(fdef.get("required", MISSING)):
            v = data.get(name, MISSING)
            if v is None or (full_check and v is MISSING):
                errors[name] = _E["REQUIRED"]
    _run_entity_checks(schema, data, full_check, errors)
    return errors


def _validate_fields(schema: dict[str, Any], data: dict[Any, Any]) -> dict[Any, Err]:
    """validate_fields (init.lua:1195-1240)."""
    errors: dict[Any, Err] = {}
    by_name = _field_map(schema)
    for k, v in list(data.items()):
        fdef = by_name.get(k if isinstance(k, str) else _lua_tostring(k))
        if fdef is not None and fdef.get("type") == "json":
            raise UnsupportedByHarness(f"field '{k}' is of type 'json': JSON-schema validation is not supported")
        if fdef is not None and fdef.get("type") == "self":
            # metaschema `default = { type = "self" }`: the value is validated against the
            # field definition being validated, under pcall (init.lua:1213-1219).
            try:
                if data.get("type") == "foreign" and v is not None:
                    # the definition being validated has no resolved `schema` (only
                    # Schema.new resolves foreign fields), so init.lua:963-976 accepts it
                    ok, err = True, None
                else:
                    ok, err = _validate_field(data, v)
            except KongLuaError:
                ok, err = False, _E["SCHEMA_CANNOT_VALIDATE"]
            if not ok:
                errors[k] = err
            continue
        if k == "updated_at":  # Schema.new's unvalidated_fields (init.lua:2583-2590)
            continue
        if k == "ttl" and _truthy(schema.get("ttl", MISSING)):
            continue
        if fdef is None:
            errors[k] = _E["UNKNOWN"]
            continue
        ok, err = _validate_field(fdef, v)
        if not ok:
            errors[k] = err
    return errors


# --------------------------------------------------------------------------------------
# Entity checks: init.lua:590-822 (checkers), 1262-1462 (running them)
# --------------------------------------------------------------------------------------

_CheckResult = tuple[bool, Any, Any]


def _ec_at_least_one_of(entity: dict[str, Any], names: Any, schema: dict[str, Any],
                        errors: dict[Any, Err]) -> _CheckResult:
    names = _seq(names) or []
    if any(_is_nonempty(_get_field(entity, n)) for n in names):
        return True, None, None
    return False, _quoted_list(names), None


def _ec_conditional_at_least_one_of(entity: dict[str, Any], arg: Any, schema: dict[str, Any],
                                    errors: dict[Any, Err]) -> _CheckResult:
    if_value = _get_field(entity, _attr(arg, "if_field"))
    if if_value is MISSING:
        return True, None, None
    sfield = _get_schema_field(schema, _attr(arg, "if_field"))
    ok, _ = _validate_field(_overlay(sfield, _attr(arg, "if_match")), if_value)
    if not ok:
        else_match = _attr(arg, "else_match")
        if else_match is MISSING:
            return True, None, None
        ok, _ = _validate_field(_overlay(sfield, else_match), if_value)
        if not ok:
            return True, None, None
        names = _seq(_attr(arg, "else_then_at_least_one_of")) or []
        if any(_is_nonempty(_get_field(entity, n)) for n in names):
            return True, None, None
        lst = _quoted_list(names)
        custom = _attr(arg, "else_then_err")
        return False, lst, (_lua_format(custom, lst) if isinstance(custom, str) else None)
    names = _seq(_attr(arg, "then_at_least_one_of")) or []
    if any(_is_nonempty(_get_field(entity, n)) for n in names):
        return True, None, None
    lst = _quoted_list(names)
    custom = _attr(arg, "then_err")
    return False, lst, (_lua_format(custom, lst) if isinstance(custom, str) else None)


def _ec_only_one_of(entity: dict[str, Any], names: Any, schema: dict[str, Any], errors: dict[Any, Err]) -> _CheckResult:
    names = _seq(names) or []
    found = ok = False
    for n in names:
        if _is_nonempty(_get_field(entity, n)):
            if not found:
                found = ok = True
            else:
                ok = False
    return (True, None, None) if ok else (False, _quoted_list(names), None)


def _ec_distinct(entity: dict[str, Any], names: Any, schema: dict[str, Any], errors: dict[Any, Err]) -> _CheckResult:
    names = _seq(names) or []
    seen: set[tuple[Any, ...]] = set()
    for n in names:
        v = _get_field(entity, n)
        if _is_nonempty(v):
            if _lua_key(v) in seen:
                return False, _quoted_list(names), None
            seen.add(_lua_key(v))
    return True, None, None


def _ec_conditional(entity: dict[str, Any], arg: Any, schema: dict[str, Any], errors: dict[Any, Err]) -> _CheckResult:
    if_field, then_field = _attr(arg, "if_field"), _attr(arg, "then_field")
    if_value = _get_field(entity, if_field)
    then_value = _get_field(entity, then_field)
    if then_value is MISSING:
        then_value = None
    ok, _ = _validate_field(_overlay(_get_schema_field(schema, if_field), _attr(arg, "if_match")), if_value)
    if not ok:
        return True, None, None
    then_match = _attr(arg, "then_match")
    if _attr(then_match, "required") is True and then_value is None:
        _set_field(errors, then_field, _E["REQUIRED"])
        return False, if_field, None
    ok, err = _validate_field(_overlay(_get_schema_field(schema, then_field), then_match), then_value)
    if not ok:
        _set_field(errors, then_field, err)
        custom = _attr(arg, "then_err")
        return False, if_field, (_lua_format(custom, if_field) if isinstance(custom, str) else None)
    return True, None, None


def _ec_custom_entity_check(entity: dict[str, Any], arg: Any, schema: dict[str, Any],
                            errors: dict[Any, Err]) -> _CheckResult:
    fn = _attr(arg, "fn")
    if not callable(fn):
        raise UnsupportedByHarness("custom_entity_check needs a Lua function; none can come from a JSON schema")
    res = fn(entity)
    if isinstance(res, tuple):
        return bool(_truthy(res[0]) and res[0] is not None), (res[1] if len(res) > 1 else None), None
    return bool(_truthy(res) and res is not None), None, None


def _ec_mutually_required(entity: dict[str, Any], names: Any, schema: dict[str, Any],
                          errors: dict[Any, Err]) -> _CheckResult:
    names = _seq(names) or []
    nonempty = [n for n in names if _is_nonempty(_get_field(entity, n))]
    if len(nonempty) in (0, len(names)):
        return True, None, None
    return False, _quoted_list(names), None


def _ec_mutually_exclusive(entity: dict[str, Any], names: Any, schema: dict[str, Any],
                           errors: dict[Any, Err]) -> _CheckResult:
    names = _seq(names) or []
    nonempty = [n for n in names if _is_nonempty(_get_field(entity, n))]
    if len(nonempty) <= 1:
        return True, None, None
    return False, _quoted_list(names), None


def _ec_mutually_exclusive_sets(entity: dict[str, Any], arg: Any, schema: dict[str, Any],
                                errors: dict[Any, Err]) -> _CheckResult:
    set1 = [n for n in _seq(_attr(arg, "set1")) or [] if _is_nonempty(_get_field(entity, n))]
    set2 = [n for n in _seq(_attr(arg, "set2")) or [] if _is_nonempty(_get_field(entity, n))]
    if set1 and set2:
        return False, "(%s), (%s)" % (_quoted_list(set1), _quoted_list(set2)), None
    return True, None, None


class _Checker:
    def __init__(self, fn: Callable[[dict[str, Any], Any, dict[str, Any], dict[Any, Err]], _CheckResult], *,
                 run_with_missing_fields: bool = False, run_with_invalid_fields: bool = False,
                 field_sources: tuple[str, ...] | None = None, required_sources: frozenset[str] = frozenset()):
        self.fn = fn
        self.run_with_missing_fields = run_with_missing_fields
        self.run_with_invalid_fields = run_with_invalid_fields
        self.field_sources = field_sources
        # `required_fields` is a map keyed by source name for conditional and
        # custom_entity_check only; the array forms (conditional_at_least_one_of,
        # mutually_exclusive_sets) are indexed by name in run_entity_check and so never match.
        self.required_sources = required_sources


# Schema.entity_checkers (init.lua:590-822); order = the only_one_of list of metaschema.lua:394.
_ENTITY_CHECKERS: Final[dict[str, _Checker]] = {
    "at_least_one_of": _Checker(_ec_at_least_one_of, run_with_missing_fields=True, run_with_invalid_fields=True),
    "conditional_at_least_one_of": _Checker(
        _ec_conditional_at_least_one_of, run_with_missing_fields=True, run_with_invalid_fields=True,
        field_sources=("if_field", "then_at_least_one_of", "else_then_at_least_one_of")),
    "only_one_of": _Checker(_ec_only_one_of, run_with_invalid_fields=True),
    "distinct": _Checker(_ec_distinct, run_with_invalid_fields=True),
    "conditional": _Checker(_ec_conditional, run_with_invalid_fields=True, field_sources=("if_field", "then_field"),
                            required_sources=frozenset({"if_field"})),
    "custom_entity_check": _Checker(_ec_custom_entity_check, field_sources=("field_sources",),
                                    required_sources=frozenset({"field_sources"})),
    "mutually_required": _Checker(_ec_mutually_required, run_with_missing_fields=True),
    "mutually_exclusive": _Checker(_ec_mutually_exclusive, run_with_missing_fields=True),
    "mutually_exclusive_sets": _Checker(_ec_mutually_exclusive_sets, run_with_missing_fields=True,
                                        field_sources=("set1", "set2")),
}


def _run_entity_checks(schema: dict[str, Any], data: dict[Any, Any], full_check: bool, errors: dict[Any, Err]) -> None:
    """run_checks over schema.entity_checks (init.lua:1412-1424)."""
    for check in _seq(schema.get("entity_checks", MISSING)) or []:
        if not isinstance(check, dict) or not check:
            continue
        name, arg = next(iter(check.items()))
        if _truthy(arg) and arg is not None:
            _run_entity_check(schema, name, data, arg, full_check, errors)


def _run_entity_check(schema: dict[str, Any], name: str, data: dict[Any, Any], arg: Any, full_check: bool,
                      errors: dict[Any, Err]) -> None:
    """run_entity_check (init.lua:1262-1363)."""
    checker = _ENTITY_CHECKERS.get(name)
    if checker is None:
        raise KongLuaError(f"unknown entity check '{name}'")
    fields_to_check: list[str] = []
    required: set[str] = set()
    if checker.field_sources is not None:
        for source in checker.field_sources:
            v = _attr(arg, source)
            if isinstance(v, str):
                fields_to_check.append(v)
                if source in checker.required_sources:
                    required.add(v)
            elif _is_table(v):
                for fname in _seq(v) or []:
                    fields_to_check.append(fname)
                    if source in checker.required_sources:
                        required.add(fname)
    else:
        fields_to_check = list(_seq(arg) or [])
        required = set(fields_to_check)

    check_input: dict[str, Any] = {}
    missing: list[str] = []
    all_nil = True
    all_ok = True
    for fname in fields_to_check:
        value = _get_field(data, fname)
        if value is MISSING:
            if (not checker.run_with_missing_fields and not _truthy(_attr(arg, "run_with_missing_fields"))
                    and fname in required):
                sfield = _get_schema_field(schema, fname)
                if sfield is None:
                    raise KongLuaError(f"entity check refers to unknown field '{fname}'")
                if not _truthy(sfield.get("nilable", MISSING)):
                    missing.append(fname)
        else:
            all_nil = False
            sfield = _get_schema_field(schema, fname)
            # "Don't run if any of the values is a reference in a referenceable field"
            if (sfield is not None and sfield.get("type") == "string"
                    and _truthy(sfield.get("referenceable", MISSING)) and is_reference(value)):
                return
        if fname in errors:
            all_ok = False
        _set_field(check_input, fname, value)

    if not all_ok and not checker.run_with_invalid_fields and not _truthy(_attr(arg, "run_with_invalid_fields")):
        return
    if all_nil and not (checker.run_with_missing_fields and full_check):
        return
    if missing:
        for fname in missing:
            _set_field(errors, fname, _E["REQUIRED_FOR_ENTITY_CHECK"])
        return

    ok, err, custom = checker.fn(check_input, arg, schema, errors)
    if ok:
        return
    if custom is not None:
        msg = custom
    else:
        fmt = _E.get(name.upper())
        msg = _lua_format(fmt, err) if fmt else f"failed entity check: {name}"
    errors.setdefault("@entity", []).append(msg)


# --------------------------------------------------------------------------------------
# process_auto_fields: init.lua:1037-1073 (handle_missing_field), 1589-1690, 1788-2026
# --------------------------------------------------------------------------------------


def _random_string() -> str:
    """kong/tools/rand.lua random_string: 32 characters of [A-Za-z0-9]."""
    alphabet = _string.ascii_letters + _string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _handle_missing_field(field: dict[str, Any], value: Any) -> Any:
    """handle_missing_field (init.lua:1037-1073)."""
    if "default" in field:
        dflt = copy.deepcopy(field["default"])
        if field.get("type") in ("array", "set") and isinstance(dflt, dict) and not dflt:
            dflt = []  # cjson.array_mt: an empty default array stays a JSON array
        return dflt
    if _truthy(field.get("nilable", MISSING)):
        return value
    if field.get("required", MISSING) is not True:
        return None  # "If not `required`, it is nullable."
    if _truthy(field.get("abstract", MISSING)):
        return MISSING
    if field.get("type") == "record":
        # "if the missing field is a record, expand its structure to obtain any nested defaults"
        return _process_auto_fields(field, {}, "insert")
    return MISSING  # "If `required`, it will fail later."


def _make_set(value: Any) -> Any:
    """make_set (init.lua:1606-1633): deduplicate a sequence, keeping first occurrences."""
    items = _seq(value)
    if items is None:
        return value
    out: list[Any] = []
    seen: set[tuple[Any, ...]] = set()
    for v in items:
        key = _lua_key(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _should_recurse_record(context: str, value: Any, field: dict[str, Any]) -> bool:
    """should_recurse_record (init.lua:1636-1642)."""
    if context == "update":
        return value is not None and value is not MISSING
    return value is not None and (value is not MISSING or field.get("required", MISSING) is True)


def _adjust_field_for_context(field: dict[str, Any], value: Any, context: str,
                              resolver: Callable[[str], Any] | None) -> Any:
    """adjust_field_for_context (init.lua:1645-1690)."""
    if context == "select" and value is None and field.get("required", MISSING) is True:
        return _handle_missing_field(field, value)
    if _truthy(field.get("abstract", MISSING)):
        return value
    ftype = field.get("type")
    if ftype == "record":
        if _should_recurse_record(context, value, field):
            if not _truthy(value):  # Lua `value or handle_missing_field(...)`: false counts too
                value = _handle_missing_field(field, value)
            if _is_table(value):
                return _process_auto_fields(field, value, context, resolver=resolver)
    elif _is_table(value):
        sub: Any = MISSING
        if ftype == "array":
            value = [] if value == {} else value  # make_array: cjson.array_mt
            sub = field.get("elements", MISSING)
        elif ftype == "set":
            value = _make_set(value)
            sub = field.get("elements", MISSING)
        elif ftype == "map":
            sub = field.get("values", MISSING)
        if sub is not MISSING:
            if not isinstance(sub, dict):
                raise KongLuaError(f"attempt to index a {_lua_type(sub)} value (elements/values)")
            if isinstance(value, list):
                value = [_adjust_field_for_context(sub, v, context, resolver) for v in value]
            else:
                value = {k: _adjust_field_for_context(sub, v, context, resolver) for k, v in value.items()}
    if value is MISSING and context != "update":
        return _handle_missing_field(field, value)
    return value


def _as_keyed_table(value: Any) -> dict[Any, Any]:
    """A record held as a Lua table; a JSON array given for a record keeps its 1-based keys."""
    if isinstance(value, dict):
        return value
    return {i: v for i, v in enumerate(value, 1)}


def _process_auto_fields(schema: dict[str, Any], value: Any, context: str, *,
                         resolver: Callable[[str], Any] | None = None) -> dict[Any, Any]:
    """Schema:process_auto_fields (init.lua:1788-2026) with nulls = false.

    Contexts "insert" and "select" only. Shorthand fields are not handled: a plugin
    server's JSON cannot carry their `func` (the metaschema rejects them).
    """
    is_select = context == "select"
    data: dict[Any, Any] = _as_keyed_table(copy.deepcopy(value))
    fields = _fields_list(schema)
    refs: dict[str, Any] = {}
    for key, field in fields:
        ftype = field.get("type")
        value = data.get(key, MISSING)
        if not is_select and _truthy(field.get("auto", MISSING)) and context in ("insert", "upsert"):
            if _truthy(field.get("uuid", MISSING)):
                if value is MISSING:
                    value = str(_uuid.uuid4())
            elif ftype == "string":
                if value is MISSING:
                    value = _random_string()
            elif (key == "created_at" and value in (None, MISSING)) or key == "updated_at":
                if ftype == "number":
                    value = time.time()
                elif ftype == "integer":
                    value = int(time.time())
        value = _adjust_field_for_context(field, value, context, resolver)
        if is_select:
            if value is None:
                value = MISSING  # "if value == null and not nulls then value = nil"
            elif ftype == "integer" and _is_number(value):
                value = math.floor(value)
            if resolver is not None:
                value = _resolve_references(field, key, value, resolver, refs)
        if value is MISSING:
            data.pop(key, None)
        else:
            data[key] = value
    if not is_select:
        return data
    by_name = dict(fields)
    for key in list(data):
        fdef = by_name.get(key) if isinstance(key, str) else None
        if fdef is None:
            del data[key]  # select drops what the schema does not know (init.lua:2000-2019)
        elif (fdef.get("type") == "string" and _num_or(fdef.get("len_min", MISSING), 1) > 0
              and data[key] == "" and key not in refs):
            del data[key]
    if refs:
        data["$refs"] = refs
    return data


def _num_or(v: Any, default: float) -> float:
    return v if _is_number(v) else default


def _resolve_references(field: dict[str, Any], key: str, value: Any, resolver: Callable[[str], Any],
                        refs: dict[str, Any]) -> Any:
    """The vault dereferencing part of process_auto_fields "select" (init.lua:1933-1973)."""
    ftype = field.get("type")

    def deref(ref: str) -> Any:
        got = resolver(ref)
        return got if _truthy(got) and got is not None else ""  # resolve_reference: `deref or ""`

    if ftype == "string" and _truthy(field.get("referenceable", MISSING)):
        if is_reference(value):
            refs[key] = value
            return deref(value)
        return value
    sub = field.get("elements") if ftype in ("array", "set") else field.get("values") if ftype == "map" else None
    if (isinstance(value, (list, dict)) and isinstance(sub, dict) and sub.get("type") == "string"
            and _truthy(sub.get("referenceable", MISSING))):
        if isinstance(value, list):
            for i, v in enumerate(value):
                if is_reference(v):
                    refs.setdefault(key, {})[i + 1] = v
                    value[i] = deref(v)
        else:
            for k, v in list(value.items()):
                if is_reference(v):
                    refs.setdefault(key, {})[k] = v
                    value[k] = deref(v)
    return value


# --------------------------------------------------------------------------------------
# The metaschema, as data: kong/db/schema/metaschema.lua:22-415, 998-1036
# --------------------------------------------------------------------------------------


def _unsupported_json_schema(value: Any) -> bool:
    raise UnsupportedByHarness("json_schema.inline/default: validating a JSON-schema document is not supported")


def _build_metasubschema() -> dict[str, Any]:
    match_list: dict[str, Any] = {"type": "array", "elements": {"type": "record", "fields": [
        {"pattern": {"type": "string", "required": True}},
        {"err": {"type": "string"}},
    ]}}
    match_any_list: dict[str, Any] = {"type": "record", "fields": [
        {"patterns": {"type": "array", "elements": {"type": "string"}, "required": True}},
        {"err": {"type": "string"}},
    ]}
    validators: list[dict[str, Any]] = [
        {"between": {"type": "array", "elements": {"type": "number"}, "len_eq": 2}},
        {"eq": {"type": "any"}},
        {"ne": {"type": "any"}},
        {"gt": {"type": "number"}},
        {"len_eq": {"type": "integer"}},
        {"len_min": {"type": "integer"}},
        {"len_max": {"type": "integer"}},
        {"match": {"type": "string"}},
        {"not_match": {"type": "string"}},
        {"match_all": match_list},
        {"match_none": match_list},
        {"match_any": match_any_list},
        {"starts_with": {"type": "string"}},
        {"one_of": {"type": "array", "elements": {"type": "any"}}},
        {"not_one_of": {"type": "array", "elements": {"type": "any"}}},
        {"contains": {"type": "any"}},
        {"is_regex": {"type": "boolean"}},
        {"timestamp": {"type": "boolean"}},
        {"uuid": {"type": "boolean"}},
        {"custom_validator": {"type": "function"}},
        {"mutually_exclusive_subsets": {"type": "array",
                                        "elements": {"type": "array", "elements": {"type": "string"}}}},
    ]
    json_metaschema: dict[str, Any] = {
        "type": "record",
        "fields": [
            {"namespace": {"type": "string", "one_of": ["proxy-wasm-filters"]}},  # constants.SCHEMA_NAMESPACES
            {"parent_subschema_key": {"type": "string"}},
            {"optional": {"type": "boolean"}},
            {"inline": {"type": "any", "custom_validator": _unsupported_json_schema}},
            {"default": {"type": "any", "custom_validator": _unsupported_json_schema}},
        ],
        "entity_checks": [
            {"at_least_one_of": ["inline", "namespace", "parent_subschema_key"]},
            {"mutually_required": ["namespace", "parent_subschema_key"]},
            {"mutually_exclusive_sets": {"set1": ["inline"],
                                         "set2": ["namespace", "parent_subschema_key", "optional"]}},
        ],
    }
    field_schema: list[dict[str, Any]] = [
        {"type": {"type": "string", "one_of": list(_VALID_TYPES), "required": True}},
        {"required": {"type": "boolean"}},
        {"reference": {"type": "string"}},
        {"description": {"type": "string", "len_min": 10, "len_max": 500}},
        {"examples": {"type": "array", "elements": {"type": "any"}}},
        {"auto": {"type": "boolean"}},
        {"unique": {"type": "boolean"}},
        {"unique_across_ws": {"type": "boolean"}},
        {"on_delete": {"type": "string", "one_of": ["restrict", "cascade", "null"]}},
        {"default": {"type": "self"}},
        {"abstract": {"type": "boolean"}},
        {"generate_admin_api": {"type": "boolean"}},
        {"immutable": {"type": "boolean"}},
        {"err": {"type": "string"}},
        {"encrypted": {"type": "boolean"}},
        {"referenceable": {"type": "boolean"}},
        {"json_schema": json_metaschema},
        {"transient": {"type": "boolean"}},
        {"deprecation": {"type": "record", "fields": [
            {"message": {"type": "string", "required": True}},
            {"removal_in_version": {"type": "string", "required": True}},
            {"old_default": {"type": "any", "required": False}},
            {"replaced_with": {"type": "array", "required": False, "elements": {
                "type": "record", "required": False, "fields": [
                    {"path": {"type": "array", "len_min": 1, "required": True, "elements": {"type": "string"}}},
                    {"reverse_mapping_function": {"type": "function", "required": False}},
                ]}}},
        ]}},
    ]
    field_schema.extend(validators)
    for entry in field_schema:  # "Most of the above are optional" (metaschema.lua:228-233)
        data = next(iter(entry.values()))
        data["nilable"] = not _truthy(data.get("required", MISSING))

    field_entity_checks = [{"conditional": {
        "if_field": "unique_across_ws", "if_match": {"eq": True},
        "then_field": "unique", "then_match": {"eq": True, "required": True},
    }}]
    fields_array: dict[str, Any] = {"type": "array", "elements": {
        "type": "map", "keys": {"type": "string"},
        "values": {"type": "record", "fields": field_schema, "entity_checks": field_entity_checks},
        "required": True, "len_eq": 1,
    }}
    transformations_array: dict[str, Any] = {"type": "array", "nilable": True, "elements": {
        "type": "record",
        "fields": [
            {"input": {"type": "array", "required": False, "elements": {"type": "string"}}},
            {"needs": {"type": "array", "required": False, "elements": {"type": "string"}}},
            {"on_write": {"type": "function", "required": False}},
            {"on_read": {"type": "function", "required": False}},
        ],
        "entity_checks": [{"at_least_one_of": ["on_write", "on_read"]}],
    }}
    # Recursive attributes (metaschema.lua:308-312): the element/key/value definitions
    # are records of the same field schema (without its entity checks).
    field_schema.append({"elements": {"type": "record", "fields": field_schema}})
    field_schema.append({"keys": {"type": "record", "fields": field_schema}})
    field_schema.append({"values": {"type": "record", "fields": field_schema}})
    field_schema.append({"fields": fields_array})

    conditional_validators: list[dict[str, Any]] = [
        {"required": {"type": "boolean"}},
        {"elements": {"type": "record", "fields": field_schema}},
        {"keys": {"type": "record", "fields": field_schema}},
        {"values": {"type": "record", "fields": field_schema}},
        *validators,
    ]
    string_array = {"type": "array", "elements": {"type": "string"}}
    entity_checkers: list[dict[str, Any]] = [
        {"at_least_one_of": dict(string_array)},
        {"conditional_at_least_one_of": {"type": "record", "fields": [
            {"if_field": {"type": "string"}},
            {"if_match": {"type": "record", "fields": conditional_validators}},
            {"then_at_least_one_of": dict(string_array)},
            {"then_err": {"type": "string"}},
            {"else_match": {"type": "record", "fields": conditional_validators}},
            {"else_then_at_least_one_of": dict(string_array)},
            {"else_then_err": {"type": "string"}},
        ]}},
        {"only_one_of": dict(string_array)},
        {"distinct": dict(string_array)},
        {"conditional": {"type": "record", "fields": [
            {"if_field": {"type": "string"}},
            {"if_match": {"type": "record", "fields": conditional_validators}},
            {"then_field": {"type": "string"}},
            {"then_match": {"type": "record", "fields": conditional_validators}},
            {"then_err": {"type": "string"}},
        ]}},
        {"custom_entity_check": {"type": "record", "fields": [
            {"field_sources": dict(string_array)},
            {"fn": {"type": "function"}},
            {"run_with_missing_fields": {"type": "boolean"}},
            {"run_with_invalid_fields": {"type": "boolean"}},
        ]}},
        {"mutually_required": dict(string_array)},
        {"mutually_exclusive": dict(string_array)},
        {"mutually_exclusive_sets": {"type": "record", "fields": [
            {"set1": dict(string_array)},
            {"set2": dict(string_array)},
        ]}},
    ]
    entity_checks_schema: dict[str, Any] = {"type": "array", "nilable": True, "elements": {
        "type": "record", "fields": entity_checkers,
        "entity_checks": [{"only_one_of": list(_ENTITY_CHECKERS)}],
    }}
    shorthand_fields_array: dict[str, Any] = {"type": "array", "nilable": True, "elements": {
        "type": "map", "keys": {"type": "string"}, "required": True, "len_eq": 1,
    }}
    field_schema.append({"entity_checks": entity_checks_schema})
    field_schema.append({"shorthand_fields": shorthand_fields_array})

    # make_shorthand_field_schema (metaschema.lua:694-720)
    shorthand_field_schema = list(field_schema)
    shorthand_field_schema[0] = {"type": {
        "type": "string", "required": True,
        "one_of": [t for t in _VALID_TYPES if t not in ("record", "foreign", "function")],
    }}
    shorthand_field_schema.append({"func": {"type": "function", "required": True}})
    shorthand_fields_array["elements"]["values"] = {
        "type": "record", "fields": shorthand_field_schema, "entity_checks": field_entity_checks,
    }

    return {
        "name": "metasubschema",
        "fields": [
            {"name": {"type": "string", "required": True}},
            {"fields": fields_array},
            {"entity_checks": entity_checks_schema},
            {"shorthand_fields": shorthand_fields_array},
            {"transformations": transformations_array},
            {"check": {"type": "function", "nilable": True}},
        ],
    }


_META_SUB_SCHEMA: Final = _build_metasubschema()

# metaschema.lua:436-515
_REQUIRED_ATTRIBUTES: Final = {"array": ("elements",), "set": ("elements",), "map": ("keys", "values"),
                                "record": ("fields",), "json": ("json_schema",)}
_ATTRIBUTE_TYPES: Final[dict[str, frozenset[str]]] = {
    "between": frozenset({"integer", "number"}),
    "len_eq": frozenset({"array", "set", "string", "map"}),
    "match": frozenset({"string"}),
    "one_of": frozenset({"string", "number", "integer"}),
    "contains": frozenset({"array", "set"}),
    "is_regex": frozenset({"string"}),
    "timestamp": frozenset({"number", "integer"}),
    "uuid": frozenset({"string"}),
    "unique": frozenset({"string", "number", "integer", "foreign"}),
    "unique_across_ws": frozenset({"string", "number", "integer", "foreign"}),
    "abstract": frozenset({"string", "number", "integer", "record", "array", "set", "map"}),
    "json_schema": frozenset({"json"}),
    "transient": frozenset({"string", "number", "integer", "array", "set", "boolean"}),
}


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _meta_check_fields(schema: Any, path: str, out: list[str]) -> None:
    """check_fields (metaschema.lua:565-618): the MetaSubSchema's `check` function."""
    transformations = _seq(_attr(schema, "transformations"))
    for i, tr in enumerate(transformations or [], 1):
        for attr in ("input", "needs"):
            for j, name in enumerate(_seq(_attr(tr, attr)) or [], 1):
                if isinstance(name, str) and not _has_schema_field(schema, name):
                    out.append(f"{_join(path, f'transformations.{attr}.{i}.{j}')}: invalid field name: {name}")
    fields = _attr(schema, "fields")
    items = _seq(fields)
    if items is None:
        if not isinstance(fields, dict):  # a non-table: Lua would index into it
            out.append(f"{_join(path, 'fields')}: {_META_E['FIELDS_ARRAY']}")
        return
    for item in items:
        if not _is_table(item):
            out.append(f"{_join(path, 'fields')}: {_META_E['FIELDS_ARRAY']}")
            return
        if len(item) == 0:
            out.append(f"{_join(path, 'fields')}: {_META_E['FIELD_EMPTY']}")
            return
        k, field = next(_lua_pairs(item))
        kname = _lua_tostring(k)
        if _is_table(field):
            _meta_check_field(kname, field, schema, _join(path, kname), out)
        else:
            out.append(f"{_join(path, kname)}: {_META_E['TABLE'] % kname}")


def _meta_check_field(k: str, field: Any, parent: Any, path: str, out: list[str]) -> None:
    """check_field (metaschema.lua:621-689)."""
    ftype = _attr(field, "type")
    if ftype is MISSING:
        out.append(f"{path}: {_META_E['TYPE']}")
        return
    req = _REQUIRED_ATTRIBUTES.get(ftype) if isinstance(ftype, str) else None
    if req and not (_truthy(_attr(field, "abstract")) and ftype == "record"):
        for attr in req:
            if not _truthy(_attr(field, attr)):
                out.append(f"{path}: {_META_E['REQUIRED'] % (ftype, attr)}")
    for attr, _ in _lua_pairs(field):
        allowed = _ATTRIBUTE_TYPES.get(attr) if isinstance(attr, str) else None
        if allowed is not None and ftype not in allowed:
            out.append(f"{path}: {_META_E['ATTRIBUTE'] % (_lua_tostring(ftype), attr)}")
    for name in ("elements", "keys", "values"):
        sub = _attr(field, name)
        if _truthy(sub):
            if _is_table(sub):
                _meta_check_field(k, sub, field, _join(path, name), out)
            else:
                out.append(f"{path}: {_META_E['TABLE'] % name}")
    json_schema = _attr(field, "json_schema")
    if ftype == "json" and _is_table(json_schema) and _truthy(_attr(json_schema, "parent_subschema_key")):
        key = _attr(json_schema, "parent_subschema_key")
        siblings = dict(_fields_list(parent)) if _seq(_attr(parent, "fields")) is not None else {}
        if key not in siblings:
            out.append(f"{path}.json_schema.parent_subschema_key: {_META_E['JSON_PARENT_KEY']}")
            return
        if siblings[key].get("type") != "string":
            out.append(f"{path}.json_schema.parent_subschema_key: {_META_E['JSON_PARENT_KEY_TYPE']}")
    if _truthy(_attr(field, "fields")):
        _meta_check_fields(field, path, out)


def _has_schema_field(schema: Any, name: str) -> bool:
    """has_schema_field (metaschema.lua:525-563)."""
    fields = _seq(_attr(schema, "fields")) or []
    hd, dot, tl = name.partition(".")
    for item in fields:
        if isinstance(item, dict) and item:
            k, fdef = next(iter(item.items()))
            if k == hd:
                if not dot:
                    return True
                if isinstance(fdef, dict) and fdef.get("type") == "foreign":
                    return True
                return _has_schema_field(fdef, tl)
    return False


def _render_meta_errors(err: Err, data: Any, path: str) -> list[str]:
    """Flatten a metaschema error table, naming `fields` entries after their field."""
    if isinstance(err, str):
        return [f"{path or '(schema)'}: {err}"]
    if not isinstance(err, dict):
        return [f"{path or '(schema)'}: {err!r}"]
    out: list[str] = []
    for k, sub in err.items():
        if k == "@entity":
            out.extend(f"{_join(path, '@entity')}: {m}" for m in sub)
            continue
        sub_data = _attr(data, k)
        if k in ("fields", "shorthand_fields") and isinstance(sub, dict) and _seq(sub_data) is not None:
            items = _seq(sub_data) or []
            for idx, e in sub.items():
                item = items[idx - 1] if isinstance(idx, int) and 1 <= idx <= len(items) else MISSING
                if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
                    name = next(iter(item))
                    out.extend(_render_meta_errors(e, item[name], _join(path, name)))
                else:
                    out.extend(_render_meta_errors(e, item, _join(path, f"{k}[{idx}]")))
            continue
        out.extend(_render_meta_errors(sub, sub_data, _join(path, _lua_tostring(k))))
    return out


def _flatten(err: Err, path: str) -> list[str]:
    """Kong-style flattened error paths (kong/db/errors.lua flatten_errors: "a.b.1")."""
    if isinstance(err, str):
        return [f"{path}: {err}"]
    out: list[str] = []
    for k, sub in err.items():
        if k == "@entity":
            out.extend(f"{_join(path, '@entity')}: {m}" for m in sub)
        else:
            out.extend(_flatten(sub, _join(path, _lua_tostring(k))))
    return out


def _dedupe(msgs: list[str]) -> list[str]:
    return list(dict.fromkeys(msgs))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def check_plugin_schema(schema: Any, *, require_config: bool = False) -> list[str]:
    """Would Kong 3.9.3 load this external plugin's schema? Returns error strings ([] = yes).

    ``schema`` is the ``Schema`` object of a plugin server's ``-dump`` (``info.Schema`` in
    kong/runloop/plugin_servers/process.lua:76-83), handed as-is to
    kong/db/schema/plugin_loader.lua:16-43 ``load_subschema``, which does, in order:

    1. ``MetaSchema.MetaSubSchema:validate(schema)`` (metaschema.lua:998-1036): the schema's own
       keys (``name`` required; ``fields``, ``entity_checks``, ``shorthand_fields``,
       ``transformations``, ``check``; anything else is an "unknown field"), every field
       definition against the field schema (types, allowed attributes and their types,
       ``description`` 10..500 bytes, ``default`` validated against the field itself, ``one_of``
       elements, ``between`` pairs, nested ``elements``/``keys``/``values``/``fields``...), then
       the ``check`` function (check_fields/check_field: required ``elements``/``keys``/
       ``values``/``fields``, attributes restricted to some types, each ``fields`` entry a
       one-key table). Note: Kong does not restrict ``referenceable`` (nor ``encrypted``) to
       strings; ``referenceable`` only has an effect on strings and on arrays/sets/maps of
       strings (init.lua:995, 1934-1972). ``type = "function"`` passes, as in Kong.
    2. Only if that passed, ``Entity.new_subschema`` (entity.lua:27-31 -> init.lua:2605-2646):
       top-level ``foreign`` fields must reference a core entity, and every top-level field must
       exist in the ``plugins`` entity (entities/plugins.lua) with a compatible type. Kong stops
       at the first such error; all are listed here.

    Kong does *not* require a ``config`` field: the ``plugins`` entity's ``config`` is abstract
    but not required, so a schema without one loads, and every configuration is then refused
    ("abstract field was not specialized"). Pass ``require_config=True`` to report that here.

    Messages are Kong's texts prefixed with a path that names fields after their key, e.g.
    ``config.ttl.type: expected one of: ...`` (Kong's own error table is keyed by array index).
    Step-1 errors of Kong's ``check`` function are keyed by field name only in Kong.
    """
    if not isinstance(schema, dict):
        return [f"(schema): expected a table, got {_lua_type(schema if schema is not None else MISSING)}"]
    try:
        errors = _validate_schema(_META_SUB_SCHEMA, schema, full_check=True)
        # run_self_check (init.lua:1372-1407): every non-nilable field must be present
        # (its error replaces any other on that key), then the MetaSubSchema's check runs.
        absent = [name for name, fdef in _fields_list(_META_SUB_SCHEMA)
                  if name not in schema and not _truthy(fdef.get("nilable", MISSING))]
        for name in absent:
            errors[name] = _E["REQUIRED_FOR_ENTITY_CHECK"]
        msgs = _render_meta_errors(errors, schema, "")
        if not absent:
            _meta_check_fields(schema, "", msgs)
    except KongLuaError as e:
        return [f"(schema): Kong would fail with a Lua error while validating this schema: {e}"]
    msgs = _dedupe(msgs)
    if msgs:
        return msgs

    plugin = schema.get("name")
    init_err = "error initializing schema for plugin: "
    out: list[str] = []
    fields = _fields_list(schema)
    for _name, fdef in fields:  # Schema.new: foreign references (init.lua:2530-2557)
        if fdef.get("type") == "foreign" and fdef.get("reference") not in _CORE_ENTITIES:
            out.append(init_err + _E["SCHEMA_BAD_REFERENCE"] % _lua_tostring(fdef.get("reference", MISSING)))
    for name, fdef in fields:  # Schema.new_subschema (init.lua:2618-2632)
        parent = _PLUGINS_ENTITY_FIELDS.get(name)
        if parent is None:
            out.append(init_err + _E["SUBSCHEMA_BAD_FIELD"] % (plugin, name))
        elif not _compatible_fields(parent, fdef):
            out.append(init_err + _E["SUBSCHEMA_BAD_TYPE"] % (plugin, name))
    if require_config:
        config = dict(fields).get("config")
        if config is None or config.get("type") != "record":
            out.append("config: [harness rule] the schema has no 'config' record; Kong 3.9.3 loads it, "
                       "but then refuses every configuration")
    return out


def _compatible_fields(f1: dict[str, Any], f2: dict[str, Any]) -> bool:
    """compatible_fields (init.lua:1078-1096)."""
    t1, t2 = f1.get("type"), f2.get("type")
    if t1 == "record" and t2 == "json":
        return True
    if t1 != t2:
        return False
    if t1 in ("array", "set"):
        return bool(_attr(f1.get("elements"), "type") == _attr(f2.get("elements"), "type"))
    if t1 == "map":
        return bool(_attr(f1.get("keys"), "type") == _attr(f2.get("keys"), "type")
                    and _attr(f1.get("values"), "type") == _attr(f2.get("values"), "type"))
    return True


def check_descriptions(schema: Any) -> list[str]:
    """Project rule: every field has a ``description`` of 10 to 500 characters.

    Walks every entry of every ``fields`` array, recursively: record subfields, and the
    subfields of records found under ``elements`` / ``keys`` / ``values`` (arrays, sets and
    maps of records, at any depth). The ``elements``/``keys``/``values`` definitions
    themselves are not fields and need no description. The top-level ``config`` entry is
    exempt when it has no description at all, since kong-pdk's ``-dump`` generates that
    wrapper without one (kong_pdk/server.py get_plugin_info); if it has one, it is checked.
    Kong's metaschema separately limits any description given to 10..500 *bytes*.
    """
    out: list[str] = []

    def walk_fields(container: Any, path: str, top: bool) -> None:
        for item in _seq(_attr(container, "fields")) or []:
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


def check_lua_patterns(schema: Any) -> list[str]:
    """Harness extra: does every Lua pattern in the schema compile?

    Kong's metaschema only checks that ``match``/``not_match``/``match_all``/``match_none``/
    ``match_any`` patterns are strings; a malformed pattern makes ``string.match`` raise when
    a value is validated (an Admin API 500). This reports those, and the patterns this
    harness cannot translate (``%b``).
    """
    out: list[str] = []

    def try_compile(pat: Any, path: str) -> None:
        if not isinstance(pat, str):
            return
        try:
            _compile_lua_pattern(pat)
        except (LuaPatternError, UnsupportedByHarness) as e:
            out.append(f"{path}: {pat!r}: {e}")

    def walk(fdef: Any, path: str) -> None:
        if not isinstance(fdef, dict):
            return
        for attr in ("match", "not_match"):
            try_compile(fdef.get(attr), f"{path}.{attr}")
        for attr in ("match_all", "match_none"):
            for i, item in enumerate(_seq(fdef.get(attr, MISSING)) or [], 1):
                try_compile(_attr(item, "pattern"), f"{path}.{attr}.{i}.pattern")
        for i, pat in enumerate(_seq(_attr(fdef.get("match_any", MISSING), "patterns")) or [], 1):
            try_compile(pat, f"{path}.match_any.patterns.{i}")
        for attr in ("elements", "keys", "values"):
            walk(fdef.get(attr), _join(path, attr))
        for item in _seq(fdef.get("fields", MISSING)) or []:
            if isinstance(item, dict) and len(item) == 1:
                name, sub = next(iter(item.items()))
                walk(sub, _join(path, str(name)))

    for item in _seq(_attr(schema, "fields")) or []:
        if isinstance(item, dict) and len(item) == 1:
            name, sub = next(iter(item.items()))
            walk(sub, str(name))
    return out


def lint_plugin_schema(schema: Any) -> list[str]:
    """Harness-only rules that Kong 3.9.3 does *not* enforce, for mistakes it would let through.

    * every Lua pattern compiles (:func:`check_lua_patterns`);
    * every ``one_of`` / ``not_one_of`` value has the field's type: the metaschema types their
      elements as ``any`` (metaschema.lua:61-62), so ``{type = "integer", one_of = {"1"}}``
      loads, and that value can never be chosen;
    * ``referenceable`` is only set on string definitions (including ``elements``/``values``
      definitions): Kong accepts it anywhere but only honours it on strings (init.lua:995,
      1934-1972), so on an array it does nothing (put it on the ``elements``).
    """
    out = check_lua_patterns(schema)

    def walk(fdef: Any, path: str) -> None:
        if not isinstance(fdef, dict):
            return
        ftype = fdef.get("type")
        for attr in ("one_of", "not_one_of"):
            for i, v in enumerate(_seq(fdef.get(attr, MISSING)) or [], 1):
                if isinstance(ftype, str) and ftype in ("string", "number", "integer", "boolean"):
                    probe = {"type": ftype, "len_min": 0} if ftype == "string" else {"type": ftype}
                    ok, _ = _validate_field(probe, v)
                    if not ok:
                        out.append(f"{path}.{attr}.{i}: {json.dumps(v)} is not of the field's type '{ftype}'")
        if _truthy(fdef.get("referenceable", MISSING)) and ftype != "string":
            out.append(f"{path}.referenceable: has no effect on a field of type '{ftype}' "
                       "(Kong honours it on strings, e.g. on the elements of an array)")
        for attr in ("elements", "keys", "values"):
            walk(fdef.get(attr), _join(path, attr))
        for item in _seq(fdef.get("fields", MISSING)) or []:
            if isinstance(item, dict) and len(item) == 1:
                name, sub = next(iter(item.items()))
                walk(sub, _join(path, str(name)))

    for item in _seq(_attr(schema, "fields")) or []:
        if isinstance(item, dict) and len(item) == 1:
            name, sub = next(iter(item.items()))
            walk(sub, str(name))
    return out


def check_plugin_dump(dump: Any, *, require_config: bool = True) -> list[str]:
    """The whole loading path of an external plugin: :func:`load_external_plugin_info` on the
    ``-dump`` output (JSON text or decoded), then :func:`check_plugin_schema` on its Schema."""
    info, errors = load_external_plugin_info(dump)
    if info is not None and isinstance(info["schema"], dict):
        errors = errors + check_plugin_schema(info["schema"], require_config=require_config)
    return errors


def _version_ok(v: Any) -> bool:
    """valid_version (dao/plugins.lua:146-156) with the non-strict `version` library parser."""
    if not isinstance(v, str):
        return False
    m = re.search(r"[0-9.]+", v)
    if m is None:
        return False  # v:match() gives nil and split(nil) raises
    parts = m.group(0).split(".")
    # split(str, "%.") drops an empty first part and an empty last part only
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    return all(p != "" for p in parts) and len(parts) <= 3  # tonumber("") fails; vparsed[4] must be nil


def load_external_plugin_info(dump: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """How Kong reads a plugin server's ``-dump`` output, and the checks its plugin loader makes.

    kong/runloop/plugin_servers/process.lua:46-84: the output is JSON-decoded, must be a
    table; the plugin is ``(dump.Plugins or dump)[1]`` (kong-pdk prints a one-element list);
    Name/Priority/Version/Schema/Phases are taken from it. plugin_servers/init.lua:42-58: the
    plugin is only found when ``Priority`` is set. dao/plugins.lua:135-197: PRIORITY must be
    a finite integer and VERSION must parse as at most three dot-separated numbers.
    Returns ``(info, errors)``; ``info["schema"]`` is what :func:`check_plugin_schema` takes.
    """
    if isinstance(dump, (str, bytes)):
        try:
            dump = json.loads(dump)
        except ValueError as e:
            return None, [f"failed decoding plugin info: {e}"]
    if not _is_table(dump):
        return None, ["not a plugin info table"]
    plugins = _attr(dump, "Plugins")
    entry = _attr(plugins if _truthy(plugins) else dump, 1)
    if not isinstance(entry, dict):
        return None, ["no plugin entry in the plugin info table"]
    info = {
        "name": entry.get("Name"),
        "PRIORITY": entry.get("Priority", MISSING),
        "VERSION": entry.get("Version"),
        "schema": entry.get("Schema"),
        "phases": entry.get("Phases"),
        "protocol": _attr(dump, "Protocol") if _truthy(_attr(dump, "Protocol")) else "MsgPack:1",
    }
    errors: list[str] = []
    name = info["name"]
    prio = info["PRIORITY"]
    if not _truthy(prio):
        errors.append(f"no configuration schema found for plugin: {name} (no Priority: 'no plugin found')")
    elif not (_is_number(prio) and math.isfinite(prio) and prio == math.floor(prio)):
        errors.append(f'Plugin "{name}" cannot be loaded because its PRIORITY field is not a valid integer number, '
                      f'got: "{_lua_tostring(prio)}".')
    if not _version_ok(info["VERSION"]):
        errors.append(f'Plugin "{name}" cannot be loaded because its VERSION field does not follow the "x.y.z" '
                      f'format, got: "{_lua_tostring(info["VERSION"])}".')
    if _seq(info["phases"]) is None:
        errors.append("Phases must be an array (plugin.lua build_phases iterates it)")
    if not isinstance(info["schema"], dict):
        errors.append("Schema must be a table")
    return info, errors


def _make_records_required(field: dict[str, Any]) -> None:
    """make_records_required (entity.lua:15-24), applied to a plugin schema when it is loaded."""
    if "required" not in field:
        field["required"] = True
    for item in _seq(field.get("fields", MISSING)) or []:
        if isinstance(item, dict) and item:
            sub = next(iter(item.values()))
            if isinstance(sub, dict) and sub.get("type") == "record":
                _make_records_required(sub)


def prepare_config_field(config_field: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` field as Kong holds it once the plugin is loaded.

    Entity.new_subschema (entity.lua:27-31) runs make_records_required over the plugin
    schema: ``config`` and every record reachable through ``fields`` that does not say
    ``required`` becomes ``required = true`` (records inside arrays/maps are not touched).
    That is what makes a missing record expand to its defaults. Idempotent; never mutates
    its argument.
    """
    if not isinstance(config_field, dict) or config_field.get("type") != "record":
        raise ValueError("config_field must be a record field definition: {'type': 'record', 'fields': [...]}")
    field = copy.deepcopy(config_field)
    _make_records_required(field)
    return field


def apply_defaults(config_field: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """The plugin ``config`` as Kong stores it on insert (``process_auto_fields(..., "insert")``).

    kong/db/dao/init.lua:444-489 check_insert -> init.lua:1788-2026 process_auto_fields ->
    1645-1690 adjust_field_for_context -> 1037-1073 handle_missing_field, on the field
    prepared by :func:`prepare_config_field` (done here; passing a prepared field is fine):

    * ``config`` None means "no config given" (Lua nil): every default is filled in.
      Inside the config, ``None`` is JSON null (ngx.null) and is kept as null.
    * A missing field gets a deep copy of its ``default`` (a ``"default": null`` gives null).
      Without a default: a non-required field becomes null (None); a required record becomes
      a record of its subfields' defaults (recursively); any other required field stays
      absent (validation then says "required field missing").
    * A present record is processed recursively; a record given as ``false`` is replaced by
      its defaults when required (Lua's ``value or handle_missing_field``).
    * A record that is *not* required and is missing gets its ``default`` as-is (its nested
      defaults are not expanded) or null.
    * Arrays/sets/maps: records inside them get their defaults; sets are deduplicated in
      order (with Lua equality: 1 == 1.0, true ~= 1); an empty ``{}`` given for an array or
      set becomes ``[]``.
    * ``auto`` fields: ``uuid`` fields get a UUID, other ``auto`` strings a random
      32-character string, when missing.
    * Unknown keys are kept (validation reports them). The input is not mutated.
    """
    field = prepare_config_field(config_field)
    value: Any = MISSING if config is None else config
    out = _adjust_field_for_context(field, value, "insert", None)
    if out is MISSING or out is None:
        return {}  # only when config is declared `required: false` (then Kong stores null)
    if not isinstance(out, dict):
        raise ValueError(f"config must be a table, got {_lua_type(out)}")
    return out


def validate_config(config_field: dict[str, Any], config: Any) -> list[str]:
    """Kong's validation of a plugin ``config`` value (``Schema:validate_field`` on the record).

    The plugins entity validates its ``config`` field with init.lua:874-1030
    ``validate_field``; a record value is first processed with ``process_auto_fields``
    ("insert", so undefaulted input validates like defaulted input) and then validated with
    ``Schema:validate`` (init.lua:2106-2145): per-field types and validators, unknown keys
    ("unknown field"), ``required`` (null or absent), then the record's ``entity_checks``.

    Returns Kong's messages with flattened paths as kong/db/errors.lua builds them, e.g.
    ``config.realm: expected a string``, ``config.scopes.2: length must be at least 1``,
    ``config.@entity: at least one of these fields must be non-empty: 'a', 'b'``.
    Map entries report only the first failing key/value, without the key, as Kong does.

    Supported: every type but ``json``; every validator (``custom_validator`` needs a Python
    callable, which JSON cannot provide); every entity checker but ``custom_entity_check``.
    Lua patterns use :func:`lua_match` (``%b`` unsupported); ``is_regex`` uses Python's ``re``
    instead of PCRE; a ``foreign`` value is checked for its ``id`` only. What cannot be
    evaluated raises :class:`UnsupportedByHarness`; what would crash Kong raises
    :class:`KongLuaError`.
    """
    field = prepare_config_field(config_field)
    if config is MISSING:
        config = None
    ok, err = _validate_field(field, config)
    return [] if ok else _dedupe(_flatten(err, "config"))


def _cjson_number(v: float | int) -> int | float:
    """A number as the plugin server decodes it after cjson.safe encodes it with 16 digits.

    globalpatches.lua:21 sets cjson.safe's precision to CJSON_MAX_PRECISION = 16; LuaJIT
    numbers are doubles, printed with "%.16g".
    """
    f = float(v)
    if not math.isfinite(f):
        raise ValueError("Cannot serialise number: must not be NaN or Infinity")
    decoded = json.loads(format(f, ".16g"))
    return decoded  # type: ignore[no-any-return]


def _cjson_roundtrip(v: Any) -> Any:
    if isinstance(v, dict):
        return {_lua_tostring(k) if not isinstance(k, str) else k: _cjson_roundtrip(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_cjson_roundtrip(x) for x in v]
    if _is_number(v):
        return _cjson_number(v)
    return v


def _empty_maps_as_objects(field: dict[str, Any], value: Any) -> Any:
    """An empty table with no array_mt encodes as ``{}``: empty maps/records given as ``[]``."""
    ftype = field.get("type")
    if ftype in ("map", "record") and value == []:
        return {}
    if ftype == "record" and isinstance(value, dict):
        by_name = _field_map(field)
        return {k: (_empty_maps_as_objects(by_name[k], v) if k in by_name else v) for k, v in value.items()}
    sub = field.get("elements") if ftype in ("array", "set") else field.get("values") if ftype == "map" else None
    if isinstance(sub, dict):
        if isinstance(value, list):
            return [_empty_maps_as_objects(sub, x) for x in value]
        if isinstance(value, dict):
            return {k: _empty_maps_as_objects(sub, x) for k, x in value.items()}
    return value


def kong_config_for_instance(config_field: dict[str, Any], config: dict[str, Any] | None, plugin_id: str,
                             seq: int, route_id: str | None = None, service_id: str | None = None,
                             consumer_id: str | None = None, *, plugin_name: str = "kcauth",
                             ws_id: str = DEFAULT_WORKSPACE_ID, instance_name: str | None = None,
                             resolve_reference: Callable[[str], Any] | None = None,
                             validate: bool = True) -> dict[str, Any]:
    """The table Kong JSON-encodes into ``plugin.StartInstance``'s ``Config``, as the plugin decodes it.

    1. The config is stored as on insert (:func:`apply_defaults`; ``validate`` raises
       ValueError if :func:`validate_config` objects, as the Admin API would).
    2. Kong reads plugins back through ``DAO:row_to_entity`` (dao/init.lua:1447-1490;
       plugins_iterator.lua:519 ``kong.db.plugins:each(page_size, GLOBAL_QUERY_OPTS)``, no
       ``nulls`` option), i.e. ``process_auto_fields(row, "select", nulls=false)``
       (init.lua:1788-2026). Consequences: **fields that are null are dropped, not sent as
       null** (a JSON ``null`` never reaches the plugin); fields missing from the stored row
       get their defaults; a required field stored as null gets its default; integers are
       floored; strings equal to "" are dropped unless the field allows them via
       ``len_min = 0``; keys the schema does not know are dropped. When
       ``resolve_reference`` is given (a data plane or traditional node resolves vault
       references), referenceable strings (and arrays/sets/maps of referenceable strings)
       holding ``{vault://...}`` are replaced by ``resolve_reference(ref)`` (``""`` when it
       returns nothing) and the original references are listed under ``"$refs"``; without
       it, references are left as they are.
    3. plugins_iterator.lua:157-191 ``get_plugin_config`` then adds ``route_id``,
       ``service_id``, ``consumer_id`` (only when set: nil keys are absent in cjson's output),
       ``plugin_instance_name`` (only when set), ``__plugin_id``, ``__ws_id``, ``__key__``
       (``DAO:cache_key`` fast path, dao/init.lua:1540-1560:
       ``plugins:<name>:<route>:<service>:<consumer>::<ws_id>``) and ``__seq__``.
    4. rpc/mp_rpc.lua:224-228 encodes it with cjson.safe: numbers go through ``"%.16g"``
       (so ``2.0`` arrives as ``2``), empty arrays/sets stay ``[]``, empty maps ``{}``.
    """
    field = prepare_config_field(config_field)
    stored = apply_defaults(field, config)
    if validate:
        problems = validate_config(field, stored)
        if problems:
            raise ValueError("; ".join(problems))
    read = _adjust_field_for_context(field, stored, "select", resolve_reference)
    cfg: dict[str, Any] = read if isinstance(read, dict) else {}  # `plugin.config or {}`
    cfg = _empty_maps_as_objects(field, cfg)
    if route_id is not None:
        cfg["route_id"] = route_id
    if service_id is not None:
        cfg["service_id"] = service_id
    if consumer_id is not None:
        cfg["consumer_id"] = consumer_id
    if instance_name is not None:
        cfg["plugin_instance_name"] = instance_name
    cfg["__plugin_id"] = plugin_id
    cfg["__ws_id"] = ws_id
    cfg["__key__"] = "plugins:%s:%s:%s:%s::%s" % (plugin_name, route_id or "", service_id or "",
                                                   consumer_id or "", ws_id or "")
    cfg["__seq__"] = seq
    return _cjson_roundtrip(cfg)  # type: ignore[no-any-return]


def start_instance_request(plugin_name: str, instance_config: dict[str, Any]) -> dict[str, Any]:
    """The argument of the ``plugin.StartInstance`` call (rpc/mp_rpc.lua:224-228)."""
    return {"Name": plugin_name, "Config": json.dumps(_cjson_roundtrip(instance_config), separators=(",", ":"))}
