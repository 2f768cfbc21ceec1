"""Expert samples for behaviour cloning and the tokenizer corpus run through an EnvPool (issue 13,
finding 3): the same samples as stepping the env by hand, on every backend; an episode whose env
hangs, raises or crashes is cut off at the deadline, dropped and counted."""

from __future__ import annotations

import time

import pytest

import grouprl.envs.testing  # noqa: F401  (registers "testing_faulty")
from grouprl.agent.memory import HistoryMemory
from grouprl.agent.prompts import get_template
from grouprl.agent.rollout import render_prompt
from grouprl.envs import make_env
from grouprl.train.bc import ExpertSample, ExpertSamples, expert_samples, format_action

FAULTY = "grouprl.envs.testing:FaultyEnv"
SOKOBAN = {"dim_room": [6, 6], "num_boxes": 1}
TEMPLATE = get_template("sokoban_compact")


def by_hand(env_name: str, kwargs: dict, seeds: list[int], max_steps: int) -> list[ExpertSample]:
    """The reference: one env in this process, stepped along its expert's plan (the code
    expert_samples had before it used a pool)."""
    env = make_env(env_name, **kwargs)
    out = []
    for seed in seeds:
        obs, info = env.reset(seed)
        plan = env.expert_actions()
        memory = HistoryMemory(1, 2)
        admissible = info.get("admissible_actions")
        for action in plan[:max_steps]:
            out.append(ExpertSample(render_prompt(TEMPLATE, memory, 0, task=info.get("task", ""),
                                                  observation=obs, admissible=admissible,
                                                  use_chat_template=False),
                                    format_action(action, "action")))
            memory.store([obs], [action])
            obs, _, done, step_info = env.step(action)
            admissible = step_info.get("admissible_actions")
            if done:
                break
    env.close()
    return out


def samples(env_name: str, kwargs: dict, seeds: list[int], backend: str = "serial",
            max_steps: int = 6, **kw) -> ExpertSamples:
    return expert_samples(env_name, kwargs, seeds, template=TEMPLATE, history_length=2,
                          max_steps=max_steps, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_healthy_envs_give_the_samples_of_stepping_by_hand(backend):
    seeds = [3, 1, 4, 1, 5]  # 5 episodes on 2 envs: a short last chunk too
    got = samples("sokoban", SOKOBAN, seeds, backend, num_workers=2)
    assert list(got) == by_hand("sokoban", SOKOBAN, seeds, 6)
    assert got.failed_episodes == 0 and got.errors == []
    assert len({s.prompt for s in got}) > len(seeds)  # several steps per episode


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_hang_during_behaviour_cloning_is_cut_off_and_counted(backend):
    """The finding: a hanging env froze behaviour cloning for good (it ran in this process)."""
    kwargs = {"hang_seeds": [2], "hang_step": 2, "hang_seconds": 60}
    start = time.monotonic()
    got = samples(FAULTY, kwargs, [0, 1, 2, 3], backend, step_timeout=0.5, num_workers=2)
    assert time.monotonic() - start < 30.0
    assert got.failed_episodes == 1
    assert got.errors == ["seed 2 step 2: timeout after 0.5s"]
    assert list(got) == by_hand(FAULTY, {}, [0, 1, 3], 6)  # the other episodes, whole


def test_raising_and_crashing_episodes_are_dropped_and_counted():
    got = samples(FAULTY, {"fail_seeds": [1], "fail_step": 3}, [0, 1, 2])
    assert got.failed_episodes == 1 and "step 3 failure for seed 1" in got.errors[0]
    assert list(got) == by_hand(FAULTY, {}, [0, 2], 6)  # seed 1's first two steps dropped too
    crashed = samples(FAULTY, {"crash_seeds": [0], "plan_crash_seeds": [2]}, [0, 1, 2],
                      "process", num_workers=3)
    assert crashed.failed_episodes == 2 and list(crashed) == by_hand(FAULTY, {}, [1], 6)
    assert crashed.errors == ["seed 0 step 1: worker process died (exit code 3)",
                              "seed 2: the expert plan failed (env restarted): worker process "
                              "died (exit code 3)"]


def test_every_episode_failing_names_the_first_error():
    with pytest.raises(RuntimeError, match=r"expert episodes: all 2 failed; first error: seed 0: "
                                           r".*reset failure for seed 0"):
        samples(FAULTY, {"reset_fail_seeds": [0, 1]}, [0, 1])
    assert samples(FAULTY, {}, []) == [] and samples(FAULTY, {}, [0], max_steps=0) == []
