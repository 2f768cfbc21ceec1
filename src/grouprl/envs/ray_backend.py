"""The ``ray`` backend of :class:`~grouprl.envs.EnvPool`: one Ray actor per env, so that envs can
run on other hosts of a Ray cluster (spec-scale-out §1c; optional extra ``grouprl[ray]``).

Contract (the same as the other backends, :mod:`grouprl.envs.backends`):
``call({env index: (method, argument)}, timeout)`` returns a
:class:`~grouprl.workers.CallResult` per env and never raises for an env's fault:

* an env that raises: the actor catches it and the result carries ``"Type: message"``;
  :meth:`RayBackend.restart` closes the env (1 s grace), kills the actor and starts a fresh one;
* a hang: the calls are awaited together with ``ray.wait(timeout=step_timeout)``; an env whose
  call is not back by then gets ``timed_out=True`` and its actor is ``ray.kill``-ed at once (a
  busy actor can do nothing else), then rebuilt by ``restart``;
* a crash (the actor's process dies): the result names Ray's error, and ``restart`` rebuilds
  the actor.

Actors are created with ``num_cpus=0`` (``ray_actor_options`` replaces the defaults, e.g.
``{"num_cpus": 1, "resources": {"sciworld_host": 1}}`` to place them): Ray keeps an actor that
asks for more CPUs than are free pending forever, and a rollout would wait on it silently.

Session: when Ray is not initialised yet the backend calls ``ray.init`` itself — connecting to
``ray_address`` or, if that is ``None``, the ``RAY_ADDRESS`` environment variable, else starting a
local instance (``ray.init(include_dashboard=False)``).  Closing a pool kills its actors only:
the session stays up for the next pool (a trainer builds several: behaviour cloning, rollouts,
each evaluation; a new session would cost seconds each time) and ends with the process (Ray's
exit hook) or :func:`shutdown_session`.  A session the caller opened (their own ``ray.init``,
e.g. with a ``runtime_env``) is used as it is and never shut down.  On a cluster, ``grouprl``
and the env's package must be importable on every node that hosts an env actor.

Cost (measured on 2 CPU cores, spec §1c): ``ray.init`` 4–9 s and about 650 MiB RSS, then about
80 MiB per env actor; one batched step of 8 Sokoban envs 6.6 ms against 0.07 ms in-process.  Use
it when envs must live on other hosts (JVM-heavy games, sandboxed tools); on one machine
``backend="process"`` isolates envs as well at a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from grouprl.workers import CallResult

from .backends import _close_quietly, _env_call, _make_env, describe
from .optional import require

__all__ = ["DEFAULT_ACTOR_OPTIONS", "CLOSE_GRACE", "EnvActor", "RayBackend", "connect",
           "shutdown_session"]

DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0}
CLOSE_GRACE = 1.0
"""Seconds an env that raised (or the pool being closed) gets to run its ``close()`` before its
actor is killed."""

# Whether the current session is one this module started (shut down by shutdown_session()).
_SESSION: dict[str, bool] = {"ours": False}


def connect(address: str | None = None) -> Any:
    """The ``ray`` module, initialised: the caller's session if there is one, else a session
    this module starts (module docstring).  One-line ``ImportError`` naming
    ``pip install 'grouprl[ray]'`` when Ray is missing."""
    ray = require("ray", extra="ray")
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
        _SESSION["ours"] = True
    return ray


def shutdown_session() -> None:
    """``ray.shutdown()`` if the current session is one :func:`connect` started (a no-op for a
    session the caller opened, or when there is none).  Close the pools first: their actors
    die with the session."""
    if not _SESSION["ours"]:
        return
    _SESSION["ours"] = False
    ray = require("ray", extra="ray")
    if ray.is_initialized():
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class EnvActor:
    """The actor's class (``ray.remote`` is applied by :class:`RayBackend`): one env.

    A constructor error is kept, not raised, so that :meth:`ready` reports it as one line (Ray
    would otherwise wrap it in a multi-line ``ActorDiedError``)."""

    def __init__(self, factory: Callable[..., Any] | None, name: str,
                 kwargs: dict[str, Any]) -> None:
        self.env: Any = None
        self.error: str | None = None
        try:
            self.env = _make_env(factory, name, kwargs)
        except Exception as exc:  # noqa: BLE001 - reported by ready()
            self.error = describe(exc)

    def ready(self) -> str | None:
        """``None`` once the env is built, else why its construction failed."""
        return self.error

    def pid(self) -> int:
        """The actor's process id (diagnostics, tests)."""
        return os.getpid()

    def call(self, method: str, arg: Any) -> tuple[bool, Any]:
        """``(True, result)`` of ``reset``/``step``/``expert_plan`` (as the process backend's
        worker computes it), or ``(False, "Type: message")`` when the env raised."""
        if self.env is None:
            return False, f"construction failed: {self.error}"
        try:
            return True, _env_call(self.env, (method, arg))
        except Exception as exc:  # noqa: BLE001 - the env's fault, reported per env
            return False, describe(exc)

    def close(self) -> None:
        _close_quietly(self.env)
        self.env = None


class RayBackend:
    """One Ray actor per env (module docstring); the pool's backend protocol."""

    def __init__(self, factory: Callable[..., Any], name: str, kwargs: dict[str, Any], n: int,
                 address: str | None = None,
                 actor_options: dict[str, Any] | None = None) -> None:
        self.factory, self.name, self.kwargs = factory, name, kwargs
        self.address = address
        self.actor_options = dict(DEFAULT_ACTOR_OPTIONS if actor_options is None
                                  else actor_options)
        self.actors: list[Any] = [None] * n
        self.fresh: set[int] = set()  # envs whose actor has not yet reported its env built
        self.start_timeout: float | None = None
        self.ray: Any = None  # the ray module once connected
        self._cls: Any = None

    def start(self, start_timeout: float | None) -> None:
        self.ray = connect(self.address)
        self.start_timeout = start_timeout
        try:
            self.ray.cloudpickle.dumps(self.factory)
        except Exception:  # noqa: BLE001 - the actor resolves the name itself
            self.factory = None
        self._cls = self.ray.remote(EnvActor).options(**self.actor_options)
        failed = self._ensure(range(len(self.actors)))
        if failed:
            i = min(failed)
            raise RuntimeError(f"env {i}: {failed[i].error}")

    def _ensure(self, indices: Iterable[int]) -> dict[int, CallResult]:
        """Start an actor for each env in ``indices`` that has none, and wait (all together,
        ``start_timeout``) for those not yet known to be ready; the failed result of each one
        whose env could not be built (its actor is killed; the next call starts another)."""
        indices = list(indices)
        for i in indices:
            if self.actors[i] is None:
                self.actors[i] = self._spawn()
                self.fresh.add(i)
        fresh = [i for i in indices if i in self.fresh]
        self.fresh.difference_update(fresh)
        if not fresh:
            return {}
        refs = {i: self.actors[i].ready.remote() for i in fresh}
        done = set(self.ray.wait(list(refs.values()), num_returns=len(refs),
                                 timeout=self.start_timeout)[0])
        failed: dict[int, CallResult] = {}
        for i, ref in refs.items():
            if ref not in done:
                failed[i] = CallResult(False, timed_out=True, error=(
                    f"construction failed: the env actor did not start within "
                    f"{self.start_timeout}s"))
            else:
                try:
                    error = self.ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the actor died while starting
                    error = _first_line(exc)
                if error is None:
                    continue
                failed[i] = CallResult(False, error=f"construction failed: {error}")
            self._kill(i, grace=False)
        return failed

    def _spawn(self) -> Any:
        return self._cls.remote(self.factory, self.name, self.kwargs)

    def call(self, calls: dict[int, tuple[str, Any]],
             timeout: float | None) -> dict[int, CallResult]:
        out = self._ensure(calls)
        refs = {i: self.actors[i].call.remote(method, arg)
                for i, (method, arg) in calls.items() if i not in out}
        done: set[Any] = set()
        if refs:
            done = set(self.ray.wait(list(refs.values()), num_returns=len(refs),
                                     timeout=timeout)[0])
        for i, ref in refs.items():
            if ref not in done:
                self._kill(i, grace=False)
                out[i] = CallResult(False, error=f"timeout after {timeout}s", timed_out=True)
                continue
            try:
                ok, value = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the actor died (crash, kill, lost node)
                out[i] = CallResult(False, error=f"env actor died: {_first_line(exc)}")
                continue
            out[i] = CallResult(True, value) if ok else CallResult(False, error=value)
        return {i: out[i] for i in calls}

    def restart(self, i: int, out: CallResult) -> None:
        """Replace env ``i``'s actor by a fresh one (not waited for: the next call waits for
        every fresh actor together, and reports an env that cannot be built as a failed
        result, as the serial backend does)."""
        self._kill(i, grace=not out.timed_out)
        self.actors[i] = self._spawn()
        self.fresh.add(i)

    def _kill(self, i: int, *, grace: bool) -> None:
        """Kill env ``i``'s actor; with ``grace`` its env may first run ``close()``."""
        actor, self.actors[i] = self.actors[i], None
        self.fresh.discard(i)
        if actor is None:
            return
        if grace:
            with contextlib.suppress(Exception):
                self.ray.wait([actor.close.remote()], timeout=CLOSE_GRACE)
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Close every env (``CLOSE_GRACE`` seconds in all) and kill the actors; idempotent.
        The session stays up for later pools (module docstring)."""
        ray, self.ray = self.ray, None
        if ray is None:
            return
        actors = [a for a in self.actors if a is not None]
        self.actors = [None] * len(self.actors)
        self.fresh.clear()
        if ray.is_initialized() and actors:
            with contextlib.suppress(Exception):
                refs = [a.close.remote() for a in actors]
                ray.wait(refs, num_returns=len(refs), timeout=CLOSE_GRACE)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
