"""Persistent worker processes with state built once, a per-call deadline and restarts.

:class:`WorkerPool` starts ``num_workers`` processes (start method ``"spawn"`` by default).
Each runs ``state = init()`` once, then answers calls ``handle(state, payload)``; ``init``,
``handle`` and ``finalize`` travel by pickle, so they must be module-level functions or
``functools.partial`` objects of them.  Two users: the env pool's ``"process"`` backend (the
state is an env, calls are pinned to their worker with :meth:`WorkerPool.call`) and the answer
verifier (the state is a warmed-up verifier, calls go to any free worker with
:meth:`WorkerPool.map`).

Faults never raise into the caller's loop; each call gets a :class:`CallResult`:

* ``handle`` raises, or its result does not pickle: ``ok=False``, ``error="Type: message"``;
  the worker and its state stay.
* the call runs past ``timeout`` seconds: the worker is stopped (SIGTERM, then SIGKILL after
  ``kill_grace`` seconds) and replaced at once by a fresh one that rebuilds its state;
  ``timed_out=True``, ``restarted=True``.
* the worker dies (``os._exit``, a segfault, the OOM killer): ``error="worker process died
  (exit code N)"``, replaced at once, ``restarted=True``.
* a (re)started worker cannot build its state, or is not ready within ``start_timeout``: the
  call waiting for it fails with ``"worker failed to start: ..."`` and the slot stays empty
  until work for it arrives (or :meth:`WorkerPool.restart`).
* a replacement process cannot even be created (``OSError`` from ``fork``/``spawn``: too many
  processes or open files): the calls that need that slot fail with an error naming it, the slot
  stays empty and the next call that needs it tries again; the other workers' results of the
  same call are kept.

``stats`` counts ``calls`` (answered), ``failures`` (answered with ``ok=False``), ``timeouts``
and ``crashes`` (subsets of failures) and ``restarts`` (replacement workers started).
``max_restarts`` (default ``None``: unlimited) caps the restarts over the pool's lifetime; once
spent, a failed worker is not replaced and calls that need it fail with an error naming the
budget (an explicit :meth:`WorkerPool.restart` raises ``RuntimeError``).  :meth:`close` asks
each worker to stop (running ``finalize(state)`` there), waits up to 2 s, then kills and reaps
every process; the same happens when the pool is garbage-collected or the interpreter exits,
and when a call is interrupted (``KeyboardInterrupt``), so no stale call or zombie is left.

Why not ``concurrent.futures.ProcessPoolExecutor``
--------------------------------------------------
The executor (Python 3.11, spawn context) was tried first; what it did:

1. a worker that dies fails *every* running call with ``BrokenProcessPool`` (a healthy
   ``sleep(1)`` call on the other worker included), and the executor accepts no more work;
2. a running call cannot be stopped: ``Future.cancel()`` returns ``False`` and there is no
   public way to kill one worker before Python 3.14 (``kill_workers``), so a hung call keeps
   its worker, and ``shutdown()`` (also the one run at interpreter exit) waits for it;
3. an ``initializer`` that raises is logged in the child, and the caller only sees
   ``BrokenProcessPool('A process in the process pool was terminated abruptly ...')``;
4. a call goes to any free worker, while an env's state lives in one process (reset, then
   steps on the same object).

One single-worker executor per slot would answer 1 and 4, but not 2 and 3.
So the pool keeps a small hand-written dispatch loop over standard-library pieces: spawned
``multiprocessing.Process`` objects, one ``Pipe`` each, and
``multiprocessing.connection.wait`` on the pipes and process sentinels with the nearest
deadline as its timeout.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_handles
from typing import Any

from grouprl.validation import check_choice, check_int, check_number
from grouprl.worker_process import Worker, describe, main_module_imports, shutdown_workers

__all__ = ["CallResult", "WorkerPool", "WorkerStartError", "main_module_imports"]



@dataclass(frozen=True)
class CallResult:
    """Outcome of one call.

    Attributes:
        ok: ``handle`` returned; ``value`` holds its result.
        value: the result when ``ok``, else ``None``.
        error: why the call failed (``None`` when ``ok``).
        timed_out: the call (or the start of the worker it waited for) passed its deadline.
        restarted: the worker was replaced by a fresh one after this call (hang or crash).
    """

    ok: bool
    value: Any = None
    error: str | None = None
    timed_out: bool = False
    restarted: bool = False


class WorkerStartError(RuntimeError):
    """Raised by :meth:`WorkerPool.start` when worker ``index`` cannot build its state."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"worker {index} failed to start: {reason}")
        self.index, self.reason = index, reason


class _Round:
    """The jobs of one :meth:`WorkerPool.call` / :meth:`WorkerPool.map`: queues and results."""

    def __init__(self, jobs: Sequence[tuple[int | None, Any]], n: int) -> None:
        self.payloads = [payload for _, payload in jobs]
        self.results: list[CallResult | None] = [None] * len(jobs)
        self.remaining = len(jobs)
        self.pinned: list[deque[int]] = [deque() for _ in range(n)]
        self.shared: deque[int] = deque()
        for j, (slot, _) in enumerate(jobs):
            (self.shared if slot is None else self.pinned[slot]).append(j)

    def has_work(self, i: int) -> bool:
        return bool(self.pinned[i] or self.shared)

    def take(self, i: int) -> int | None:
        queue = self.pinned[i] or self.shared
        return queue.popleft() if queue else None


class WorkerPool:
    """``num_workers`` persistent processes, each holding ``init()``; see the module docstring.

    Args:
        init: builds the worker's state, once per worker process (again after a restart).
        handle: ``handle(state, payload) -> result``, run in the worker for each call.
        num_workers: number of worker processes.
        finalize: ``finalize(state)``, run in the worker when it stops (errors ignored).
        timeout: seconds one call may run (``None``: no limit).
        start_timeout: seconds a worker may take to start and build its state (``None``: no
            limit).
        kill_grace: seconds between SIGTERM (which runs ``finalize``) and SIGKILL when a worker
            that passed its deadline is stopped; 0 kills at once.
        max_restarts: replacement workers allowed over the pool's lifetime (``None``:
            unlimited); see the module docstring for what happens once it is spent.
        start_method: ``"spawn"`` (default), ``"forkserver"`` or ``"fork"``.
        preload: modules the forkserver imports once (``"forkserver"`` only).  ``"__main__"``
            stands for the main module's imports (:func:`main_module_imports`).
        name: process name prefix; worker ``i`` is ``f"{name}-{i}"``.

    Workers start in the constructor without waiting; :meth:`start` waits for them (calls also
    wait for the workers they need).  Not thread-safe: one caller at a time.
    """

    def __init__(self, init: Callable[[], Any], handle: Callable[[Any, Any], Any],
                 num_workers: int, *, finalize: Callable[[Any], None] | None = None,
                 timeout: float | None = None, start_timeout: float | None = 120.0,
                 kill_grace: float = 0.0, max_restarts: int | None = None,
                 start_method: str = "spawn", preload: Sequence[str] = (),
                 name: str = "grouprl-worker") -> None:
        self._closed = True  # until the workers list exists (close() stays safe)
        check_int("num_workers", num_workers, 1)
        for option, value in (("timeout", timeout), ("start_timeout", start_timeout)):
            check_number(option, value, 0, low_open=True, none_ok=True, note="seconds")
        check_number("kill_grace", kill_grace, 0, note="seconds")
        check_int("max_restarts", max_restarts, 0, none_ok=True)
        check_choice("start_method", start_method, tuple(mp.get_all_start_methods()))
        try:
            pickle.dumps((init, handle, finalize))
        except Exception as exc:
            raise TypeError("init/handle/finalize: must pickle to reach the worker processes "
                            "(module-level functions, or functools.partial of them with "
                            f"picklable arguments); {describe(exc)}") from None
        self.timeout = None if timeout is None else float(timeout)
        self.start_timeout = None if start_timeout is None else float(start_timeout)
        self.kill_grace = float(kill_grace)
        self.max_restarts = max_restarts
        self.name = name
        self.stats: dict[str, int] = {"calls": 0, "failures": 0, "timeouts": 0, "crashes": 0,
                                      "restarts": 0}
        self._ctx = mp.get_context(start_method)
        if preload and start_method == "forkserver":
            modules = list(preload)
            if "__main__" in modules:
                modules += [m for m in main_module_imports() if m not in modules]
            self._ctx.set_forkserver_preload(modules)
        self._target = (init, handle, finalize)
        self._spawn_error: str | None = None
        self._workers: list[Worker | None] = [None] * num_workers
        self._finalizer = weakref.finalize(self, shutdown_workers, self._workers, self.kill_grace)
        self._closed = False
        try:
            for i in range(num_workers):
                self._workers[i] = self._spawn(i)
        except BaseException:
            self.close()
            raise

    # -- public --------------------------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker (``None`` for an empty slot)."""
        return [None if w is None else w.process.pid for w in self._workers]

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Wait until every worker has built its state; :class:`WorkerStartError` otherwise."""
        self._check_open()
        try:
            for i, w in enumerate(self._workers):
                if w is None or w.state != "starting":
                    continue
                event = None
                while event is None:
                    left = w.deadline - time.monotonic()
                    wait_handles([w.conn, w.process.sentinel],
                                 timeout=None if math.isinf(left) else max(0.0, left))
                    event = w.event(time.monotonic())
                reason = self._started(i, w, event)
                if reason is not None:
                    raise WorkerStartError(i, reason)
        except WorkerStartError:
            raise
        except BaseException:
            self.close()
            raise

    def call(self, payloads: Mapping[int, Any]) -> dict[int, CallResult]:
        """Run ``payloads[i]`` on worker ``i`` (its state), all workers at once."""
        self._check_open()
        for i in payloads:
            check_int("worker index", i, 0, self.num_workers - 1)
        results = self._run([(i, payload) for i, payload in payloads.items()])
        return dict(zip(payloads, results))

    def map(self, payloads: Sequence[Any]) -> list[CallResult]:
        """Run each payload on the next free worker; results in input order."""
        self._check_open()
        return self._run([(None, payload) for payload in payloads])

    def restart(self, i: int) -> None:
        """Replace worker ``i`` by a fresh one (its state rebuilt); counts as a restart.  The
        old worker is asked to stop (running ``finalize``) and given ``kill_grace`` seconds
        before SIGTERM / SIGKILL.  ``RuntimeError`` when ``max_restarts`` is spent."""
        self._check_open()
        check_int("worker index", i, 0, self.num_workers - 1)
        if not self._budget_left():
            raise RuntimeError(f"worker {i}: max_restarts={self.max_restarts} restarts are "
                               "used up")
        self._take_down(i)
        if not self._respawn(i):
            raise RuntimeError(f"worker {i}: {self._empty_note()}")

    def close(self) -> None:
        """Stop every worker and reap its process; idempotent."""
        self._closed = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"WorkerPool(num_workers={self.num_workers}, timeout={self.timeout}, "
                f"name={self.name!r}, closed={self._closed})")

    # -- workers -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("WorkerPool is closed")

    def _spawn(self, i: int) -> Worker:
        return Worker(self._ctx, self._target, f"{self.name}-{i}", self.start_timeout)

    def _budget_left(self) -> bool:
        return self.max_restarts is None or self.stats["restarts"] < self.max_restarts

    def _respawn(self, i: int) -> bool:
        """Start a replacement in the empty slot ``i``; ``False`` when the budget is spent or
        the process cannot be created (``_spawn_error`` says why; the slot stays empty)."""
        if not self._budget_left():
            return False
        try:
            self._workers[i] = self._spawn(i)
        except Exception as exc:  # noqa: BLE001 - e.g. EAGAIN/EMFILE: retried at the next need
            self._spawn_error = describe(exc)
            return False
        self._spawn_error = None
        self.stats["restarts"] += 1
        return True

    def _take_down(self, i: int, grace: float | None = None) -> None:
        w, self._workers[i] = self._workers[i], None
        if w is not None:
            w.stop(self.kill_grace if grace is None else grace)

    def _started(self, i: int, w: Worker, event: tuple[str, Any]) -> str | None:
        """Handle a starting worker's event: ``None`` when ready, else why it failed (the
        slot is then emptied)."""
        kind, data = event
        if kind == "msg" and data[0] == "ready":
            w.state = "idle"
            return None
        if kind == "msg":
            w.process.join(1.0)  # it exits by itself after reporting
            reason = str(data[1])
        elif kind == "died":
            reason = data
        else:
            reason = f"timeout after {self.start_timeout}s starting the worker"
        self._take_down(i)
        return reason

    # -- one round of calls --------------------------------------------------------------------

    def _run(self, jobs: Sequence[tuple[int | None, Any]]) -> list[CallResult]:
        rnd = _Round(jobs, self.num_workers)
        try:
            while rnd.remaining:
                self._dispatch(rnd)
                active = [(i, w) for i, w in enumerate(self._workers)
                          if w is not None and w.state != "idle"]
                if not rnd.remaining:
                    break
                if not active:  # every slot is empty: no budget left, or no process could start
                    for j in [*rnd.shared, *(j for q in rnd.pinned for j in q)]:
                        self._finish(rnd, j, CallResult(False, error=self._empty_note()))
                    break
                left = min(w.deadline for _, w in active) - time.monotonic()
                wait_handles([h for _, w in active for h in (w.conn, w.process.sentinel)],
                             timeout=None if math.isinf(left) else max(0.0, left))
                now = time.monotonic()
                for i, w in active:
                    event = w.event(now)
                    if event is not None:
                        self._on_event(rnd, i, w, event)
        except BaseException:  # Ctrl-C: busy workers would answer stale calls later
            self.close()
            raise
        return rnd.results  # type: ignore[return-value]

    def _empty_note(self) -> str:
        """Why an empty slot has no worker: a failed process start, or the spent budget."""
        if self._spawn_error is not None and self._budget_left():
            return f"no worker: starting a replacement process failed: {self._spawn_error}"
        return f"no worker left: max_restarts={self.max_restarts} restarts are used up"

    def _dispatch(self, rnd: _Round) -> None:
        """Send work to idle workers; start replacements in empty slots that have work."""
        for i in range(self.num_workers):
            if not rnd.has_work(i):
                continue
            if self._workers[i] is None and not self._respawn(i):
                if rnd.pinned[i]:
                    self._finish(rnd, rnd.pinned[i].popleft(), CallResult(
                        False, error=f"worker {i}: {self._empty_note()}"))
                continue
            w = self._workers[i]
            if w is None or w.state != "idle":
                continue
            pinned = bool(rnd.pinned[i])
            job = rnd.take(i)
            try:
                w.conn.send(("call", rnd.payloads[job]))
            except (OSError, ValueError) as exc:  # it died while idle
                note = f"{w.exit_note()}; {describe(exc)}"
                self._take_down(i, grace=0.0)
                if pinned:  # its state is gone with it: the call fails
                    self._finish(rnd, job, CallResult(False, error=note,
                                                      restarted=self._respawn(i)), crashed=True)
                else:  # any worker will do: retry on the next free one
                    rnd.shared.appendleft(job)
                    self._respawn(i)
                continue
            w.state, w.job = "busy", job
            w.deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout

    def _on_event(self, rnd: _Round, i: int, w: Worker, event: tuple[str, Any]) -> None:
        if w.state == "starting":
            reason = self._started(i, w, event)
            job = None if reason is None else rnd.take(i)
            if job is not None:
                self._finish(rnd, job, CallResult(False, error=f"worker failed to start: "
                                                  f"{reason}", timed_out=event[0] == "late"),
                             crashed=event[0] == "died")
            return
        kind, data = event
        job, w.job = w.job, None
        assert job is not None
        if kind == "msg":
            w.state = "idle"
            status, value = data
            result = (CallResult(True, value) if status == "ok"
                      else CallResult(False, error=str(value)))
        elif kind == "died":
            self._take_down(i, grace=0.0)
            result = CallResult(False, error=data, restarted=self._respawn(i))
        else:
            self._take_down(i)
            result = CallResult(False, error=f"timeout after {self.timeout}s", timed_out=True,
                                restarted=self._respawn(i))
        self._finish(rnd, job, result, crashed=kind == "died")

    def _finish(self, rnd: _Round, job: int, result: CallResult, crashed: bool = False) -> None:
        rnd.results[job] = result
        rnd.remaining -= 1
        self.stats["calls"] += 1
        if not result.ok:
            self.stats["failures"] += 1
            self.stats["timeouts"] += result.timed_out
            self.stats["crashes"] += crashed
