"""Deliberately faulty toy environments for testing pools and trainers.

Importing this module registers ``"testing_faulty"`` (:class:`FaultyEnv`); the import string
``"grouprl.envs.testing:FaultyEnv"`` works without importing it first (also in pool workers).

:class:`FaultyEnv` is deterministic: after ``reset(seed)`` the observation is ``"seed=S t=0"``,
and step ``t`` (1-based) with action ``a`` returns observation ``"seed=S t=t a=a"``, reward
``t + 0.01·S``, ``valid = (a != "bad")``, and ends the episode after ``episode_length`` steps
(``won`` iff no action was ``"bad"``).  Faults are keyed by the seed, so one env of a pool can
misbehave while the others do not (all envs of a pool share the kwargs):

* ``fail_seeds``: step number ``fail_step`` raises ``RuntimeError``;
* ``hang_seeds``: step number ``hang_step`` sleeps ``hang_seconds`` first;
* ``crash_seeds``: step number ``crash_step`` kills its process with ``os._exit(3)`` (only for
  the process backend: it would end any other process);
* ``reset_fail_seeds``: every ``reset`` raises;
* ``reset_fail_once_seeds`` with ``marker_dir``: the first ``reset`` of such a seed across all
  instances and processes raises (a marker file records it), later ones succeed;
* ``plan_crash_seeds``: :meth:`FaultyEnv.expert_actions` kills its process with
  ``os._exit(3)`` (process backend only: shows where the expert plan is computed);
* ``init_fail``: the constructor raises.

Random faults, seeded: with ``raise_prob``, ``hang_prob`` and ``nan_prob`` a step raises
``RuntimeError``, hangs ``hang_seconds`` (then completes normally) or returns reward ``nan``,
each with that probability.  The draw is a pure function of ``(fault_seed, lane, seed, t,
action)`` (:class:`random.Random` seeded with that text), where ``lane`` tells the envs of a pool
apart — the worker process's name under the process backend (``grouprl-env-3``: the same after
a restart), else the instance's creation number in this process — so a run is reproducible
while the members of a group, which share seed and often action, fail independently.
``hang_busy``
makes every hang a busy Python loop instead of ``time.sleep`` (a hang that never releases the
GIL by itself).  :meth:`FaultyEnv.expert_actions` is ``"ok"`` to the episode's end (behaviour
cloning and the tokenizer corpus work).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .registry import register_env

__all__ = ["FaultyEnv"]

_INSTANCES = itertools.count()


def _lane() -> str:
    """What tells this env apart from the other envs of its pool (module docstring)."""
    name = mp.current_process().name
    return name if name != "MainProcess" else f"instance-{next(_INSTANCES)}"


class FaultyEnv:
    """Toy env with scripted exceptions, hangs and crashes (see the module docstring)."""

    def __init__(self, episode_length: int = 3, *, fail_seeds: Sequence[int] = (),
                 fail_step: int = 1, hang_seeds: Sequence[int] = (), hang_step: int = 1,
                 hang_seconds: float = 30.0, crash_seeds: Sequence[int] = (),
                 crash_step: int = 1, reset_fail_seeds: Sequence[int] = (),
                 reset_fail_once_seeds: Sequence[int] = (), marker_dir: str | None = None,
                 init_fail: bool = False, raise_prob: float = 0.0, hang_prob: float = 0.0,
                 nan_prob: float = 0.0, fault_seed: int = 0, hang_busy: bool = False,
                 plan_crash_seeds: Sequence[int] = ()) -> None:
        if init_fail:
            raise RuntimeError("FaultyEnv: init_fail=True")
        for name, value in (("raise_prob", raise_prob), ("hang_prob", hang_prob),
                            ("nan_prob", nan_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be a probability in [0, 1], got {value!r}")
        if raise_prob + hang_prob + nan_prob > 1.0:
            raise ValueError("raise_prob + hang_prob + nan_prob: must be <= 1")
        self.raise_prob, self.hang_prob, self.nan_prob = raise_prob, hang_prob, nan_prob
        self.fault_seed, self.hang_busy = fault_seed, hang_busy
        self.plan_crash_seeds = frozenset(plan_crash_seeds)
        self.lane = _lane()
        self.episode_length = episode_length
        self.fail_seeds, self.fail_step = frozenset(fail_seeds), fail_step
        self.hang_seeds, self.hang_step = frozenset(hang_seeds), hang_step
        self.hang_seconds = hang_seconds
        self.crash_seeds, self.crash_step = frozenset(crash_seeds), crash_step
        self.reset_fail_seeds = frozenset(reset_fail_seeds)
        self.reset_fail_once_seeds = frozenset(reset_fail_once_seeds)
        self.marker_dir = marker_dir
        self.seed: int | None = None
        self.t = 0
        self.all_valid = True
        self.closed = False

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        if seed in self.reset_fail_seeds:
            raise RuntimeError(f"FaultyEnv: reset failure for seed {seed}")
        if seed in self.reset_fail_once_seeds:
            if self.marker_dir is None:
                raise ValueError("marker_dir: required with reset_fail_once_seeds")
            marker = Path(self.marker_dir) / f"reset-failed-{seed}"
            if not marker.exists():
                marker.touch()
                raise RuntimeError(f"FaultyEnv: one-time reset failure for seed {seed}")
        self.seed, self.t, self.all_valid = seed, 0, True
        obs = f"seed={seed} t=0"
        return obs, {"task": f"task {seed}", "anchor": obs, "admissible_actions": ["ok", "bad"]}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.seed is None:
            raise RuntimeError("FaultyEnv: call reset() first")
        self.t += 1
        draw = self._draw(action)
        if (self.seed in self.fail_seeds and self.t == self.fail_step) or draw == "raise":
            raise RuntimeError(f"FaultyEnv: step {self.t} failure for seed {self.seed}")
        if (self.seed in self.hang_seeds and self.t == self.hang_step) or draw == "hang":
            self._hang()
        if self.seed in self.crash_seeds and self.t == self.crash_step:
            os._exit(3)
        valid = action != "bad"
        self.all_valid &= valid
        done = self.t >= self.episode_length
        obs = f"seed={self.seed} t={self.t} a={action}"
        info = {"won": done and self.all_valid, "valid": valid, "anchor": obs,
                "admissible_actions": ["ok", "bad"]}
        reward = math.nan if draw == "nan" else self.t + 0.01 * self.seed
        return obs, reward, done, info

    def _draw(self, action: str) -> str | None:
        """The seeded random fault of this step: "raise", "hang", "nan" or None."""
        if not (self.raise_prob or self.hang_prob or self.nan_prob):
            return None
        u = random.Random(f"{self.fault_seed}:{self.lane}:{self.seed}:{self.t}:{action}"
                          ).random()
        for kind, p in (("raise", self.raise_prob), ("hang", self.hang_prob),
                        ("nan", self.nan_prob)):
            if u < p:
                return kind
            u -= p
        return None

    def _hang(self) -> None:
        if not self.hang_busy:
            time.sleep(self.hang_seconds)
            return
        end = time.monotonic() + self.hang_seconds
        while time.monotonic() < end:
            pass

    def expert_actions(self) -> list[str]:
        """``"ok"`` for every remaining step of the episode."""
        if self.seed is None:
            raise RuntimeError("FaultyEnv: call reset() first")
        if self.seed in self.plan_crash_seeds:
            os._exit(3)
        return ["ok"] * (self.episode_length - self.t)

    def close(self) -> None:
        self.closed = True


register_env("testing_faulty", FaultyEnv)
