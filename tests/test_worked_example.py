"""Spec §4.6 worked micro-example, value by value (compat="reference", c=0.1, gamma=0.95).

Both the vectorised API and the slow reference (tests/reference_impl.py) are checked against the
spec's printed numbers (4 decimals, so abs tol 1e-4); that also validates the reference.

Group of N=3 trajectories, state ids s0..s5 = 0..5:
  A: s0 -> s1 -> s2, rewards 0, 0, 10 (success)
  B: s0 -> s1 -> s3 -> s5, rewards 0, 0, 0 (fail), the step at s1 invalid
  C: s0 -> s4, rewards 0, 10 (success)
Rows A0, A1, A2, B0, B1, B2, C0, C1.
"""

from __future__ import annotations

import random

import pytest
import torch

from grouprl.advantages import RolloutBatch, compute_advantages
from reference_impl import reference_advantages, rows_to_columns, slow_discounted_returns

TOL = 1e-4
C = 0.1
GAMMA = 0.95


def _row(traj, step, reward, state, next_state, invalid=False):
    return {"group_id": 7, "traj_id": traj, "step": step, "reward": reward, "state": state,
            "next_state": next_state, "success": None, "invalid": invalid, "agent_id": None}


ROWS = [
    _row(0, 0, 0.0, 0, 1),                  # A0: s0 -> s1
    _row(0, 1, 0.0, 1, 2),                  # A1: s1 -> s2
    _row(0, 2, 10.0, 2, 99),                # A2: s2 -> (success)
    _row(1, 0, 0.0, 0, 1),                  # B0: s0 -> s1
    _row(1, 1, 0.0, 1, 3, invalid=True),    # B1: s1 -> s3, invalid
    _row(1, 2, 0.0, 3, 5),                  # B2: s3 -> s5
    _row(2, 0, 0.0, 0, 4),                  # C0: s0 -> s4
    _row(2, 1, 10.0, 4, 99),                # C1: s4 -> (success)
]

SPEC = {
    "returns": [9.025, 9.5, 10, 0, -0.1, 0, 9.5, 10],
    "gigpo_std_AE": [0.7246, 0.7246, 0.7246, -1.2012, -1.2204, -1.2012, 0.7246, 0.7246],
    "gigpo_std_AS": [0.5324, 0.7071, 0, -1.1536, -0.7071, 0, 0.6211, 0],
    "gigpo_std_A": [1.2570, 1.4317, 0.7246, -2.3547, -1.9275, -1.2012, 1.3457, 0.7246],
    "gigpo_mean_AE": [3.7625, 3.7625, 3.7625, -6.2375, -6.3375, -6.2375, 3.7625, 3.7625],
    "gigpo_mean_AS": [2.85, 4.8, 0, -6.175, -4.8, 0, 3.325, 0],
    "hgpo_k1": [0.6521, 1.0, 0, -1.4128, -1.0, 0, 0.7607, 0],
    "hgpo_k1_base": [0.6762, 0.9541, 0.7246, -1.3423, -1.0367, -1.2012, 0.7487, 0.7246],
    "graph_step": [-0.5773, 0.7071, 0, -0.5773, -0.7071, 0, 1.1547, 0],
    "graph_A": [0.1472, 1.4317, 0.7246, -1.7785, -1.9275, -1.2012, 1.8793, 0.7246],
}

# (spec key, estimator, options); every call also gets compat="reference", invalid_penalty=0.1.
CASES = [
    ("gigpo_std_A", "gigpo", {"mode": "mean_std_norm", "gamma": GAMMA}),
    ("gigpo_std_AE", "gigpo", {"mode": "mean_std_norm", "gamma": GAMMA, "step_weight": 0.0}),
    ("gigpo_mean_AE", "gigpo", {"mode": "mean_norm", "gamma": GAMMA, "step_weight": 0.0}),
    ("hgpo_k1", "hgpo", {"mode": "mean_std_norm", "gamma": GAMMA, "history_length": 1,
                         "alpha": 1.0, "base_group": False}),
    ("hgpo_k1_base", "hgpo", {"mode": "mean_std_norm", "gamma": GAMMA, "history_length": 1,
                              "alpha": 1.0, "base_group": True}),
    ("graph_step", "graphgpo", {"mode": "mean_std_norm", "omega": 0.1, "episode_weight": 0.0}),
    ("graph_A", "graphgpo", {"mode": "mean_std_norm", "omega": 0.1}),
]


def _api(name, rows, **options):
    batch = RolloutBatch(**rows_to_columns(rows))
    out = compute_advantages(name, batch, compat="reference", invalid_penalty=C, **options)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert out.shape == (len(rows),)
    return [float(x) for x in out]


def _ref(name, rows, **options):
    return reference_advantages(name, rows, compat="reference", invalid_penalty=C, **options)


def _close(actual, expected, tol=TOL):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert abs(a - e) <= tol, f"row {i}: got {a!r}, spec {e!r}\n  all: {actual}"


IMPLS = {"api": _api, "reference": _ref}


def test_discounted_returns_reference():
    _close(slow_discounted_returns(ROWS, GAMMA, C), SPEC["returns"])


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("key,name,options", CASES, ids=[c[0] for c in CASES])
def test_spec_values(impl, key, name, options):
    _close(IMPLS[impl](name, ROWS, **options), SPEC[key])


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("mode,prefix", [("mean_std_norm", "gigpo_std"),
                                         ("mean_norm", "gigpo_mean")])
def test_gigpo_step_term(impl, mode, prefix):
    """A_S = A(step_weight=1) - A(step_weight=0); also A(step_weight=2) = A_E + 2 A_S."""
    fn = IMPLS[impl]
    total = fn("gigpo", ROWS, mode=mode, gamma=GAMMA)
    a_e = fn("gigpo", ROWS, mode=mode, gamma=GAMMA, step_weight=0.0)
    _close(a_e, SPEC[f"{prefix}_AE"])
    _close([t - e for t, e in zip(total, a_e)], SPEC[f"{prefix}_AS"])
    double = fn("gigpo", ROWS, mode=mode, gamma=GAMMA, step_weight=2.0)
    _close(double, [e + 2 * s for e, s in zip(SPEC[f"{prefix}_AE"], SPEC[f"{prefix}_AS"])],
           tol=2 * TOL)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_graphgpo_episode_term_is_gigpo_episode_term(impl):
    fn = IMPLS[impl]
    total = fn("graphgpo", ROWS, mode="mean_std_norm", omega=0.1)
    step = fn("graphgpo", ROWS, mode="mean_std_norm", omega=0.1, episode_weight=0.0)
    _close([t - s for t, s in zip(total, step)], SPEC["gigpo_std_AE"])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("key,name,options", CASES, ids=[c[0] for c in CASES])
def test_shuffled_rows_permute_output(seed, key, name, options):
    perm = list(range(len(ROWS)))
    random.Random(seed).shuffle(perm)
    shuffled = [ROWS[p] for p in perm]
    expected = [SPEC[key][p] for p in perm]
    out = _api(name, shuffled, **options)
    _close(out, expected)
    # The permuted API output equals the unpermuted one re-indexed (not just within tolerance
    # of the spec): same inputs up to order.
    base = _api(name, ROWS, **options)
    for j, p in enumerate(perm):
        assert abs(out[j] - base[p]) <= 1e-6, (j, p, out[j], base[p])
    _close(_ref(name, shuffled, **options), expected)
