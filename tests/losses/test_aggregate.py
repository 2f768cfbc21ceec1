"""Aggregation modes (spec-losses §2): exact values, per-token weights, compat differences,
micro-batch invariance with global counts, masking and degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grouprl.losses import AGG_MODES, aggregate, normalizer_counts

F64 = torch.float64
COMPATS = ("native", "verl", "trl")

# 3 rows, T = 4: lengths 3, 1, 0 (an empty row).
LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0],
                     [4.0, 7.0, 7.0, 7.0],
                     [5.0, 5.0, 5.0, 5.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 1, 0],
                     [1, 0, 0, 0],
                     [0, 0, 0, 0]], dtype=F64)


def expected(mode: str, compat: str, max_len: int | None = None) -> float:
    """The spec's §2.1 formulas, written out on LOSS/MASK by hand."""
    row_sums, lengths = [1 + 2 + 3, 4.0, 0.0], [3, 1, 0]
    b = 3 if compat == "trl" else 2                       # TRL counts the empty row
    c = 4 if max_len is None else max_len
    if mode == "token-mean":
        return sum(row_sums) / 4
    if mode == "seq-mean-token-sum":
        return sum(row_sums) / b
    if mode == "seq-mean-token-mean":
        if compat == "verl":
            return sum(s / (n + 1e-8) for s, n in zip(row_sums, lengths)) / b
        return sum(s / max(n, 1) for s, n in zip(row_sums, lengths)) / b
    if compat == "verl":
        return sum(row_sums) / c                           # verl: no 1/B
    return sum(row_sums) / (b * c)


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_exact_values(mode, compat):
    got = aggregate(LOSS, MASK, mode, compat=compat)
    assert got.item() == pytest.approx(expected(mode, compat), rel=1e-14)


@pytest.mark.parametrize("compat", COMPATS)
def test_dr_grpo_constant_from_max_len(compat):
    got = aggregate(LOSS, MASK, "seq-mean-token-sum-norm", max_len=10, compat=compat)
    assert got.item() == pytest.approx(expected("seq-mean-token-sum-norm", compat, 10), rel=1e-14)


def test_documented_compat_differences():
    native = {m: aggregate(LOSS, MASK, m).item() for m in AGG_MODES}
    verl = {m: aggregate(LOSS, MASK, m, compat="verl").item() for m in AGG_MODES}
    trl = {m: aggregate(LOSS, MASK, m, compat="trl").item() for m in AGG_MODES}
    # Dr. GRPO: verl omits the 1/B factor (B' = 2 here)
    assert verl["seq-mean-token-sum-norm"] == pytest.approx(2 * native["seq-mean-token-sum-norm"])
    # TRL counts the empty row in B
    assert trl["seq-mean-token-sum"] == pytest.approx(native["seq-mean-token-sum"] * 2 / 3)
    assert trl["seq-mean-token-mean"] == pytest.approx(native["seq-mean-token-mean"] * 2 / 3)
    # verl divides by L_i + 1e-8
    assert verl["seq-mean-token-mean"] != native["seq-mean-token-mean"]
    assert verl["seq-mean-token-mean"] == pytest.approx(native["seq-mean-token-mean"], rel=1e-7)
    assert native["token-mean"] == verl["token-mean"] == trl["token-mean"]


@pytest.mark.parametrize("mode", AGG_MODES)
def test_per_token_weights(mode):
    """∂Agg/∂ℓ_{i,t} is the weight column of the §2.1 table."""
    loss = LOSS.clone().requires_grad_()
    aggregate(loss, MASK, mode, max_len=8).backward()
    lengths = torch.tensor([3.0, 1.0, 1.0], dtype=F64)[:, None]
    weight = {"token-mean": torch.full((3, 1), 1 / 4, dtype=F64),
              "seq-mean-token-sum": torch.full((3, 1), 1 / 2, dtype=F64),
              "seq-mean-token-mean": 1 / (2 * lengths),
              "seq-mean-token-sum-norm": torch.full((3, 1), 1 / (2 * 8), dtype=F64)}[mode]
    torch.testing.assert_close(loss.grad, weight * MASK, rtol=1e-14, atol=0)


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_fully_masked_batch_is_zero_with_zero_grad(mode, compat):
    loss = torch.full((2, 5), float("nan"), dtype=torch.float32, requires_grad=True)
    out = aggregate(loss, torch.zeros(2, 5), mode, compat=compat)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(loss.grad, torch.zeros(2, 5))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_nan_inf_in_masked_positions_change_nothing(mode):
    dirty = LOSS.clone()
    dirty[0, 3], dirty[1, 1], dirty[1, 2], dirty[2, 0] = math.nan, math.inf, -math.inf, math.nan
    dirty.requires_grad_()
    clean = LOSS.clone().requires_grad_()
    a, b = aggregate(dirty, MASK, mode), aggregate(clean, MASK, mode)
    a.backward()
    b.backward()
    assert a.item() == b.item()
    assert torch.equal(dirty.grad, clean.grad)


def test_bool_and_float_masks_agree():
    for mode in AGG_MODES:
        assert aggregate(LOSS, MASK.bool(), mode).item() == aggregate(LOSS, MASK, mode).item()


def test_global_counts_accept_ints_and_tensors_and_clamp_to_one():
    a = aggregate(LOSS, MASK, "token-mean", global_tokens=8)
    b = aggregate(LOSS, MASK, "token-mean", global_tokens=torch.tensor(8))
    assert a.item() == b.item() == pytest.approx(10 / 8)
    assert aggregate(LOSS, MASK, "token-mean", global_tokens=0).item() == 10.0
    assert aggregate(LOSS, MASK, "seq-mean-token-sum", global_seqs=5).item() == pytest.approx(2.0)


def test_normalizer_counts():
    tok, seqs = normalizer_counts(MASK)
    assert (tok.item(), seqs.item()) == (4, 2)
    assert normalizer_counts(MASK, compat="verl")[1].item() == 2
    assert normalizer_counts(MASK, compat="trl")[1].item() == 3


@pytest.mark.parametrize("kwargs, name", [
    ({"mode": "mean"}, "mode"),
    ({"mode": "token-mean", "compat": "reference"}, "compat"),
    ({"mode": "token-mean", "global_tokens": -1}, "global_tokens"),
    ({"mode": "token-mean", "global_seqs": float("nan")}, "global_seqs"),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 0}, "max_len"),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 2.5}, "max_len"),
])
def test_bad_arguments_raise_naming_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        aggregate(LOSS, MASK, **kwargs)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="mask"):
        aggregate(LOSS, MASK[:, :3], "token-mean")


# ----------------------------------------------------------------------------------------------
# Micro-batch invariance (§2.2, §9.8): with global counts, Σ micro-batch losses = batch loss
# ----------------------------------------------------------------------------------------------


@st.composite
def batches(draw):
    n = draw(st.integers(1, 9))
    t = draw(st.integers(1, 7))
    lengths = draw(st.lists(st.integers(0, t), min_size=n, max_size=n))
    holes = draw(st.booleans())                       # masked tokens inside a response
    seed = draw(st.integers(0, 2**31 - 1))
    cuts = sorted(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=4, unique=True)))
    return n, t, lengths, holes, seed, [c for c in cuts if c < n]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from(AGG_MODES), st.sampled_from(COMPATS), st.booleans())
def test_micro_batch_invariance(batch, mode, compat, repad):
    n, t, lengths, holes, seed, cuts = batch
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).to(F64)
    if holes:
        mask = mask * (torch.rand(n, t, generator=g) > 0.3)
    loss = torch.randn(n, t, generator=g, dtype=F64).requires_grad_()
    tokens, seqs = normalizer_counts(mask, compat=compat)
    full = aggregate(loss, mask, mode, tokens, seqs, max_len=t, compat=compat)
    (grad_full,) = torch.autograd.grad(full, loss)

    total = torch.zeros((), dtype=F64)
    bounds = [0, *cuts, n]
    micro_tokens = micro_seqs = 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = mask[lo:hi]
        part = loss[lo:hi]
        if repad:                                     # each micro-batch padded to its own length
            width = max(int(m.nonzero()[:, 1].max().item()) + 1, 1) if m.any() else 1
            m, part = m[:, :width], part[:, :width]
        micro_tokens += normalizer_counts(m, compat=compat)[0]
        micro_seqs += normalizer_counts(m, compat=compat)[1]
        total = total + aggregate(part, m, mode, tokens, seqs, max_len=t, compat=compat)
    (grad_micro,) = torch.autograd.grad(total, loss)
    assert micro_tokens == tokens and micro_seqs == seqs   # counts are additive
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_micro, grad_full, rtol=1e-12, atol=1e-12)


def test_local_normalisation_is_not_invariant():
    """Without global counts, the mean of micro-batch means is not the batch token mean."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    full = aggregate(loss, mask, "token-mean")
    halves = (aggregate(loss[:1], mask[:1], "token-mean")
              + aggregate(loss[1:], mask[1:], "token-mean")) / 2
    assert full.item() == pytest.approx(7 / 4) and halves.item() == pytest.approx(5 / 2)
