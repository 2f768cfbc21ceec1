"""Comparing configs key by key: dotted leaf keys (``model.tiny.hidden_size``, and one entry of a
dict-valued key: ``env.kwargs.dim_room``), their differences, and how a change is shown.

Used where a saved config must match the one a run uses: resuming a run
(:func:`grouprl.train.resume.config_changes`) and reusing a saved warm start or base model
(:mod:`grouprl.train.saved_model`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from grouprl.train.safe_io import json_default

__all__ = ["UNSET", "flatten", "as_json", "select", "differences", "matches", "format_change"]

UNSET = "<unset>"
"""Shown for a key that one side does not have (an entry of a dict-valued key)."""


def as_json(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists, Paths strings): configs saved
    in ``config.json`` and configs in memory compare equal when they mean the same."""
    return json.loads(json.dumps(data, default=json_default))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; an empty mapping is a leaf (``{}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def matches(key: str, patterns: Iterable[str]) -> bool:
    """``key`` is one of ``patterns`` or lies under one (``"eval"`` matches ``eval.every``)."""
    return any(key == p or key.startswith(p + ".") for p in patterns)


def select(flat: Mapping[str, Any], keys: Iterable[str], exclude: Iterable[str] = ()
           ) -> dict[str, Any]:
    """The entries of ``flat`` under ``keys`` and not under ``exclude``."""
    keys, exclude = tuple(keys), tuple(exclude)
    return {k: v for k, v in flat.items() if matches(k, keys) and not matches(k, exclude)}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` of every flat key whose value differs (``UNSET`` on the
    side that lacks it), sorted by key."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, UNSET), new.get(key, UNSET)
        if a != b or type(a) is not type(b) and not _same_number(a, b):
            out.append((key, a, b))
    return out


def _same_number(a: Any, b: Any) -> bool:
    """1 and 1.0 are the same setting (YAML and JSON may give either)."""
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _show(value: Any) -> str:
    if value is UNSET or value == UNSET:
        return UNSET
    return json.dumps(value, default=json_default)


def format_change(key: str, old: Any, new: Any) -> str:
    """``key: old → new`` with JSON values (``model.tiny.hidden_size: 128 → 64``)."""
    return f"{key}: {_show(old)} → {_show(new)}"
