"""Option validation shared by every component: errors name the option and the accepted values.

This module is the only place where grouprl writes a range, choice, integer, boolean or
unknown-option check. Every error is a ``ValueError`` whose message starts with the option's
name, so a caller can prefix it with where the option came from (``algorithm.loss_options``):

====================================  ==================================================
call                                  message on a bad value
====================================  ==================================================
``check_choice("mode", "std", M)``    ``mode: got 'std'; accepted values are 'a', 'b'``
``check_bool("clip", 1)``             ``clip: got 1; accepted values are False, True``
``check_number("gamma", 1.5, 0, 1)``  ``gamma: must be a number in [0, 1], got 1.5``
``check_int("n", 0, 1)``              ``n: must be an integer >= 1, got 0``
``check_options("loss 'ppo'", ...)``  ``eps: unknown option for loss 'ppo'; accepted options: a, b``
``canonical_name(...)``               ``kind: unknown KL estimator 'x'; accepted: 'k1', ...``
====================================  ==================================================

User errors: :class:`UserError` is the one exception family for mistakes in what the user gave
(a config key, a data file, a model directory, a device); ``ConfigError``
(:mod:`grouprl.train.config`), ``DataError`` (:mod:`grouprl.data`) and ``ModelPathError``
(:mod:`grouprl.policy.load`) subclass it. Its message names the file/line or key and the fix, so
the CLI prints it as is (no traceback) and exits with code 2.

Hot paths validate once: :func:`memoize` caches a validated options object per exact argument
values, so a loss called on every micro-batch with the same options does no option checking.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, TypeVar

__all__ = ["UserError", "check_choice", "check_bool", "check_number", "check_range", "check_int",
           "check_options", "canonical_name", "memoize"]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """A mistake in what the user gave (config key, data file, model directory, device).

    The message is complete for the user: it names where the problem is (key, file and line,
    field) and how to fix it. The CLI catches this family, prints the message without a
    traceback and exits with code 2.
    """


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; ``ValueError`` naming the accepted values.

    Types must match too, so ``1`` is not accepted for ``True`` nor ``0`` for ``False``.
    """
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name}: got {value!r}; accepted values are "
                         + ", ".join(repr(c) for c in choices))
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (not 0/1, not a string)."""
    return check_choice(name, value, (False, True))


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


def _span(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``in [lo, hi]``, ``in (lo, hi)``, ``>= lo``, ``> lo``, ``<= hi``, ``< hi`` or ``""``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 none_ok: bool = False, note: str = "") -> Any:
    """Return ``value`` if it is a finite real number (an integer when ``integer``) within the
    bounds; otherwise raise ``ValueError`` stating the whole requirement.

    Args:
        name: the option's name; the message starts with it.
        value: the value to check; ``bool`` is never a number. NumPy scalars are accepted.
        low, high: inclusive bounds (``None``: unbounded); ``low_open`` / ``high_open`` make
            them strict.
        integer: require an integral value (``int`` or a NumPy integer).
        none_ok: accept ``None`` (returned as is).
        note: what the option means, added in parentheses after the requirement.

    Example messages: ``gamma: must be a number in [0.0, 1.0], got 1.5``;
    ``history_length: must be an integer >= 0, got -1``;
    ``log_ratio_clamp: must be None or a number > 0.0, got -1``;
    ``epsilon: must be a finite number >= 0.0, got nan``.
    """
    if value is None and none_ok:
        return value
    real = isinstance(value, Real) and not isinstance(value, bool)
    finite = real and math.isfinite(value)
    ok = (isinstance(value, Integral) and real) if integer else finite
    if ok:
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not (below or above):
            return value
    kind = "an integer" if integer else "a finite number" if real and not finite else "a number"
    span = _span(low, high, low_open, high_open)
    need = f"{'None or ' if none_ok else ''}{kind}{' ' + span if span else ''}"
    raise ValueError(f"{name}: must be {need}{f' ({note})' if note else ''}, got {value!r}")


#: Former name of :func:`check_number` (the advantage estimators' options use it).
check_range = check_number


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              none_ok: bool = False, note: str = "") -> Any:
    """Return ``value`` if it is an integer (not a bool) in ``[minimum, maximum]``;
    ``ValueError`` otherwise, e.g. ``chunk_size: must be an integer >= 1, got 0``."""
    return check_number(name, value, minimum, maximum, integer=True, none_ok=none_ok, note=note)


def check_options(owner: str, given: Iterable[str], accepted: Sequence[str]) -> None:
    """Raise ``ValueError`` if a name in ``given`` (option names, or a mapping's keys) is not in
    ``accepted``; the message names the first unknown option (sorted) and lists the accepted
    ones in their given order, e.g.
    ``clip_ratio: unknown option for policy loss 'ppo'; accepted options: clip_high, clip_low``.

    Args:
        owner: what the options belong to, e.g. ``"policy loss 'ppo'"``, ``"estimator 'hgpo'"``.
        given: the option names passed.
        accepted: every option name ``owner`` knows.
    """
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        listed = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"{unknown[0]}: unknown option for {owner}; accepted options: {listed}")


def _exact(value: Any) -> Any:
    """A hashable key for ``value`` that tells apart values that compare equal: ``1``, ``1.0``
    and ``True``; ``0.0`` and ``-0.0`` (tuples element by element)."""
    if isinstance(value, tuple):
        return (tuple, *map(_exact, value))
    if isinstance(value, float):
        return (type(value), value, math.copysign(1.0, value))
    return (type(value), value)


_MISSING = object()


def memoize(fn: F, maxsize: int = 256) -> F:
    """``fn`` with its results cached per exact argument values (see :func:`_exact`).

    Meant for option validators: ``fn`` validates its (hashable) arguments and returns an
    immutable options object, so a hot-path caller pays one dictionary look-up per call. An
    exception is never cached (a bad value raises on every call). Calls with an unhashable
    argument go to ``fn`` directly. The cache is emptied when it holds ``maxsize`` entries.
    """
    cache: dict[Any, Any] = {}

    @functools.wraps(fn)
    def cached(*args: Any, **kwargs: Any) -> Any:
        try:
            key = (tuple(map(_exact, args)), tuple((k, _exact(v)) for k, v in kwargs.items()))
            result = cache.get(key, _MISSING)
        except TypeError:                                     # an unhashable argument
            return fn(*args, **kwargs)
        if result is _MISSING:
            result = fn(*args, **kwargs)
            if len(cache) >= maxsize:
                cache.clear()
            cache[key] = result
        return result

    cached.cache_clear = cache.clear  # type: ignore[attr-defined]
    return cached  # type: ignore[return-value]
