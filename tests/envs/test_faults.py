"""Issue 13, environment faults: a fault budget per iteration (window) instead of a whole-run
restart budget, no result lost with a failing env, the thread backend's deadline and its refusal
of envs that block in native code, and a flaky env that runs the real RL recipe to the end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import grouprl.envs.testing  # noqa: F401  (registers "testing_faulty")
from grouprl.agent import get_template
from grouprl.envs import EnvPool, StepResult, register_env
from grouprl.envs.pool import EnvFault, EnvFaultBudgetExceeded, EnvResetFailed
from grouprl.envs.testing import FaultyEnv
from grouprl.policy import Generation, left_pad
from grouprl.recipes import train
from grouprl.train import load_config
from grouprl.train.metrics import read_metrics
from grouprl.train.sampling import Sampler, task_seeds

BACKENDS = ["serial", "thread", "process"]
FAULTY = "grouprl.envs.testing:FaultyEnv"  # import string: also resolves in pool workers


def expected(seed: int, t: int, action: str = "ok") -> StepResult:
    obs = f"seed={seed} t={t} a={action}"
    return StepResult(obs, t + 0.01 * seed, t >= 3, t >= 3 and action != "bad",
                      action != "bad", obs, ["ok", "bad"])


# -- the fault budget ---------------------------------------------------------------------------


def test_failures_are_budgeted_per_window_and_restarts_are_unlimited():
    """The finding: a fixed whole-run budget of 100 restarts ended a long run.  Now each window
    (an iteration) may lose up to max_failed_fraction of its trajectories, for ever."""
    with EnvPool(FAULTY, {"fail_seeds": [1]}, 2, max_failed_fraction=0.5) as pool:
        for _ in range(120):
            pool.new_window()
            pool.reset([0, 1])
            results = pool.step(["ok", "ok"])
            assert results[0] == expected(0, 1) and results[1].failed
            assert pool.window == {"episodes": 2, "failures": 1}  # 1 of 2: within 0.5
        assert pool.stats == {"failures": 120, "restarts": 120, "timeouts": 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_window_over_budget_raises_naming_counts_and_key(backend):
    kwargs = {"fail_seeds": [1, 2, 3], "fail_step": 2}
    with EnvPool(FAULTY, kwargs, 4, backend=backend, max_failed_fraction=0.5,
                 step_timeout=5.0) as pool:
        pool.reset([0, 1, 4, 5])
        pool.step(["ok"] * 4)
        pool.step(["ok"] * 4)  # one failure of four: within the budget
        assert pool.window == {"episodes": 4, "failures": 1}
        assert pool.new_window() == {"episodes": 4, "failures": 1}
        pool.reset([0, 1, 2, 3])
        pool.step(["ok"] * 4)
        with pytest.raises(EnvFaultBudgetExceeded) as info:
            pool.step(["ok"] * 4)
        err = info.value
        assert isinstance(err, EnvFault) and isinstance(err, RuntimeError)
        assert "3 failed of 4 trajectories" in str(err)
        assert "max_failed_fraction=0.5" in str(err) and "env.max_failed_fraction" in str(err)
        assert "step 2 failure for seed" in str(err)
        # every env's result was processed before raising: the healthy one is kept
        assert err.results[0] == expected(0, 2)
        assert all(r.failed for r in err.results[1:])
        assert pool.stats == {"failures": 4, "restarts": 4, "timeouts": 0}
        pool.new_window()  # the next iteration starts afresh on replaced envs
        pool.reset([0, 4, 5, 6])
        assert pool.step(["ok"] * 4) == [expected(s, 1) for s in (0, 4, 5, 6)]


def test_one_failing_env_never_loses_the_other_results():
    """Before: _fail raised in the middle of the results loop; the other envs' results of that
    step were lost and their step counts left behind."""
    with EnvPool(FAULTY, {"fail_seeds": [0]}, 3, max_restarts=0) as pool:
        pool.reset([0, 1, 2])
        with pytest.raises(EnvFaultBudgetExceeded, match="max_restarts=0") as info:
            pool.step(["ok", "ok", "bad"])
        assert info.value.results[1:] == [expected(1, 1), expected(2, 1, "bad")]
        second = pool.step([None, "ok", "ok"])  # envs 1 and 2 continue where they were
        assert second[1:] == [expected(1, 2), expected(2, 2)]


def test_a_reset_that_keeps_failing_is_an_env_fault_or_a_failed_result(tmp_path):
    kwargs = {"reset_fail_seeds": [9], "reset_fail_once_seeds": [1, 2],
              "marker_dir": str(tmp_path)}
    with EnvPool("testing_faulty", kwargs, 2, max_failed_fraction=0.5) as pool:
        assert not any(r.failed for r in pool.reset([1, 2]))  # retried: no failed trajectory
        assert pool.window == {"episodes": 2, "failures": 0} and pool.stats["failures"] == 2
        with pytest.raises(EnvResetFailed, match=r"env 1: reset\(seed=9\) failed 4 times") as e:
            pool.reset([0, 9])
        assert isinstance(e.value, EnvFault) and e.value.results[0].observation == "seed=0 t=0"
        assert pool.window == {"episodes": 4, "failures": 1}
    with EnvPool("testing_faulty", kwargs, 2) as pool:
        results = pool.reset([0, 9], allow_failed=True)
        assert results[0].observation == "seed=0 t=0" and not results[0].failed
        assert results[1].failed and "reset failure for seed 9" in results[1].error
        assert pool.step(["ok", None]) == [expected(0, 1), None]
        with pytest.raises(ValueError, match=r"actions\[1\].*failed"):
            pool.step(["ok", "ok"])


def test_expert_plans_are_computed_where_the_env_lives():
    # plan_crash_seeds: expert_actions() calls os._exit — it would end this test process if
    # the plan were computed here; in the env's worker it is one failed env, counted
    with EnvPool(FAULTY, {"plan_crash_seeds": [1], "episode_length": 2}, 3,
                 backend="process") as pool:
        pool.reset([0, 1, 2])
        plans = pool.expert_plans()
        assert plans == [["ok", "ok"], None, ["ok", "ok"]]
        assert pool.stats["failures"] == 1 and pool.window["failures"] == 1
        assert pool.step(["ok", None, "ok"])[1] is None
        pool.reset([3, 4, 5])
        assert pool.expert_plans([1]) == [None, ["ok", "ok"], None]


def test_expert_plans_of_an_env_without_an_expert_is_a_type_error(monkeypatch):
    class NoExpert(FaultyEnv):
        expert_actions = None

    import grouprl.envs.registry as registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_env("no_expert", NoExpert)
    with EnvPool("no_expert", {}, 1) as pool:
        pool.reset([0])
        with pytest.raises(TypeError, match="NoExpert has no expert_actions.*bc.enabled=false"):
            pool.expert_plans()


# -- the sampler opens a window per iteration ---------------------------------------------------


def fake_generate(prompts: list[str]) -> Generation:
    """Every reply is ``<action>ok</action>`` (tokens: character codes)."""
    text = "<action>ok</action>"
    ids = [ord(c) for c in text]
    p_ids, p_mask = left_pad([[ord(c) % 250 + 2 for c in p] for p in prompts], 0)
    r_ids = torch.tensor([ids] * len(prompts))
    return Generation(p_ids, p_mask, r_ids, torch.ones_like(r_ids), -0.5 * torch.ones(
        r_ids.shape), [text] * len(prompts), torch.zeros(len(prompts), dtype=torch.bool))


def test_sampler_budgets_each_iteration_from_config():
    """Iteration 3's tasks all fail: over its budget, although the run's failures so far are a
    quarter of its trajectories (a cumulative budget would not notice)."""
    cfg = load_config(None, [f"env.name={FAULTY}", "agent.template=default", "env.max_steps=3",
                             "rollout.groups_per_batch=2", "rollout.group_size=2"])
    seeds = task_seeds(cfg.seed, 3, 2, cfg.eval.seed_offset)
    cfg.env.kwargs = {"fail_seeds": seeds, "fail_step": 2}
    assert cfg.env.max_failed_fraction == 0.5
    sampler = Sampler(cfg, fake_generate, get_template("default"),
                      types.SimpleNamespace(pad_token_id=0))
    try:
        for it in range(3):
            rollout, metrics = sampler.rollout(it)
            assert metrics["env/failures"] == 0.0 and rollout.metrics["failed_trajectories"] == 0
        with pytest.raises(EnvFaultBudgetExceeded, match="4 failed of 4 trajectories"):
            sampler.rollout(3)
        rollout, metrics = sampler.rollout(4)  # a new window: healthy again
        assert metrics["env/failures"] == 0.0 and sampler.env_failures == 4
    finally:
        sampler.close()


# -- the thread backend -------------------------------------------------------------------------


def run_script(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with a hard timeout: a regression that freezes fails
    the test instead of hanging it."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"froze: no exit within {timeout}s; output: {err.stdout!r} {err.stderr!r}")


def test_thread_deadline_fires_for_a_python_hang_and_the_process_still_exits():
    """A busy Python loop that never ends: the step is cut off at step_timeout, and the abandoned
    thread (a daemon) does not keep the interpreter from exiting (it did with the standard
    executor, whose threads are joined at exit)."""
    out = run_script(f"""
        import json, time
        from grouprl.envs import EnvPool
        kw = {{"hang_seeds": [0], "hang_seconds": 3600, "hang_busy": True}}
        with EnvPool({FAULTY!r}, kw, 2, backend="thread", step_timeout=0.5) as pool:
            pool.reset([0, 1])
            start = time.monotonic()
            results = pool.step(["ok", "ok"])
            print(json.dumps({{"s": time.monotonic() - start, "error": results[0].error,
                              "ok": results[1].observation, "stats": pool.stats}}))
        """, timeout=60.0)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["error"] == "timeout after 0.5s" and got["ok"] == "seed=1 t=1 a=ok"
    assert got["stats"] == {"failures": 1, "restarts": 1, "timeouts": 1}
    assert got["s"] < 30.0


class NativeBlocker(FaultyEnv):
    """Declares that it can block in native code, holding the GIL."""

    blocks_in_native_code = True


def test_thread_backend_refuses_an_env_that_blocks_in_native_code(monkeypatch):
    import grouprl.envs.registry as registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_env("native_blocker", NativeBlocker)
    with pytest.raises(ValueError, match="NativeBlocker declares blocks_in_native_code.*"
                                         "env.backend=process"):
        EnvPool("native_blocker", {}, 2, backend="thread")
    isolating = type("Isolating", (NativeBlocker,), {"isolate_native_calls": lambda self: None})
    register_env("isolating", isolating)
    with EnvPool("isolating", {}, 2, backend="thread") as pool:  # it isolates those calls
        assert pool.reset([0, 1])[1].observation == "seed=1 t=0"


# -- the flaky env, through the real RL recipe ------------------------------------------

TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
        "model.tiny.tokenizer_episodes=8", "logging.progress=false", "threads=1"]


@pytest.mark.filterwarnings("ignore:tokenizer corpus:RuntimeWarning")
def test_flaky_env_runs_30_iterations_to_the_end_with_failures_counted(tmp_path):
    """Raises on 5% and hangs on 2% of its steps (plus 2% NaN rewards), process backend,
    step_timeout 0.5 s: every iteration runs, each failure is dropped and counted."""
    cfg = load_config(None, [
        *TINY, f"env.name={FAULTY}", "env.backend=process", "env.step_timeout=0.5",
        "env.kwargs={episode_length: 2, raise_prob: 0.05, hang_prob: 0.02, nan_prob: 0.02, "
        "hang_seconds: 60, fault_seed: 1}",
        "env.max_steps=2", "agent.template=default", "rollout.groups_per_batch=4",
        "rollout.group_size=4", "rollout.max_new_tokens=4", "bc.episodes=8", "bc.epochs=1",
        "iterations=30", "eval.episodes=4", "eval.every=30", "save_every=10",
        f"run_dir={tmp_path / 'run'}"])
    assert cfg.env.max_failed_fraction == 0.5  # the default budget
    result = train(cfg, echo=lambda s: None)
    rows = read_metrics(cfg.run_dir)
    its = [r for r in rows if "train/rows" in r]
    assert result.iterations == 30 and [r["iteration"] for r in its] == list(range(1, 31))
    failed = sum(r["train/failed_trajectories"] for r in its)
    assert failed > 0 and sum(r["train/nonfinite_reward_trajectories"] for r in its) > 0
    assert sum(r["env/failures"] for r in its) == failed  # one failure per dropped trajectory
    assert its[-1]["env/failures_total"] == failed
    assert all(r["env/failures"] <= 0.5 * 16 for r in its)
    bc = [r for r in rows if "bc/samples" in r]
    assert len(bc) == 1 and "bc/failed_episodes" in bc[0]
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert (tmp_path / "run").is_dir()


def test_a_run_over_the_fault_budget_saves_a_checkpoint_and_exits_cleanly(tmp_path, capsys):
    """Finding 1: a run that must stop writes a checkpoint of its last completed iteration
    first; the CLI says why and how to go on (exit 1, no traceback)."""
    from grouprl.cli import main
    from grouprl.train.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    args = [*TINY, f"env.name={FAULTY}", "env.backend=thread", "env.step_timeout=2",
            "env.kwargs={episode_length: 2, raise_prob: 0.3, fault_seed: 3}",
            "env.max_failed_fraction=0.15", "env.max_steps=2", "agent.template=default",
            "rollout.groups_per_batch=2", "rollout.group_size=4", "rollout.max_new_tokens=4",
            "bc.episodes=8", "bc.epochs=1", "iterations=8", "eval.episodes=2", "eval.every=0",
            "save_every=100", f"run_dir={run}"]
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "env.max_failed_fraction" in err and "grouprl train --resume" in err
    assert "Traceback" not in err
    done = [r["iteration"] for r in read_metrics(run) if "train/rows" in r]
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == f"iter_{len(done):06d}", (ckpt, done)
    assert len(done) < 8


def test_an_env_whose_reset_keeps_failing_drops_its_episode_in_a_rollout():
    """A reset that fails on every retry no longer raises out of a rollout (e.g. a mid-run
    evaluation): that episode is dropped and counted like any failed trajectory."""
    from grouprl.agent import collect_rollouts

    def generate(prompts):
        n = len(prompts)
        return Generation(texts=["<action>ok</action>"] * n,
                          prompt_ids=left_pad([[1, 2]] * n, 0)[0],
                          prompt_mask=left_pad([[1, 2]] * n, 0)[1],
                          response_ids=torch.ones(n, 2, dtype=torch.long),
                          response_mask=torch.ones(n, 2, dtype=torch.long),
                          logprobs=torch.zeros(n, 2), truncated=torch.zeros(n, dtype=torch.bool))

    with EnvPool(FAULTY, {"reset_fail_seeds": [1]}, 4) as pool:
        r = collect_rollouts(pool, generate, template=get_template("default"),
                             task_seeds=[0, 1], group_size=2, max_steps=3)
    assert r.metrics["failed_trajectories"] == 2.0        # both episodes of seed 1
    assert len(r.episode_return) == 2 and set(r.episode_group.tolist()) == {0}
    assert len(r) == 2 * 3                                # seed 0's two episodes, 3 steps each
