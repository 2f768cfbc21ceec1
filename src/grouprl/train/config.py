"""Training configuration: typed dataclasses (every field a default and a help string),
YAML recipes and ``key=value`` overrides, validated by pydantic.

A recipe is plain YAML whose keys map 1:1 to the fields below (torchtune style)::

    grouprl train configs/sokoban_gigpo.yaml algorithm.estimator=hgpo rollout.group_size=4

Types, ranges and choices are checked when the config is built (pydantic dataclasses with
``extra="forbid"``); an error names the key, the value and what is accepted. Checks that need
several keys or an algorithm's own options run in :mod:`grouprl.train.checks`.

Override grammar (one grammar, values are YAML): ``key=value`` *assigns*: ``a.b=3``,
``rollout.stop=[a, b]``, ``env.kwargs={dim_room: [6, 6]}`` (a mapping given to a dict-valued key
replaces it whole), ``env.kwargs.num_boxes=2`` (sets one entry of it); a mapping given to a
section (``rollout={group_size: 4}``) sets those keys of the section. A recipe file's dict-valued
keys replace the defaults' (switching env never inherits the default env's arguments).
Overrides given programmatically as a nested mapping are deep-merged (dict-valued keys too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from grouprl.train.config_schema import (
    AgentConfig,
    AlgorithmConfig,
    BCConfig,
    EnvConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    PreferenceConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
)
from grouprl.validation import UserError

__all__ = [
    "ConfigError", "TrainConfig", "load_config", "build_config", "config_to_dict",
    "parse_overrides", "parse_override", "apply_overrides", "assign", "override", "config_keys",
    "format_keys", "config_reference", "dump_config",
    "ModelConfig", "EnvConfig", "AgentConfig", "RolloutConfig", "AlgorithmConfig",
    "RewardConfig", "PreferenceConfig", "OptimConfig", "BCConfig", "EvalConfig", "LoggingConfig",
]

class ConfigError(UserError):
    """A configuration key or value is wrong; the message names the key and the fix (a
    :class:`grouprl.validation.UserError`, so a ``ValueError`` too)."""


def _fields(cls: type) -> dict[str, Any]:
    return dict(getattr(cls, "__pydantic_fields__", {}))


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _section_types(cls: type) -> dict[str, type]:
    return {name: f.annotation for name, f in _fields(cls).items() if _is_section(f.annotation)}


def _describe(value: Any) -> str:
    return "null" if value is None else repr(value)


def _where(cls: type, loc: tuple) -> tuple[str, type]:
    """Dotted key of a pydantic error location, and the section class that holds it."""
    parts: list[str] = []
    owner = cls
    for item in loc:
        if isinstance(item, int) or item not in _fields(owner):
            parts.append(str(item))
            continue
        parts.append(str(item))
        tp = _fields(owner)[item].annotation
        if _is_section(tp):
            owner = tp
    return ".".join(parts), owner


def _message(cls: type, err: dict[str, Any]) -> str:
    """One pydantic error as grouprl's ``key: what is wrong`` message."""
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith(
        ("function-", "constrained-", "is-instance[", "lax-", "strict-", "nullable["))))
    key, owner = _where(cls, loc)
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = key.rpartition(".")[0]
        accepted = ", ".join(sorted(_fields(owner)))
        return (f"unknown config key '{key}'; accepted keys under "
                f"'{parent or '<top>'}': {accepted}")
    if kind in ("dataclass_type", "dataclass_args_type", "dict_type"):
        return f"{key or 'config'}: expected a mapping of keys, got {type(value).__name__}"
    if kind == "literal_error":
        shown = ctx.get("expected", "").replace("'", "").replace(" or ", ", ")
        return f"{key}: {_describe(value)} is not accepted; choose one of: {shown}"
    if kind == "finite_number":
        return f"{key}: must be finite, got {value!r}"
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        op, name = bounds[kind]
        return f"{key}: must be {op} {ctx[name]}, got {value!r}"
    types = {"int_type": "int", "int_from_float": "int", "int_parsing": "int",
             "float_type": "float", "float_parsing": "float", "bool_type": "bool",
             "bool_parsing": "bool", "string_type": "str", "list_type": "list",
             "none_required": "null"}
    if kind == "value_error":                      # a BeforeValidator's refusal (bool → float)
        return f"{key}: {ctx.get('error', err['msg'])}, got {value!r} ({type(value).__name__})"
    if kind in types:
        return f"{key}: expected {types[kind]}, got {value!r} ({type(value).__name__})"
    return f"{key}: {err['msg']} (got {value!r})"


def build_config(data: Mapping[str, Any], cls: type = TrainConfig) -> Any:
    """The typed config of a plain nested mapping; ``ConfigError`` on the first bad key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping of keys, got {type(data).__name__}")
    try:
        return TypeAdapter(cls).validate_python(dict(data))
    except ValidationError as err:
        first = sorted(err.errors(), key=lambda e: e["type"] != "unexpected_keyword_argument")
        raise ConfigError(_message(cls, _collapse(first))) from None


def _collapse(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The most telling error of a union (``int | None``): not the ``null`` alternative."""
    useful = [e for e in errors if e["type"] != "none_required"]
    return (useful or errors)[0]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML/JSON-able)."""
    return dataclasses.asdict(cfg)


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf key with its default and help (``--help``, ``grouprl config``, the docs)."""
    out = []
    for name, f in _fields(cls).items():
        if _is_section(f.annotation):
            out.extend(config_keys(f.annotation, prefix + name + "."))
            continue
        default = f.default_factory() if f.default_factory is not None else f.default
        out.append((prefix + name, default, f.description or ""))
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=[1, 2]"`` → ``(["a", "b"], [1, 2])`` (the value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. rollout.group_size=4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {raw!r} as YAML ({err})") from None
    return key.split("."), value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` → nested dict (values parsed as YAML); for programmatic use
    (:func:`load_config` applies ``key=value`` strings one by one, see the module docstring)."""
    out: dict[str, Any] = {}
    for item in items:
        parts, value = parse_override(item)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(parts)}: '{part}' is set to a value and "
                                  "a mapping")
        node[parts[-1]] = value
    return out


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any],
                    cls: type = TrainConfig, *, merge_leaf_dicts: bool = True) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base`` following the sections of ``cls``; dict-valued
    keys are merged entry by entry when ``merge_leaf_dicts`` and replaced otherwise."""
    sections = _section_types(cls) if _is_section(cls) else {}
    merged = dict(base)
    for key, value in overrides.items():
        old = merged.get(key)
        if key in sections and isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = apply_overrides(old, value, sections[key],
                                          merge_leaf_dicts=merge_leaf_dicts)
        elif merge_leaf_dicts and isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = {**old, **value}
        else:
            merged[key] = value
    return merged


def assign(data: dict[str, Any], parts: list[str], value: Any, cls: type = TrainConfig) -> None:
    """``key=value`` on ``data`` (in place): sections are entered (a mapping value sets keys of
    the section), anything else — dict-valued keys included — is assigned."""
    node, owner = data, cls
    for i, part in enumerate(parts):
        sections = _section_types(owner) if owner is not None else {}
        last = i == len(parts) - 1
        if last:
            if part in sections and isinstance(value, Mapping) and isinstance(node.get(part),
                                                                              Mapping):
                node[part] = apply_overrides(node[part], value, sections[part],
                                             merge_leaf_dicts=False)
            else:
                node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: '{'.'.join(parts[:i + 1])}' holds a "
                              f"value ({child!r}), not a mapping")
        node, owner = child, sections.get(part)


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping = ()
                ) -> TrainConfig:
    """The validated config of a YAML recipe (None = built-in default) plus overrides
    (``key=value`` strings, or a nested mapping that is deep-merged)."""
    data: dict[str, Any] = config_to_dict(TrainConfig())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{p}: top level must be a mapping of keys")
        build_config(apply_overrides(data, loaded, merge_leaf_dicts=False))  # the file's keys
        data = apply_overrides(data, loaded, merge_leaf_dicts=False)
    return build_config(override(data, overrides))


def override(data: dict[str, Any], overrides: Sequence[str] | Mapping) -> dict[str, Any]:
    """``data`` with overrides: ``key=value`` strings assigned one by one (module docstring), or
    a nested mapping deep-merged."""
    if isinstance(overrides, Mapping):
        return apply_overrides(data, overrides)
    for item in overrides:
        assign(data, *parse_override(item))
    return data


def _show(value: Any) -> str:
    return "null" if value is None else yaml.safe_dump(value, default_flow_style=True,
                                                      width=10**6).strip().removesuffix("...")\
        .strip()


def format_keys(width: int = 100) -> str:
    """Every key with its default and help, one per line (``grouprl train --help``)."""
    keys = config_keys()
    pad = max(len(k) for k, _, _ in keys) + 2
    lines = []
    for key, default, text in keys:
        lines.append(f"  {key:<{pad}}{_show(default)}")
        if text:
            lines.append(f"  {'':<{pad}}  {text}")
    return "\n".join(lines)


def config_reference() -> str:
    """The config reference in Markdown, generated from the schema (``docs/config.md``)."""
    out = ["# Config reference", "",
           "Generated from `grouprl.train.config_schema` by `grouprl config --reference`; do not "
           "edit by hand (a test checks it is current). Every key is a `key=value` override of "
           "`grouprl train` (values are YAML).", ""]
    section = None
    for key, default, text in config_keys():
        head = key.rpartition(".")[0] or "top level"
        if head != section:
            section = head
            out += ["", f"## `{head}`", "", "| key | default | meaning |", "|---|---|---|"]
        shown = _show(default).replace("|", "\\|")
        out.append(f"| `{key}` | `{shown}` | {text.replace('|', '/')} |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (``grouprl config``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, width=100)
