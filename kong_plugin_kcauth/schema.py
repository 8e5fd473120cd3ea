"""Config machinery: one dataclass definition (config.py), three views of it.

A config field is a dataclass field whose metadata carries its description and its Kong schema
attributes (`setting`). From that one definition:
- `kong_fields` emits the schema Kong validates (Kong's schema language,
  kong/db/schema/metaschema.lua), dumped by `kcauth-pluginserver --dump`;
- `load` checks a config the way Kong's schema does (kong/db/schema/init.lua `validate_field`:
  type, then the validators in Kong's order, with Kong's messages and flattened paths, such as
  `config.leeway: value should be between 0 and 300`) and builds the typed, frozen object, so the
  plugin never runs with a config its own schema forbids, whoever sent it;
- `reference_markdown` renders the README's config reference.

Only the attributes the definition uses are implemented; an unknown one fails at import.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union

from . import luapattern

T = TypeVar("T")


class ConfigError(ValueError):
    """A config the plugin cannot run with; the message names the field."""


# Kong's attributes that validate (kong/db/schema/init.lua Schema.validators_order), and those
# that only describe.
_VALIDATORS = ("one_of", "gt", "between", "len_min", "len_max", "match_none", "match")
_DESCRIPTIVE = {"required", "referenceable", "encrypted", "elements", "keys", "values"}


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
    out: list[dict[str, Any]] = []
    for f in dataclasses.fields(cls):
        out.append({f.name: kong_field(f, hints[f.name])})
    return out


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
        spec["default"] = list(default) if isinstance(default, tuple) else default
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
        return {"type": "array", "elements": {"type": "string"}}
    if origin is dict:
        return {"type": "map", "keys": {"type": "string"}, "values": {"type": "string"}}
    if dataclasses.is_dataclass(base):
        return {"type": "record", "fields": kong_fields(base)}  # type: ignore[arg-type]
    raise TypeError(f"no Kong type for {hint}")  # pragma: no cover


# --- Kong's validation, then the typed object -------------------------------------------------

def load(cls: type[T], raw: Any, path: str = "config") -> T:
    """The typed config from Kong's JSON record (absent or null fields take their default),
    refused with Kong's own message when Kong's schema would refuse it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a record")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{path}.{f.name}"
        spec = kong_field(f, hints[f.name])
        value = raw.get(f.name)
        if value is None:
            if spec.get("required") and spec["type"] != "record":
                raise ConfigError(f"{name}: required field missing")
            if spec["type"] != "record":
                continue
            value = {}
        if spec["type"] == "record":
            values[f.name] = load(_strip_optional(hints[f.name]), value, name)
            continue
        problem = field_problem(spec, value)
        if problem is not None:
            where, message = problem
            raise ConfigError(f"{name}{where}: {message}")
        values[f.name] = _COERCE.get(spec["type"], lambda v: v)(value)
    return cls(**values)


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
    if kind == "array":
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
        if spec.get("referenceable") and is_reference(value):
            # Kong resolves references before the plugin sees a config: one left is a vault
            # that could not be read, and is not a secret to use.
            return "", "the vault reference could not be resolved"
        if "len_min" not in spec:
            spec = {**spec, "len_min": 1}  # Kong refuses empty strings unless told otherwise
    for attr in _VALIDATORS:
        if attr in spec:
            message = _VALIDATE[attr](value, spec[attr])
            if message is not None:
                return "", message
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


_TYPE_ERRORS: dict[str, Callable[[Any], str | None]] = {
    "string": lambda v: None if isinstance(v, str) else "expected a string",
    "integer": lambda v: None if _is_int(v) or (isinstance(v, float) and _is_num(v) and v == int(v))
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


def _tostring(n: Any) -> str:
    """LuaJIT's tostring of a number (Kong's `gt` message): "%.14g"."""
    return format(float(n), ".14g")


_VALIDATE: dict[str, Callable[[Any, Any], str | None]] = {
    "one_of": lambda v, options: None if v in options else "expected one of: " + ", ".join(options),
    "gt": lambda v, limit: None if v > limit else f"value must be greater than {_tostring(limit)}",
    "between": lambda v, lim: None if lim[0] <= v <= lim[1]
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


# --- the README's reference --------------------------------------------------------------------

def reference_markdown(fields: list[dict[str, Any]]) -> str:
    """The config reference table of `kong_fields(Config)`."""
    lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, spec in _flat_fields(fields):
        kind = spec["type"]
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
        default = "required" if spec.get("required") else (
            "none" if "default" not in spec else f"`{json.dumps(spec['default'])}`")
        lines.append(f"| `{name}` | {kind} | {default} | {spec['description'].replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def _flat_fields(fields: list[dict[str, Any]], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for entry in fields:
        (name, spec), = entry.items()
        out.append((prefix + name, spec))
        if spec["type"] == "record":
            out.extend(_flat_fields(spec["fields"], prefix + name + "."))
    return out
