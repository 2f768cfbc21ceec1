"""The :class:`Verifier`: answer checks over batches, in this process or in persistent worker
processes with a wall-clock deadline per check (:class:`grouprl.workers.WorkerPool`); a crashed or
hung check scores 0 with reason ``error`` / ``timeout`` and never stops training. One answer is
checked by :func:`grouprl.rewards.verify.verify_answer` (spec-rewards §C1)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from grouprl.rewards.verify import (
    VerifyResult,
    _check_mode,
    _resolve_backend,
    verify_answer,
)
from grouprl.validation import check_choice, check_int, check_number
from grouprl.workers import CallResult, WorkerPool, WorkerStartError

__all__ = ["Verifier", "close_isolated_verifiers", "CheckFn"]

_STARTUP_TIMEOUT_S = 120.0  # a worker process must be ready within this (imports included)


# ---------------------------------------------------------------------------------------------
# Verifier: in-process or a pool of worker processes with wall-clock timeouts
# ---------------------------------------------------------------------------------------------

CheckFn = Callable[[str, str], VerifyResult]


def _call(fn: CheckFn | None, kwargs: dict[str, Any], response: str, gold: str) -> VerifyResult:
    if fn is None:
        return verify_answer(response, gold, **kwargs)
    try:
        return fn(response, gold)
    except Exception:  # noqa: BLE001
        return VerifyResult(False, None, gold, "error")


def _verifier_state(fn: CheckFn | None, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Worker state: import and warm up (math-verify's first call builds its parsers)."""
    if fn is None:
        verify_answer("\\boxed{1}", "1", **kwargs)
    return fn, kwargs


def _verify_item(state: tuple[Any, ...], item: tuple[str, str]) -> VerifyResult:
    """Worker call: one ``(response, gold)`` pair."""
    fn, kwargs = state
    return _call(fn, kwargs, *item)


class _SharedWorkers:
    """Worker processes shared by the isolated :class:`Verifier` objects of this process that
    have one setting.  Each call checks out an idle single-worker :class:`WorkerPool` — a new
    one when none is idle and fewer than ``cap`` exist, else it waits for one — so concurrent
    callers (envs stepped in threads) never share a pipe and one hung check holds up only its
    own caller."""

    def __init__(self, init: Callable[[], Any], cap: int, timeout: float | None,
                 start_method: str) -> None:
        self.init, self.cap, self.timeout, self.start_method = init, cap, timeout, start_method
        self._idle: list[WorkerPool] = []
        self._made = 0  # pools in existence (idle + checked out) or being made
        self._cond = threading.Condition()
        self._closed = False

    def run(self, items: list[tuple[str, str]]) -> list[CallResult]:
        """Judge ``items`` on one checked-out worker, in order."""
        pool = self._checkout()
        try:
            out = pool.map(items)
        except BaseException:  # Ctrl-C: the pool closed itself
            self._discard(pool)
            raise
        with self._cond:
            closed = self._closed
            if not closed:
                self._idle.append(pool)
                self._cond.notify()
        if closed:  # close() ran during the call
            self._discard(pool)
        return out

    def _checkout(self) -> WorkerPool:
        with self._cond:
            while not self._idle and self._made >= self.cap:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:  # a new worker, started outside the lock (it takes a while)
            pool = WorkerPool(self.init, _verify_item, 1, timeout=self.timeout,
                              start_timeout=_STARTUP_TIMEOUT_S, start_method=self.start_method,
                              name="grouprl-verifier")
            try:
                pool.start()
            except BaseException:
                pool.close()
                raise
        except WorkerStartError as err:
            self._discard(None)
            raise RuntimeError(f"verifier worker process failed to start: {err.reason}; "
                               "run with workers=0 to see the error in this process") from None
        except BaseException:
            self._discard(None)
            raise
        return pool

    def _discard(self, pool: WorkerPool | None) -> None:
        if pool is not None:
            pool.close()
        with self._cond:
            self._made -= 1
            self._cond.notify()

    def close(self) -> None:
        """Stop the idle workers (checked-out ones stop when their call returns)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._made -= len(idle)
            self._cond.notify_all()
        for pool in idle:
            pool.close()


_SHARED: dict[tuple, _SharedWorkers] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_PID = [os.getpid()]


def _shared_workers(key: tuple, init: Callable[[], Any], cap: int, timeout: float | None,
                    start_method: str) -> _SharedWorkers:
    with _SHARED_LOCK:
        if _SHARED_PID[0] != os.getpid():  # a forked child: the workers are not its own
            _SHARED.clear()
            _SHARED_PID[0] = os.getpid()
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = _SharedWorkers(init, cap, timeout, start_method)
        shared.cap = max(shared.cap, cap)
        return shared


def close_isolated_verifiers() -> None:
    """Stop the worker processes shared by isolated verifiers (they also stop when the
    interpreter exits); a later isolated call starts new ones."""
    with _SHARED_LOCK:
        shared = list(_SHARED.values())
        _SHARED.clear()
    for s in shared:
        s.close()


class Verifier:
    """Callable answer verifier for training loops and environments.

    ``Verifier(mode, backend)(response, gold) -> VerifyResult``; :meth:`verify_batch` judges a
    list. With ``workers == 0`` calls run here (math-verify's own signal timeout applies only
    in the main thread). With ``workers > 0`` they run in that many persistent worker
    processes, started on first use, with a wall-clock limit of ``timeout_s`` per call: a call
    over the limit returns ``VerifyResult(False, None, gold, "timeout")`` and its worker is
    killed and replaced; a worker that dies mid-call gives reason ``"error"`` and is replaced.
    Either way training gets a reward-0 result and later calls work.

    With ``isolated=True`` (or after :meth:`isolate`) calls never run in this process: with
    ``workers > 0`` or not, they go to worker processes shared by every isolated verifier of
    this process with the same settings, one per concurrent call, at most
    ``max(workers, CPU count)``, with the same ``timeout_s`` deadline. The reasoning env's
    verifier is isolated when the env runs in the trainer's process, where a check stuck in
    native code would freeze everything (module docstring).

    Worker start-up (spawn) costs one interpreter per worker: about 0.3 s each for the builtin
    backend and about 1 s of CPU each for math-verify (its import plus one warm-up call, done
    before the worker reports ready); two math-verify workers were ready in 2–3 s on a busy
    2-core machine. Start the pool once and reuse it.

    A Verifier pickles without its processes (an unpickled copy starts its own on first use),
    so it can live inside environment objects that are sent to other processes. Inside a
    daemonic process (which may not have children) it falls back to ``workers=0``.

    Args:
        mode, backend: as in :func:`verify_answer`; the backend is resolved (``"auto"``) here.
        timeout_s: per-call wall-clock limit with workers (default 5 s), also passed to
            math-verify as its own timeout. ``None``: no limit.
        workers: number of worker processes; 0 (default) runs in-process.
        require_think_close: as in :func:`verify_answer`.
        fn: replaces :func:`verify_answer` by ``fn(response, gold) -> VerifyResult`` (custom
            checks, tests). It must be a top-level function so that it pickles; an exception
            in it gives reason ``"error"``.
        start_method: multiprocessing start method of the workers (default ``"spawn"``: safe
            with torch and CUDA loaded; ``"forkserver"`` also works).
        isolated: never verify in this process (above).

    Attributes:
        stats: counts ``calls``, ``timeouts``, ``errors``, ``unparsable_gold`` and
            ``worker_restarts``.
    """

    def __init__(self, mode: str = "boxed", backend: str = "auto", *,
                 timeout_s: float | None = 5.0, workers: int = 0,
                 require_think_close: bool = False, fn: CheckFn | None = None,
                 start_method: str = "spawn", isolated: bool = False) -> None:
        _check_mode(mode)
        check_int("workers", workers, 0)
        check_number("timeout_s", timeout_s, 0, low_open=True, none_ok=True, note="seconds")
        check_choice("start_method", start_method, tuple(mp.get_all_start_methods()))
        if fn is not None and (workers > 0 or isolated):
            try:
                pickle.dumps(fn)
            except Exception as err:
                raise ValueError(f"fn must be a picklable top-level function, got {fn!r}: "
                                 f"{err}") from None
        self.mode = mode
        self.backend = _resolve_backend(backend) if fn is None else backend
        self.timeout_s = timeout_s
        self.workers = workers
        self.require_think_close = require_think_close
        self.fn = fn
        self.start_method = start_method
        self.isolated = bool(isolated)
        self.stats: dict[str, int] = {"calls": 0, "timeouts": 0, "errors": 0,
                                      "unparsable_gold": 0, "worker_restarts": 0}
        self._init_runtime()

    def isolate(self) -> None:
        """From now on never verify in this process (``isolated=True``, class docstring)."""
        if self.fn is not None:
            try:
                pickle.dumps(self.fn)
            except Exception as err:
                raise ValueError(f"fn must be a picklable top-level function to isolate the "
                                 f"verifier, got {self.fn!r}: {err}") from None
        with self._lock:
            self.isolated = True

    def _init_runtime(self) -> None:
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()

    @property
    def _kwargs(self) -> dict[str, Any]:
        return {"mode": self.mode, "backend": self.backend,
                "require_think_close": self.require_think_close, "timeout_s": self.timeout_s}

    def _use_pool(self) -> bool:
        if self.workers == 0 and not self.isolated:
            return False
        if mp.current_process().daemon:
            warnings.warn("Verifier: daemonic processes cannot start workers; verifying "
                          "in-process (workers=0)", RuntimeWarning, stacklevel=3)
            self.workers, self.isolated = 0, False
            return False
        return True

    def _shared(self) -> _SharedWorkers:
        kwargs = self._kwargs
        try:
            hash(self.fn)
            fn_key: Any = self.fn
        except TypeError:
            fn_key = id(self.fn)
        key = (fn_key, tuple(sorted(kwargs.items())), self.timeout_s, self.start_method)
        return _shared_workers(key, partial(_verifier_state, self.fn, kwargs),
                               max(self.workers, os.cpu_count() or 1), self.timeout_s,
                               self.start_method)

    def _ensure_pool(self) -> WorkerPool:
        if self._pool is None:
            pool = WorkerPool(partial(_verifier_state, self.fn, self._kwargs), _verify_item,
                              self.workers, timeout=self.timeout_s,
                              start_timeout=_STARTUP_TIMEOUT_S, start_method=self.start_method,
                              name="grouprl-verifier")
            try:
                pool.start()
            except WorkerStartError as err:
                pool.close()
                raise RuntimeError(f"verifier worker process failed to start: {err.reason}; "
                                   "run with workers=0 to see the error in this process"
                                   ) from None
            except BaseException:
                pool.close()
                raise
            self._pool = pool
        return self._pool

    def _count(self, results: list[VerifyResult]) -> list[VerifyResult]:
        self.stats["calls"] += len(results)
        for r in results:
            if r.reason == "timeout":
                self.stats["timeouts"] += 1
            elif r.reason == "error":
                self.stats["errors"] += 1
            elif r.reason == "unparsable_gold":
                self.stats["unparsable_gold"] += 1
        return results

    def __call__(self, response: str, gold: str) -> VerifyResult:
        return self.verify_batch([response], [gold])[0]

    def verify_batch(self, responses: Sequence[str], golds: Sequence[str]) -> list[VerifyResult]:
        """Judge ``responses[i]`` against ``golds[i]``; spread over the workers when there are
        any. Results are in input order."""
        if len(responses) != len(golds):
            raise ValueError(f"verify_batch: {len(responses)} responses but {len(golds)} golds")
        items = [(str(r), str(g)) for r, g in zip(responses, golds)]
        with self._lock:
            if not self._use_pool():
                return self._count([_call(self.fn, self._kwargs, r, g) for r, g in items])
            if self.isolated:
                outcomes = self._shared().run(items) if items else []
                self.stats["worker_restarts"] += sum(out.restarted for out in outcomes)
            else:
                pool = self._ensure_pool()
                restarts = pool.stats["restarts"]
                try:
                    outcomes = pool.map(items)
                except BaseException:  # Ctrl-C: the pool closed itself; start afresh next time
                    self._close_pool()
                    raise
                self.stats["worker_restarts"] += pool.stats["restarts"] - restarts
            return self._count([
                out.value if out.ok else
                VerifyResult(False, None, gold, "timeout" if out.timed_out else "error")
                for out, (_, gold) in zip(outcomes, items)])

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._lock:
            self._close_pool()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pool", "_lock"):
            state.pop(key, None)
        state["stats"] = dict(self.stats)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (f"Verifier(mode={self.mode!r}, backend={self.backend!r}, "
                f"timeout_s={self.timeout_s!r}, workers={self.workers}, "
                f"require_think_close={self.require_think_close}, isolated={self.isolated})")
