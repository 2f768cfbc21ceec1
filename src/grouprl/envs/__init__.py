"""Multi-turn text environments, their registry and a fault-isolating parallel pool.

* :class:`TextEnv` (``base.py``): the reset/step protocol every env implements.
* :func:`make_env` / :func:`register_env` / :func:`available_envs` (``registry.py``): envs by
  name or by ``"package.module:Attr"`` import string.  Built in: ``"sokoban"``
  (:class:`SokobanEnv`), ``"reasoning"`` (single-turn prompt → answer → verifier reward,
  :mod:`grouprl.envs.reasoning`), and, imported only when made (optional packages),
  ``"textworld_express"`` and ``"scienceworld"``; ``"multitask"`` (:class:`MultiTaskEnv`: several
  envs, one per episode by seed, :mod:`grouprl.envs.multitask`).
* :class:`EnvPool` (``pool.py``): steps a batch of envs serially, in threads or in worker
  processes, with step limits, timeouts and restart of failed envs.
"""

from __future__ import annotations

from .base import TextEnv, anchor_of
from .multitask import MultiTaskEnv, task_of_seed
from .pool import EnvPool, ResetResult, StepResult
from .registry import LazyFactory, available_envs, make_env, register_env
from .sokoban import SokobanEnv, SokobanLevel, generate_level, solve_sokoban

__all__ = [
    "EnvPool",
    "LazyFactory",
    "MultiTaskEnv",
    "ResetResult",
    "SokobanEnv",
    "SokobanLevel",
    "StepResult",
    "TextEnv",
    "anchor_of",
    "available_envs",
    "generate_level",
    "make_env",
    "register_env",
    "solve_sokoban",
    "task_of_seed",
]

register_env("sokoban", SokobanEnv)
register_env("multitask", MultiTaskEnv)
register_env("reasoning", LazyFactory("grouprl.envs.reasoning", "ReasoningEnv"))
register_env("textworld_express",
             LazyFactory("grouprl.envs.textworld_express", "TextWorldExpressEnv"))
register_env("scienceworld", LazyFactory("grouprl.envs.scienceworld", "ScienceWorldEnv"))
