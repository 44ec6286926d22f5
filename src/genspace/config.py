"""Typed configuration: nested dataclasses built from dicts, YAML files and dotted overrides.

A configuration is a tree of ordinary dataclasses. Defaults live only in the dataclass
definitions; this module never invents a value. It

- builds a tree from plain data with type checking and the coercions a YAML file or a command
  line needs (:func:`from_dict`, :func:`load_yaml`),
- turns it back into plain data (:func:`to_dict`, :func:`dump_yaml`), so that
  ``from_dict(type(cfg), to_dict(cfg)) == cfg``,
- applies ``key.path=value`` overrides, returning a new tree (:func:`apply_overrides`).

Supported field types and what they accept:

============================  ===========================================================
``bool``                      true/false, or the strings "true"/"false" (any case)
``int``                       ints; integral floats (2.0); strings "128", "1e3"
``float``                     ints, floats; strings such as "3e-4" (YAML 1.1 reads 3e-4 as
                              a string)
``str``                       strings only (quote numbers in YAML; overrides fall back to
                              the raw text for string fields, so ``run.name=2024`` works)
``pathlib.Path``              strings
``Optional[X]``, ``X | None`` null/None, or an X
``Union[A, B]``               a value already of one member's type, else the first member
                              that accepts it
``Literal["a", "b"]``         one of the listed values (ValueError lists them)
``list[X]``, ``tuple[X, ...]``  sequences; ``tuple[X, Y]`` checks the length
``dict[K, V]``                mappings
nested dataclass              a mapping of its fields (or an instance)
variant section               see below
``typing.Any``                anything, unchecked
============================  ===========================================================

Variant (tagged-union) sections. A section whose dataclass depends on a choice — the model
family, say — is declared with :func:`variant_field` and its choices are registered with
:func:`register_variant`::

    @register_variant("model", "diffusion")          # tag key: "family" (the default)
    @dataclass
    class DiffusionModel:
        process: Literal["vp", "ve", "edm"] = "edm"

    @register_variant("model", "flow")
    @dataclass
    class FlowModel:
        sigma_min: float = 0.0

    @dataclass
    class Experiment:
        model: DiffusionModel | FlowModel = variant_field("model", default="diffusion")

A section ``model: {family: flow, sigma_min: 1e-4}`` then builds a ``FlowModel``. Rules:

- the tag key (``family`` here; set per base key with ``tag_key=`` on registration) selects
  the class; when it is missing the field's default tag is used; ``model: flow`` (just the tag)
  builds that variant with its defaults;
- the variant dataclass need not declare the tag key as a field; if it does (e.g.
  ``family: Literal["flow"] = "flow"``), it receives it like any other field;
- :func:`to_dict` writes the tag first, so the output reads back to the same classes;
- the field's annotation is for readers and type checkers only (a union of the variants or a
  common base class);
- ``variant_field("model", default=None)`` makes the section optional (null).

Overrides: ``model.family=flow`` switches the variant and starts it from the new variant's
defaults (it keeps the section unchanged when the tag is already ``flow``); ``model=flow`` does
the same; ``model={sigma_min: 0.1}`` (a mapping without the tag) rebuilds the section within its
current variant, from that variant's defaults. Overrides are
applied shallowest first — a section replaced or a variant switched before the keys inside it
— and, at equal depth, in the order given (the last one wins).

The variant registry is the one piece of module-level state: it maps names to classes and is
filled once, at import time of the modules that define the variants.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, Optional, Union

import yaml

__all__ = [
    "register_variant",
    "variant_field",
    "variant_tags",
    "get_variant",
    "from_dict",
    "to_dict",
    "load_yaml",
    "dump_yaml",
    "apply_overrides",
]

_META = "genspace.config.variant"

# base key -> {tag -> class}; base key -> tag key
_VARIANTS: dict[str, dict[str, type]] = {}
_TAG_KEYS: dict[str, str] = {}


# ---------------------------------------------------------------------- small helpers
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return repr(path) if path else "the top level"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _init_fields(cls_or_obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls_or_obj) if f.init}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---------------------------------------------------------------------- variant registry
def register_variant(base_key: str, tag: str, cls: Optional[type] = None, *, tag_key: str = "family"):
    """Register dataclass ``cls`` as the choice ``tag`` of the variant section ``base_key``.

    Usable directly (``register_variant("model", "flow", FlowModel)``) or as a class decorator
    (``@register_variant("model", "flow")``); returns ``cls``. All variants of one base key share
    one ``tag_key`` (the key that holds the tag in a section). Registering the same class under
    the same tag again is a no-op; a tag taken by another class, a class registered under two
    tags of one base, or a different tag key raise ValueError.
    """
    for what, value in (("base_key", base_key), ("tag", tag), ("tag_key", tag_key)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"register_variant: {what} must be a non-empty string, got {value!r}")
    if cls is None:
        return lambda c: register_variant(base_key, tag, c, tag_key=tag_key)
    if not _is_dataclass_type(cls):
        raise ValueError(f"register_variant: {cls!r} is not a dataclass")
    known_key = _TAG_KEYS.get(base_key)
    if known_key is not None and known_key != tag_key:
        raise ValueError(
            f"variant base {base_key!r} uses the tag key {known_key!r}, cannot register {tag!r} with tag_key={tag_key!r}"
        )
    tags = _VARIANTS.get(base_key, {})
    if tags.get(tag, cls) is not cls:
        raise ValueError(f"variant {base_key!r}: tag {tag!r} is already registered to {tags[tag].__qualname__}")
    other = [t for t, c in tags.items() if c is cls and t != tag]
    if other:
        raise ValueError(f"variant {base_key!r}: {cls.__qualname__} is already registered under the tag {other[0]!r}")
    _TAG_KEYS[base_key] = tag_key
    _VARIANTS.setdefault(base_key, {})[tag] = cls
    return cls


def variant_tags(base_key: str) -> tuple[str, ...]:
    """The tags registered for ``base_key``, in registration order."""
    return tuple(_VARIANTS.get(base_key, {}))


def get_variant(base_key: str, tag: str) -> type:
    """The dataclass registered as ``tag`` of ``base_key`` (ValueError naming the choices)."""
    if base_key not in _VARIANTS:
        raise ValueError(f"no variants are registered for {base_key!r}; known bases: {', '.join(_VARIANTS) or 'none'}")
    tags = _VARIANTS[base_key]
    if not isinstance(tag, str) or tag not in tags:
        raise ValueError(f"unknown {base_key} {tag!r}{_suggest(tag, list(tags))}; choices: {', '.join(tags)}")
    return tags[tag]


def _tag_of(base_key: str, obj: Any) -> str:
    for tag, cls in _VARIANTS.get(base_key, {}).items():
        if type(obj) is cls:
            return tag
    raise ValueError(
        f"{type(obj).__qualname__} is not a registered variant of {base_key!r}; "
        f"choices: {', '.join(variant_tags(base_key))}"
    )


def _default_variant(base_key: str, tag: str):
    return get_variant(base_key, tag)()


def variant_field(base_key: str, *, default: Optional[str]) -> Any:
    """A dataclass field holding one registered variant of ``base_key``.

    ``default`` is the tag built (with its own defaults) when the section is omitted, or None for
    an optional section that defaults to None. The lookup happens when an instance is created,
    so variants may be registered after the schema class is defined.
    """
    if not isinstance(base_key, str) or not base_key:
        raise ValueError(f"variant_field: base_key must be a non-empty string, got {base_key!r}")
    if default is not None and not isinstance(default, str):
        raise ValueError(f"variant_field: default must be a tag string or None, got {default!r}")
    meta = {_META: (base_key, default)}
    if default is None:
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default_factory=functools.partial(_default_variant, base_key, default), metadata=meta)


def _variant_meta(f: dataclasses.Field) -> Optional[tuple[str, Optional[str]]]:
    return f.metadata.get(_META)


# ---------------------------------------------------------------------- from_dict
def from_dict(cls: type, data: Mapping, *, path: str = ""):
    """Build the dataclass ``cls`` (and every nested section) from plain data.

    Keys absent from ``data`` take the dataclass defaults. Values are checked and coerced as
    described in the module docstring. ``path`` is the dotted prefix used in error messages.

    Raises:
        ValueError: an unknown key (naming the dotted key, a close match and the valid keys), a
            missing required key, or a value of the wrong type / outside a Literal.
    """
    if not _is_dataclass_type(cls):
        raise ValueError(f"from_dict needs a dataclass type, got {cls!r}")
    return _build(cls, data, path)


def _build(cls: type, data: Any, path: str):
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{_where(path)} must be a mapping of {cls.__name__} fields, got {type(data).__name__} {_short(data)}"
        )
    fields = _init_fields(cls)
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{_where(path)}: keys must be strings, got {_short(key)}")
        if key not in fields:
            raise ValueError(
                f"unknown key {_join(path, key)!r}{_suggest(key, list(fields))}; "
                f"valid keys{' in ' + repr(path) if path else ''}: {', '.join(fields)}"
            )
        kwargs[key] = _coerce_field(fields[key], hints[key], value, _join(path, key))
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing required key {_join(path, name)!r} ({cls.__name__} has no default for it)")
    try:
        return cls(**kwargs)
    except ValueError as err:  # raised by a __post_init__ check
        raise ValueError(f"{_where(path)}: {err}" if path else str(err)) from None


def _coerce_field(f: dataclasses.Field, tp: Any, value: Any, path: str):
    meta = _variant_meta(f)
    if meta is not None:
        return _coerce_variant(meta, value, path)
    return _coerce(value, tp, path)


def _coerce_variant(meta: tuple[str, Optional[str]], value: Any, path: str):
    base_key, default_tag = meta
    if value is None:
        if default_tag is None:
            return None
        raise ValueError(f"{path!r} cannot be null; choose one of: {', '.join(variant_tags(base_key))}")
    classes = tuple(_VARIANTS.get(base_key, {}).values())
    if classes and isinstance(value, classes):
        return value
    tag_key = _TAG_KEYS.get(base_key, "family")
    if isinstance(value, str):
        tag, data = value, {}
    elif isinstance(value, Mapping):
        data = dict(value)
        tag = data.pop(tag_key, default_tag)
        if tag is None:
            raise ValueError(
                f"{path!r} needs the key {tag_key!r} to choose a variant; choices: {', '.join(variant_tags(base_key))}"
            )
    else:
        raise ValueError(
            f"{path!r} must be a mapping with a {tag_key!r} key or a tag string; got {type(value).__name__} {_short(value)}"
        )
    if not isinstance(tag, str):
        raise ValueError(f"{_join(path, tag_key)!r} must be a string tag, got {_short(tag)}")
    try:
        cls = get_variant(base_key, tag)
    except ValueError as err:
        raise ValueError(f"{_join(path, tag_key)!r}: {err}") from None
    if tag_key in _init_fields(cls):
        data[tag_key] = tag
    return _build(cls, data, path)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _fail(path: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{path!r} expects {expected}, got {type(value).__name__} {_short(value)}")


def _coerce(value: Any, tp: Any, path: str):
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _fail(path, "null", value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return _coerce_union(value, args, path)
    if origin is Literal:
        for allowed in args:
            if type(allowed) is type(value) and allowed == value:
                return value
        choices = ", ".join(repr(a) for a in args)
        hint = _suggest(value, [a for a in args if isinstance(a, str)]) if isinstance(value, str) else ""
        raise ValueError(f"{path!r} must be one of {choices}, got {_short(value)}{hint}")
    if _is_dataclass_type(tp):
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _fail(path, "a boolean (true/false)", value)
    if tp is int:
        return _to_int(value, path)
    if tp is float:
        return _to_float(value, path)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(path, "a string (quote it in YAML)", value)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, os.PathLike)):
            return tp(value)
        raise _fail(path, "a path string", value)
    container = origin or tp
    if container in (list, Sequence, typing.Sequence) or container is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _fail(path, f"a list for {_type_name(tp)}", value)
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"{path!r} expects {len(args)} items for {tp}, got {len(value)}: {_short(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if container is tuple else items
    if container in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise _fail(path, f"a mapping for {_type_name(tp)}", value)
        key_t, val_t = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            ck = _coerce(k, key_t, f"{path} (key {_short(k)})")
            out[ck] = _coerce(v, val_t, _join(path, str(k)))
        return out
    raise TypeError(f"{path!r}: unsupported type annotation {tp!r} in the config schema")


def _coerce_union(value: Any, members: tuple, path: str):
    if value is None and type(None) in members:
        return None
    members = tuple(m for m in members if m is not type(None))
    if len(members) == 1:
        return _coerce(value, members[0], path)
    for m in members:  # a value already of a member's exact scalar type wins
        if m in (bool, int, float, str) and type(value) is m:
            return value
    errors = []
    for m in members:
        try:
            return _coerce(value, m, path)
        except ValueError as err:
            errors.append(str(err))
    names = ", ".join(_type_name(m) for m in members)
    raise ValueError(f"{path!r}: {_short(value)} matches none of {names} ({'; '.join(errors)})")


def _to_int(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise _fail(path, "an integer", value)
    if isinstance(value, int):
        return value
    number = value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise _fail(path, "an integer", value) from None
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    raise _fail(path, "an integer", value)


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise _fail(path, "a number", value)
    if isinstance(value, (int, float, str)):
        try:
            return float(value)
        except (ValueError, OverflowError):
            pass
    raise _fail(path, "a number (e.g. 3e-4)", value)


# ---------------------------------------------------------------------- to_dict / YAML
def to_dict(cfg) -> dict:
    """Plain data (dicts, lists, scalars) for a dataclass tree; variant sections carry their tag.

    Tuples become lists and paths strings, so the result is YAML-safe;
    ``from_dict(type(cfg), to_dict(cfg)) == cfg``.
    """
    if not _is_dataclass_instance(cfg):
        raise ValueError(f"to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _dump_dataclass(cfg)


def _dump_dataclass(obj) -> dict:
    out = {}
    for name, f in _init_fields(obj).items():
        value = getattr(obj, name)
        meta = _variant_meta(f)
        if meta is not None and value is not None:
            base_key = meta[0]
            tag_key = _TAG_KEYS[base_key] if base_key in _TAG_KEYS else "family"
            body = _dump_dataclass(value)
            body.pop(tag_key, None)
            out[name] = {tag_key: _tag_of(base_key, value), **body}
        else:
            out[name] = _dump_value(value)
    return out


def _dump_value(value: Any) -> Any:
    if _is_dataclass_instance(value):
        return _dump_dataclass(value)
    if isinstance(value, (list, tuple)):
        return [_dump_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _dump_value(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


def _yaml_problem(err: Exception) -> str:
    """One line: what the YAML parser found wrong and where (line and column, 1-based)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def load_yaml(path: Union[str, os.PathLike], cls: type):
    """Read a YAML file (``yaml.safe_load``) into the dataclass ``cls`` via :func:`from_dict`.

    An empty file gives the defaults. Raises FileNotFoundError for a missing file and ValueError
    (prefixed with the file name) for invalid YAML, a non-mapping top level or a schema error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r}: invalid YAML: {_yaml_problem(err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return from_dict(cls, data)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: {err}") from None


def dump_yaml(cfg, path: Union[None, str, os.PathLike] = None) -> str:
    """YAML text of :func:`to_dict` (fields in definition order, non-ASCII characters escaped);
    also written to ``path`` if given."""
    # allow_unicode=False: PyYAML writes U+0085 raw otherwise and reads it back as a line break
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=False)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


# ---------------------------------------------------------------------- overrides
def _parse_override(text: Any) -> tuple[list[str], str, Any]:
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"an override must be a string 'dotted.key=value', got {_short(text)}")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ValueError(f"override {text!r}: malformed key {key.strip()!r} (expected e.g. train.lr=3e-4)")
    keys = [k.strip() for k in keys]
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception as err:  # YAMLError, or a constructor's ValueError/OverflowError
        raise ValueError(f"override {text!r}: cannot parse {raw!r} as a YAML value: {err}") from None
    return keys, raw, value


def _is_tag_switch(cfg, keys: list[str]) -> bool:
    obj = cfg
    for i, key in enumerate(keys[:-1]):
        if not _is_dataclass_instance(obj):
            return False
        f = _init_fields(obj).get(key)
        if f is None:
            return False
        meta = _variant_meta(f)
        if i == len(keys) - 2 and meta is not None:
            return keys[-1] == _TAG_KEYS.get(meta[0], "family")
        obj = getattr(obj, key)
    return False


def apply_overrides(cfg, overrides: Sequence[str]):
    """A new config with ``["train.lr=3e-4", "model.net.hidden=128", ...]`` applied.

    Each right-hand side is parsed with ``yaml.safe_load`` (so ``128`` is an int, ``[1, 2]`` a
    list, ``{a: 1}`` a mapping, ``null`` None) and then coerced to the field's type; for string
    fields the raw text is used when the YAML value is not a string. The input is never mutated:
    every changed section is rebuilt with ``dataclasses.replace``. Ordering and variant switches
    are described in the module docstring.

    Raises:
        ValueError: naming the override and the dotted key (unknown key with a close match and
            the valid keys, wrong type, malformed override).
    """
    if not _is_dataclass_instance(cfg):
        raise ValueError(f"apply_overrides needs a dataclass instance, got {type(cfg).__name__}")
    if isinstance(overrides, (str, bytes)):
        raise ValueError(f"overrides must be a list of 'key=value' strings, got the single string {overrides!r}")
    parsed = [(text, *_parse_override(text)) for text in overrides]
    depth = [len(keys) - (1 if _is_tag_switch(cfg, keys) else 0) for _, keys, _, _ in parsed]
    for i in sorted(range(len(parsed)), key=lambda j: depth[j]):  # stable: equal depth keeps order
        text, keys, raw, value = parsed[i]
        try:
            cfg = _set(cfg, keys, raw, value, "")
        except ValueError as err:
            raise ValueError(f"override {text!r}: {err}") from None
    return cfg


def _set(obj, keys: list[str], raw: str, value: Any, path: str):
    name = keys[0]
    dotted = _join(path, name)
    fields = _init_fields(obj)
    if name not in fields:
        raise ValueError(
            f"unknown key {dotted!r}{_suggest(name, list(fields))}; "
            f"valid keys{' in ' + repr(path) if path else ''}: {', '.join(fields)}"
        )
    f = fields[name]
    hint = _hints(type(obj))[name]
    meta = _variant_meta(f)
    if len(keys) == 1:
        child = getattr(obj, name)
        if meta is not None and isinstance(value, Mapping) and child is not None:
            tag_key = _TAG_KEYS.get(meta[0], "family")
            if tag_key not in value:  # a mapping without a tag replaces the section within its variant
                value = {tag_key: _tag_of(meta[0], child), **value}
        try:
            new = _coerce_field(f, hint, value, dotted)
        except ValueError as err:
            if isinstance(value, str):
                raise
            try:  # string fields take the raw text ("run.name=2024")
                new = _coerce_field(f, hint, raw.strip(), dotted)
            except ValueError:
                raise err from None
        return dataclasses.replace(obj, **{name: new})
    child = getattr(obj, name)
    if meta is not None:
        base_key = meta[0]
        tag_key = _TAG_KEYS.get(base_key, "family")
        if len(keys) == 2 and keys[1] == tag_key:
            tag = value if isinstance(value, str) else raw.strip()
            if child is not None and _tag_of(base_key, child) == tag:
                return obj
            return dataclasses.replace(obj, **{name: _coerce_variant(meta, {tag_key: tag}, dotted)})
        if child is None:
            raise ValueError(f"{dotted!r} is null; choose a variant first with {_join(dotted, tag_key)}=<tag>")
    elif child is None:
        section = _optional_dataclass(hint)
        if section is None:
            raise ValueError(f"{dotted!r} is null and not a section; cannot set {_join(dotted, keys[1])!r}")
        child = _build(section, {}, dotted)
    if not _is_dataclass_instance(child):
        raise ValueError(
            f"{dotted!r} is a {type(child).__name__} value, not a section; cannot set {_join(dotted, '.'.join(keys[1:]))!r}"
        )
    return dataclasses.replace(obj, **{name: _set(child, keys[1:], raw, value, dotted)})


def _optional_dataclass(tp: Any) -> Optional[type]:
    """The dataclass inside Optional[DC] (None if ``tp`` is not of that form)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        if len(members) == 1 and _is_dataclass_type(members[0]):
            return members[0]
    return tp if _is_dataclass_type(tp) else None
