"""Every validation error of grouprl.advantages names the column (or option) and the first row."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from grouprl.advantages import RolloutBatch, available_estimators, compute_advantages


def batch(**overrides):
    cols = dict(group_id=[0, 0, 0, 1], traj_id=[0, 0, 1, 2], step=[0, 1, 0, 0],
                reward=[0.0, 1.0, 0.0, 2.0], state=[0, 1, 0, 2], next_state=[1, 3, 3, 4])
    cols.update(overrides)
    return RolloutBatch(**cols)


def test_valid_batch_runs_with_every_estimator():
    for name in available_estimators():
        opts = {"by_agent": False} if name in ("grpo", "dr_grpo") else {}
        if name == "canon":  # CANON needs its per-row metric (response length or entropy)
            opts = {"metric": torch.tensor([3.0, 1.0, 2.0, 4.0])}
        out = compute_advantages(name, batch(), **opts)
        assert out.dtype == torch.float32 and out.shape == (4,)
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("column", ["traj_id", "step", "reward", "state", "invalid"])
def test_unequal_lengths_name_the_column(column):
    bad = {"invalid": [False, True, False]} if column == "invalid" else {
        column: getattr(batch(), column)[:3]}
    with pytest.raises(ValueError, match=rf"^{column}: has 3 rows but group_id has 4"):
        compute_advantages("gigpo", batch(**bad))


def test_two_dimensional_column():
    with pytest.raises(ValueError, match=r"^reward: columns must be 1-D, got shape \(4, 1\)"):
        compute_advantages("grpo", batch(reward=torch.zeros(4, 1)))


def test_duplicate_step_names_first_offending_row():
    # trajectory 0 has steps 0, 0 (rows 0 and 1): row 1 is the repeat.
    with pytest.raises(ValueError, match=r"^step: row 1 repeats step 0 of trajectory 0"):
        compute_advantages("grpo", batch(step=[0, 0, 0, 0]))


def test_non_contiguous_steps():
    with pytest.raises(ValueError, match=r"^step: row 1 has step 2 but trajectory 0 has 2 rows"):
        compute_advantages("grpo", batch(step=[0, 2, 0, 0]))
    with pytest.raises(ValueError, match=r"^step: row 2 has step 1 but trajectory 1 has 1 rows"):
        compute_advantages("grpo", batch(step=[0, 1, 1, 0]))


def test_negative_or_fractional_step():
    with pytest.raises(ValueError, match=r"^step: row 3 has step -1"):
        compute_advantages("grpo", batch(step=[0, 1, 0, -1]))
    with pytest.raises(ValueError, match=r"^step: must hold integers; row 1 holds 0.5"):
        compute_advantages("grpo", batch(step=[0.0, 0.5, 0.0, 0.0]))


def test_trajectory_in_two_groups():
    with pytest.raises(ValueError, match=r"^group_id: row 1 puts trajectory 0 in a second group"):
        compute_advantages("grpo", batch(group_id=[0, 1, 0, 1]))


def test_string_ids_are_named_in_errors():
    with pytest.raises(ValueError, match=r"group_id: row 1 puts trajectory 'a' in a second group "
                                         r"\('g2'\)"):
        compute_advantages("grpo", batch(group_id=["g1", "g2", "g1", "g3"],
                                         traj_id=["a", "a", "b", "c"]))


def test_non_finite_reward():
    with pytest.raises(ValueError, match=r"^reward: row 2 is not finite \(nan\)"):
        compute_advantages("grpo", batch(reward=[0.0, 1.0, float("nan"), 0.0]))


@pytest.mark.parametrize(("name", "column"), [("gigpo", "state"), ("hgpo", "state"),
                                               ("graphgpo", "state"),
                                               ("graphgpo", "next_state")])
def test_missing_column_for_estimator(name, column):
    with pytest.raises(ValueError, match=rf"^{column}: column is missing \(needed by '{name}'\)"):
        compute_advantages(name, batch(**{column: None}))


def test_by_agent_needs_agent_id():
    with pytest.raises(ValueError, match=r"^agent_id: column is missing \(needed by 'grpo' with "
                                         r"by_agent=True\)"):
        compute_advantages("grpo", batch(), by_agent=True)


def test_success_must_be_constant_per_trajectory():
    with pytest.raises(ValueError, match=r"^success: row 1 disagrees with the rest of trajectory"):
        compute_advantages("graphgpo", batch(success=[True, False, False, True]))


def test_float_identifiers_rejected():
    with pytest.raises(ValueError, match=r"^traj_id: identifiers must be integers"):
        compute_advantages("grpo", batch(traj_id=np.array([0.0, 0.0, 1.0, 2.0])))


def test_invalid_must_be_boolean():
    with pytest.raises(ValueError, match=r"^invalid: must be boolean \(0/1\); row 2 holds 0.5"):
        compute_advantages("grpo", batch(invalid=[0.0, 1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"^success: must be boolean \(0/1\); row 3 holds 2"):
        compute_advantages("graphgpo", batch(success=[1, 1, 0, 2]))


def test_unknown_estimator_and_options():
    with pytest.raises(ValueError, match=r"^estimator: unknown name 'ppo'; available: grpo"):
        compute_advantages("ppo", batch())
    with pytest.raises(ValueError, match=r"^history_lenght: not an option of 'hgpo'; accepted "
                                         r"options: invalid_penalty, epsilon, compat, gamma, "
                                         r"history_length"):
        compute_advantages("hgpo", batch(), history_lenght=2)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("grpo", {"mode": "std"}, "mode: got 'std'; accepted values are 'mean_norm', 'mean_std_norm'"),
    ("gigpo", {"compat": "verl"}, "compat: got 'verl'; accepted values are 'native', 'reference'"),
    ("gigpo", {"gamma": 1.5}, "gamma: must be in [0.0, 1.0], got 1.5"),
    ("hgpo", {"history_length": -1}, "history_length: must be in >= 0, got -1"),
    ("hgpo", {"history_length": 1.5}, "history_length: must be an integer, got 1.5"),
    ("hgpo", {"level_offset": 2}, "level_offset: got 2; accepted values are 0, 1"),
    ("graphgpo", {"omega": 1.0}, "omega: must be in (0.0, 1.0), got 1.0"),
    ("graphgpo", {"omega": 0.0}, "omega: must be in (0.0, 1.0), got 0.0"),
    ("gigpo", {"epsilon": -1e-6}, "epsilon: must be in >= 0.0, got -1e-06"),
    ("gigpo", {"invalid_penalty": float("nan")}, "invalid_penalty: must be a number, got nan"),
    ("grpo", {"by_agent": "yes"}, "by_agent: got 'yes'; accepted values are False, True"),
])
def test_bad_option_values(name, options, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        compute_advantages(name, batch(), **options)


def test_not_a_batch():
    with pytest.raises(ValueError, match=r"^batch: expected a RolloutBatch, got dict"):
        compute_advantages("grpo", {"reward": [1.0]})


def test_empty_batch_gives_empty_result():
    empty = RolloutBatch(group_id=[], traj_id=[], step=[], reward=[], state=[], next_state=[])
    for name in available_estimators():
        opts = {"by_agent": False} if name in ("grpo", "dr_grpo") else {}
        if name == "canon":
            opts = {"metric": torch.zeros(0)}
        assert compute_advantages(name, empty, **opts).shape == (0,)
