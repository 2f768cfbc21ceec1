"""The single-turn reasoning env: reset/step contract, verifier reward, seeds, pools, BC, and
an answer that would block in native code under every pool backend."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from grouprl.agent.parser import parse_action
from grouprl.agent.prompts import get_template
from grouprl.envs import EnvPool, TextEnv, available_envs, make_env
from grouprl.envs import reasoning as reasoning_module
from grouprl.envs.reasoning import ReasoningEnv
from grouprl.train.bc import expert_samples

KW = {"size": 12}


@pytest.fixture()
def env():
    e = make_env("reasoning", **KW)
    yield e
    e.close()


def test_registered_and_protocol(env):
    assert "reasoning" in available_envs()
    assert isinstance(env, ReasoningEnv) and isinstance(env, TextEnv)
    assert env.isolate_chars == "0123456789" and env.grid_symbols == ""
    assert len(env) == 12


def test_reset_contract_and_seed_mapping(env):
    obs, info = env.reset(3)
    item = env.items[3]
    assert obs == item.prompt
    assert info == {"task": "", "anchor": 3, "admissible_actions": None, "answer": item.answer,
                    "difficulty": item.difficulty}
    assert env.reset(3 + 12)[0] == obs and env.reset(3 + 24)[1]["anchor"] == 3
    assert [env.reset(s)[0] for s in range(12)] == [e.prompt for e in env.items]
    with pytest.raises(ValueError, match="seed"):
        env.reset("3")


def test_step_rewards_from_the_verifier(env):
    env.reset(5)
    gold = env.example.answer
    obs, reward, done, info = env.step(env.example.solution)
    assert (obs, reward, done) == ("", 1.0, True)
    assert info["won"] is True and info["correct"] is True and info["valid"] is True
    assert info["anchor"] == ("done", 5) and info["admissible_actions"] is None
    assert info["pred"] == gold and isinstance(info["verify_reason"], str)
    assert info["extra"] == {"key": 5, "gold": gold, "correct": True,
                             "reason": info["verify_reason"], "pred": gold}
    env.reset(5)
    wrong = str(int(gold) + 1)
    _, reward, done, info = env.step(f"<think>guess</think><answer>{wrong}</answer>")
    assert (reward, done, info["won"], info["correct"]) == (0.0, True, False, False)
    env.reset(5)
    _, reward, _, info = env.step("no answer tag at all " + gold)
    assert reward == 0.0 and info["won"] is False and info["correct"] is not True


def test_step_twice_and_before_reset(env):
    with pytest.raises(RuntimeError, match="reset"):
        env.step("x")
    env.reset(0)
    env.step("x")
    with pytest.raises(RuntimeError, match=r"exactly one step.*call reset\(seed\)"):
        env.step("x")
    env.reset(0)
    assert env.step(env.example.solution)[1] == 1.0  # a reset re-opens the episode


def test_every_builtin_solution_is_correct_and_survives_the_plain_parser():
    env = ReasoningEnv(size=200, split="test", difficulty=[1, 2, 3, 4])
    try:
        for seed in range(len(env)):
            env.reset(seed)
            (solution,) = env.expert_actions()
            # the rollout parses replies with tag=None: the whole (one-line) reply reaches step
            action = parse_action(solution, tag=None, allow_plain=True).action
            assert env.step(action)[1] == 1.0, solution
    finally:
        env.close()


def test_prefix_suffix_and_dataset_cache(tmp_path):
    a = ReasoningEnv(size=12, prompt_prefix="Q: ", prompt_suffix=" A:")
    b = ReasoningEnv(size=12)
    try:
        assert a.items is b.items  # loaded once per process and argument set
        assert a.reset(1)[0] == "Q: " + b.reset(1)[0] + " A:"
    finally:
        a.close()
        b.close()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": 2}) + "\n")
    c = ReasoningEnv(str(path))
    assert len(c) == 1 and c.items is ReasoningEnv(str(path)).items
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": i}) + "\n"
                            for i in range(3)))
    assert len(ReasoningEnv(str(path))) == 3  # an edited file is reloaded
    reasoning_module.clear_dataset_cache()
    assert ReasoningEnv(str(path)).items is not c.items


def test_expert_actions_and_missing_solutions(env, tmp_path):
    with pytest.raises(RuntimeError, match="reset"):
        env.expert_actions()
    env.reset(2)
    assert env.expert_actions() == [env.items[2].solution]
    path = tmp_path / "nosol.jsonl"
    path.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": 2}) + "\n")
    plain = ReasoningEnv(str(path))
    plain.reset(0)
    # no worked solution: the expert reply is the gold answer in the verifier's format, and it
    # verifies as correct (so behaviour cloning on such data teaches the format and answers)
    assert plain.expert_actions() == ["<think></think><answer>2</answer>"]
    assert plain.step(plain.expert_actions()[0])[1] == 1.0
    for mode, reply in [("boxed", "\\boxed{2}"), ("gsm8k", "#### 2"), ("free", "2")]:
        other = ReasoningEnv(str(path), verifier=mode)
        other.reset(0)
        assert other.expert_actions() == [reply]
        assert other.step(reply)[1] == 1.0, mode
        other.close()
    plain.reset(0)
    assert plain.step("<answer>2</answer>")[1] == 1.0
    plain.close()
    plain.close()  # idempotent


def test_behaviour_cloning_samples():
    samples = expert_samples("reasoning", KW, [0, 1, 13], template=get_template("reasoning"),
                             history_length=0, max_steps=1, action_tag=None)
    env = ReasoningEnv(**KW)
    assert [(s.prompt, s.response) for s in samples] == [
        (env.items[i].prompt, env.items[i].solution) for i in (0, 1, 1)]
    env.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="difficulty: unknown level 7"):
        ReasoningEnv(difficulty=[7])
    with pytest.raises(ValueError, match="has no examples"):
        ReasoningEnv(size=0)
    with pytest.raises(TypeError, match="prompt_prefix"):
        ReasoningEnv(prompt_prefix=None)


def test_process_pool_round_trip():
    probe = ReasoningEnv(**KW)
    solutions = [probe.items[i].solution for i in (4, 7)]
    probe.close()
    with EnvPool("reasoning", KW, 2, backend="process", step_timeout=60) as pool:
        resets = pool.reset([4, 7])
        assert [r.observation for r in resets] == [probe.items[4].prompt, probe.items[7].prompt]
        assert [r.anchor for r in resets] == [4, 7]
        results = pool.step([solutions[0], solutions[0]])
        assert probe.items[4].answer != probe.items[7].answer
        assert [r.reward for r in results] == [1.0, 0.0]
        assert all(r.done and not r.failed for r in results)
        assert results[0].won and results[0].extra["gold"] == probe.items[4].answer
        assert pool.stats["failures"] == 0


# -- an answer that sits in native code (issue 13, finding 4) -----------------------------------

BOXED_TOWER = r"\boxed{9^{9^{9^{9}}}}"


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                    reason="math-verify not installed (the builtin backend refuses huge powers)")
@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_a_power_tower_answer_times_out_under_every_backend(backend):
    """With the thread backend this answer froze the whole process (sympy's big-integer power
    holds the GIL; step_timeout never fired).  Now the check runs in a process with the
    verifier's deadline (serial, thread) or in the env's worker under math-verify's alarm
    (process): reward 0, reason "timeout", in bounded time.  A subprocess with a hard timeout
    keeps a regression from hanging the test run."""
    code = textwrap.dedent(f"""
        import json, time
        from grouprl.envs import EnvPool
        kw = {{"size": 4, "verifier": "boxed", "backend": "math_verify",
              "verifier_timeout": 1.0}}
        with EnvPool("reasoning", kw, 2, backend={backend!r}, step_timeout=30) as pool:
            pool.reset([0, 1])
            start = time.monotonic()
            results = pool.step([{BOXED_TOWER!r}, "no answer"])
            print(json.dumps({{"s": time.monotonic() - start,
                              "rewards": [r.reward for r in results],
                              "failed": [r.failed for r in results],
                              "reasons": [r.extra["reason"] for r in results]}}))
        """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"backend={backend}: froze on {BOXED_TOWER}")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rewards"] == [0.0, 0.0] and got["failed"] == [False, False]
    assert got["reasons"] == ["timeout", "no_answer"]  # counted as a verifier timeout
    assert got["s"] < 25.0  # the verifier's deadline, not step_timeout's (30 s)
