"""EnvPool's ``ray`` backend (optional extra ``grouprl[ray]``): rollouts identical to the serial
backend, a hang cut off at ``step_timeout`` and its actor killed and rebuilt, raising and crashing
envs isolated, construction errors, the session it opens (reused by later pools; only that one is
ever shut down), and the one-line error without Ray.

One local Ray session serves the module (``ray.init(num_cpus=2, include_dashboard=False)``, a
module-scoped fixture); every test that needs Ray is skipped, with the reason, when it is not
installed.  The helpers and ground truth are those of ``test_env_pool.py`` (the other backends'
tests)."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys
import time
from typing import Any

import pytest
import torch
from test_env_pool import (
    FAULTY,
    SOKOBAN_KW,
    action_script,
    direct_rollout,
    expected_faulty,
    pool_rollout,
    wait_dead,
)

import grouprl.envs.ray_backend as ray_backend
from grouprl.agent import collect_rollouts, get_template
from grouprl.envs import EnvPool
from grouprl.policy import Generation, left_pad

SKIP_REASON = "ray is not installed (pip install 'grouprl[ray]'): the ray env backend is untested"
MOVES = ["up", "down", "left", "right", "up", "jump"]


@pytest.fixture(scope="module")
def ray() -> Any:
    if importlib.util.find_spec("ray") is None:
        pytest.skip(SKIP_REASON)
    import ray

    opened = not ray.is_initialized()
    if opened:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if opened:
        ray.shutdown()


def scripted_generate(seed: int):
    """A policy stand-in: each reply is a move drawn from ``random.Random(seed)`` in call
    order, so two rollouts agree exactly iff their envs return the same observations."""
    rng = random.Random(seed)

    def fn(prompts: list[str]) -> Generation:
        texts = [f"<action>{rng.choice(MOVES)}</action>" for _ in prompts]
        p_ids, p_mask = left_pad([[ord(c) % 250 + 2 for c in p] for p in prompts], 0)
        r_ids, r_mask = left_pad([[ord(c) % 250 + 2 for c in t] for t in texts], 0)
        return Generation(p_ids, p_mask, r_ids, r_mask, -0.5 * r_mask.float(), texts,
                          torch.zeros(len(texts), dtype=torch.bool))

    return fn


def same(a: Any, b: Any) -> bool:
    """Exact equality of rollout fields: tensors by value and dtype, dataclasses field-wise."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a) if f.compare)
    return a == b


# -- identical to the serial backend ------------------------------------------------------------


def test_pool_steps_match_direct_stepping_and_plans_match_serial(ray):
    seeds = [3, 1, 4, 1]
    script = action_script(len(seeds), 12)
    expected = direct_rollout(seeds, script, max_steps=10)
    with EnvPool("sokoban", SOKOBAN_KW, len(seeds), backend="ray", max_steps=10) as pool:
        assert pool_rollout(pool, seeds, script) == expected
        assert pool_rollout(pool, seeds, script) == expected  # reset brings every env back
        pool.reset([10, 11, 12, 13])
        plans = pool.expert_plans()
        assert pool.stats == {"failures": 0, "restarts": 0, "timeouts": 0}
    with EnvPool("sokoban", SOKOBAN_KW, len(seeds), backend="serial") as serial:
        serial.reset([10, 11, 12, 13])
        assert plans == serial.expert_plans() and all(plans)
    # the module's own session is still up: a backend never shuts down a session it did not open
    assert ray.is_initialized() and ray_backend._SESSION == {"ours": False}


def test_collect_rollouts_identical_to_serial(ray):
    kwargs = {"dim_room": [6, 6], "num_boxes": 1}
    rollouts = {}
    for backend in ("serial", "ray"):
        with EnvPool("sokoban", kwargs, 4, backend=backend, max_steps=6) as pool:
            rollouts[backend] = [
                collect_rollouts(pool, scripted_generate(seed), task_seeds=[seed, seed + 1],
                                 template=get_template("sokoban_compact"), group_size=2,
                                 max_steps=6, history_length=2, vocabulary={})
                for seed in (0, 7)]
    for serial, through_ray in zip(rollouts["serial"], rollouts["ray"]):
        assert len(serial) > 8 and serial.batch.invalid.any() and not serial.batch.invalid.all()
        assert same(serial, through_ray)


# -- faults -------------------------------------------------------------------------------------


def test_hang_crash_and_raise_are_isolated_and_their_actors_rebuilt(ray):
    """One step, three faults: env 0 hangs 60 s, env 1's process dies (``os._exit(3)``), env 2
    raises; env 3 is unaffected and the call returns about ``step_timeout`` after it began."""
    kwargs = {"hang_seeds": [0], "hang_step": 1, "hang_seconds": 60,
              "crash_seeds": [1], "crash_step": 1, "fail_seeds": [2], "fail_step": 1}
    with EnvPool(FAULTY, kwargs, 4, backend="ray", step_timeout=1.0) as pool:
        pool.reset([0, 1, 2, 3])
        actors = list(pool._backend.actors)
        pids = ray.get([actor.pid.remote() for actor in actors])
        start = time.monotonic()
        results = pool.step(["ok"] * 4)
        assert time.monotonic() - start < 10  # the hang is 60 s
        assert all(r.failed and r.done and r.reward == 0.0 for r in results[:3])
        assert results[0].error == "timeout after 1.0s"
        assert results[1].error.startswith("env actor died: ActorDiedError: ")
        assert "\n" not in results[1].error
        assert results[2].error == "RuntimeError: FaultyEnv: step 1 failure for seed 2"
        assert results[3] == expected_faulty(3, 1)
        assert pool.stats == {"failures": 3, "restarts": 3, "timeouts": 1}
        # the hung actor was killed (its process is gone), every failed env has a new actor
        with pytest.raises(ray.exceptions.RayActorError, match="ray.kill"):
            ray.get(actors[0].ready.remote(), timeout=30)
        assert wait_dead(pids[:3], timeout=10)
        assert all(pool._backend.actors[i] is not actors[i] for i in range(3))
        assert pool._backend.actors[3] is actors[3]
        with pytest.raises(ValueError, match=r"actions\[0\].*failed.*None"):
            pool.step(["ok"] * 4)
        pool.step([None, None, None, "ok"])
        assert [r.observation for r in pool.reset([4, 5, 6, 3])] == [
            "seed=4 t=0", "seed=5 t=0", "seed=6 t=0", "seed=3 t=0"]
        assert pool.step(["ok"] * 4) == [expected_faulty(s, 1) for s in (4, 5, 6, 3)]
        assert ray.get(pool._backend.actors[0].pid.remote()) not in pids
        assert pool.stats["failures"] == 3


def test_construction_error_is_one_line(ray):
    with pytest.raises(RuntimeError, match=r"^env 0: construction failed: RuntimeError: "
                                           r"FaultyEnv: init_fail=True$"):
        EnvPool(FAULTY, {"init_fail": True}, 1, backend="ray")


def test_ray_options_need_the_ray_backend():
    with pytest.raises(ValueError, match=r"ray_address: only used by backend='ray'"):
        EnvPool(FAULTY, {}, 1, backend="process", ray_address="auto")
    with pytest.raises(TypeError, match="ray_actor_options: must be a dict"):
        EnvPool(FAULTY, {}, 1, backend="ray", ray_actor_options=["num_cpus", 0])


# -- the session --------------------------------------------------------------------------------


class SessionSpy:
    """The real ``ray`` module, except that the session calls are recorded and faked."""

    def __init__(self, real: Any) -> None:
        self.real, self.up, self.calls = real, False, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))
        self.up = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.up = False


def test_a_session_it_opened_is_reused_and_only_that_one_is_shut_down(ray, monkeypatch):
    spy = SessionSpy(ray)
    monkeypatch.setattr(ray_backend, "require", lambda module, extra: spy)
    monkeypatch.setattr(ray_backend, "_SESSION", {"ours": False})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with EnvPool(FAULTY, {}, 1, backend="ray") as first:
        assert first.reset([4])[0].observation == "seed=4 t=0"
    with EnvPool(FAULTY, {}, 1, backend="ray") as second:  # the same session, not a new one
        assert second.reset([5])[0].observation == "seed=5 t=0"
    assert spy.calls == [("init", {"include_dashboard": False})]  # local, opened once
    ray_backend.shutdown_session()
    ray_backend.shutdown_session()  # once only
    assert spy.calls[1:] == [("shutdown",)]
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    ray_backend.connect()
    ray_backend.shutdown_session()
    ray_backend.connect("10.0.0.1:6379")  # the option beats the env var
    assert spy.calls[2:] == [("init", {"address": "ray://head:10001"}), ("shutdown",),
                             ("init", {"address": "10.0.0.1:6379"})]
    spy.up, ray_backend._SESSION["ours"] = True, False  # a session the caller opened
    ray_backend.connect()
    ray_backend.shutdown_session()
    assert len(spy.calls) == 5  # used as it is, never shut down


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError) as err:
        EnvPool("sokoban", SOKOBAN_KW, 1, backend="ray")
    assert str(err.value) == "ray is not installed: pip install 'grouprl[ray]'"
