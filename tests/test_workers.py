"""WorkerPool: state built once per worker, results in order, per-call deadlines, crashes and
failed starts, the restart budget, exact counters, and shutdown without live or zombie
processes (close, Ctrl-C, garbage collection, interpreter exit)."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from grouprl.workers import CallResult, WorkerPool, WorkerStartError
from testing_utils import alive

# -- worker-side helpers (module level: spawned workers import this module to unpickle them) --


def make_state(tag: str, marker_dir: str | None = None) -> dict:
    """Worker state; ``marker_dir/fail_init`` present makes construction fail."""
    if tag == "fail" or (marker_dir and (Path(marker_dir) / "fail_init").exists()):
        raise ValueError("bad init")
    if tag == "die":
        os._exit(5)
    if tag == "slow":
        time.sleep(60)
    return {"tag": tag, "pid": os.getpid(), "calls": 0, "marker_dir": marker_dir}


def handle(state: dict, payload: tuple) -> tuple:
    """``(op, arg)``: counts the call in the state, then echoes, sleeps, exits or raises."""
    op, arg = payload
    state["calls"] += 1
    if op == "sleep":
        time.sleep(arg)
    elif op == "exit":
        os._exit(arg)
    elif op == "raise":
        raise RuntimeError(arg)
    elif op == "unpicklable":
        return lambda: None
    return state["tag"], state["pid"], state["calls"], arg


def finalize(state: dict) -> None:
    if state["marker_dir"]:
        (Path(state["marker_dir"]) / f"closed-{os.getpid()}").touch()


STATS0 = {"calls": 0, "failures": 0, "timeouts": 0, "crashes": 0, "restarts": 0}


def pool_of(n: int, tag: str = "A", marker_dir: str | None = None, **kw) -> WorkerPool:
    kw.setdefault("timeout", 0.5)
    return WorkerPool(partial(make_state, tag, marker_dir), handle, n, finalize=finalize,
                      name="grouprl-test", **kw)


# -- normal calls ------------------------------------------------------------------------------


def test_state_is_built_once_and_results_keep_their_order():
    with pool_of(2, timeout=5.0) as pool:
        pool.start()
        pids = pool.pids
        assert len(set(pids)) == 2 and all(alive(p) for p in pids)
        out = pool.map([("echo", k) for k in range(6)])
        assert all(r.ok and r.error is None for r in out)
        assert [r.value[3] for r in out] == list(range(6))
        per_worker: dict[int, list[int]] = {}
        for r in out:
            assert r.value[0] == "A" and r.value[1] in pids
            per_worker.setdefault(r.value[1], []).append(r.value[2])
        # each worker's counter lives in its state across calls: 1, 2, 3, ...
        assert all(counts == list(range(1, len(counts) + 1)) for counts in per_worker.values())
        res = pool.call({1: ("echo", "b"), 0: ("echo", "a")})
        assert list(res) == [1, 0]  # the caller's key order
        for i, arg in ((0, "a"), (1, "b")):
            assert res[i] == CallResult(True, ("A", pids[i], len(per_worker.get(pids[i], [])) + 1,
                                               arg))
        assert pool.call({}) == {} and pool.map([]) == []
        assert pool.stats == {**STATS0, "calls": 8}
        assert pool.pids == pids
        with pytest.raises(ValueError, match="worker index"):
            pool.call({2: ("echo", 0)})


# -- faults ------------------------------------------------------------------------------------


def test_call_past_its_deadline_is_cut_off_and_the_worker_rebuilt():
    with pool_of(2) as pool:
        pool.start()
        old = pool.pids
        assert pool.call({0: ("echo", 1)})[0].value == ("A", old[0], 1, 1)
        start = time.monotonic()
        res = pool.call({0: ("sleep", 60), 1: ("echo", 2)})
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 10.0  # cut at 0.5 s, not after 60 s
        assert res[0] == CallResult(False, None, "timeout after 0.5s", timed_out=True,
                                    restarted=True)
        assert res[1] == CallResult(True, ("A", old[1], 1, 2))
        new = pool.pids
        assert new[0] != old[0] and new[1] == old[1]
        assert not alive(old[0])  # killed and reaped
        # the replacement built a fresh state: its counter starts again
        assert pool.call({0: ("echo", 3)})[0] == CallResult(True, ("A", new[0], 1, 3))
        assert pool.stats == {**STATS0, "calls": 4, "failures": 1, "timeouts": 1,
                              "restarts": 1}


def test_crash_restarts_the_worker_and_an_exception_keeps_it():
    with pool_of(2) as pool:
        pool.start()
        old = pool.pids
        res = pool.call({0: ("exit", 7), 1: ("raise", "boom")})
        assert res[0] == CallResult(False, None, "worker process died (exit code 7)",
                                    restarted=True)
        assert res[1] == CallResult(False, None, "RuntimeError: boom")
        assert pool.pids[0] != old[0] and not alive(old[0])
        assert pool.pids[1] == old[1]
        bad = pool.call({1: ("unpicklable", None)})[1]
        assert not bad.ok and bad.error.startswith("cannot send the result: ")
        res = pool.call({0: ("echo", "x"), 1: ("echo", "y")})
        assert res[0] == CallResult(True, ("A", pool.pids[0], 1, "x"))  # rebuilt
        assert res[1] == CallResult(True, ("A", old[1], 3, "y"))  # same state: 3rd call
        assert pool.stats == {**STATS0, "calls": 5, "failures": 3, "crashes": 1,
                              "restarts": 1}


def test_map_mixes_failures_with_results_in_order():
    with pool_of(2) as pool:
        payloads = [("echo", 0), ("sleep", 60), ("exit", 3), ("echo", 3), ("raise", "r"),
                    ("echo", 5)]
        out = pool.map(payloads)
        assert [(r.ok, r.timed_out, r.restarted) for r in out] == [
            (True, False, False), (False, True, True), (False, False, True),
            (True, False, False), (False, False, False), (True, False, False)]
        assert [r.value[3] for r in out if r.ok] == [0, 3, 5]
        assert out[2].error == "worker process died (exit code 3)"
        assert out[4].error == "RuntimeError: r"
        assert pool.stats == {"calls": 6, "failures": 3, "timeouts": 1, "crashes": 1,
                              "restarts": 2}
        assert all(alive(p) for p in pool.pids)


@pytest.mark.parametrize("tag, reason", [
    ("fail", "construction failed: ValueError: bad init"),
    ("die", "worker process died (exit code 5)"),
    ("slow", "timeout after 0.5s starting the worker"),
])
def test_start_failures_name_the_worker_and_the_reason(tag, reason):
    with pool_of(1, tag, start_timeout=0.5) as pool:
        pid = pool.pids[0]
        with pytest.raises(WorkerStartError) as info:
            pool.start()
        assert (info.value.index, info.value.reason) == (0, reason)
        assert str(info.value) == f"worker 0 failed to start: {reason}"
        assert pool.pids == [None] and not alive(pid)


def test_replacement_that_cannot_start_fails_the_call_waiting_for_it(tmp_path):
    with pool_of(1, marker_dir=str(tmp_path)) as pool:
        pool.start()
        (tmp_path / "fail_init").touch()
        assert pool.call({0: ("exit", 1)})[0].restarted  # the replacement will fail to build
        res = pool.call({0: ("echo", 1)})[0]
        assert res == CallResult(False, None, "worker failed to start: construction failed: "
                                 "ValueError: bad init")
        assert pool.pids == [None]
        (tmp_path / "fail_init").unlink()
        pool.restart(0)
        assert pool.call({0: ("echo", 2)})[0] == CallResult(True, ("A", pool.pids[0], 1, 2))
        assert pool.stats == {"calls": 3, "failures": 2, "timeouts": 0, "crashes": 1,
                              "restarts": 2}


def test_restart_replaces_an_idle_worker_after_finalizing_its_state(tmp_path):
    with pool_of(2, marker_dir=str(tmp_path), kill_grace=2.0) as pool:
        pool.start()
        old = pool.pids
        assert pool.call({0: ("echo", 1)})[0].value[2] == 1
        pool.restart(0)
        assert not alive(old[0]) and [p.name for p in tmp_path.iterdir()] == [f"closed-{old[0]}"]
        assert pool.pids[0] != old[0] and pool.pids[1] == old[1]
        assert pool.call({0: ("echo", 2)})[0] == CallResult(True, ("A", pool.pids[0], 1, 2))
        assert pool.stats == {**STATS0, "calls": 2, "restarts": 1}


def test_restart_budget_is_a_pool_option():
    with pool_of(1, max_restarts=1) as pool:
        assert pool.call({0: ("exit", 7)})[0].restarted
        second = pool.call({0: ("exit", 7)})[0]
        assert second == CallResult(False, None, "worker process died (exit code 7)")
        assert pool.pids == [None]
        spent = "no worker left: max_restarts=1 restarts are used up"
        assert pool.call({0: ("echo", 1)})[0] == CallResult(False, None, f"worker 0: {spent}")
        assert pool.map([("echo", 1)]) == [CallResult(False, None, spent)]
        with pytest.raises(RuntimeError, match="worker 0: max_restarts=1"):
            pool.restart(0)
        assert pool.stats == {"calls": 4, "failures": 4, "timeouts": 0, "crashes": 2,
                              "restarts": 1}


def test_a_replacement_process_that_cannot_be_created_keeps_the_other_results(monkeypatch):
    with pool_of(2) as pool:
        pool.start()
        healthy = pool.pids[1]
        real_spawn = pool._spawn

        def no_process(i):
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(pool, "_spawn", no_process)  # a new process cannot be created
        res = pool.call({0: ("exit", 3), 1: ("echo", 1)})
        assert res[0] == CallResult(False, None, "worker process died (exit code 3)")
        assert res[1] == CallResult(True, ("A", healthy, 1, 1))  # not lost with the call
        note = ("no worker: starting a replacement process failed: OSError: [Errno 24] Too many "
                "open files")
        assert pool.call({0: ("echo", 2)})[0] == CallResult(False, None, f"worker 0: {note}")
        assert pool.map([("echo", 3)])[0].value[1] == healthy  # the live worker takes it
        with pytest.raises(RuntimeError, match=re.escape(f"worker 0: {note}")):
            pool.restart(0)
        monkeypatch.setattr(pool, "_spawn", real_spawn)  # processes can be created again
        assert pool.call({0: ("echo", 4)})[0].value[3] == 4  # the next need starts one
        assert pool.stats["restarts"] == 1


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_forkserver_preloads_the_main_modules_imports(tmp_path):
    """Each forkserver child runs the main script again; its imports (torch here) are preloaded
    in the server (a new worker's parent), so that a restarted worker does not import them
    again (about 1 s for torch)."""
    script = tmp_path / "main.py"
    script.write_text(
        "import os\n"
        "import torch\n"
        "from grouprl.workers import WorkerPool, main_module_imports\n"
        "def init():\n"
        "    return None\n"
        "def handle(state, payload):\n"
        "    with open(f'/proc/{os.getppid()}/maps') as f:  # the forkserver's memory\n"
        "        return 'libtorch' in f.read()\n"
        "if __name__ == '__main__':\n"
        "    assert 'torch' in main_module_imports(), main_module_imports()\n"
        "    with WorkerPool(init, handle, 1, start_method='forkserver',\n"
        "                    preload=('__main__',)) as pool:\n"
        "        print(pool.call({0: None})[0])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CallResult(ok=True, value=True, error=None, timed_out=False, " \
        "restarted=False)"


# -- shutdown ----------------------------------------------------------------------------------


def live_test_children() -> list:
    return [p for p in mp.active_children() if p.name.startswith("grouprl-test")]


def test_close_reaps_every_worker_and_runs_finalize(tmp_path):
    pool = pool_of(2, marker_dir=str(tmp_path), kill_grace=2.0)
    pool.start()
    first = pool.pids
    assert pool.call({0: ("sleep", 60)})[0].timed_out  # SIGTERM: finalize runs, then exit
    pids = first + [pool.pids[0]]
    pool.start()
    pool.close()
    pool.close()  # idempotent
    assert pool.closed and pool.pids == [None, None]
    assert not any(alive(p) for p in pids)
    assert not live_test_children()
    assert {p.name for p in tmp_path.iterdir()} == {f"closed-{p}" for p in pids}
    with pytest.raises(RuntimeError, match="closed"):
        pool.map([("echo", 0)])


def test_ctrl_c_during_a_call_closes_the_pool():
    # a background job starts Python with SIGINT ignored: give this test the usual Ctrl-C
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    pool = pool_of(2, timeout=None)
    pool.start()
    pids = pool.pids
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.call({0: ("sleep", 60), 1: ("echo", 0)})
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert pool.closed and not any(alive(p) for p in pids)


def test_garbage_collection_closes_the_pool():
    pool = pool_of(1)
    pool.start()
    pid = pool.pids[0]
    del pool
    assert not alive(pid) and not live_test_children()


EXIT_SCRIPT = """
import os, sys
from functools import partial
from pathlib import Path
from grouprl.workers import WorkerPool

def init(marker_dir):
    return marker_dir

def handle(state, payload):
    return os.getpid()

def finalize(state):
    (Path(state) / f"closed-{os.getpid()}").touch()

if __name__ == "__main__":
    pool = WorkerPool(partial(init, sys.argv[1]), handle, 2, finalize=finalize)
    print(*pool.map([0, 1, 2]) and pool.pids, flush=True)
    # no close(): the interpreter exits with the pool open
"""


def test_interpreter_exit_without_close_stops_the_workers(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(EXIT_SCRIPT)
    markers = tmp_path / "markers"
    markers.mkdir()
    done = subprocess.run([sys.executable, str(script), str(markers)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    assert not any(alive(p) for p in pids)
    assert {p.name for p in markers.iterdir()} == {f"closed-{p}" for p in pids}


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"num_workers": 0}, "num_workers: must be an integer >= 1"),
    ({"timeout": 0}, "timeout: must be None or a number > 0"),
    ({"start_timeout": -1.0}, "start_timeout"),
    ({"kill_grace": -1}, "kill_grace"),
    ({"max_restarts": -1}, "max_restarts"),
    ({"start_method": "thread"}, "start_method: got 'thread'; accepted values are"),
])
def test_bad_arguments_name_the_option(kwargs, match):
    args = {"num_workers": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        WorkerPool(partial(make_state, "A"), handle, **args)
    assert not live_test_children()


def test_unpicklable_functions_are_refused_before_any_process_starts():
    with pytest.raises(TypeError, match="init/handle/finalize: must pickle"):
        WorkerPool(lambda: None, handle, 1)
