"""Where an :class:`~grouprl.envs.EnvPool`'s envs live and how a call reaches them, one backend
each (the pool itself — results, retries, fault budget — is :mod:`grouprl.envs.pool`):

* ``serial``: in the caller's thread, no deadline;
* ``thread``: one daemon thread per call with the ``step_timeout`` deadline (a hang in Python is
  abandoned and its env replaced; envs that block in native code are refused unless they can
  isolate those calls themselves);
* ``process``: one persistent spawned worker per env (:class:`grouprl.workers.WorkerPool`): any
  hang or crash is cut off and the worker rebuilt.

Every backend answers ``call({env index: (method, argument)}, timeout)`` with
:class:`~grouprl.workers.CallResult` per env and never raises for an env's fault.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from functools import partial
from typing import Any

from grouprl.workers import CallResult, WorkerPool, WorkerStartError

from .base import OPTIONAL_RESET_INFO_KEYS, OPTIONAL_STEP_INFO_KEYS, RESET_INFO_KEYS, STEP_INFO_KEYS
from .registry import resolve_factory

__all__ = ["SerialBackend", "ThreadBackend", "ProcessBackend", "expert_plan",
           "isolate_native_calls", "describe"]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _slim(info: Any, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise TypeError(f"env returned info of type {type(info).__name__}, expected dict")
    return {k: info[k] for k in keys if k in info}


EXPERT_METHODS = ("expert_actions", "gold_actions")


def expert_plan(env: Any) -> list[str] | None:
    """The env's expert plan for its current episode: ``env.expert_actions()`` (a solver, e.g.
    Sokoban's BFS), else ``env.gold_actions()`` (a gold path); ``None`` when it has neither
    method.  ``RuntimeError`` when the method finds no plan (returns ``None``)."""
    for name in EXPERT_METHODS:
        fn = getattr(env, name, None)
        if callable(fn):
            plan = fn()
            if plan is None:
                raise RuntimeError(f"{type(env).__name__}.{name}() found no solution")
            return list(plan)
    return None


def _plan_call(env: Any) -> tuple[str, Any]:
    """``("plan", actions)``, or ``("missing", env type name)`` when the env has no expert."""
    plan = expert_plan(env)
    return ("missing", type(env).__name__) if plan is None else ("plan", plan)


def isolate_native_calls(env: Any) -> Any:
    """Call the env's optional ``isolate_native_calls()`` hook (module docstring); returns
    ``env``.  For an env used in-process outside a pool (e.g. a verifier probe)."""
    hook = getattr(env, "isolate_native_calls", None)
    if callable(hook):
        hook()
    return env


def _call_env(env: Any, method: str, arg: Any) -> Any:
    """An in-process call: ``reset``/``step`` with ``arg``, or ``expert_plan``."""
    if method == "expert_plan":
        return _plan_call(env)
    return getattr(env, method)(arg)


# --------------------------------------------------------------------------------------------
# Backends: call({env index: (method, argument)}, timeout) -> {env index: CallResult}
# --------------------------------------------------------------------------------------------


class SerialBackend:
    def __init__(self, factory: Callable[..., Any], kwargs: dict[str, Any], n: int) -> None:
        self.factory, self.kwargs = factory, kwargs
        self.envs: list[Any] = [None] * n

    def build(self) -> Any:
        """A new env, its native calls isolated (the serial and thread backends run envs in
        this process, where nothing can interrupt native code)."""
        return isolate_native_calls(self.factory(**self.kwargs))

    def start(self, start_timeout: float | None) -> None:
        for i in range(len(self.envs)):
            try:
                self.envs[i] = self.build()
            except Exception as exc:
                raise RuntimeError(f"env {i}: construction failed: {describe(exc)}") from exc

    def call(self, calls: dict[int, tuple[str, Any]],
             timeout: float | None) -> dict[int, CallResult]:
        out = {}
        for i, (method, arg) in calls.items():
            try:
                if self.envs[i] is None:
                    self.envs[i] = self.build()
                out[i] = CallResult(True, _call_env(self.envs[i], method, arg))
            except Exception as exc:
                out[i] = CallResult(False, error=describe(exc))
        return out

    def restart(self, i: int, out: CallResult) -> None:
        old, self.envs[i] = self.envs[i], None  # rebuilt lazily by the next call
        _close_quietly(old)

    def close(self) -> None:
        for i, env in enumerate(self.envs):
            self.envs[i] = None
            _close_quietly(env)


def _close_quietly(env: Any) -> None:
    if env is not None:
        with contextlib.suppress(Exception):
            env.close()


class _DaemonExecutor:
    """The thread backend's executor: up to ``workers`` *daemon* threads.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so one call
    that never returns (an abandoned hang) would keep the process from ever exiting; daemon
    threads end with the interpreter.  Threads start on demand, like the standard executor's."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers, self.name = workers, name
        self._queue: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple, dict] | None] = \
            queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        if self._shutdown:
            raise RuntimeError("executor is shut down")
        fut: Future = Future()
        self._queue.put((fut, fn, args, kwargs))
        if not self._idle.acquire(timeout=0) and len(self._threads) < self.workers:
            t = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)
            del item, fut
            self._idle.release()

    def shutdown(self, cancel_futures: bool = False) -> None:
        """No more work; queued calls are cancelled (``cancel_futures``) or still run; each
        thread ends after its current call.  Never waits."""
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


class ThreadBackend(SerialBackend):
    def __init__(self, factory: Callable[..., Any], kwargs: dict[str, Any], n: int,
                 workers: int) -> None:
        super().__init__(factory, kwargs, n)
        self.workers = workers
        self.executor = self._new_executor()
        self.hung: set[int] = set()

    def _new_executor(self) -> _DaemonExecutor:
        return _DaemonExecutor(self.workers, "grouprl-env")

    def start(self, start_timeout: float | None) -> None:
        futures = {i: self.executor.submit(self.build) for i in range(len(self.envs))}
        for i, fut in futures.items():
            try:
                self.envs[i] = fut.result(timeout=start_timeout)
            except Exception as exc:
                raise RuntimeError(f"env {i}: construction failed: {describe(exc)}") from exc
        env = self.envs[0]
        if getattr(env, "blocks_in_native_code", False) and \
                not callable(getattr(env, "isolate_native_calls", None)):
            raise ValueError(
                f"backend='thread': env {type(env).__name__} declares blocks_in_native_code: a "
                "thread stuck in native code holds the GIL and no deadline can stop it (the "
                "whole process would freeze); use backend='process' (config: "
                "env.backend=process)")

    def _invoke(self, i: int, env: Any, method: str, arg: Any,
                starts: dict[int, float]) -> tuple[Any, CallResult]:
        starts[i] = time.monotonic()
        try:
            if env is None:
                env = self.build()
            return env, CallResult(True, _call_env(env, method, arg))
        except Exception as exc:
            return env, CallResult(False, error=describe(exc))

    def call(self, calls: dict[int, tuple[str, Any]],
             timeout: float | None) -> dict[int, CallResult]:
        starts: dict[int, float] = {}
        index: dict[Future, int] = {}

        def submit(i: int) -> Future:
            method, arg = calls[i]
            fut = self.executor.submit(self._invoke, i, self.envs[i], method, arg, starts)
            index[fut] = i
            return fut

        for i in calls:
            submit(i)
        pending = set(index)
        out: dict[int, CallResult] = {}
        while pending:
            wait_s = None
            if timeout is not None:
                now = time.monotonic()
                left = [starts[index[f]] + timeout - now for f in pending if index[f] in starts]
                wait_s = max(0.0, min(left + ([0.02] if len(left) < len(pending) else [])))
            done, pending = wait(pending, timeout=wait_s, return_when=FIRST_COMPLETED)
            for fut in done:
                i = index[fut]
                exc = fut.exception()
                if exc is not None:  # a BaseException escaped _invoke
                    out[i] = CallResult(False, error=describe(exc))
                    continue
                env, out[i] = fut.result()
                self.envs[i] = env  # keeps a lazily built env (also when the call raised)
            if timeout is None:
                continue
            now = time.monotonic()
            expired = [f for f in pending
                       if index[f] in starts and now - starts[index[f]] >= timeout]
            if not expired:
                continue
            for fut in expired:
                i = index[fut]
                pending.discard(fut)
                self.hung.add(i)
                out[i] = CallResult(False, error=f"timeout after {timeout}s", timed_out=True)
            # The hung threads keep their workers forever: move to a fresh executor and resubmit
            # the calls that have not started yet.
            old, self.executor = self.executor, self._new_executor()
            for fut in [f for f in pending if index[f] not in starts]:
                if fut.cancel():
                    pending.discard(fut)
                    pending.add(submit(index[fut]))
            old.shutdown()
        return out

    def restart(self, i: int, out: CallResult) -> None:
        if i in self.hung:  # abandoned: a background thread may still be using it
            self.hung.discard(i)
            self.envs[i] = None
        else:
            super().restart(i, out)

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)
        for i in self.hung:
            self.envs[i] = None
        super().close()


# -- process backend: a WorkerPool with one env per worker --------------------------------------


def _make_env(factory: Callable[..., Any] | None, name: str, kwargs: dict[str, Any]) -> Any:
    """Worker state: the env (an unpicklable factory is resolved by name in the worker)."""
    return (factory or resolve_factory(name))(**kwargs)


def _env_call(env: Any, request: tuple[str, Any]) -> tuple[Any, ...]:
    """Worker call: ``("reset", seed)``, ``("step", action)`` or ``("expert_plan", None)``;
    info slimmed to what pickles."""
    method, arg = request
    if method == "reset":
        obs, info = env.reset(arg)
        return obs, _slim(info, RESET_INFO_KEYS + OPTIONAL_RESET_INFO_KEYS)
    if method == "expert_plan":
        return _plan_call(env)
    obs, reward, done, info = env.step(arg)
    return obs, reward, done, _slim(info, STEP_INFO_KEYS + OPTIONAL_STEP_INFO_KEYS)


class ProcessBackend:
    def __init__(self, factory: Callable[..., Any], name: str, kwargs: dict[str, Any], n: int,
                 start_method: str | None, start_timeout: float | None,
                 step_timeout: float | None) -> None:
        methods = mp.get_all_start_methods()
        method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        try:
            pickle.dumps(factory)
            self.factory: Callable[..., Any] | None = factory
        except Exception:  # e.g. a lambda: the worker resolves the name itself
            self.factory = None
        # kill_grace: a hung env gets 1 s after SIGTERM to run its close() (e.g. stop a JVM)
        self.pool = WorkerPool(partial(_make_env, self.factory, name, kwargs), _env_call, n,
                               finalize=_close_quietly, timeout=step_timeout,
                               start_timeout=start_timeout, kill_grace=1.0, start_method=method,
                               preload=("__main__", "grouprl.envs"), name="grouprl-env")

    def start(self, start_timeout: float | None) -> None:
        try:
            self.pool.start()
        except WorkerStartError as err:
            hint = ("" if self.factory is not None else "; the factory cannot be pickled, so "
                    "register a module-level factory or use a 'module:Attr' import string")
            raise RuntimeError(f"env {err.index}: worker failed to start: {err.reason}{hint}"
                               ) from None

    def call(self, calls: dict[int, tuple[str, Any]],
             timeout: float | None) -> dict[int, CallResult]:
        return self.pool.call(calls)  # the pool's timeout is step_timeout

    def restart(self, i: int, out: CallResult) -> None:
        if not out.restarted:  # a hung or dead worker was replaced already
            self.pool.restart(i)

    def close(self) -> None:
        self.pool.close()


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------
