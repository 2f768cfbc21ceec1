"""Option validation shared by every component: errors name the option and the accepted values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["check_choice", "canonical_name"]


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise ``ValueError`` naming the option and the accepted values if ``value`` is not one.

    Types must match too, so ``1`` is not accepted for ``True`` nor ``0`` for ``False``.
    """
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name}: got {value!r}; accepted values are "
                         + ", ".join(repr(c) for c in choices))


def canonical_name(arg: str, what: str, value: object, names: Sequence[str],
                   aliases: Mapping[str, str]) -> str:
    """Map a name or alias (case-insensitive) to one of ``names``; ``ValueError`` otherwise."""
    if isinstance(value, str):
        key = value.strip().lower()
        key = aliases.get(key, key)
        if key in names:
            return key
    accepted = ", ".join(repr(k) for k in (*names, *aliases))
    raise ValueError(f"{arg}: unknown {what} {value!r}; accepted: {accepted}")
