"""EnvPool: backends agree with direct stepping; step limit; groups; failure isolation (raise,
hang, crash), restarts, counters, reset retries and clean shutdown."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import random
import time

import pytest

import grouprl.envs.registry as registry
import grouprl.envs.testing  # noqa: F401  (registers "testing_faulty")
from grouprl.envs import EnvPool, SokobanEnv, StepResult, register_env

BACKENDS = ["serial", "thread", "process"]
FAULTY = "grouprl.envs.testing:FaultyEnv"  # import string: no registration needed in workers
SOKOBAN_KW = {"dim_room": (6, 6), "num_boxes": 1}


def action_script(num_envs, steps, seed=0):
    rng = random.Random(seed)
    return [[rng.choice(["up", "down", "left", "right", "up", "jump"]) for _ in range(num_envs)]
            for _ in range(steps)]


def direct_rollout(seeds, script, max_steps=None):
    """Ground truth: plain SokobanEnv objects stepped one by one, pool semantics by hand."""
    envs = [SokobanEnv(**SOKOBAN_KW) for _ in seeds]
    resets = [env.reset(s) for env, s in zip(envs, seeds)]
    active = [True] * len(seeds)
    counts = [0] * len(seeds)
    out = []
    for actions in script:
        row = []
        for i, (env, a) in enumerate(zip(envs, actions)):
            if not active[i]:
                row.append(None)
                continue
            obs, r, done, info = env.step(a)
            counts[i] += 1
            trunc = not done and max_steps is not None and counts[i] >= max_steps
            active[i] = not (done or trunc)
            row.append((obs, r, done or trunc, info["won"], info["valid"], info["anchor"],
                        trunc))
        out.append(row)
    return [o for o, _ in resets], out


def pool_rollout(pool, seeds, script):
    resets = [r.observation for r in pool.reset(seeds)]
    active = [True] * len(seeds)
    out = []
    for actions in script:
        results = pool.step([a if act else None for a, act in zip(actions, active)])
        row = []
        for i, res in enumerate(results):
            if res is None:
                row.append(None)
                continue
            assert not res.failed
            active[i] = not res.done
            row.append((res.observation, res.reward, res.done, res.won, res.valid, res.anchor,
                        res.truncated))
        out.append(row)
    return resets, out


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_dead(pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.02)
    return not any(alive(p) for p in pids)


# -- agreement with direct stepping -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_direct_stepping(backend):
    seeds = [3, 1, 4, 1]
    script = action_script(len(seeds), 12)
    expected = direct_rollout(seeds, script, max_steps=10)
    with EnvPool("sokoban", SOKOBAN_KW, len(seeds), backend=backend, max_steps=10) as pool:
        assert pool.num_envs == 4
        assert pool_rollout(pool, seeds, script) == expected
        again = pool_rollout(pool, seeds, script)  # reset brings every env back
        assert again == expected
        assert pool.stats == {"failures": 0, "restarts": 0, "timeouts": 0}


def test_solutions_win_through_the_pool():
    seeds = [10, 11, 12]
    plans = []
    for s in seeds:
        env = SokobanEnv(**SOKOBAN_KW)
        env.reset(s)
        plans.append(list(env.level.solution))
    with EnvPool("sokoban", SOKOBAN_KW, 3, backend="thread") as pool:
        first = pool.reset(seeds)
        assert all(r.task and r.anchor == r.observation for r in first)
        assert all(r.admissible_actions == ["up", "down", "left", "right"] for r in first)
        won = [False] * 3
        for t in range(max(map(len, plans))):
            acts = [p[t] if t < len(p) else None for p in plans]
            for i, res in enumerate(pool.step(acts)):
                if res is not None and res.done:
                    won[i] = res.won and not res.truncated
        assert won == [True] * 3


def test_reset_groups_same_task_within_group():
    with EnvPool("sokoban", SOKOBAN_KW, 6) as pool:
        results = pool.reset_groups([7, 8], group_size=3)
        obs = [r.observation for r in results]
        assert obs[0] == obs[1] == obs[2] and obs[3] == obs[4] == obs[5] and obs[0] != obs[3]
        assert obs[0] == SokobanEnv(**SOKOBAN_KW).reset(7)[0]
        with pytest.raises(ValueError, match="task_seeds/group_size"):
            pool.reset_groups([1, 2, 3], group_size=3)
        with pytest.raises(ValueError, match="group_size"):
            pool.reset_groups([1], group_size=0)


# -- step limit and inactive envs ---------------------------------------------------------------


def test_step_limit_truncates_and_finished_envs_take_none():
    with EnvPool("sokoban", SOKOBAN_KW, 2, max_steps=2) as pool:
        pool.reset([0, 1])
        first = pool.step(["jump", "jump"])
        assert [r.done for r in first] == [False, False]
        second = pool.step(["jump", None])
        assert second[1] is None
        assert second[0].done and second[0].truncated and not second[0].won
        assert second[0].reward == pytest.approx(-0.1) and not second[0].failed
        with pytest.raises(ValueError, match=r"actions\[0\].*finished.*None"):
            pool.step(["up", "up"])
        third = pool.step([None, "jump"])
        assert third[0] is None and third[1].truncated
        assert pool.step([None, None]) == [None, None]
        pool.reset([0, 1])  # a reset re-activates and restarts the count
        assert [r.done for r in pool.step(["jump", "jump"])] == [False, False]


def test_argument_errors():
    with pytest.raises(ValueError, match="backend.*'serial', 'thread', 'process'"):
        EnvPool("sokoban", backend="gpu")
    with pytest.raises(ValueError, match="num_workers"):
        EnvPool("sokoban", num_envs=2, backend="process", num_workers=1)
    with pytest.raises(ValueError, match="num_envs"):
        EnvPool("sokoban", num_envs=0)
    with pytest.raises(ValueError, match="step_timeout"):
        EnvPool("sokoban", step_timeout=0)
    with pytest.raises(ValueError, match="unknown env"):
        EnvPool("sokobon")
    with EnvPool("sokoban", SOKOBAN_KW, 2) as pool:
        with pytest.raises(RuntimeError, match="reset"):
            pool.step(["up", "up"])
        with pytest.raises(ValueError, match="seeds"):
            pool.reset([1])
        pool.reset([1, 2])
        with pytest.raises(ValueError, match="actions"):
            pool.step(["up"])
    with pytest.raises(RuntimeError, match="closed"):
        pool.step(["up", "up"])


# -- failures -----------------------------------------------------------------------------------


def expected_faulty(seed, t, action="ok"):
    return StepResult(f"seed={seed} t={t} a={action}", t + 0.01 * seed, t >= 3,
                      t >= 3 and action != "bad", action != "bad",
                      f"seed={seed} t={t} a={action}", ["ok", "bad"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_raising_env_is_isolated_and_restarted(backend):
    kwargs = {"fail_seeds": [1], "fail_step": 2}
    with EnvPool(FAULTY, kwargs, 3, backend=backend, step_timeout=5.0) as pool:
        pool.reset([0, 1, 2])
        assert pool.step(["ok"] * 3) == [expected_faulty(s, 1) for s in (0, 1, 2)]
        second = pool.step(["ok", "ok", "bad"])
        assert second[0] == expected_faulty(0, 2) and second[2] == expected_faulty(2, 2, "bad")
        bad = second[1]
        assert bad.failed and bad.done and bad.reward == 0.0 and not bad.won
        assert "RuntimeError" in bad.error and "step 2 failure" in bad.error
        assert pool.stats == {"failures": 1, "restarts": 1, "timeouts": 0}
        with pytest.raises(ValueError, match=r"actions\[1\].*failed.*None"):
            pool.step(["ok", "ok", "ok"])
        third = pool.step(["ok", None, "ok"])
        assert third[1] is None and third[0] == expected_faulty(0, 3)
        assert third[2] == dataclasses.replace(expected_faulty(2, 3), won=False)  # "bad" before
        assert third[0].won
        # the fresh env works after the next reset (seed 5 has no fault)
        assert [r.observation for r in pool.reset([0, 5, 2])] == [
            "seed=0 t=0", "seed=5 t=0", "seed=2 t=0"]
        assert pool.step(["ok"] * 3) == [expected_faulty(s, 1) for s in (0, 5, 2)]
        assert pool.stats["failures"] == 1


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_hanging_env_times_out_and_is_replaced(backend):
    kwargs = {"hang_seeds": [0], "hang_step": 1, "hang_seconds": 1.5 if backend == "thread" else 60}
    with EnvPool(FAULTY, kwargs, 3, backend=backend, step_timeout=0.4) as pool:
        pool.reset([0, 1, 2])
        start = time.monotonic()
        results = pool.step(["ok"] * 3)
        assert time.monotonic() - start < 1.4
        assert results[0].failed and results[0].done and "timeout after 0.4s" in results[0].error
        assert results[1:] == [expected_faulty(1, 1), expected_faulty(2, 1)]
        assert pool.stats == {"failures": 1, "restarts": 1, "timeouts": 1}
        pool.step([None, "ok", "ok"])
        assert [r.observation for r in pool.reset([3, 1, 2])][0] == "seed=3 t=0"
        assert pool.step(["ok"] * 3) == [expected_faulty(s, 1) for s in (3, 1, 2)]


def test_thread_timeout_with_fewer_threads_than_envs():
    kwargs = {"hang_seeds": [0], "hang_step": 1, "hang_seconds": 1.5}
    with EnvPool(FAULTY, kwargs, 3, backend="thread", num_workers=1, step_timeout=0.3) as pool:
        pool.reset([0, 1, 2])
        results = pool.step(["ok"] * 3)  # env 0 holds the only thread; 1 and 2 must still run
        assert results[0].failed and results[1:] == [expected_faulty(1, 1), expected_faulty(2, 1)]
        assert pool.stats["timeouts"] == 1


def test_crashing_worker_process_is_restarted():
    kwargs = {"crash_seeds": [1], "crash_step": 1}
    with EnvPool(FAULTY, kwargs, 3, backend="process") as pool:
        pool.reset([0, 1, 2])
        old_pid = pool.worker_pids[1]
        results = pool.step(["ok"] * 3)
        assert results[1].failed and "worker process died (exit code 3)" in results[1].error
        assert results[0] == expected_faulty(0, 1) and results[2] == expected_faulty(2, 1)
        assert pool.stats == {"failures": 1, "restarts": 1, "timeouts": 0}
        assert pool.worker_pids[1] != old_pid and wait_dead([old_pid])
        pool.reset([0, 4, 2])
        assert pool.step(["ok"] * 3)[1] == expected_faulty(4, 1)


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_failed_reset_is_retried_then_raises(backend, tmp_path):
    kwargs = {"reset_fail_once_seeds": [1], "marker_dir": str(tmp_path),
              "reset_fail_seeds": [9]}
    with EnvPool("testing_faulty", kwargs, 2, backend=backend) as pool:
        results = pool.reset([0, 1])  # env 1 fails once, then succeeds on a fresh env
        assert [r.observation for r in results] == ["seed=0 t=0", "seed=1 t=0"]
        assert not any(r.failed for r in results)
        assert pool.stats == {"failures": 1, "restarts": 1, "timeouts": 0}
        with pytest.raises(RuntimeError, match=r"env 1: reset\(seed=9\) failed 4 times.*seed 9"):
            pool.reset([0, 9])
        assert pool.stats == {"failures": 5, "restarts": 5, "timeouts": 0}


def test_max_restarts_and_construction_errors():
    with EnvPool(FAULTY, {"fail_seeds": [0, 1]}, 2, max_restarts=1) as pool:
        pool.reset([0, 1])
        with pytest.raises(RuntimeError, match="max_restarts=1"):
            pool.step(["ok", "ok"])
    with pytest.raises(RuntimeError, match="env 0: construction failed.*init_fail"):
        EnvPool(FAULTY, {"init_fail": True}, 2)
    with pytest.raises(RuntimeError, match="worker failed to start.*init_fail"):
        EnvPool(FAULTY, {"init_fail": True}, 1, backend="process")


def test_unpicklable_factory_in_process_backend(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_env("lambda_env", lambda **kw: SokobanEnv(**kw))
    with EnvPool("lambda_env", {}, 1, backend="thread") as pool:  # fine in-process
        assert pool.reset([0])[0].observation
    with pytest.raises(RuntimeError, match="unknown env 'lambda_env'.*import string"):
        EnvPool("lambda_env", {}, 1, backend="process")


# -- shutdown -----------------------------------------------------------------------------------


def test_close_leaves_no_live_workers():
    pool = EnvPool(FAULTY, {"hang_seeds": [1], "hang_seconds": 60}, 3, backend="process",
                   step_timeout=0.3)
    pool.reset([0, 1, 2])
    first_pids = list(pool.worker_pids)
    assert all(alive(p) for p in first_pids)
    pool.step(["ok", "ok", "ok"])  # worker 1 hangs and is replaced
    pids = first_pids + list(pool.worker_pids)
    pool.step(["ok", None, "ok"])
    pool.close()
    pool.close()  # idempotent
    assert wait_dead(pids)
    assert not [p for p in mp.active_children() if p.name.startswith("grouprl-env")]
    assert pool.worker_pids == []


def test_del_closes_workers():
    pool = EnvPool("sokoban", SOKOBAN_KW, 2, backend="process")
    pids = list(pool.worker_pids)
    del pool
    assert wait_dead(pids)
