"""Field types shared by the config schema's sections (:mod:`grouprl.train.config_schema`):
strict ints/bools/strings, floats that refuse bools and NaN/inf, the pydantic config of every
section."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Strict

__all__ = ["SCHEMA", "Int", "Bool", "Str", "Float", "list_default"]

SCHEMA = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected float")
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, BeforeValidator(_not_bool)]
"""A float: ints widen; YAML 1.1's "3e-5" (a string) is parsed; bools and NaN/inf are refused."""


def list_default(*items: Any) -> Any:
    return lambda: list(items)
