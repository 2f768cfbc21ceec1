"""MultiTaskEnv: seed mapping, categories, anchors kept apart per task, lazy sub-envs with an LRU
cap, task validation, and the category through an EnvPool (serial and process backends)."""

from __future__ import annotations

import pytest

import grouprl.envs.registry as registry
from grouprl.envs import EnvPool, MultiTaskEnv, SokobanEnv, make_env, task_of_seed
from grouprl.envs.backends import expert_plan
from grouprl.envs.multitask import category_anchor, task_categories

SMALL = {"dim_room": [5, 5], "num_boxes": 1}
LARGE = {"dim_room": [6, 6], "num_boxes": 1}
TWO_SIZES = [{"name": "sokoban", "kwargs": SMALL}, {"name": "sokoban", "kwargs": LARGE}]


class CountingEnv:
    """Records ``("make" | "reset" | "close", tag)`` events in the class-level ``events``."""

    events: list[tuple[str, str]] = []

    def __init__(self, tag: str = "x") -> None:
        self.tag = tag
        CountingEnv.events.append(("make", tag))

    def reset(self, seed):
        CountingEnv.events.append(("reset", self.tag))
        obs = f"seed={seed}"
        return obs, {"task": self.tag, "anchor": None, "admissible_actions": None}

    def step(self, action):
        return f"{action}!", 1.0, True, {"won": True, "valid": True, "anchor": "same",
                                         "admissible_actions": None}

    def close(self):
        CountingEnv.events.append(("close", self.tag))


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(CountingEnv, "events", [])
    registry.register_env("counting_test", CountingEnv)
    return CountingEnv.events


def counting_tasks(*tags):
    return [{"name": "counting_test", "kwargs": {"tag": t}, "category": t} for t in tags]


def test_task_of_seed_mapping():
    assert [task_of_seed(s, 3) for s in range(7)] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1),
                                                      (2, 1), (0, 2)]
    assert task_of_seed(-1, 3) == (2, -1) and task_of_seed(5, 1) == (0, 5)
    pairs = {task_of_seed(s, 4) for s in range(-50, 50)}
    assert len(pairs) == 100  # distinct seeds, distinct (task, sub-seed)
    assert all(4 * sub + k == s for s in range(-50, 50) for k, sub in [task_of_seed(s, 4)])
    with pytest.raises(TypeError, match="seed"):
        task_of_seed(True, 2)
    with pytest.raises(TypeError, match="seed"):
        task_of_seed("3", 2)
    with pytest.raises(ValueError, match="num_tasks"):
        task_of_seed(3, 0)


def test_registered_and_reset_matches_the_sub_env():
    env = make_env("multitask", tasks=TWO_SIZES)
    assert isinstance(env, MultiTaskEnv)
    assert env.categories == ("sokoban-dim_room=5x5", "sokoban-dim_room=6x6")
    for seed in range(6):
        k, sub = seed % 2, seed // 2
        direct = SokobanEnv(**TWO_SIZES[k]["kwargs"])
        d_obs, d_info = direct.reset(sub)
        obs, info = env.reset(seed)
        assert env.current_task == k
        assert obs == d_obs and info["task"] == d_info["task"]
        assert info["category"] == env.categories[k]
        assert info["anchor"] == (env.categories[k], d_obs)
        d_step = direct.step("up")
        obs2, reward, done, info2 = env.step("up")
        assert (obs2, reward, done) == d_step[:3]
        assert info2["won"] == d_step[3]["won"] and info2["valid"] == d_step[3]["valid"]
        assert info2["anchor"] == (env.categories[k], d_step[3]["anchor"])
    env.close()


def test_same_seed_same_task_and_group():
    with MultiTaskEnv(TWO_SIZES) as env:
        first = env.reset(7)
        env.step("left")
        again = env.reset(7)
        assert first == again and first[1]["category"] == "sokoban-dim_room=6x6"
        assert env.reset(8)[1]["category"] == "sokoban-dim_room=5x5"


def test_anchors_disjoint_across_identical_tasks():
    tasks = [{"name": "sokoban", "kwargs": SMALL}, {"name": "sokoban", "kwargs": SMALL}]
    with MultiTaskEnv(tasks) as env:
        assert env.categories == ("task0", "task1")  # nothing tells them apart
        obs0, info0 = env.reset(0)
        obs1, info1 = env.reset(1)
        assert obs0 == obs1  # both play sub-seed 0 of the same generator
        assert info0["anchor"] != info1["anchor"]
        assert {info0["anchor"], info1["anchor"]} == {("task0", obs0), ("task1", obs0)}
        hash(info0["anchor"])


def test_sub_envs_lazy_and_lru(counting):
    env = MultiTaskEnv(counting_tasks("a", "b", "c"), max_open=2)
    assert counting == [] and env.open_tasks == ()
    env.reset(0)
    env.reset(1)
    env.reset(3)  # task a again: cached, now most recently used
    assert counting == [("make", "a"), ("reset", "a"), ("make", "b"), ("reset", "b"),
                        ("reset", "a")]
    assert env.open_tasks == (1, 0)
    counting.clear()
    obs, info = env.reset(2)  # task c: b (least recently used) is closed first
    assert counting == [("close", "b"), ("make", "c"), ("reset", "c")]
    assert env.open_tasks == (0, 2)
    assert obs == "seed=0" and info["anchor"] == ("c", "seed=0")  # anchor_of: observation
    assert env.step("go")[3]["anchor"] == ("c", "same")
    counting.clear()
    env.close()
    assert sorted(counting) == [("close", "a"), ("close", "c")]
    env.close()
    assert len(counting) == 2
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(0)


def test_unlimited_keeps_every_sub_env(counting):
    with MultiTaskEnv(counting_tasks("a", "b", "c")) as env:
        for seed in range(9):
            env.reset(seed)
        assert [e for e in counting if e[0] != "reset"] == [("make", t) for t in "abc"]
    assert [e for e in counting if e[0] == "close"] == [("close", t) for t in "abc"]


def test_max_open_one_evicts_current_episode(counting):
    env = MultiTaskEnv(counting_tasks("a", "b"), max_open=1)
    env.reset(0)
    env.reset(1)
    assert env.open_tasks == (1,) and ("close", "a") in counting
    assert env.step("x")[0] == "x!"
    with pytest.raises(RuntimeError, match="before reset"):
        MultiTaskEnv(counting_tasks("a")).step("x")
    env.close()


def test_expert_plan_follows_the_current_task(counting):
    tasks = [{"name": "sokoban", "kwargs": SMALL}, *counting_tasks("b")]
    with MultiTaskEnv(tasks) as env:
        assert expert_plan(env) is None  # no episode yet
        env.reset(0)
        plan = expert_plan(env)
        direct = SokobanEnv(**SMALL)
        direct.reset(0)
        assert plan == direct.expert_actions() and plan
        env.reset(1)
        assert expert_plan(env) is None  # the counting env has no expert


def test_default_categories():
    def cats(tasks):
        return task_categories([{"kwargs": {}, **t} for t in tasks])

    assert cats([{"name": "sokoban"}, {"name": "reasoning"}]) == ["sokoban", "reasoning"]
    assert cats([{"name": "pkg.mod:Maze"}]) == ["Maze"]
    assert cats([{"name": "sokoban", "kwargs": {"dim_room": [5, 5], "num_boxes": 1}},
                 {"name": "sokoban", "kwargs": {"dim_room": [5, 5], "num_boxes": 2}},
                 {"name": "reasoning"}]) == ["sokoban-num_boxes=1", "sokoban-num_boxes=2",
                                             "reasoning"]
    # A default equal to a given category falls back to task<k>.
    assert cats([{"name": "sokoban"}, {"name": "reasoning", "category": "sokoban"}]) == \
        ["task0", "sokoban"]
    with pytest.raises(ValueError, match=r"env.kwargs.tasks\[2\].category: 'task0' is also the "
                                         r"category of task 0"):
        cats([{"name": "sokoban"}, {"name": "sokoban"}, {"name": "reasoning", "category": "task0"}])
    with pytest.raises(ValueError, match=r"tasks\[1\].category: 'a' is also"):
        cats([{"name": "sokoban", "category": "a"}, {"name": "reasoning", "category": "a"}])


@pytest.mark.parametrize("tasks,error,match", [
    ([], ValueError, r"env.kwargs.tasks: empty"),
    ({"name": "sokoban"}, TypeError, r"env.kwargs.tasks: expected a list"),
    (["sokoban"], TypeError, r"env.kwargs.tasks\[0\]: expected a dict"),
    ([{"kwargs": {}}], ValueError, r"env.kwargs.tasks\[0\].name: missing"),
    ([{"name": "sokoban"}, {"name": "sokobon"}], ValueError,
     r"env.kwargs.tasks\[1\].name: unknown env 'sokobon'"),
    ([{"name": 3}], TypeError, r"env.kwargs.tasks\[0\].name: expected an env name"),
    ([{"name": "sokoban", "kwarg": {}}], ValueError,
     r"env.kwargs.tasks\[0\].kwarg: unknown key; accepted keys: name, kwargs, category"),
    ([{"name": "sokoban", "kwargs": [5, 5]}], TypeError, r"env.kwargs.tasks\[0\].kwargs"),
    ([{"name": "sokoban", "category": ""}], TypeError, r"env.kwargs.tasks\[0\].category"),
    ([{"name": "sokoban", "category": "s"}, {"name": "sokoban", "category": "s"}], ValueError,
     r"env.kwargs.tasks\[1\].category: 's' is also the category of task 0"),
])
def test_task_validation(tasks, error, match):
    with pytest.raises(error, match=match):
        MultiTaskEnv(tasks)


def test_max_open_validation():
    with pytest.raises(ValueError, match="max_open"):
        MultiTaskEnv(TWO_SIZES, max_open=0)


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_inside_an_env_pool(backend):
    kwargs = {"tasks": TWO_SIZES + [{"name": "sokoban", "kwargs": SMALL, "category": "again"}]}
    seeds = [0, 1, 2, 3, 4, 5]
    with MultiTaskEnv(**kwargs) as direct:
        expected = [direct.reset(s) for s in seeds]
    with EnvPool("multitask", kwargs, len(seeds), backend=backend) as pool:
        resets = pool.reset(seeds)
        assert [r.category for r in resets] == ["sokoban-dim_room=5x5", "sokoban-dim_room=6x6",
                                                "again"] * 2
        assert [r.observation for r in resets] == [obs for obs, _ in expected]
        assert [r.anchor for r in resets] == [info["anchor"] for _, info in expected]
        assert resets[0].anchor == category_anchor("sokoban-dim_room=5x5", resets[0].observation)
        steps = pool.step(["up"] * len(seeds))
        assert all(s.anchor[0] == r.category for s, r in zip(steps, resets))
        plans = pool.expert_plans()
        assert all(p is not None for i, p in enumerate(plans) if not steps[i].done)


def test_pool_category_is_none_for_plain_envs():
    with EnvPool("sokoban", SMALL, 1) as pool:
        assert pool.reset([0])[0].category is None
