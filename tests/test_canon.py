"""CANON advantage estimator (spec §A10): the spec vector, μ_w = 0.5 ≡ Dr. GRPO / L_max (§C7),
and a slow per-group reference written from the formula, on random batches."""

from __future__ import annotations

import re
import statistics

import numpy as np
import pytest
import torch

from grouprl.advantages import RolloutBatch, compute_advantages, estimator_options


def single_step(reward, group, traj_id=None):
    n = len(reward)
    return RolloutBatch(group_id=list(group), traj_id=list(range(n)) if traj_id is None
                        else list(traj_id), step=[0] * n, reward=list(reward))


@pytest.mark.parametrize("mu_w,expected", [(1.0, [1, 1, -1, -1]), (0.0, [0, 0, 0, 0]),
                                           (0.5, [0.5, 0.5, -0.5, -0.5])])
def test_spec_vector(mu_w, expected):
    batch = single_step([1.0, 1.0, 0.0, 0.0], [0] * 4)
    adv = compute_advantages("canon", batch, metric=torch.tensor([100.0, 200, 300, 400]),
                             mu_w=mu_w)
    assert (adv.double() * 8192).tolist() == pytest.approx(expected, abs=1e-6)
    if mu_w == 0.5:
        dr = compute_advantages("dr_grpo", batch)
        assert (adv.double() * 8192).tolist() == pytest.approx(dr.tolist(), abs=1e-6)


def random_multi_step(seed, even=True):
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("group_id", "traj_id", "step", "reward", "invalid")}
    metric = []
    traj = 0
    for g in range(6):
        size = int(rng.integers(1, 5)) * 2 if even else int(rng.integers(1, 8))
        for _ in range(size):
            steps = int(rng.integers(1, 4))
            for t in range(steps):
                cols["group_id"].append(f"task-{g}")
                cols["traj_id"].append(traj)
                cols["step"].append(t)
                cols["reward"].append(float(rng.choice([0.0, 0.1, 1.0])))
                cols["invalid"].append(bool(rng.random() < 0.2))
                metric.append(float(rng.integers(1, 5)) * 100)      # ties on purpose
            traj += 1
    perm = rng.permutation(len(metric))
    batch = RolloutBatch(**{k: np.array(v)[perm] for k, v in cols.items()})
    return batch, torch.tensor(np.array(metric)[perm])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("compat", ["native", "reference"])
def test_half_weight_equals_dr_grpo(seed, compat):
    batch, metric = random_multi_step(seed)
    for direction in ("length", "entropy"):
        got = compute_advantages("canon", batch, metric=metric, mu_w=0.5, compat=compat,
                                 direction=direction, invalid_penalty=0.3, l_max=1000.0)
        dr = compute_advantages("dr_grpo", batch, compat=compat, invalid_penalty=0.3)
        torch.testing.assert_close(got, dr / 1000.0, atol=1e-7, rtol=1e-5)


def canon_ref(reward, metric, group, *, mu_w, alpha, beta, direction, l_max, compat):
    """From the formula, one response per row; ties in row order (Python's stable sort)."""
    groups: dict = {}
    for i, g in enumerate(group):
        groups.setdefault(g, []).append(i)
    out = [0.0] * len(reward)
    for rows in groups.values():
        ranked = sorted(rows, key=lambda i: metric[i])
        mid = len(ranked) // 2
        lower, upper = ranked[:mid], ranked[mid:]
        if len(rows) == 1:
            if compat == "native":
                continue
            mu_lo = mu_hi = 0.0
        else:
            mu_lo = statistics.fmean(reward[i] for i in lower)
            mu_hi = statistics.fmean(reward[i] for i in upper)
        for i in upper:
            r = reward[i]
            inter = (alpha * r - mu_lo + beta) if direction == "length" else (
                r - alpha * mu_lo + beta)
            out[i] = (mu_w * inter + (1 - mu_w) * (r - mu_hi)) / l_max
        for i in lower:
            r = reward[i]
            inter = (r - alpha * mu_hi - beta) if direction == "length" else (
                alpha * r - mu_hi - beta)
            out[i] = (mu_w * inter + (1 - mu_w) * (r - mu_lo)) / l_max
    return out


@pytest.mark.parametrize("seed", range(10))
def test_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n = 40
    group = rng.integers(0, 7, n)                  # odd, even and singleton groups
    reward = rng.choice([0.0, 0.5, 1.0], n)
    metric = rng.integers(0, 6, n).astype(float)   # many ties
    traj_id = [f"uid-{k}" for k in rng.permutation(n)]   # codes unrelated to row order
    batch = single_step(reward, group, traj_id)
    for compat in ("native", "reference"):
        for direction in ("length", "entropy"):
            opts = dict(mu_w=float(rng.random()), alpha=float(rng.uniform(0.5, 1.5)),
                        beta=float(rng.uniform(-0.2, 0.2)), direction=direction, l_max=64.0)
            got = compute_advantages("canon", batch, metric=torch.from_numpy(metric),
                                     compat=compat, **opts)
            ref = canon_ref(reward.tolist(), metric.tolist(), group.tolist(), compat=compat,
                            **opts)
            assert got.tolist() == pytest.approx(ref, abs=1e-6)


def test_direction_moves_alpha():
    batch = single_step([1.0, 0.0, 1.0, 0.0], [0] * 4)
    metric = torch.tensor([1.0, 2.0, 3.0, 4.0])
    length = compute_advantages("canon", batch, metric=metric, alpha=2.0, l_max=1.0)
    entropy = compute_advantages("canon", batch, metric=metric, alpha=2.0, l_max=1.0,
                                 direction="entropy")
    # μ⁻ = μ⁺ = 0.5. length: C⁺ α·r − μ⁻, C⁻ r − α·μ⁺; entropy: C⁺ r − α·μ⁻, C⁻ α·r − μ⁺.
    assert length.tolist() == pytest.approx([0.0, -1.0, 1.5, -0.5])
    assert entropy.tolist() == pytest.approx([1.5, -0.5, 0.0, -1.0])


def test_singleton_group():
    batch = single_step([1.0], [0])
    native = compute_advantages("canon", batch, metric=torch.tensor([5.0]), l_max=1.0)
    reference = compute_advantages("canon", batch, metric=torch.tensor([5.0]), l_max=1.0,
                                   compat="reference")
    assert native.tolist() == [0.0] and reference.tolist() == [1.0]


def test_option_errors():
    batch = single_step([1.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match="^metric: required by 'canon'"):
        compute_advantages("canon", batch)
    with pytest.raises(ValueError, match=re.escape("metric: has 3 rows, the batch has 2")):
        compute_advantages("canon", batch, metric=torch.ones(3))
    with pytest.raises(ValueError, match="^direction: got 'time'"):
        estimator_options("canon", metric=torch.ones(2), direction="time")
    with pytest.raises(ValueError, match=r"^mu_w: must be a number in \[0.0, 1.0\]"):
        estimator_options("canon", metric=torch.ones(2), mu_w=1.5)
    with pytest.raises(ValueError, match="^l_max: must be"):
        estimator_options("canon", metric=torch.ones(2), l_max=0.0)
    with pytest.raises(ValueError, match="^metric: must be a 1-D tensor of finite values"):
        estimator_options("canon", metric=torch.tensor([1.0, float("nan")]))
