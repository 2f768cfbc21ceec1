"""The multi-agent recipe (issue 16; spec-seed-systems §1.6, §1.10 item 5): ``grouprl train
configs/drmas_math.yaml`` end to end on tiny models — per-agent metrics, per-group optimisation
(an agent with lr 0 stays bit-identical while its teammate learns), update_num optimizer steps
per group, exact resume of every group's weights and optimizer, config errors naming the key,
and a one-iteration search-team smoke run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from grouprl.cli import main
from grouprl.recipes import train
from grouprl.train.checks import check_rl_config
from grouprl.train.config import ConfigError, load_config
from grouprl.train.metrics import read_metrics

TINY = {"model.tiny.vocab_size": 272, "model.tiny.hidden_size": 16, "model.tiny.num_layers": 1,
        "model.tiny.num_heads": 2, "model.tiny.num_kv_heads": 1,
        "model.tiny.intermediate_size": 32, "rollout.groups_per_batch": 2,
        "rollout.group_size": 2, "rollout.max_new_tokens": 6, "eval.episodes": 2,
        "eval.every": 1, "save_every": 1, "multiagent.eval_k": 2, "logging.progress": False,
        "multiagent.warm_start_samples": 8, "bc.epochs": 1, "bc.batch_size": 8,
        "algorithm.entropy_coef": 0.01}
MATH = {**TINY, "multiagent.task_kwargs": {"difficulty": [1], "size": 20},
        "multiagent.agents": {"Solver": {"model": "solver"},
                              "Verifier": {"model": "verifier", "lr": 0.0}},
        "multiagent.update_num": 2}
PER_AGENT = ("rows", "invalid_rate", "reward_mean", "adv_abs_mean", "loss", "grad_norm",
             "clip_fraction", "entropy", "optimizer_steps", "lr")


def _config(path, run_dir, **overrides):
    items = {**overrides, "run_dir": str(run_dir)}
    return load_config(path, [f"{k}={json.dumps(v)}" for k, v in items.items()])


def _run(run_dir, iterations, resume=False, path="configs/drmas_math.yaml", **extra):
    cfg = _config(path, run_dir, **{**MATH, **extra, "iterations": iterations})
    return train(cfg, resume=resume, echo=lambda _: None)


def _weights(run_dir, iteration):
    return load_file(str(run_dir / "checkpoints" / f"iter_{iteration:06d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 2 iterations straight; B: 1 iteration, then resumed for the second."""
    root = tmp_path_factory.mktemp("drmas")
    _run(root / "a", 2)
    _run(root / "b", 1)
    _run(root / "b", 2, resume=True)
    return root / "a", root / "b"


def test_two_iterations_log_every_agents_metrics(runs):
    a, _ = runs
    rows = read_metrics(a)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert {"val/pass@k", "val/avg@k"} <= set(rows[0]) and rows[0]["val/k"] == 2.0
    for r in rows[1:]:
        for agent in ("Solver", "Verifier"):
            missing = [k for k in PER_AGENT if f"agent/{agent}/{k}" not in r]
            assert not missing, (agent, missing)
            assert r[f"agent/{agent}/optimizer_steps"] == 2.0         # update_num per group
        # one row per invocation: every task × n episodes gets one Solver row at least
        assert r["agent/Solver/rows"] >= 4 and r["agent/Verifier/rows"] >= 1
        assert r["train/rows"] == r["agent/Solver/rows"] + r["agent/Verifier/rows"]
        assert r["agent/Verifier/lr"] == 0.0 and r["agent/Solver/lr"] > 0
        assert "math/approve_rate" in r and "val/avg@k" in r


def test_checkpoint_holds_every_groups_weights_and_optimizer(runs):
    a, _ = runs
    keys = set(_weights(a, 2))
    assert any(k.startswith("Solver.") for k in keys)
    assert any(k.startswith("Verifier.") for k in keys)
    opt = torch.load(a / "checkpoints" / "iter_000002" / "optimizer.pt", weights_only=True)
    assert set(opt) == {"Solver", "Verifier"}
    assert opt["Verifier"]["param_groups"][0]["lr"] == 0.0


def test_each_group_changes_only_from_its_own_update(runs):
    a, _ = runs
    base = {g: load_file(str(a / "base_models" / g / "model.safetensors"))
            for g in ("Solver", "Verifier")}
    final = _weights(a, 2)
    for g in ("Solver", "Verifier"):
        shared = [k for k in base[g] if f"{g}.{k}" in final]      # tied weights stored once
        assert len(shared) >= len(base[g]) - 1
        changed = [k for k in shared if not torch.equal(final[f"{g}.{k}"], base[g][k])]
        if g == "Verifier":                       # lr 0: bit-identical after two iterations
            assert changed == []
        else:
            assert changed, "the Solver's own update must change it"


def test_resume_reproduces_weights_and_metrics_exactly(runs):
    a, b = runs
    wa, wb = _weights(a, 2), _weights(b, 2)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(a / "checkpoints" / "iter_000002" / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "checkpoints" / "iter_000002" / "optimizer.pt", weights_only=True)
    exp_a = oa["Solver"]["state"][0]["exp_avg"]
    assert torch.equal(exp_a, ob["Solver"]["state"][0]["exp_avg"])

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]
    assert strip(read_metrics(a)) == strip(read_metrics(b))


@pytest.mark.parametrize("override, fragment", [
    ("multiagent.agents={Critic: {lr: 0.1}}", "multiagent.agents.Critic: no agent named"),
    ("multiagent.agents={Solver: {lrr: 0.1}}", "multiagent.agents.Solver: "),
    ("multiagent.agent_overrides={lr: [0.1]}", "multiagent.agent_overrides.lr: has 1 entries"),
    ("multiagent.pad_divisor=4", "multiagent.pad_divisor: "),
    ("multiagent.models={nobody: {path: null}}", "multiagent.models.nobody: "),
    ("multiagent.baseline=global", "multiagent.baseline"),
    ("model.tiny.vocab_size=200", "model.tiny.vocab_size: a team's tiny model needs >= 268"),
    ("multiagent.models={solver: {path: /no/such/dir}}", "multiagent.models.solver.path: "),
    ("multiagent.agents={Solver: {clip_ratio: -1}}", "multiagent.agents.Solver: "),
    ("algorithm.kl_coef=0.1", "algorithm.kl_coef: the multiagent recipe has no reference"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, override, fragment):
    code = main(["train", "configs/drmas_math.yaml", f"run_dir={tmp_path / 'r'}", override])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()                   # refused before any work


def test_shared_model_with_conflicting_settings_is_a_start_up_error(tmp_path):
    cfg = _config("configs/drmas_math.yaml", tmp_path, **{
        "multiagent.share_models": True,
        "multiagent.agents": {"Solver": {"model": "m"}, "Verifier": {"model": "m", "lr": 0.0}}})
    with pytest.raises(ConfigError, match="share model 'm' but set lr to 0.001 and 0.0"):
        check_rl_config(cfg)
    ok = _config("configs/drmas_math.yaml", tmp_path, **{
        "multiagent.share_models": True,
        "multiagent.agents": {"Solver": {"model": "m"}, "Verifier": {"model": "m"}}})
    assert check_rl_config(ok).groups.names() == ["m"]


def test_grouprl_config_prints_the_resolved_multiagent_section(capsys):
    assert main(["config", "configs/drmas_math.yaml"]) == 0
    out = capsys.readouterr().out
    assert "mode: multiagent" in out and "multiagent:\n  task: math" in out
    assert main(["config", "--keys"]) == 0
    keys = capsys.readouterr().out
    assert "multiagent.update_num" in keys and "multiagent.share_models" in keys


def test_search_team_runs_one_iteration(tmp_path):
    overrides = {**TINY, "iterations": 1, "multiagent.max_steps": 2, "eval.episodes": 1,
                 "multiagent.update_num": 1, "rollout.max_new_tokens": 8}
    cfg = _config("configs/drmas_search.yaml", tmp_path / "s", **overrides)
    result = train(cfg, echo=lambda _: None)
    rows = result.metrics
    last = rows[-1]
    assert last["iteration"] == 1 and last["agent/Verifier/rows"] >= 2
    assert "search/answer_rate" in last and "val/pass@k" in last
    assert last["episode/length"] <= 2
    assert {k.split(".")[0] for k in _weights(tmp_path / "s", 1)} == {"Verifier", "Search",
                                                                      "Answer"}


def test_shared_model_with_reference_padding_trains_duplicates(tmp_path):
    """One shared model group (one optimizer, both agents' rows), released padding: the rows
    are padded to a multiple of pad_divisor by duplicates, which enter the update too."""
    run = tmp_path / "shared"
    rows = _run(run, 1, **{"multiagent.share_models": True, "multiagent.compat": "reference",
                           "multiagent.pad_divisor": 3, "multiagent.update_num": 1,
                           "eval.every": 0, "multiagent.agents": {"Solver": {"model": "m"},
                                                                   "Verifier": {"model": "m"}}}
                ).metrics
    last = rows[-1]
    n = last["train/rows"]
    assert last["train/duplicate_rows"] == (-n) % 3
    assert last["agent/Solver/optimizer_steps"] == last["agent/Verifier/optimizer_steps"] == 1
    assert last["agent/Solver/grad_norm"] == last["agent/Verifier/grad_norm"]   # one group
    assert {k.split(".")[0] for k in _weights(run, 1)} == {"m"}
    assert (run / "base_models" / "m").is_dir()


def test_a_user_orchestra_is_loaded_from_its_import_string(tmp_path):
    cfg = _config("configs/drmas_math.yaml", tmp_path, **{
        "multiagent.orchestra": "grouprl.multiagent.orchestras:MathRefine",
        "multiagent.orchestra_kwargs": {"max_loops": 1},
        "multiagent.agents": {"Verifier": {"lr": 0.0, "temperature": 0.5}}})
    team = check_rl_config(cfg)
    assert team.orchestra.max_loops == 1
    assert team.settings("Verifier")["lr"] == 0.0 and team.settings("Verifier")["temperature"] \
        == 0.5 and team.settings("Solver")["lr"] == cfg.optim.lr
    for spec, fragment in (("grouprl.multiagent:Nope", "multiagent.orchestra: cannot load"),
                           ("grouprl.multiagent.rows:row_rewards", "multiagent.orchestra_kwargs"),
                           ("no_colon", "must look like 'package.module:name'")):
        bad = _config("configs/drmas_math.yaml", tmp_path, **{"multiagent.orchestra": spec})
        with pytest.raises(ConfigError, match=fragment):
            check_rl_config(bad)
