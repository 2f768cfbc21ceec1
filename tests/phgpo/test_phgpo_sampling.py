"""PhGPO pheromone-guided sampling and ratio modes (spec §2.3, §2.9; §2.11 check 1)."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.phgpo.sampling import (
    concat_samples,
    current_logprobs,
    policy_gradient_mask,
    sample_tools,
    tempered_topk,
)

# spec §2.11 check 1: tools [fs-list, fs-read, mail-send, web-search]
LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0]], dtype=torch.float64)
TAU = torch.tensor([[1.0, 4.0, 0.5, 1.0]], dtype=torch.float64)   # τ(fs-list → ·)
FS_READ = 1


def _sample(**kw):
    args = dict(beta=0.5, temperature=0.7, top_k=3, epsilon=0.0,
                generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return sample_tools(LOGITS, TAU, **args)


def _force_read(**kw):
    """Teacher-force nothing but make fs-read the action: sample until it is drawn."""
    for seed in range(200):
        s = _sample(generator=torch.Generator().manual_seed(seed), **kw)
        if int(s.action) == FS_READ:
            return s
    raise AssertionError("fs-read never sampled")


def test_tempered_topk_values_of_check_1():
    log_p, cand = tempered_topk(LOGITS, 0.7, 3)
    assert cand.tolist() == [[0, 1, 2]]
    p = torch.softmax(LOGITS / 0.7, -1)[0]
    assert p.tolist() == pytest.approx([0.729536, 0.174834, 0.085589, 0.010041], abs=1e-6)
    assert log_p.exp()[0].tolist() == pytest.approx(p[:3].tolist(), abs=1e-12)  # not renormalised


def test_fused_distribution_and_stored_logprobs_of_check_1():
    s = _force_read(ratio_mode="reference")
    p = torch.softmax(LOGITS / 0.7, -1)[0, :3]
    q_ref = p * TAU[0, :3] ** 0.5 / (p * TAU[0, :3] ** 0.5).sum()        # p·τ^β normalised
    assert q_ref.tolist() == pytest.approx([0.640099, 0.306801, 0.053101], abs=1e-6)
    assert float(s.sampling_logprob) == pytest.approx(-1.181557, abs=1e-6)
    assert float(s.old_logprob) == pytest.approx(-1.181557, abs=1e-6)
    new = current_logprobs(LOGITS, s, "reference")
    assert float(new) == pytest.approx(-1.495182, abs=1e-6)               # pure, T = 1
    assert math.exp(float(new - s.old_logprob)) == pytest.approx(0.730793, abs=1e-6)


def test_first_step_reference_stores_unnormalised_log_p():
    s = _force_read(ratio_mode="reference", first_step=torch.tensor([True]))
    assert float(s.old_logprob) == pytest.approx(-1.743918, abs=1e-6)     # log p(fs-read)
    assert float(s.beta) == 0.0


@pytest.mark.parametrize("mode", ["fused", "policy"])
@pytest.mark.parametrize("first", [False, True])
def test_native_ratio_is_one_at_theta_old(mode, first):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 9, generator=gen, dtype=torch.float64)
    tau = torch.rand(64, 9, generator=gen, dtype=torch.float64) * 5 + 0.5
    teacher = torch.randint(9, (64,), generator=gen)
    s = sample_tools(logits, tau, beta=0.7, top_k=4, epsilon=0.3, teacher=teacher,
                     teacher_forcing=0.3, first_step=torch.full((64,), first),
                     ratio_mode=mode, generator=gen)
    assert s.teacher_forced.any() and s.explored.any()
    ratio = torch.exp(current_logprobs(logits, s, mode) - s.old_logprob)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-12)


def test_fused_first_step_without_pheromone_is_normalised_topk():
    s = _force_read(ratio_mode="fused", first_step=torch.tensor([True]))
    p = torch.softmax(LOGITS / 0.7, -1)[0, :3]
    assert float(s.old_logprob) == pytest.approx(math.log(float(p[1] / p.sum())), abs=1e-12)


def test_fused_new_logprob_depends_on_current_logits_and_has_gradient():
    s = _force_read(ratio_mode="fused")
    logits = LOGITS.clone().requires_grad_(True)
    new = current_logprobs(logits + torch.tensor([[0.0, 0.3, 0.0, 0.0]]), s, "fused")
    p = torch.softmax((LOGITS + torch.tensor([[0.0, 0.3, 0.0, 0.0]])) / 0.7, -1)[0, :3]
    w = p * TAU[0, :3] ** 0.5
    assert float(new.detach()) == pytest.approx(math.log(float(w[1] / w.sum())), abs=1e-12)
    new.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_sampling_frequencies_follow_q():
    gen = torch.Generator().manual_seed(1)
    n = 20000
    s = sample_tools(LOGITS.expand(n, 4), TAU.expand(n, 4), beta=0.5, top_k=3, epsilon=0.0,
                     generator=gen)
    freq = torch.bincount(s.action, minlength=4).double() / n
    assert freq.tolist() == pytest.approx([0.640099, 0.306801, 0.053101, 0.0], abs=0.015)


def test_epsilon_one_is_uniform_over_topk_and_stores_log_q():
    n = 9000
    s = sample_tools(LOGITS.expand(n, 4), TAU.expand(n, 4), beta=0.5, top_k=3, epsilon=1.0,
                     generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(s.action, minlength=4).double() / n
    assert freq.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0], abs=0.02)
    assert bool(s.explored.all())
    read = s.action == FS_READ
    assert torch.allclose(s.old_logprob[read], torch.full_like(s.old_logprob[read], -1.181557),
                          atol=1e-6)


def test_teacher_forcing_returns_reference_with_pure_logprob():
    s = sample_tools(LOGITS, TAU, beta=0.5, top_k=3, teacher=torch.tensor([3]),
                     teacher_forcing=1.0, ratio_mode="reference",
                     generator=torch.Generator().manual_seed(0))
    assert int(s.action) == 3 and bool(s.teacher_forced) and int(s.position) == -1
    assert float(s.old_logprob) == pytest.approx(float(torch.log_softmax(LOGITS, -1)[0, 3]))
    no_teacher = sample_tools(LOGITS, TAU, beta=0.5, top_k=3, teacher=torch.tensor([-1]),
                              teacher_forcing=1.0, generator=torch.Generator().manual_seed(0))
    assert not bool(no_teacher.teacher_forced)


def test_same_generator_seed_same_samples_and_callable_tau():
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    logits = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    tau_rows = torch.rand(16, 6, generator=torch.Generator().manual_seed(1)) + 0.5
    a = sample_tools(logits, tau_rows, beta=0.8, top_k=4, generator=gen_a)
    b = sample_tools(logits, lambda c: tau_rows.gather(-1, c), beta=0.8, top_k=4,
                     generator=gen_b)
    assert torch.equal(a.action, b.action) and torch.equal(a.old_logprob, b.old_logprob)


def test_policy_gradient_mask_and_concat():
    tf = torch.tensor([True, False])
    assert policy_gradient_mask(tf, "reference").tolist() == [True, True]
    assert policy_gradient_mask(tf, "fused").tolist() == [False, True]
    s = _sample()
    both = concat_samples([s, s])
    assert both.action.shape == (2,) and both.candidates.shape == (2, 3)


@pytest.mark.parametrize("kwargs, name", [
    (dict(beta=-0.1), "beta"), (dict(temperature=0.0), "temperature"), (dict(top_k=0), "top_k"),
    (dict(epsilon=1.5), "epsilon"), (dict(teacher_forcing=-0.1), "teacher_forcing"),
    (dict(ratio_mode="biased"), "ratio_mode")])
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(beta=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}:"):
        sample_tools(LOGITS, TAU, **args)


def test_bad_tau_and_logits_shapes():
    with pytest.raises(ValueError, match="^tau:"):
        sample_tools(LOGITS, torch.zeros(1, 4), beta=0.5)
    with pytest.raises(ValueError, match="^logits:"):
        sample_tools(LOGITS[0], TAU, beta=0.5)
