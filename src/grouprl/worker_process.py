"""The worker-process side of :class:`grouprl.workers.WorkerPool`: the loop a spawned worker
runs (build its state once, answer calls, exit on SIGTERM or a close request), the parent's handle
on one worker process, stopping a set of workers, and the imports a forkserver preloads."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import sysconfig
import time
import types
from collections.abc import Callable
from typing import Any

__all__ = ["Worker", "shutdown_workers", "main_module_imports", "describe"]

CLOSE_WAIT_S = 2.0  # close(): how long idle workers get to stop by themselves


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def main_module_imports() -> list[str]:
    """The already imported modules the main module's globals come from (its imports).

    Every spawn/forkserver child runs the main module again (as ``__mp_main__``), so a main
    script that imports torch or the grouprl CLI costs each new worker that import (about 1 s
    for torch alone).  The forkserver's own ``"__main__"`` preload is meant to prevent that,
    but in CPython 3.11 it never reaches the server (it looks for a ``main_path`` key that the
    preparation data does not have), so the pool preloads these modules instead: the server
    imports them once and each fork starts warm.

    Only installed modules are listed (the standard library, ``site-packages`` and grouprl):
    the server imports them with its own ``sys.path``, and an import error other than
    ``ImportError`` would end it."""
    main = sys.modules.get("__main__")
    names: set[str] = set()
    for value in list(vars(main).values()) if main is not None else []:
        try:
            name = value.__name__ if isinstance(value, types.ModuleType) else value.__module__
        except Exception:  # noqa: BLE001 - any object may sit in the main namespace
            continue
        if isinstance(name, str) and name in sys.modules and _installed(name):
            names.add(name)
    return sorted(names)


def _installed(name: str) -> bool:
    """Whether module ``name`` comes from the standard library, ``site-packages`` or grouprl."""
    top = name.partition(".")[0]
    if top in ("__main__", "__mp_main__", "builtins"):
        return False
    if top == "grouprl":
        return True
    path = getattr(sys.modules.get(top), "__file__", None)
    if not isinstance(path, str):
        return False
    parts = os.path.normpath(path).split(os.sep)
    stdlib = os.path.normpath(sysconfig.get_paths()["stdlib"]) + os.sep
    return "site-packages" in parts or "dist-packages" in parts or \
        os.path.normpath(path).startswith(stdlib)


# -- the worker process ------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(0)  # unwinds to _serve's finally: finalize(state) runs


def _serve(conn: Any, init: Callable[[], Any], handle: Callable[[Any, Any], Any],
           finalize: Callable[[Any], None] | None) -> None:
    """Worker main: build the state, then answer ``("call", payload)`` until ``("stop", _)``
    or a closed pipe.  Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    built, state = False, None
    try:
        try:
            state, built = init(), True
        except Exception as exc:
            conn.send(("error", f"construction failed: {describe(exc)}"))
            return
        conn.send(("ready", os.getpid()))
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                return
            if kind != "call":
                return
            try:
                reply: tuple[str, Any] = ("ok", handle(state, payload))
            except Exception as exc:
                reply = ("error", describe(exc))
            try:
                conn.send(reply)
            except Exception as exc:  # the result does not pickle
                conn.send(("error", f"cannot send the result: {describe(exc)}"))
    finally:
        if built and finalize is not None:
            with contextlib.suppress(Exception):
                finalize(state)
        with contextlib.suppress(Exception):
            conn.close()


# -- the parent's side -------------------------------------------------------------------------


class Worker:
    """One worker process, the parent's end of its pipe, and what it is doing."""

    def __init__(self, ctx: Any, target: tuple[Any, ...], name: str,
                 start_timeout: float | None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child, *target), name=name, daemon=True)
        try:
            self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child.close()
        self.state = "starting"  # "starting" -> "idle" <-> "busy" -> "stopped"
        self.job: int | None = None
        self.deadline = math.inf if start_timeout is None else time.monotonic() + start_timeout

    def exit_note(self) -> str:
        self.process.join(0.2)
        code = self.process.exitcode
        return "worker process died" + ("" if code is None else f" (exit code {code})")

    def event(self, now: float) -> tuple[str, Any] | None:
        """``("msg", message)``, ``("died", note)``, ``("late", None)`` or ``None``."""
        try:
            if self.conn.poll():
                return "msg", self.conn.recv()
        except (EOFError, OSError):
            return "died", self.exit_note()
        if not self.process.is_alive():
            return "died", self.exit_note()
        return ("late", None) if now >= self.deadline else None

    def stop(self, grace: float) -> None:
        """An idle worker is asked to stop and given ``grace`` seconds; then SIGTERM,
        ``grace`` seconds, SIGKILL; the process is reaped."""
        p = self.process
        if self.state == "idle" and grace > 0 and p.is_alive():
            with contextlib.suppress(Exception):
                self.conn.send(("stop", None))  # it runs finalize(state) and exits
            p.join(grace)
        self.state = "stopped"
        with contextlib.suppress(Exception):
            self.conn.close()
        if grace > 0 and p.is_alive():
            p.terminate()
            p.join(grace)
        if p.is_alive():
            p.kill()
        p.join(5.0)
        with contextlib.suppress(ValueError):
            p.close()


def shutdown_workers(workers: list[Worker | None], grace: float) -> None:
    """Stop every worker: idle ones are asked to finish, busy ones stopped at once."""
    live = [w for w in workers if w is not None]
    workers[:] = [None] * len(workers)
    for w in [w for w in live if w.state == "busy"]:
        live.remove(w)
        w.stop(grace)
    for w in live:
        with contextlib.suppress(Exception):
            w.conn.send(("stop", None))
        w.state = "stopping"
    deadline = time.monotonic() + CLOSE_WAIT_S
    for w in live:
        with contextlib.suppress(Exception):
            w.process.join(max(0.0, deadline - time.monotonic()))
        w.stop(grace)
