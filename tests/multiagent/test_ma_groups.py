"""Spec-seed-systems §1.10 item 5 (per-agent optimisation) and §1.2/§1.6 model groups: shared vs
non-shared, overrides and their conflicts, adaptive mini-batching."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.multiagent import (
    AgentRow,
    AgentSpec,
    build_model_groups,
    math_agents,
    mini_batch_sizes,
    overrides_from_lists,
    split_mini_batches,
    update_model_groups,
)
from grouprl.validation import UserError


def _team(solver_lr=1e-3, verifier_lr=1e-3, model="qwen"):
    solver, verifier = math_agents(model, model)
    return [AgentSpec(solver.name, solver.template, solver.parser, model,
                      overrides={"lr": solver_lr}),
            AgentSpec(verifier.name, verifier.template, verifier.parser, model,
                      overrides={"lr": verifier_lr})]


def test_non_shared_makes_one_group_per_agent_even_for_one_model():
    groups = build_model_groups(_team(), share_models=False)
    assert groups.names() == ["Solver", "Verifier"]
    assert groups.group_of == {"Solver": "Solver", "Verifier": "Verifier"}
    assert groups["Solver"].model == "qwen" and groups["Solver"].settings["lr"] == 1e-3


def test_shared_groups_by_model_and_merges_defaults():
    agents = _team() + [AgentSpec("Critic", "{observation}", model="other")]
    groups = build_model_groups(agents, share_models=True, defaults={"lr": 1e-3,
                                                                     "micro_batch_size": 4})
    assert groups.names() == ["qwen", "other"]
    assert groups["qwen"].agents == ("Solver", "Verifier")
    assert dict(groups["other"].settings) == {"lr": 1e-3, "micro_batch_size": 4}


def test_conflicting_settings_on_a_shared_model_is_a_start_up_error():
    with pytest.raises(UserError, match="'Solver' and 'Verifier' share model 'qwen' but set lr "
                                        "to 0.001 and 0.0"):
        build_model_groups(_team(verifier_lr=0.0), share_models=True)
    agents = [AgentSpec("A", "x", model="m", overrides={"temperature": 0.6}),
              AgentSpec("B", "x", model="m")]
    with pytest.raises(UserError, match="set temperature to 0.6 and 1.0"):
        build_model_groups(agents, share_models=True, defaults={"temperature": 1.0})
    build_model_groups(agents, share_models=False, defaults={"temperature": 1.0})  # fine


def test_released_list_overrides():
    agents = overrides_from_lists(math_agents(), {"lr": [1e-6, 2e-6],
                                                  "micro_batch_size": [4, None]})
    assert dict(agents[0].overrides) == {"lr": 1e-6, "micro_batch_size": 4}
    assert dict(agents[1].overrides) == {"lr": 2e-6}
    with pytest.raises(UserError, match="agent_overrides.lr: has 1 entries for 2 agents"):
        overrides_from_lists(math_agents(), {"lr": [1e-6]})
    with pytest.raises(UserError, match="agent_overrides.lr: must be a list"):
        overrides_from_lists(math_agents(), {"lr": 1e-6})
    with pytest.raises(ValueError, match="lrx: unknown option"):
        overrides_from_lists(math_agents(), {"lrx": [1, 2]})
    with pytest.raises(ValueError, match="micro_batch_size"):
        overrides_from_lists(math_agents(), {"micro_batch_size": [0, 1]})


@pytest.mark.parametrize("n,u", [(0, 3), (1, 3), (7, 3), (9, 4), (12, 5), (30, 1), (5, 5)])
def test_native_mini_batches_give_update_num_near_equal_steps(n, u):
    sizes = mini_batch_sizes(n, u)
    assert sum(sizes) == n and len(sizes) == min(n, u)
    assert not sizes or max(sizes) - min(sizes) <= 1
    chunks = split_mini_batches(list(range(n)), u)
    assert [i for c in chunks for i in c] == list(range(n))


@pytest.mark.parametrize("n,u,w", [(10, 3, 1), (9, 4, 1), (16, 5, 4), (12, 2, 2)])
def test_reference_mini_batch_size_formula(n, u, w):
    b = math.ceil(n / (u * w))
    sizes = mini_batch_sizes(n, u, compat="reference", world_size=w)
    assert all(s == b for s in sizes[:-1]) and sum(sizes) == n // w
    assert mini_batch_sizes(9, 4, compat="reference") == [3, 3, 3]   # only 3 steps, not 4


def test_bad_mini_batch_arguments():
    with pytest.raises(ValueError, match="update_num"):
        mini_batch_sizes(4, 0)
    with pytest.raises(ValueError, match="compat"):
        mini_batch_sizes(4, 1, compat="paper")


# ---------------------------------------------------------------- per-agent optimisation ----

def _rows(groups, counts):
    rows = []
    for agent, n in counts.items():
        for k in range(n):
            rows.append(AgentRow(agent, groups.group_of[agent], 0, k, 1, 0, f"p{k}",
                                 f"{agent} reply {k}", "", True))
    return rows


def _features(rows, idx):
    return torch.tensor([[len(rows[i].response) / 10, i / 5, 1.0, float(rows[i].agent == "Solver")]
                         for i in idx])


class _Models:
    """One tiny linear policy and SGD optimizer per model group; a REINFORCE step per call."""

    def __init__(self, groups, rows, adv):
        self.rows, self.adv = rows, adv
        self.model, self.opt, self.steps = {}, {}, {g: 0 for g in groups.names()}
        for k, g in enumerate(groups.groups):
            torch.manual_seed(k)
            self.model[g.name] = torch.nn.Linear(4, 3)
            self.opt[g.name] = torch.optim.SGD(self.model[g.name].parameters(),
                                               lr=g.settings["lr"])

    def loss(self, name, idx):
        logp = torch.log_softmax(self.model[name](_features(self.rows, idx)), -1)[:, 0]
        return -(self.adv[idx] * logp).mean()

    def __call__(self, group, idx):
        self.opt[group.name].zero_grad()
        loss = self.loss(group.name, idx)
        loss.backward()
        self.opt[group.name].step()
        self.steps[group.name] += 1
        return {"loss": float(loss.detach()), "rows": float(len(idx))}


def test_non_shared_lr_zero_leaves_that_agent_bit_identical():
    groups = build_model_groups(_team(solver_lr=1e-1, verifier_lr=0.0), share_models=False)
    rows = _rows(groups, {"Solver": 4, "Verifier": 3})
    adv = torch.linspace(-1, 1, len(rows))
    models = _Models(groups, rows, adv)
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in models.model.items()}
    metrics = update_model_groups(rows, groups, 1, models)
    assert [m["rows"] for m in metrics["Solver"]] == [4.0]
    assert [m["rows"] for m in metrics["Verifier"]] == [3.0]
    for p, q in zip(models.model["Verifier"].parameters(), before["Verifier"]):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(models.model["Solver"].parameters(),
                                                      before["Solver"]))


def test_each_group_is_updated_only_by_its_own_rows():
    groups = build_model_groups(_team(solver_lr=0.5, verifier_lr=0.5), share_models=False)
    rows = _rows(groups, {"Solver": 4, "Verifier": 3})
    adv = torch.linspace(-1, 1, len(rows))
    models = _Models(groups, rows, adv)
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(models.model["Solver"].state_dict())
    solver_idx = [0, 1, 2, 3]
    logp = torch.log_softmax(twin(_features(rows, solver_idx)), -1)[:, 0]
    (-(adv[solver_idx] * logp).mean()).backward()
    expected = [p.detach() - 0.5 * p.grad for p in twin.parameters()]
    update_model_groups(rows, groups, 1, models)
    for p, e in zip(models.model["Solver"].parameters(), expected):
        assert torch.allclose(p, e, atol=1e-7)


def test_shared_model_takes_one_step_from_both_agents_rows():
    groups = build_model_groups(_team(solver_lr=0.5, verifier_lr=0.5), share_models=True)
    assert groups.names() == ["qwen"]
    rows = _rows(groups, {"Solver": 4, "Verifier": 3})
    adv = torch.linspace(-1, 1, len(rows))
    models = _Models(groups, rows, adv)
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(models.model["qwen"].state_dict())
    logp = torch.log_softmax(twin(_features(rows, range(7))), -1)[:, 0]
    (-(adv * logp).mean()).backward()
    expected = [p.detach() - 0.5 * p.grad for p in twin.parameters()]
    metrics = update_model_groups(rows, groups, 1, models)
    assert models.steps == {"qwen": 1} and metrics["qwen"][0]["rows"] == 7.0
    for p, e in zip(models.model["qwen"].parameters(), expected):
        assert torch.allclose(p, e, atol=1e-7)


def test_update_num_gives_equal_steps_whatever_the_row_count():
    groups = build_model_groups(_team(), share_models=False)
    rows = _rows(groups, {"Solver": 6, "Verifier": 2})      # the Solver has 3x the rows
    models = _Models(groups, rows, torch.ones(len(rows)))
    metrics = update_model_groups(rows, groups, 2, models)
    assert models.steps == {"Solver": 2, "Verifier": 2}
    assert [m["rows"] for m in metrics["Solver"]] == [3.0, 3.0]
    assert [m["rows"] for m in metrics["Verifier"]] == [1.0, 1.0]


def test_rows_of_an_unknown_group_are_an_error():
    groups = build_model_groups(_team(), share_models=False)
    bad = [AgentRow("Solver", "nope", 0, 0, 1, 0, "", "", "", True)]
    with pytest.raises(ValueError, match="row 0 names model group 'nope'"):
        update_model_groups(bad, groups, 1, lambda g, idx: {})
