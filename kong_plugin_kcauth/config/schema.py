"""Config machinery: one dataclass definition (settings.py), three views of it.

A config field is a dataclass field whose metadata carries its description and its Kong schema
attributes (`setting`). From that one definition:
- `kong_fields` emits the schema Kong validates (Kong's schema language,
  kong/db/schema/metaschema.lua), dumped by `kcauth-pluginserver --dump`;
- `load` checks a config the way Kong's schema does (kong/db/schema/init.lua `validate_field`:
  type, then the validators in Kong's order, with Kong's messages and flattened paths, such as
  `config.leeway: value should be between 0 and 300`) and builds the typed, frozen object, so the
  plugin never runs with a config its own schema forbids, whoever sent it;
- `reference_markdown` renders the config reference of docs/configuration.md.

Vault references (`{vault://...}` in a `referenceable` field): Kong skips that field's validators
and every entity check naming it (kong/db/schema/init.lua `validate_field`, `run_entity_check`),
resolves it for the plugin (an empty string when it cannot) and lists it under the record's
`$refs`. `load` does the same, and checks what the reference resolved to instead: a value Kong
would have refused (or none) is not an error that stops the instance but an `unusable` field,
which the parts that need it answer for (schema `Unusable`; settings.py says what each does).

Only the attributes the definition uses are implemented; an unknown one fails at import.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, Union, cast

from . import luapattern

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A config the plugin cannot run with; the message names the field."""


# Kong's attributes that validate (kong/db/schema/init.lua Schema.validators_order), and those
# that only describe.
_VALIDATORS = ("eq", "one_of", "gt", "between", "len_min", "len_max", "match_none", "match")
_DESCRIPTIVE = {"required", "referenceable", "encrypted", "elements", "keys", "values", "err"}


Unusable = tuple[tuple[str, str], ...]  # (field name, why: a message naming the field and its reference)


def unusable_fields() -> Any:
    """The `unusable` field of a config record: not Kong's, filled by `load`."""
    return dataclasses.field(default=(), metadata={"internal": True}, compare=True)


def setting(description: str, default: Any = dataclasses.MISSING, **kong: Any) -> Any:
    """A config field: its description and Kong attributes ride in the dataclass metadata."""
    unknown = set(kong) - set(_VALIDATORS) - _DESCRIPTIVE
    if unknown:
        raise TypeError(f"unsupported Kong attributes: {sorted(unknown)}")
    meta = {"description": description, "kong": kong}
    if isinstance(default, (list, dict)):
        frozen = tuple(default) if isinstance(default, list) else dict(default)
        return dataclasses.field(default_factory=lambda: frozen, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- Kong's schema ---------------------------------------------------------------------------

def kong_fields(cls: type) -> list[dict[str, Any]]:
    """A config record's fields in Kong's schema language."""
    hints = typing.get_type_hints(cls)
    return [{f.name: kong_field(f, hints[f.name])} for f in _kong_fields_of(cls)]


def _kong_fields_of(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def kong_record(cls: type) -> dict[str, Any]:
    """A config dataclass as a Kong record field: its fields and its entity checks."""
    record: dict[str, Any] = {"type": "record", "fields": kong_fields(cls)}
    checks = list(getattr(cls, "ENTITY_CHECKS", ()))
    if checks:
        record["entity_checks"] = checks
    return record


def kong_field(f: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    spec = _kong_type(hint)
    attrs = dict(f.metadata["kong"])
    for part in ("elements", "keys", "values"):
        if part in attrs:
            spec[part] = {**spec[part], **attrs.pop(part)}
    spec.update(attrs)
    spec["description"] = f.metadata["description"]
    default = _default_of(f)
    if spec["type"] == "record":
        spec["required"] = True  # Kong fills a missing record with its fields' defaults
    elif default is not None:
        # Required with a default, as Kong's bundled plugins declare them: Kong fills the
        # default when the field is absent and refuses an explicit null, so the rules between
        # fields (entity checks) see the very values the plugin will get.
        spec["default"] = list(default) if isinstance(default, tuple) else default
        spec["required"] = True
    elif not attrs.get("required"):
        spec["required"] = False
    return spec


def _kong_type(hint: Any) -> dict[str, Any]:
    base = _strip_optional(hint)
    origin = typing.get_origin(base)
    scalar = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if base in scalar:
        return {"type": scalar[base]}
    if origin is tuple:
        element = typing.get_args(base)[0]
        if dataclasses.is_dataclass(element):
            return {"type": "array", "elements": kong_record(cast(type, element))}
        return {"type": "array", "elements": {"type": "string"}}
    if origin is dict:
        return {"type": "map", "keys": {"type": "string"}, "values": {"type": "string"}}
    if dataclasses.is_dataclass(base):
        return kong_record(cast(type, base))
    raise TypeError(f"no Kong type for {hint}")  # pragma: no cover


# --- Kong's validation, then the typed object -------------------------------------------------

def load(cls: type[T], raw: Any, path: str = "config") -> T:
    """The typed config from Kong's JSON record (absent or null fields take their default),
    refused with Kong's own message when Kong's schema would refuse it. A referenceable field
    that held a vault reference is checked as Kong could not: see the module's docstring."""
    return _load(cls, raw, path)[0]


def _load(cls: type[T], raw: Any, path: str) -> tuple[T, set[str]]:
    """`load`, and the fields (dotted, under this record) that held a vault reference."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a record")
    hints = typing.get_type_hints(cls)
    given = raw.get("$refs")
    refs: dict[str, Any] = given if isinstance(given, dict) else {}
    values: dict[str, Any] = {}
    referenced: set[str] = set()
    unusable: list[tuple[str, str]] = []
    for f in _kong_fields_of(cls):
        name = f"{path}.{f.name}"
        spec = kong_field(f, hints[f.name])
        value = raw.get(f.name)
        if value is None:
            # Absent: the default (Kong sends no nulls and fills defaults at StartInstance); an
            # explicit null where Kong's schema requires a value is what Kong would refuse.
            if spec["type"] == "record":
                value = {}
            elif spec.get("required") and (f.name in raw or "default" not in spec):
                raise ConfigError(f"{name}: required field missing")
            else:
                continue
        if spec["type"] == "record":
            values[f.name], inner = _load(_strip_optional(hints[f.name]), value, name)
            referenced.update(f"{f.name}.{n}" for n in inner)
            continue
        if spec["type"] == "array" and spec["elements"]["type"] == "record":
            problem = field_problem(spec, value)  # the array's own rules (len_min); its records below
            if problem is not None:
                raise ConfigError(f"{name}{problem[0]}: {problem[1]}")
            values[f.name] = _load_records(typing.get_args(_strip_optional(hints[f.name]))[0], value, name)
            continue
        if spec.get("referenceable") and isinstance(value, str) and (f.name in refs or is_reference(value)):
            # Kong skipped this field's validators: what the reference resolved to is checked
            # here, and one Kong would have refused leaves the field unusable, not the instance.
            referenced.add(f.name)
            why = reference_problem(spec, value, refs.get(f.name))
            if why is not None:
                unusable.append((f.name, f"{name}: {why}"))
                value = ""
            values[f.name] = value
            continue
        problem = field_problem(spec, value)
        if problem is not None:
            where, message = problem
            raise ConfigError(f"{name}{where}: {message}")
        values[f.name] = _COERCE.get(spec["type"], lambda v: v)(value)
    if any(f.name == "unusable" for f in dataclasses.fields(cls)):
        values["unusable"] = tuple(unusable)
    config = cls(**values)
    for check in getattr(cls, "ENTITY_CHECKS", ()):
        if referenced & set(checked_fields(check)):
            continue  # "Don't run if any of the values is a reference in a referenceable field"
        problems = entity_problems(kong_fields(cls), dataclasses.asdict(config), check)
        if problems:
            raise ConfigError("; ".join(f"{path}.{where}: {message}" for where, message in problems))
    return config, referenced


def reference_problem(spec: dict[str, Any], value: str, reference: object) -> str | None:
    """Why the value a vault reference resolved to cannot be used (None: it can). Never the
    value: it is a secret."""
    named = f"the vault reference {reference}" if isinstance(reference, str) else "the vault reference"
    if value == "" or is_reference(value):
        return f"{named} could not be resolved (Kong sent no value)"
    problem = field_problem({k: v for k, v in spec.items() if k not in ("referenceable", "err")}, value)
    if problem is None:
        return None
    message = problem[1] if not problem[1].startswith("invalid value") else "it does not have the expected form"
    return f"{named} resolved to a value that cannot be used: {spec.get('err', message)}"


def _load_records(cls: type[T], raw: Any, path: str) -> tuple[T, ...]:
    """An array of records, each element required and loaded as a record of its own (Kong's
    validate_elements: errors under the element's 1-based index)."""
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected an array")
    out = []
    for i, element in enumerate(raw, 1):
        if element is None or element is False:  # adjust_field_for_context: `value or ...`, false too
            raise ConfigError(f"{path}.{i}: required field missing")
        out.append(_load(cls, element, f"{path}.{i}")[0])
    return tuple(out)


_COERCE: dict[str, Callable[[Any], Any]] = {"array": tuple, "number": float, "integer": int, "map": dict}


def field_problem(spec: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """Kong's verdict on a value (null only inside arrays and maps, where Kong requires one):
    None, or (path suffix, message)."""
    if value is None:
        return "", "required field missing"
    kind = spec["type"]
    type_error = _TYPE_ERRORS[kind](value)
    if type_error:
        return "", type_error
    if kind == "array" and spec["elements"].get("type") != "record":  # records: checked as they load
        for i, element in enumerate(value, 1):
            problem = field_problem({"type": "string", **spec["elements"]}, element)
            if problem is not None:
                return f".{i}{problem[0]}", problem[1]
    elif kind == "map":
        for key, item in value.items():
            for part, v in (("keys", key), ("values", item)):
                problem = field_problem({"type": "string", **spec[part]}, v)
                if problem is not None:
                    return problem
    if kind == "string":
        if "len_min" not in spec:
            spec = {**spec, "len_min": 1}  # Kong refuses empty strings unless told otherwise
    for attr in _VALIDATORS:
        if attr in spec:
            message = _VALIDATE[attr](value, spec[attr])
            if message is not None:
                return "", spec.get("err", message)  # `err`: a field's own message (no secret echoed)
    return None


# --- Kong's entity checks (kong/db/schema/init.lua Schema.entity_checkers) ----------------------
#
# Rules between fields, declared in the config record's `entity_checks` (as kong/plugins/
# ldap-auth/schema.lua does), which the Admin API, `POST /config` and decK enforce. Only the
# checkers the definition uses are implemented, with Kong's semantics and messages.

def conditional(if_field: str, if_match: dict[str, Any], then_field: str, then_match: dict[str, Any],
                then_err: str | None = None) -> dict[str, Any]:
    """When `if_field` matches `if_match`, `then_field` must match `then_match`."""
    arg: dict[str, Any] = {"if_field": if_field, "if_match": if_match, "then_field": then_field,
                           "then_match": then_match}
    if then_err:
        arg["then_err"] = then_err
    return {"conditional": arg}


def conditional_at_least_one_of(if_field: str, if_match: dict[str, Any], then_at_least_one_of: list[str],
                                then_err: str) -> dict[str, Any]:
    """When `if_field` matches `if_match`, one of `then_at_least_one_of` must be non-empty."""
    return {"conditional_at_least_one_of": {"if_field": if_field, "if_match": if_match,
                                            "then_at_least_one_of": then_at_least_one_of, "then_err": then_err}}


def checked_fields(check: dict[str, Any]) -> list[str]:
    """The fields an entity check reads (its `field_sources`)."""
    (_, arg), = check.items()
    names = [arg["if_field"], *arg.get("then_at_least_one_of", [])]
    return names + ([arg["then_field"]] if "then_field" in arg else [])


def entity_problems(fields: list[dict[str, Any]], entity: dict[str, Any],
                    check: dict[str, Any]) -> list[tuple[str, str]]:
    """Kong's verdict on one entity check: its errors as (path under the record, message), as
    Kong's Admin API lists them (a field's error, then the record's `@entity` one). Values are
    Kong's after defaults (absent = null); a check naming a field that held a vault reference is
    not run (`_load`), as Kong does not run it."""
    (kind, arg), = check.items()
    if_spec, if_value = _spec_at(fields, arg["if_field"]), _value_at(entity, arg["if_field"])
    if _mismatch({**if_spec, **arg["if_match"]}, if_value) is not None:
        return []
    if kind == "conditional_at_least_one_of":
        names = arg["then_at_least_one_of"]
        if any(_value_at(entity, name) not in (None, "", (), [], {}) for name in names):
            return []
        return [("@entity", arg["then_err"].replace("%s", ", ".join(f"'{n}'" for n in names)))]
    then_field, then_match = arg["then_field"], arg["then_match"]
    then_value = _value_at(entity, then_field)
    conditional_error = f"failed conditional validation given value of field '{arg['if_field']}'"
    if then_match.get("required") and then_value is None:
        return [(then_field, "required field missing"), ("@entity", conditional_error)]
    message = _mismatch({**_spec_at(fields, then_field), **then_match}, then_value)
    if message is None:
        return []
    return [(then_field, message), ("@entity", arg.get("then_err", conditional_error))]


def _mismatch(spec: dict[str, Any], value: Any) -> str | None:
    """Schema.validate_field on a value that may be null."""
    if value is None:
        if "eq" in spec:
            return f"value must be {_lua(spec['eq'])}"
        return "required field missing" if spec.get("required") else None
    problem = field_problem(spec, list(value) if isinstance(value, tuple) else value)
    return None if problem is None else problem[1]


def _spec_at(fields: list[dict[str, Any]], path: str) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    spec = next(f[head] for f in fields if head in f)
    return _spec_at(spec["fields"], rest) if rest else spec


def _value_at(entity: dict[str, Any], path: str) -> Any:
    node: Any = entity
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    """Lua's `type(v) == "number"`: infinities and NaN included, as Kong's schema takes them;
    `between` refuses the infinities and a `gt` the NaN (cjson and LuaJIT's tonumber make both)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPE_ERRORS: dict[str, Callable[[Any], str | None]] = {
    "string": lambda v: None if isinstance(v, str) else "expected a string",
    "integer": lambda v: None if _is_int(v) or (isinstance(v, float) and math.isfinite(v) and v == int(v))
    else "expected an integer",
    "number": lambda v: None if _is_num(v) else "expected a number",
    "boolean": lambda v: None if isinstance(v, bool) else "expected a boolean",
    "array": lambda v: None if isinstance(v, list) else "expected an array",
    "map": lambda v: None if isinstance(v, dict) else "expected a map",
}


def is_reference(value: str) -> bool:
    """kong/pdk/vault.lua is_reference."""
    return value.startswith("{vault://") and value.endswith("}")


def _d(n: Any) -> str:
    """Lua's string.format("%d", n) in LuaJIT: truncated (Kong's `between` message)."""
    return str(int(n))


def _lua(value: Any) -> str:
    """Lua's tostring of a config value."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _tostring(n: Any) -> str:
    """LuaJIT's tostring of a number (Kong's `gt` message): "%.14g"."""
    return format(float(n), ".14g")


_VALIDATE: dict[str, Callable[[Any, Any], str | None]] = {
    "eq": lambda v, wanted: None if v == wanted and type(v) is type(wanted) else f"value must be {_lua(wanted)}",
    "one_of": lambda v, options: None if v in options else "expected one of: " + ", ".join(options),
    "gt": lambda v, limit: None if v > limit else f"value must be greater than {_tostring(limit)}",
    "between": lambda v, lim: None if not (v < lim[0] or v > lim[1])  # Lua's test: NaN passes
    else f"value should be between {_d(lim[0])} and {_d(lim[1])}",
    "len_min": lambda v, n: None if len(v) >= n else f"length must be at least {n}",
    "len_max": lambda v, n: None if len(v) <= n else f"length must be at most {n}",
    "match_none": lambda v, rules: next((r["err"] for r in rules if luapattern.find(v, r["pattern"])), None),
    "match": lambda v, pattern: None if luapattern.find(v, pattern) else f"invalid value: {v}",
}


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def canonical(obj: Any) -> str:
    """A stable JSON text of a config object (caches are scoped by its digest)."""
    return json.dumps(dataclasses.asdict(obj), sort_keys=True, separators=(",", ":"))


# --- the documented reference --------------------------------------------------------------------

def reference_markdown(fields: list[dict[str, Any]]) -> str:
    """The config reference table of `kong_fields(Config)`."""
    lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, spec in _flat_fields(fields):
        kind = spec["type"]
        if kind == "array" and spec["elements"]["type"] == "record":
            lines.append(f"| `{name}` | array of records | none | {spec['description']} |")
            continue
        if kind == "array":
            kind = f"array of {spec['elements']['type']}"
            if "one_of" in spec["elements"]:
                kind += " (" + ", ".join(spec["elements"]["one_of"]) + ")"
        elif kind == "map":
            kind = "map of string to string"
        elif "one_of" in spec:
            kind += " (" + ", ".join(spec["one_of"]) + ")"
        if "between" in spec:
            kind += " {}..{}".format(*spec["between"])
        if kind == "record":
            lines.append(f"| `{name}` | record | | {spec['description']} |")
            continue
        if spec.get("referenceable"):
            kind += ", referenceable"
        default = f"`{json.dumps(spec['default'])}`" if "default" in spec else (
            "required" if spec.get("required") else "none")
        lines.append(f"| `{name}` | {kind} | {default} | {spec['description'].replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def _flat_fields(fields: list[dict[str, Any]], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for entry in fields:
        (name, spec), = entry.items()
        out.append((prefix + name, spec))
        if spec["type"] == "record":
            out.extend(_flat_fields(spec["fields"], prefix + name + "."))
        elif spec["type"] == "array" and spec["elements"]["type"] == "record":
            out.extend(_flat_fields(spec["elements"]["fields"], prefix + name + "[]."))
    return out
