"""Several envs (tasks) behind one :class:`~grouprl.envs.base.TextEnv`: multi-task training.

``MultiTaskEnv(tasks)`` holds K tasks, each ``{"name": <env name>, "kwargs": {...},
"category": <str>}`` (``kwargs`` and ``category`` optional), and plays one of them per episode.

* **Seed mapping** (:func:`task_of_seed`): ``reset(seed)`` plays task ``k = seed % K`` with
  sub-env seed ``seed // K`` (floor division, so ``seed = K·sub_seed + k`` for every integer).
  Equal seeds give the same task and the same sub-env episode, so the n members of a group
  (reset with one seed) share one task; consecutive seeds cycle through the tasks, so any K
  consecutive (e.g. held-out evaluation) seeds cover every task once. Distinct seeds give
  distinct ``(k, sub_seed)`` pairs. :class:`~grouprl.envs.textworld_express.TextWorldExpressEnv`
  uses the same mapping for a list of games.
* **Category.** ``reset``'s info gets ``"category"``: the task's category (per-task metrics,
  :mod:`grouprl.train.task_metrics`). The default category is the env name (the part after
  ``":"`` for an import string); tasks that share a name get ``name-key=value`` for each kwarg
  whose value differs among them (sequences joined by ``x``: ``sokoban-dim_room=6x6``); if that
  still collides, ``task<k>``. Categories must be unique.
* **Anchors.** Every anchor (reset and step) is the tuple ``(category, anchor)`` with the sub-env's
  :func:`~grouprl.envs.base.anchor_of` anchor (:func:`category_anchor`), so state ids never merge
  states of two tasks. Everything else of ``step`` is the sub-env's.
* **Sub-envs** are made on first use with ``make_env(name, **kwargs)`` and kept for later
  episodes. With ``max_open`` at most that many are open: making one more closes the least
  recently used (JVM envs are heavy). ``close()`` closes all.
* **Expert plans.** ``expert_actions`` / ``gold_actions`` are the current sub-env's methods
  (``None`` when it has none, so the pool reports a missing expert as for any env).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from grouprl.validation import check_int

from .backends import isolate_native_calls as _isolate
from .base import TextEnv, anchor_of
from .jvm import seed_index
from .registry import make_env, resolve_factory

__all__ = ["MultiTaskEnv", "task_of_seed", "category_anchor", "task_categories", "check_tasks",
           "TASK_KEYS"]

TASK_KEYS = ("name", "kwargs", "category")
"""The keys of a task dict (``name`` required)."""

_FIELD = "env.kwargs.tasks"


def task_of_seed(seed: int, num_tasks: int) -> tuple[int, int]:
    """``(k, sub_seed) = (seed % num_tasks, seed // num_tasks)``: the task of ``seed`` and the seed
    its env is reset with (module docstring). ``seed`` is any integer (not a bool)."""
    check_int("num_tasks", num_tasks, 1)
    seed = seed_index(seed)
    return seed % num_tasks, seed // num_tasks


def category_anchor(category: str, anchor: Hashable) -> tuple[str, Hashable]:
    """The anchor of a multi-task env: ``(category, anchor)`` (no two tasks share a state)."""
    return (category, anchor)


def _short(value: Any) -> str:
    """A kwarg value in a category name: sequences joined by ``x`` (``[6, 6]`` → ``6x6``)."""
    if isinstance(value, (list, tuple)):
        return "x".join(_short(v) for v in value)
    return str(value)


def _check_task(i: int, task: Any) -> dict[str, Any]:
    """One task dict, checked; returned with ``kwargs`` filled in (``category`` may be absent)."""
    where = f"{_FIELD}[{i}]"
    if not isinstance(task, dict):
        raise TypeError(f"{where}: expected a dict with keys {', '.join(TASK_KEYS)}, "
                        f"got {type(task).__name__}")
    unknown = sorted(str(k) for k in task if k not in TASK_KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; accepted keys: "
                         f"{', '.join(TASK_KEYS)}")
    if "name" not in task:
        raise ValueError(f"{where}.name: missing; every task names its env")
    name = task["name"]
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where}.name: expected an env name (str), got {name!r}")
    try:
        resolve_factory(name)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}.name: {str(err).removeprefix('name: ')}") from None
    kwargs = task.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"{where}.kwargs: expected a dict of keyword arguments, got {kwargs!r}")
    out = {"name": name, "kwargs": dict(kwargs)}
    if "category" in task:
        category = task["category"]
        if not isinstance(category, str) or not category.strip():
            raise TypeError(f"{where}.category: expected a non-empty str, got {category!r}")
        out["category"] = category
    return out


def check_tasks(tasks: Any) -> list[dict[str, Any]]:
    """``tasks`` checked (a non-empty list of task dicts, unique categories) without making any
    env: what a config check calls before a run starts; errors name ``env.kwargs.tasks``."""
    if isinstance(tasks, (str, bytes, dict)) or not isinstance(tasks, Sequence):
        raise TypeError(f"{_FIELD}: expected a list of task dicts, got {type(tasks).__name__}")
    if not tasks:
        raise ValueError(f"{_FIELD}: empty; give at least one task "
                         "{name: <env>, kwargs: {...}}")
    checked = [_check_task(i, t) for i, t in enumerate(tasks)]
    task_categories(checked)
    return checked


def task_categories(tasks: Sequence[dict[str, Any]]) -> list[str]:
    """The category of each checked task: its own, or the default of the module docstring."""
    base = [t["name"].rpartition(":")[2] for t in tasks]
    given = {t["category"] for t in tasks if "category" in t}
    out: list[str] = []
    for k, task in enumerate(tasks):
        if "category" in task:
            out.append(task["category"])
            continue
        same = [tasks[j]["kwargs"] for j in range(len(tasks)) if base[j] == base[k]]
        name = base[k]
        if len(same) > 1:
            keys = sorted({key for kw in same for key in kw
                           if any(key not in o or o[key] != kw[key] for o in same)})
            kw = task["kwargs"]
            name += "".join(f"-{key}={_short(kw[key])}" for key in keys if key in kw)
        out.append(name)
    first_pass = list(out)
    for k, name in enumerate(first_pass):
        if "category" not in tasks[k] and (first_pass.count(name) > 1 or name in given):
            out[k] = f"task{k}"
    for k, name in enumerate(out):
        first = out.index(name)
        if first != k:
            raise ValueError(f"{_FIELD}[{k}].category: {name!r} is also the category of task "
                             f"{first}; categories must be unique (set distinct categories)")
    return out


class MultiTaskEnv:
    """K envs played one per episode (module docstring: seeds, categories, anchors).

    Args:
        tasks: ``[{"name": ..., "kwargs": {...}, "category": ...}, ...]`` (non-empty); ``name`` a
            registered env name or ``"module:Attr"`` import string.
        max_open: at most this many sub-envs open at once (least recently used closed first);
            ``None``: no limit.

    Raises ``ValueError`` / ``TypeError`` naming ``env.kwargs.tasks[i].<key>`` for a bad task.
    """

    def __init__(self, tasks: Sequence[dict[str, Any]], *, max_open: int | None = None) -> None:
        check_int("max_open", max_open, 1, none_ok=True)
        self.tasks = check_tasks(tasks)
        self.categories: tuple[str, ...] = tuple(task_categories(self.tasks))
        self.max_open = max_open
        self._open: OrderedDict[int, TextEnv] = OrderedDict()  # least recently used first
        self._current: int | None = None
        self._isolate = False
        self._closed = False

    @property
    def num_tasks(self) -> int:
        """K, the number of tasks."""
        return len(self.tasks)

    @property
    def current_task(self) -> int | None:
        """Index k of the current episode's task (``None`` before the first reset)."""
        return self._current

    @property
    def open_tasks(self) -> tuple[int, ...]:
        """Indices of the open sub-envs, least recently used first."""
        return tuple(self._open)

    def env(self, k: int) -> TextEnv:
        """The sub-env of task ``k``, made (and the least recently used one closed when
        ``max_open`` is reached) if it is not open."""
        self._check_open()
        check_int("k", k, 0, self.num_tasks - 1)
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        while self.max_open is not None and len(self._open) >= self.max_open:
            old, env = self._open.popitem(last=False)
            if old == self._current:
                self._current = None
            env.close()
        task = self.tasks[k]
        env = make_env(task["name"], **task["kwargs"])
        if self._isolate:
            _isolate(env)
        self._open[k] = env
        return env

    # -- protocol -------------------------------------------------------------------------------

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        """Reset task ``seed % K`` with seed ``seed // K``; info gets ``category`` and the anchor
        ``(category, anchor)``."""
        k, sub_seed = task_of_seed(seed, self.num_tasks)
        env = self.env(k)
        self._current = None
        obs, info = env.reset(sub_seed)
        self._current = k
        info = dict(info)
        info["category"] = self.categories[k]
        info["anchor"] = category_anchor(self.categories[k], anchor_of(info, obs))
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """The current sub-env's step, its anchor made ``(category, anchor)``."""
        env = self._current_env()
        obs, reward, done, info = env.step(action)
        info = dict(info)
        info["anchor"] = category_anchor(self.categories[self._current], anchor_of(info, obs))
        return obs, reward, done, info

    def close(self) -> None:
        """Close every open sub-env (each even if another's close raises); idempotent."""
        self._closed = True
        self._current = None
        errors = []
        while self._open:
            _, env = self._open.popitem(last=False)
            try:
                env.close()
            except Exception as exc:  # noqa: BLE001 - close the others, then raise the first
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- optional hooks the pool uses ---------------------------------------------------------

    @property
    def expert_actions(self) -> Callable[[], Any] | None:
        """The current sub-env's ``expert_actions`` method, or ``None``."""
        return self._method("expert_actions")

    @property
    def gold_actions(self) -> Callable[[], Any] | None:
        """The current sub-env's ``gold_actions`` method, or ``None``."""
        return self._method("gold_actions")

    def isolate_native_calls(self) -> None:
        """Apply each sub-env's ``isolate_native_calls`` hook (open ones now, later ones when
        made): see :mod:`grouprl.envs.pool`."""
        self._isolate = True
        for env in self._open.values():
            _isolate(env)

    # -- helpers ----------------------------------------------------------------------------------

    def _method(self, name: str) -> Callable[[], Any] | None:
        if self._current is None or self._current not in self._open:
            return None
        fn = getattr(self._open[self._current], name, None)
        return fn if callable(fn) else None

    def _current_env(self) -> TextEnv:
        self._check_open()
        if self._current is None:
            raise RuntimeError("step() called before reset(seed)")
        return self._open[self._current]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MultiTaskEnv is closed")

    def __enter__(self) -> MultiTaskEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MultiTaskEnv(categories={list(self.categories)}, max_open={self.max_open})"
