"""Environment registry: a name → a factory returning a :class:`~grouprl.envs.base.TextEnv`.

``make_env(name, **kwargs)`` is how every part of grouprl (and every pool worker process) builds
an environment, so that an env is fully described by ``(name, kwargs)``.

Names are either registered names (``available_envs()``; built in: ``"sokoban"``,
``"reasoning"``, ``"textworld_express"``, ``"scienceworld"``) or *import strings*
``"package.module:Attr"`` naming any callable (usually a class) that returns an env, e.g.
``make_env("my_pkg.envs:MazeEnv", size=5)``.  Import strings need no registration, which is
the simplest way to use one's own env with a process pool: the worker imports the module itself.

Optional environments are registered through :class:`LazyFactory`, which imports its module only
when called, so a missing optional package breaks ``make_env`` for that name alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import TextEnv

__all__ = ["LazyFactory", "available_envs", "make_env", "register_env", "resolve_factory"]

_REGISTRY: dict[str, Callable[..., TextEnv]] = {}


@dataclass(frozen=True)
class LazyFactory:
    """Factory ``"module:attr"`` imported on first call (picklable, so pool workers get it)."""

    module: str
    attr: str

    def load(self) -> Callable[..., TextEnv]:
        """Import and return the target callable."""
        try:
            obj: Any = importlib.import_module(self.module)
        except ImportError as exc:
            raise ImportError(f"env factory {self.module}:{self.attr}: cannot import module "
                              f"{self.module!r} ({exc}); install the package that provides it"
                              ) from exc
        for part in self.attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ImportError(f"env factory {self.module}:{self.attr}: module "
                                  f"{self.module!r} has no attribute {self.attr!r}") from None
        if not callable(obj):
            raise TypeError(f"env factory {self.module}:{self.attr}: is not callable")
        return obj

    def __call__(self, **kwargs: Any) -> TextEnv:
        return self.load()(**kwargs)


def register_env(name: str, factory: Callable[..., TextEnv], *, overwrite: bool = False) -> None:
    """Register ``factory(**kwargs) -> TextEnv`` under ``name``.

    Registering the same factory again is a no-op; a different factory under a taken name raises
    ``ValueError`` unless ``overwrite=True``.  Names may not contain ``":"`` (reserved for import
    strings).  For process pools, prefer module-level factories (picklable by reference).
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"name: must be a non-empty string without ':', got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: must be callable, got {type(factory).__name__}")
    old = _REGISTRY.get(name)
    if old is not None and old != factory and not overwrite:
        raise ValueError(f"name: env {name!r} is already registered (to {old!r}); pass "
                         f"overwrite=True to replace it")
    _REGISTRY[name] = factory


def available_envs() -> tuple[str, ...]:
    """Registered env names, sorted (import strings ``"module:Attr"`` work besides these)."""
    return tuple(sorted(_REGISTRY))


def resolve_factory(name: str) -> Callable[..., TextEnv]:
    """The factory behind ``name`` (a registered name or a ``"module:Attr"`` import string)."""
    if not isinstance(name, str):
        raise TypeError(f"name: must be a string, got {type(name).__name__}")
    factory = _REGISTRY.get(name)
    if factory is not None:
        return factory
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise ValueError(f"name: import string {name!r} must look like 'package.module:Attr'")
        return LazyFactory(module, attr)
    raise ValueError(f"name: unknown env {name!r}; available: {', '.join(available_envs())} "
                     f"(or an import string 'package.module:Attr')")


def make_env(name: str, **kwargs: Any) -> TextEnv:
    """Build the env ``name`` (registered name or ``"module:Attr"``) with ``kwargs``."""
    return resolve_factory(name)(**kwargs)
