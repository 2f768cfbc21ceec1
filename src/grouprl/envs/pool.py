"""A batch of text environments stepped together, with step limits, failure isolation and a
fault budget.

``EnvPool(name, kwargs, num_envs, backend=...)`` builds ``num_envs`` envs with
``make_env(name, **kwargs)`` and steps them in one call:

* ``backend="serial"``: in the caller's thread, one after another.  Exceptions are isolated, but
  a hung env cannot be interrupted (``step_timeout`` is not enforced).
* ``backend="thread"``: daemon threads (``num_workers``, default one per env); a call that has
  run ``step_timeout`` seconds is *abandoned*: Python cannot kill a thread, so the hung call
  keeps running in the background while its env object is dropped, never touched again, and
  replaced.  The deadline fires for any hang in Python code (a loop, ``sleep``, I/O); the
  threads are daemons, so an abandoned call never keeps the interpreter from exiting.  A thread
  stuck in native code that holds the GIL stops every thread, the pool's included: an env that
  can do that declares ``blocks_in_native_code = True`` and the thread backend refuses it
  (use ``backend="process"``), unless it moves those calls out of the process itself
  (``isolate_native_calls``, below).  Envs should release the GIL (I/O, subprocesses, native
  code) for threads to help.
* ``backend="process"``: a :class:`grouprl.workers.WorkerPool` with one persistent worker
  process per env (start method ``forkserver`` where available, else ``spawn``); each call is
  pinned to its env's worker.  A hung worker is terminated (SIGTERM, which runs the env's
  ``close()``, then SIGKILL after 1 s), a crashed one reaped, and a fresh one started at once;
  the other envs, each in its own process, are unaffected.  Factories must be importable in the
  worker: built-in names, ``"module:Attr"`` import strings and module-level registered factories
  work.  As with any spawn/forkserver multiprocessing, a script that builds such a pool must
  guard its entry point with ``if __name__ == "__main__":`` (workers re-import the main module).
* ``backend="ray"`` (optional extra ``grouprl[ray]``): one Ray actor per env
  (:mod:`grouprl.envs.ray_backend`), so envs can run on other hosts of a Ray cluster
  (``ray_address`` or ``RAY_ADDRESS``; ``ray_actor_options`` places them, default
  ``num_cpus=0``).  Hangs are cut off at ``step_timeout`` and crashes isolated as with
  ``"process"``: the actor is killed and rebuilt.  For envs that must live elsewhere; on one
  machine ``"process"`` costs far less.

Optional env hooks the pool uses (neither is part of :class:`~grouprl.envs.base.TextEnv`):

* ``isolate_native_calls()``: the in-process backends (serial, thread) call it on every env they
  build; the env then runs each call that can block in native code (e.g. a symbolic answer
  check: sympy on ``9^{9^{9^{9}}}``) in a child process with a deadline of its own
  (:class:`~grouprl.envs.reasoning.ReasoningEnv` does, for its verifier).  The function
  :func:`isolate_native_calls` applies it to an env made outside a pool.
* ``blocks_in_native_code = True`` (class attribute): the env can block in native code and has
  no ``isolate_native_calls``; the thread backend refuses it with a message.

Results (:class:`ResetResult`, :class:`StepResult`) are plain dataclasses.  The pool counts steps
since reset and ends an episode at ``max_steps`` (``done=True, truncated=True``).  When an env's
reset/step raises, times out or its worker dies, the result has ``failed=True`` (``done=True``,
``reward=0.0``, ``error`` says why), ``stats`` is updated and the env is replaced by a fresh
instance (a new worker process at once; in-process backends build the new object at its next
call); the trainer drops failed trajectories.  Replacements are unlimited by default
(``max_restarts``).  Every env's result of a call is processed (its status, its step count, its
replacement) before anything is raised, so one env's failure never loses the others' results.
A failed reset is retried on the fresh env up to 3 times, then :class:`EnvResetFailed` (or, with
``allow_failed=True``, a failed :class:`ResetResult`).  After an episode ends (done or failed)
the caller passes ``None`` as that env's action until the next reset; passing an action raises
``ValueError``.

Fault budget
------------
``max_failed_fraction`` (``None``: no budget) bounds the failed trajectories of a *window*: the
window opens at construction and again at each :meth:`EnvPool.new_window` (the trainer opens
one per iteration).  It counts ``episodes`` (envs reset in it) and ``failures`` (episodes ended
by a failed step or expert-plan call — an exception, a crash, a hang past ``step_timeout`` — or
never started because their reset kept failing; a reset that succeeds on retry is counted in
``stats`` only).  When ``failures`` exceeds ``max_failed_fraction · max(episodes, num_envs)``
the call that saw it raises :class:`EnvFaultBudgetExceeded` (after processing every env's
result: ``results`` holds them); 1.0 never raises.  ``window`` holds the counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from grouprl.validation import check_choice, check_int, check_number
from grouprl.workers import CallResult

from .backends import (
    ProcessBackend,
    SerialBackend,
    ThreadBackend,
    describe,
    expert_plan,
    isolate_native_calls,
)
from .base import anchor_of
from .ray_backend import RayBackend
from .registry import resolve_factory

__all__ = ["BACKENDS", "EnvFault", "EnvFaultBudgetExceeded", "EnvPool", "EnvResetFailed",
           "ResetResult", "StepResult", "expert_plan", "isolate_native_calls"]

BACKENDS = ("serial", "thread", "process", "ray")
RESET_RETRIES = 3


class EnvFault(RuntimeError):
    """An env fault the pool does not absorb; the caller should save its work and stop.

    ``results``: every env's result of the call that raised (each processed: failed envs are
    replaced), or ``None``."""

    def __init__(self, message: str, results: list[Any] | None = None) -> None:
        super().__init__(message)
        self.results = results


class EnvFaultBudgetExceeded(EnvFault):
    """More env failures in the current window than ``max_failed_fraction`` allows (or the
    explicit ``max_restarts`` cap is spent); the message names the counts and the option."""


class EnvResetFailed(EnvFault):
    """An env's reset kept failing on fresh envs (``RESET_RETRIES`` retries)."""


@dataclass
class ResetResult:
    """One env's reset: observation, task text, grouping anchor and admissible actions.

    ``failed``/``error`` mirror :class:`StepResult`; :meth:`EnvPool.reset` retries failed resets
    and raises when they keep failing, so the results it returns have ``failed=False`` (unless
    called with ``allow_failed=True``).  ``category``: the reset info's ``"category"`` (the
    episode's task in a multi-task env), else ``None``.
    """

    observation: str
    task: str
    anchor: Hashable
    admissible_actions: list[str] | None
    failed: bool = False
    error: str | None = None
    category: str | None = None


@dataclass
class StepResult:
    """One env's step.  ``truncated``: ended by the pool's ``max_steps``; ``failed``: the env
    raised, hung or died (then ``done=True``, ``reward=0.0`` and ``error`` says why)."""

    observation: str
    reward: float
    done: bool
    won: bool
    valid: bool
    anchor: Hashable
    admissible_actions: list[str] | None
    truncated: bool = False
    failed: bool = False
    error: str | None = None
    extra: dict | None = None


class EnvPool:
    """``num_envs`` envs ``make_env(env_name, **env_kwargs)`` stepped as a batch.

    Args:
        env_name: registered name or ``"module:Attr"`` import string (see ``registry``).
        env_kwargs: keyword arguments of every env.
        num_envs: batch size.
        backend: ``"serial"``, ``"thread"``, ``"process"`` or ``"ray"`` (module docstring).
        max_steps: the pool ends an episode after this many steps (``truncated=True``).
        step_timeout: seconds a reset/step may take (thread, process, ray; ``None``: no
            limit; not enforced by ``"serial"``).
        num_workers: threads of the ``"thread"`` backend (default ``num_envs``); must stay
            ``None`` for the others (``"process"`` always runs one worker per env).
        max_failed_fraction: the fault budget of a window (module docstring), in [0, 1];
            ``None`` (default): no budget.
        max_restarts: env replacements allowed over the pool's lifetime, all backends;
            ``None`` (default): unlimited.  A failure once it is spent leaves the env failed and
            the call raises :class:`EnvFaultBudgetExceeded`.
        start_timeout: seconds a worker process or actor may take to build its env
            (``"process"``, ``"ray"``; ``None``: no limit) and the thread backend's initial
            construction.
        start_method: multiprocessing start method of ``"process"`` (default ``"forkserver"``
            where available, else ``"spawn"``).
        ray_address: the Ray cluster to connect to (``"ray"``, only when Ray is not initialised
            yet; ``None``: ``RAY_ADDRESS``, else a local instance).
        ray_actor_options: ``.options()`` of every env actor (``"ray"``; default
            ``{"num_cpus": 0}``).

    ``stats`` holds cumulative ``failures`` (failed resets/steps/plans, timeouts included),
    ``restarts`` and ``timeouts``; ``window`` the current window's ``episodes`` and
    ``failures`` (failed trajectories).  Use as a context manager or call :meth:`close`.
    """

    def __init__(self, env_name: str, env_kwargs: dict[str, Any] | None = None,
                 num_envs: int = 1, *, backend: str = "serial", max_steps: int | None = None,
                 step_timeout: float | None = 30.0, num_workers: int | None = None,
                 max_failed_fraction: float | None = None, max_restarts: int | None = None,
                 start_timeout: float | None = 120.0, start_method: str | None = None,
                 ray_address: str | None = None,
                 ray_actor_options: dict[str, Any] | None = None) -> None:
        self._closed = True  # until fully built (close()/__del__ stay safe)
        self._backend: Any = None
        check_int("num_envs", num_envs, 1)
        check_choice("backend", backend, BACKENDS)
        check_int("max_steps", max_steps, 1, none_ok=True)
        for name, value in (("step_timeout", step_timeout), ("start_timeout", start_timeout)):
            check_number(name, value, 0, low_open=True, none_ok=True, note="seconds")
        if num_workers is not None:
            if backend != "thread":
                raise ValueError(f"num_workers: only used by backend='thread' (the process "
                                 f"backend runs one worker per env); got {num_workers!r} with "
                                 f"backend={backend!r}")
            check_int("num_workers", num_workers, 1)
        for name, value in (("ray_address", ray_address), ("ray_actor_options", ray_actor_options)):
            if value is not None and backend != "ray":
                raise ValueError(f"{name}: only used by backend='ray'; got {value!r} with "
                                 f"backend={backend!r}")
        if ray_actor_options is not None and not isinstance(ray_actor_options, dict):
            raise TypeError(f"ray_actor_options: must be a dict or None, got "
                            f"{type(ray_actor_options).__name__}")
        check_number("max_failed_fraction", max_failed_fraction, 0, 1, none_ok=True)
        check_int("max_restarts", max_restarts, 0, none_ok=True)
        if env_kwargs is not None and not isinstance(env_kwargs, dict):
            raise TypeError(f"env_kwargs: must be a dict or None, got {type(env_kwargs).__name__}")
        self.env_name = env_name
        self.env_kwargs = dict(env_kwargs or {})
        self.backend = backend
        self.max_steps = max_steps
        self.step_timeout = None if step_timeout is None else float(step_timeout)
        self.max_failed_fraction = (None if max_failed_fraction is None
                                    else float(max_failed_fraction))
        self.max_restarts = max_restarts
        self.stats: dict[str, int] = {"failures": 0, "restarts": 0, "timeouts": 0}
        self.window: dict[str, int] = {"episodes": 0, "failures": 0}
        self.errors: dict[int, str] = {}   # env index → the text of its latest failure
        self._n = num_envs
        self._status = ["new"] * num_envs  # new | running | done | failed
        self._steps = [0] * num_envs
        self._over: list[str] = []  # why the restart cap stopped a replacement (this call)
        self._last_error: str | None = None
        factory = resolve_factory(env_name)
        if backend == "serial":
            self._backend = SerialBackend(factory, self.env_kwargs, num_envs)
        elif backend == "thread":
            self._backend = ThreadBackend(factory, self.env_kwargs, num_envs,
                                           num_workers or num_envs)
        elif backend == "ray":
            self._backend = RayBackend(factory, env_name, self.env_kwargs, num_envs,
                                       ray_address, ray_actor_options)
        else:
            self._backend = ProcessBackend(factory, env_name, self.env_kwargs, num_envs,
                                            start_method, start_timeout, self.step_timeout)
        self._closed = False
        try:
            self._backend.start(start_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def num_envs(self) -> int:
        """Number of envs in the pool."""
        return self._n

    @property
    def worker_pids(self) -> list[int | None]:
        """PIDs of the current worker processes (``"process"`` backend), else ``[]``."""
        if not isinstance(self._backend, ProcessBackend):
            return []
        return self._backend.pool.pids

    def new_window(self) -> dict[str, int]:
        """Open a new fault-budget window (the trainer calls it at the start of each
        iteration's rollout); returns the counts of the window just closed."""
        closed, self.window = self.window, {"episodes": 0, "failures": 0}
        return closed

    # -- reset --------------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int], *, allow_failed: bool = False) -> list[ResetResult]:
        """Reset env ``i`` with ``seeds[i]``; a failed reset is retried on a fresh env 3 times,
        then :class:`EnvResetFailed` — or, with ``allow_failed``, a failed
        :class:`ResetResult` for that env (pass ``None`` as its action until the next reset)."""
        self._check_open()
        seeds = list(seeds)
        if len(seeds) != self._n:
            raise ValueError(f"seeds: need one seed per env ({self._n}), got {len(seeds)}")
        self.window["episodes"] += self._n
        results: list[ResetResult | None] = [None] * self._n
        calls = {i: ("reset", seed) for i, seed in enumerate(seeds)}
        given_up: list[str] = []
        for attempt in range(RESET_RETRIES + 1):
            retry = {}
            for i, out in self._backend.call(calls, self.step_timeout).items():
                if out.ok:
                    try:
                        results[i] = self._reset_result(out.value)
                        self._status[i], self._steps[i] = "running", 0
                        continue
                    except Exception as exc:
                        out = CallResult(False, error=f"malformed reset result: {describe(exc)}")
                self._fail(i, out, trajectory=False)
                if attempt == RESET_RETRIES or self._over:
                    tries = attempt + 1
                    self.window["failures"] += 1  # this episode never starts
                    results[i] = ResetResult("", "", None, None, failed=True, error=out.error)
                    given_up.append(f"env {i}: reset(seed={seeds[i]!r}) failed {tries} "
                                    f"time{'s' * (tries > 1)}; last error: {out.error}")
                else:
                    retry[i] = calls[i]
            calls = retry
            if not calls:
                break
        self._raise_if_over(results)
        if given_up and not allow_failed:
            raise EnvResetFailed("; ".join(given_up), results)
        return results  # type: ignore[return-value]

    def reset_groups(self, task_seeds: Sequence[int], group_size: int, *,
                     allow_failed: bool = False) -> list[ResetResult]:
        """Reset env ``i`` with ``task_seeds[i // group_size]`` (groups of one task each);
        ``allow_failed`` as in :meth:`reset`."""
        check_int("group_size", group_size, 1)
        task_seeds = list(task_seeds)
        if len(task_seeds) * group_size != self._n:
            raise ValueError(f"task_seeds/group_size: len(task_seeds)·group_size = "
                             f"{len(task_seeds)}·{group_size} must equal num_envs={self._n}")
        return self.reset([task_seeds[i // group_size] for i in range(self._n)],
                          allow_failed=allow_failed)

    @staticmethod
    def _reset_result(value: Any) -> ResetResult:
        obs, info = value
        actions = info.get("admissible_actions")
        category = info.get("category")
        return ResetResult(obs, info.get("task", ""), anchor_of(info, obs),
                           None if actions is None else list(actions),
                           category=None if category is None else str(category))

    # -- expert plans -------------------------------------------------------------------------

    def expert_plans(self, envs: Sequence[int] | None = None) -> list[list[str] | None]:
        """The expert's plan (:func:`expert_plan`) of the current episode of each env in
        ``envs`` (default: every running env), computed where the env lives (its worker
        process for ``"process"``) under ``step_timeout``.  An entry is ``None`` for an env not
        asked, or whose call failed: the failure is counted and the env replaced like a failed
        step (pass ``None`` as its action until the next reset).  ``TypeError`` when an env
        has neither ``expert_actions()`` nor ``gold_actions()``."""
        self._check_open()
        wanted = [i for i in range(self._n) if self._status[i] == "running"] if envs is None \
            else list(envs)
        for i in wanted:
            check_int("envs[]", i, 0, self._n - 1)
            if self._status[i] != "running":
                raise ValueError(f"envs: env {i} has no running episode (reset it first)")
        plans: list[list[str] | None] = [None] * self._n
        missing = None
        for i, out in self._backend.call({i: ("expert_plan", None) for i in wanted},
                                         self.step_timeout).items():
            if out.ok:
                try:
                    kind, value = out.value
                    if kind == "missing":
                        missing = value
                    else:
                        plans[i] = list(value)
                    continue
                except Exception as exc:
                    out = CallResult(False, error=f"malformed expert plan: {describe(exc)}")
            self._fail(i, out)
        if missing is not None:
            self._over = []
            raise TypeError(f"env {missing} has no expert_actions() or gold_actions(): no "
                            "expert trajectories to clone or to train a tokenizer on (for "
                            "behaviour cloning: set bc.enabled=false)")
        self._raise_if_over(plans)
        return plans

    # -- step ---------------------------------------------------------------------------------

    def step(self, actions: Sequence[str | None]) -> list[StepResult | None]:
        """Step env ``i`` with ``actions[i]``; ``None`` skips an inactive env (result ``None``)."""
        self._check_open()
        actions = list(actions)
        if len(actions) != self._n:
            raise ValueError(f"actions: need one action (or None) per env ({self._n}), "
                             f"got {len(actions)}")
        calls = {}
        for i, action in enumerate(actions):
            if action is None:
                continue
            status = self._status[i]
            if status == "new":
                raise RuntimeError(f"actions[{i}]: env {i} was never reset; call reset() first")
            if status in ("done", "failed"):
                why = "failed" if status == "failed" else "finished its episode"
                raise ValueError(f"actions[{i}]: env {i} {why}; pass None for it until the "
                                 f"next reset")
            calls[i] = ("step", action)
        results: list[StepResult | None] = [None] * self._n
        for i, out in self._backend.call(calls, self.step_timeout).items():
            if out.ok:
                try:
                    results[i] = self._step_result(i, out.value)
                    continue
                except Exception as exc:
                    out = CallResult(False, error=f"malformed step result: {describe(exc)}")
            self._fail(i, out)
            results[i] = StepResult("", 0.0, True, False, False, None, None, failed=True,
                                    error=out.error)
        self._raise_if_over(results)
        return results

    def _step_result(self, i: int, value: Any) -> StepResult:
        obs, reward, done, info = value
        actions = info.get("admissible_actions")
        result = StepResult(obs, float(reward), bool(done), bool(info.get("won", False)),
                            bool(info.get("valid", True)), anchor_of(info, obs),
                            None if actions is None else list(actions),
                            extra=info.get("extra"))
        self._steps[i] += 1
        if not result.done and self.max_steps is not None and self._steps[i] >= self.max_steps:
            result.done = result.truncated = True
        if result.done:
            self._status[i] = "done"
        return result

    # -- failures -----------------------------------------------------------------------------

    def _fail(self, i: int, out: CallResult, *, trajectory: bool = True) -> None:
        """Count a failure (in the window too when it ends a ``trajectory``; a reset that is
        retried does not) and replace env ``i`` by a fresh instance.  Never raises: what must
        stop the caller is raised by :meth:`_raise_if_over` once every result is processed."""
        self._status[i] = "failed"
        self.stats["failures"] += 1
        self.window["failures"] += trajectory
        self._last_error = f"env {i}: {out.error}"
        self.errors[i] = str(out.error)
        if out.timed_out:
            self.stats["timeouts"] += 1
        if self.max_restarts is not None and self.stats["restarts"] >= self.max_restarts:
            self._over.append(f"env {i} failed ({out.error}) and max_restarts="
                              f"{self.max_restarts} restarts are used up")
            return
        try:
            self._backend.restart(i, out)
        except Exception as exc:  # noqa: BLE001 - the next call that needs env i retries it
            self._last_error += f"; its replacement failed to start: {describe(exc)}"
            return
        self.stats["restarts"] += 1

    def _raise_if_over(self, results: list[Any]) -> None:
        """Raise :class:`EnvFaultBudgetExceeded` when the restart cap stopped a replacement in
        this call, or the window's failures exceed ``max_failed_fraction``."""
        over, self._over = self._over, []
        if over:
            raise EnvFaultBudgetExceeded("; ".join(over), results)
        f = self.max_failed_fraction
        w = self.window
        if f is None or f >= 1.0:
            return
        episodes = max(w["episodes"], self._n)
        if w["failures"] > f * episodes:
            timeout = "" if self.step_timeout is None else f"={self.step_timeout:g}s"
            raise EnvFaultBudgetExceeded(
                f"env faults: {w['failures']} failed of {episodes} trajectories in this "
                f"window (exceptions, crashes, hangs past step_timeout{timeout}), more than "
                f"max_failed_fraction={f:g} allows ({int(f * episodes)}); last: "
                f"{self._last_error}. Fix the env, or raise the budget (config key "
                f"env.max_failed_fraction; 1 = never stop)", results)

    # -- lifetime -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EnvPool is closed")

    def close(self) -> None:
        """Close every env and stop workers; idempotent."""
        backend = getattr(self, "_backend", None)
        self._closed = True
        self._backend = None
        if backend is not None:
            backend.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (f"EnvPool({self.env_name!r}, num_envs={self._n}, backend={self.backend!r}, "
                f"max_steps={self.max_steps}, step_timeout={self.step_timeout})")
