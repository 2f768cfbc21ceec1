"""Policy losses (spec-losses §1, §3, §4.3, §8, §9.8, §9.9).

* exact values and gradients against independent per-token formulas written out below in plain
  Python floats (a separate aggregator, finite differences or the derived gradient);
* the §9.8 properties: on-policy gradient −Â·w, two_sided(δ) = dual clip(c=δ), GSPO = GSPO-token
  under per-sequence advantages, LUSPO = GSPO with seq-mean-token-sum, SAPO τ→0, micro-batch
  invariance with global counts, NaN/inf in masked positions;
* the §9.9 edge cases, metric values on hand-made ratios, compat differences, validation.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grouprl.losses import AGG_MODES, available_policy_losses, normalizer_counts, policy_loss

F64 = torch.float64
NAN, INF = math.nan, math.inf
TOKEN_LOSSES = ["ppo", "dual_clip", "two_sided", "cispo", "sapo"]
SEQ_LOSSES = ["gspo", "gspo_token", "luspo"]


# ----------------------------------------------------------------------------------------------
# Independent reference: plain Python floats, one token at a time
# ----------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def clip(x: float, lo: float | None, hi: float | None) -> float:
    x = x if lo is None else max(x, lo)
    return x if hi is None else min(x, hi)


def ppo_token(r: float, a: float, lo: float, hi: float, c: float | None = None,
              delta: float | None = None) -> float:
    rt = r if delta is None else min(r, delta)
    loss = max(-rt * a, -clip(r, 1 - lo, 1 + hi) * a)
    return min(loss, -c * a) if c is not None and a < 0 else loss


def naive_filter(z_row: list, m_row: list, Q: float, V: float, P0: float, x0: float) -> list:
    x, P, out = x0, P0, []
    for z, m in zip(z_row, m_row):
        if m:
            p = P + Q
            K = p / (p + V)
            x = x + K * (z - x)
            P = V * p / (p + V)
        out.append(x)
    return out


def ref_agg(L: list, mask: list, mode: str, max_len: int | None = None,
            compat: str = "native") -> float:
    rows = [(sum(l for l, m in zip(lr, mr) if m), sum(mr)) for lr, mr in zip(L, mask)]
    n_tok = sum(n for _, n in rows)
    b = len(rows) if compat == "trl" else sum(1 for _, n in rows if n > 0)
    if mode == "token-mean":
        return sum(s for s, _ in rows) / max(n_tok, 1)
    if mode == "seq-mean-token-sum":
        return sum(s for s, _ in rows) / max(b, 1)
    if mode == "seq-mean-token-mean":
        return sum(s / max(n, 1) for s, n in rows) / max(b, 1)
    c = max_len or len(mask[0])
    return sum(s for s, _ in rows) / (c if compat == "verl" else max(b, 1) * c)


def ref_token_losses(name: str, lp: list, old: list, adv: list, mask: list, **o) -> list:
    """Per-token loss matrix of `name` (0 on masked positions), written from the spec formulas."""
    n, t = len(lp), len(lp[0])
    A = [[adv[i][j] if isinstance(adv[i], list) else adv[i] for j in range(t)] for i in range(n)]
    d = [[clip(lp[i][j] - old[i][j], -20, 20) if mask[i][j] else 0.0 for j in range(t)]
         for i in range(n)]
    out = [[0.0] * t for _ in range(n)]
    for i in range(n):
        L = sum(mask[i])
        s = math.exp(sum(d[i]) / max(L, 1))                        # GSPO s_i
        x = naive_filter(d[i], mask[i], o.get("Q", 1e-6), o.get("V", 1.0), o.get("P0", 1.0),
                         o.get("x0", 0.0)) if name == "kpo" else None
        for j in range(t):
            if not mask[i][j]:
                continue
            r, a = math.exp(d[i][j]), A[i][j]
            if name in ("ppo", "dual_clip"):
                c = o.get("dual_clip", 3.0 if name == "dual_clip" else None)
                out[i][j] = ppo_token(r, a, o.get("clip_low", 0.2), o.get("clip_high", 0.2), c)
            elif name == "two_sided":
                out[i][j] = ppo_token(r, a, o.get("clip_low", 0.2), o.get("clip_high", 0.2),
                                      delta=o.get("delta", 4.0))
            elif name in ("gspo", "gspo_token", "luspo"):
                out[i][j] = ppo_token(s, a, o.get("clip_low", 3e-4), o.get("clip_high", 4e-4))
            elif name == "cispo":
                w = clip(r, o.get("lower"), o.get("upper", 5.0))
                out[i][j] = -w * a * lp[i][j]
            elif name == "sapo":
                tau = o.get("tau_pos", 1.0) if a > 0 else o.get("tau_neg", 1.05)
                out[i][j] = -(4 / tau) * sigmoid(tau * (r - 1)) * a
            elif name == "kpo":
                rt = math.exp(x[j])
                out[i][j] = (ppo_token(rt, a, o.get("clip_low", 0.2), o.get("clip_high", 0.28))
                             if o.get("clip", True) else -rt * a)
    return out


def ref_loss(name: str, lp: list, old: list, adv: list, mask: list, agg: str, **o) -> float:
    return ref_agg(ref_token_losses(name, lp, old, adv, mask, **o), mask, agg)


def fd_grad(name: str, lp: list, old: list, adv: list, mask: list, agg: str, h: float = 1e-6,
            **o) -> torch.Tensor:
    """Central finite differences of the reference value w.r.t. every unmasked logp."""
    g = torch.zeros(len(lp), len(lp[0]), dtype=F64)
    for i in range(len(lp)):
        for j in range(len(lp[0])):
            if mask[i][j]:
                up = [row[:] for row in lp]
                dn = [row[:] for row in lp]
                up[i][j] += h
                dn[i][j] -= h
                g[i, j] = (ref_loss(name, up, old, adv, mask, agg, **o)
                           - ref_loss(name, dn, old, adv, mask, agg, **o)) / (2 * h)
    return g


def agg_weights(mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """Per-token weight w_{i,t} of each mode (spec §2.1 table), native counts."""
    m = mask.to(F64)
    lengths = m.sum(-1, keepdim=True)
    b = max((lengths > 0).sum().item(), 1)
    if mode == "token-mean":
        return m / max(m.sum().item(), 1)
    if mode == "seq-mean-token-sum":
        return m / b
    if mode == "seq-mean-token-mean":
        return m / (b * lengths.clamp(min=1))
    return m / (b * (max_len or m.shape[1]))


# ----------------------------------------------------------------------------------------------
# Hand-made batch: 3 rows, T = 4; row lengths 3, 4, 1; NaN/inf padding
# ----------------------------------------------------------------------------------------------

LP = [[-1.0, -0.5, -2.0, NAN],
      [-0.3, -1.2, -0.7, -0.1],
      [-2.0, NAN, NAN, NAN]]
OLD = [[-1.3, -0.4, -1.0, INF],
       [-0.3, -1.5, -0.1, -0.9],
       [-1.0, NAN, -INF, NAN]]
MASK = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
ADV_SEQ = [1.5, -0.8, -2.0]
ADV_TOK = [[1.5, -0.5, 0.7, NAN], [-0.8, 0.4, -1.1, -0.6], [-2.0, INF, NAN, 0.0]]
# δ = [0.3, −0.1, −1.0], [0, 0.3, −0.6, 0.8], [−1.0]; r ≈ [1.35, .905, .368], [1, 1.35, .549,
# 2.23], [.368]: both clip sides, the dual clip (row 1, last token, Â < 0, r > 2) and the band.


def tensors(lp=LP, old=OLD, adv=ADV_SEQ, mask=MASK, dtype=F64):
    logp = torch.tensor(lp, dtype=dtype).requires_grad_()
    return logp, torch.tensor(old, dtype=dtype), torch.tensor(adv, dtype=dtype), \
        torch.tensor(mask, dtype=dtype)


def clean(lp: list) -> list:
    return [[0.0 if math.isnan(v) or math.isinf(v) else v for v in row] for row in lp]


CASES = [  # (name, options, reference options)
    ("ppo", {}, {}),
    ("ppo", {"clip_high": 0.28, "dual_clip": 2.0}, {"clip_high": 0.28, "dual_clip": 2.0}),
    ("dual_clip", {}, {}),
    ("two_sided", {"delta": 2.0}, {"delta": 2.0}),
    ("gspo", {}, {}),
    ("gspo", {"clip_low": 2e-3, "clip_high": 5e-3}, {"clip_low": 2e-3, "clip_high": 5e-3}),
    ("luspo", {}, {}),
    ("sapo", {}, {}),
    ("sapo", {"tau_pos": 0.5, "tau_neg": 2.0}, {"tau_pos": 0.5, "tau_neg": 2.0}),
]


@pytest.mark.parametrize("adv", [ADV_SEQ, ADV_TOK], ids=["seq_adv", "token_adv"])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("name, opts, ref_opts", CASES)
def test_exact_value_and_gradient(name, opts, ref_opts, agg, adv):
    logp, old, A, mask = tensors(adv=adv)
    loss, _ = policy_loss(name, logp, old, A, mask, agg, **opts)
    loss.backward()
    lp, a = clean(LP), [[0.0 if not m else v for v, m in zip(r, mr)] for r, mr in
                        zip(ADV_TOK, MASK)] if adv is ADV_TOK else ADV_SEQ
    assert loss.item() == pytest.approx(ref_loss(name, lp, OLD, a, MASK, agg, **ref_opts),
                                        rel=1e-12, abs=1e-12)
    expected = fd_grad(name, lp, OLD, a, MASK, agg, **ref_opts)
    torch.testing.assert_close(logp.grad, expected, rtol=1e-6, atol=1e-8)


def test_ppo_gradient_formula():
    """Inside the band (and below the dual cap) ∂L/∂ℓ = −Â·r·w; 0 where a clip is active."""
    logp, old, A, mask = tensors()
    loss, _ = policy_loss("ppo", logp, old, A, mask, "token-mean", clip_high=0.28, dual_clip=2.0)
    loss.backward()
    expected = torch.zeros(3, 4, dtype=F64)
    for i in range(3):
        for j in range(4):
            if MASK[i][j]:
                r, a = math.exp(LP[i][j] - OLD[i][j]), ADV_SEQ[i]
                clipped = (a > 0 and r > 1.28) or (a < 0 and r < 0.8) or (a < 0 and r > 2.0)
                expected[i, j] = 0.0 if clipped else -a * r / 8
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-15)
    assert ((logp.grad == 0) & (mask != 0)).sum() == 4     # both sides and the dual clip


@pytest.mark.parametrize("agg", AGG_MODES)
def test_gspo_token_exact_with_token_advantages(agg):
    """GSPO-token: value s_i on every token; gradient −Â_{i,t} s_i w_{i,t} inside the band."""
    lo, hi = 0.5, 0.5
    logp, old, A, mask = tensors(adv=ADV_TOK)
    loss, _ = policy_loss("gspo_token", logp, old, A, mask, agg, clip_low=lo, clip_high=hi,
                          compat="trl")      # large ε allowed; no empty rows, so B' = B
    loss.backward()
    a = [[v if m else 0.0 for v, m in zip(r, mr)] for r, mr in zip(ADV_TOK, MASK)]
    ref = ref_loss("gspo_token", clean(LP), OLD, a, MASK, agg, clip_low=lo, clip_high=hi)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    w = agg_weights(mask, agg)
    expected = torch.zeros(3, 4, dtype=F64)
    for i in range(3):
        d = [LP[i][j] - OLD[i][j] for j in range(4) if MASK[i][j]]
        s = math.exp(sum(d) / len(d))
        for j in range(4):
            if MASK[i][j]:
                clipped = (a[i][j] > 0 and s > 1 + hi) or (a[i][j] < 0 and s < 1 - lo)
                expected[i, j] = 0.0 if clipped else -a[i][j] * s * w[i, j]
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_cispo_exact_value_and_gradient(agg):
    """CISPO: −sg(clip(r))·Â·ℓ^θ; gradient −r̂·Â·w (never zero), value contains ℓ^θ."""
    logp, old, A, mask = tensors(adv=ADV_TOK)
    loss, _ = policy_loss("cispo", logp, old, A, mask, agg, cap=1.3, clip_low=0.5)
    loss.backward()
    a = [[v if m else 0.0 for v, m in zip(r, mr)] for r, mr in zip(ADV_TOK, MASK)]
    ref = ref_loss("cispo", clean(LP), OLD, a, MASK, agg, lower=0.5, upper=1.3)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    w = agg_weights(mask, agg)
    expected = torch.zeros(3, 4, dtype=F64)
    for i in range(3):
        for j in range(4):
            if MASK[i][j]:
                expected[i, j] = -clip(math.exp(LP[i][j] - OLD[i][j]), 0.5, 1.3) * a[i][j] \
                    * w[i, j]
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# §9.8 properties
# ----------------------------------------------------------------------------------------------


def random_batch(seed: int, n: int = 6, t: int = 9, scale: float = 0.5, holes: bool = True,
                 dtype=F64):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[0], lengths[1] = 0, 1                   # an empty row and a one-token row
    mask = (torch.arange(t)[None] < lengths[:, None]).to(dtype)
    if holes:
        mask[2:] *= (torch.rand(n - 2, t, generator=g) > 0.25).to(dtype)
    logp = -torch.rand(n, t, generator=g, dtype=F64).to(dtype) * 3
    old = logp + scale * torch.randn(n, t, generator=g, dtype=F64).to(dtype)
    adv_tok = torch.randn(n, t, generator=g, dtype=F64).to(dtype)
    adv_seq = torch.randn(n, generator=g, dtype=F64).to(dtype)
    return logp, old, adv_tok, adv_seq, mask


ON_POLICY = TOKEN_LOSSES + ["vanilla"] + SEQ_LOSSES


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("name", ON_POLICY + ["kpo"])
def test_on_policy_gradient_is_minus_adv_times_weight(name, agg, seed):
    """At ℓ^old = sg(ℓ^θ) every loss has ∂L/∂ℓ_{i,t} = −Â_{i,t}·w_{i,t} (§9.8).

    Sequence-ratio losses (gspo, luspo) give the per-sequence token mean of Â instead; with
    per-sequence advantages that is the same. KPO: under grad="straight_through".
    """
    logp, _, adv_tok, adv_seq, mask = random_batch(seed)
    w = agg_weights(mask, agg, max_len=12)
    opts = {"grad": "straight_through"} if name == "kpo" else {}
    for adv in (adv_tok, adv_seq):
        lp = logp.clone().requires_grad_()
        loss, metrics = policy_loss(name, lp, lp.detach(), adv, mask, agg, max_len=12, **opts)
        (grad,) = torch.autograd.grad(loss, lp)
        a = adv if adv.dim() == 2 else adv[:, None].expand_as(mask)
        if name in ("gspo", "luspo"):
            a = ((a * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
                 ).expand_as(mask)
        torch.testing.assert_close(grad, -a * w, rtol=1e-12, atol=1e-15)
        assert metrics["ratio_mean"] == metrics["ratio_min"] == metrics["ratio_max"] == 1.0
        assert metrics["clipfrac"] == 0.0 and metrics["approx_kl_k1"] == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("delta", [1.3, 2.0, 4.0])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_two_sided_equals_dual_clip(delta, agg, seed):
    """two_sided(δ) = ppo(dual_clip=δ) in value and gradient when δ > 1+ε_hi (§1.3)."""
    logp, old, adv, _, mask = random_batch(seed, scale=1.5)
    results = []
    for name, opts in (("two_sided", {"delta": delta}), ("ppo", {"dual_clip": delta})):
        lp = logp.clone().requires_grad_()
        loss, metrics = policy_loss(name, lp, old, adv, mask, agg, clip_high=0.28, **opts)
        results.append((loss, torch.autograd.grad(loss, lp)[0], metrics))
    (l1, g1, m1), (l2, g2, m2) = results
    assert l1.item() == l2.item()
    assert torch.equal(g1, g2)
    assert m1 == m2 and (m1["clipfrac_dual"] > 0 or delta == 4.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_gspo_equals_gspo_token_with_sequence_advantages(agg, seed):
    """GSPO = GSPO-token in value and gradient under per-sequence Â (§3.2, §9.8)."""
    logp, old, _, adv, mask = random_batch(seed, scale=0.02)
    out = []
    for name in ("gspo", "gspo_token"):
        lp = logp.clone().requires_grad_()
        loss, metrics = policy_loss(name, lp, old, adv, mask, agg, clip_low=3e-3, clip_high=4e-3)
        out.append((loss, torch.autograd.grad(loss, lp)[0], metrics))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-12, atol=1e-15)
    assert out[0][2] == out[1][2]
    assert 0 < out[0][2]["clipfrac"] < 1 and (out[0][1] != 0).any()


@pytest.mark.parametrize("seed", range(3))
def test_luspo_is_gspo_with_seq_mean_token_sum(seed):
    logp, old, _, adv, mask = random_batch(seed, scale=0.02)
    lp1, lp2 = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    a, _ = policy_loss("luspo", lp1, old, adv, mask)
    b, _ = policy_loss("gspo", lp2, old, adv, mask, "seq-mean-token-sum")
    a.backward()
    b.backward()
    assert a.item() == b.item() and torch.equal(lp1.grad, lp2.grad)
    # (1/B') Σ_i L_i·ℓ_i with ℓ_i GSPO's sequence loss
    lengths = mask.sum(-1)
    s = torch.exp(((lp1 - old) * mask).sum(-1) / lengths.clamp(min=1)).detach()
    li = -torch.minimum(s * adv, s.clamp(1 - 3e-4, 1 + 4e-4) * adv)
    expected = (lengths * li).sum() / (lengths > 0).sum()
    assert a.item() == pytest.approx(expected.item(), rel=1e-12)


def test_sapo_tends_to_unclipped_surrogate_as_tau_goes_to_zero():
    """f_τ(r) → 2/τ + (r − 1): the gradient tends to the unclipped −Â·r·∇ℓ (§3.4)."""
    logp, old, adv, _, mask = random_batch(3, scale=0.5)
    tau = 1e-4
    lp = logp.clone().requires_grad_()
    loss, metrics = policy_loss("sapo", lp, old, adv, mask, "token-mean", tau_pos=tau,
                                tau_neg=tau)
    loss.backward()
    r = torch.exp(logp - old)
    w = agg_weights(mask, "token-mean")
    torch.testing.assert_close(lp.grad, -adv * r * w, rtol=1e-6, atol=1e-12)
    unclipped = -(((2 / tau) + (r - 1)) * adv * w).sum()
    assert loss.item() == pytest.approx(unclipped.item(), rel=1e-8)
    assert metrics["sapo_gate"] == pytest.approx(1.0, abs=1e-6)


ALL = ["ppo", "dual_clip", "two_sided", "gspo", "gspo_token", "luspo", "cispo", "sapo"]


@st.composite
def splits(draw):
    n = draw(st.integers(2, 8))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=3, unique=True)))
    return n, draw(st.integers(0, 10_000)), cuts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(splits(), st.sampled_from(ALL + ["kpo"]),
       st.sampled_from(AGG_MODES), st.sampled_from(["native", "trl"]), st.booleans())
def test_micro_batch_invariance(split, name, agg, compat, with_rollout):
    """Σ micro-batch losses with the mini-batch's global counts = the single-batch loss (§2.2)."""
    n, seed, cuts = split
    logp, old, adv, _, mask = random_batch(seed, n=n, scale=0.3)
    mask[0] = 0
    roll = old + 0.2 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed),
                                   dtype=F64) if with_rollout else None
    opts = {"clip_low": 0.05, "clip_high": 0.05, "compat": "verl"} if name in SEQ_LOSSES else {}
    compat = opts.pop("compat", compat)
    tokens, seqs = normalizer_counts(mask, compat=compat)
    lp = logp.clone().requires_grad_()
    kw = dict(rollout_logp=roll, global_tokens=tokens, global_seqs=seqs, max_len=20,
              compat=compat, rollout_is="sequence", **opts)
    full, _ = policy_loss(name, lp, old, adv, mask, agg, **kw)
    (g_full,) = torch.autograd.grad(full, lp)
    total = 0.0
    for lo, hi in zip([0, *cuts], [*cuts, n]):
        kw["rollout_logp"] = None if roll is None else roll[lo:hi]
        part, _ = policy_loss(name, lp[lo:hi], old[lo:hi], adv[lo:hi], mask[lo:hi], agg, **kw)
        total = total + part
    (g_micro,) = torch.autograd.grad(total, lp)
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g_micro, g_full, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("name", ALL + ["vanilla"] + ["kpo"])
def test_nan_inf_in_masked_positions_change_nothing(name, agg):
    logp, old, adv, _, mask = random_batch(5, scale=0.4)
    roll = old - 0.1
    dirty = [x.clone() for x in (logp, old, adv, roll)]
    fills = [NAN, INF, -INF]
    for k, x in enumerate(dirty):
        holes = (mask == 0).nonzero()
        for h, (i, j) in enumerate(holes.tolist()):
            x[i, j] = fills[(h + k) % 3]
    opts = {"compat": "trl"} if name in SEQ_LOSSES else {}
    out = []
    for lp0, o, a, r in ((logp, old, adv, roll), dirty):
        lp = lp0.clone().requires_grad_()
        loss, metrics = policy_loss(name, lp, o, a, mask, agg, rollout_logp=r, **opts)
        out.append((loss, torch.autograd.grad(loss, lp)[0], metrics))
    assert out[0][0].item() == out[1][0].item() and math.isfinite(out[0][0].item())
    assert torch.equal(out[0][1], out[1][1]) and torch.isfinite(out[1][1]).all()
    assert out[0][2] == out[1][2]


# ----------------------------------------------------------------------------------------------
# Metrics on hand-made ratios
# ----------------------------------------------------------------------------------------------

R = [0.5, 0.9, 1.0, 1.3, 1.5, 6.0]
R_ADV = [-1.0, -1.0, 1.0, 1.0, -1.0, -1.0]


def ratio_batch(ratios=R, adv=R_ADV):
    """One row with the given ratios (ℓ^old = 0, ℓ^θ = log r), plus a padded NaN position."""
    logp = torch.tensor([[math.log(r) for r in ratios] + [NAN]], dtype=F64).requires_grad_()
    old = torch.zeros_like(logp)
    adv_t = torch.tensor([list(adv) + [NAN]], dtype=F64)
    mask = torch.tensor([[1.0] * len(ratios) + [0.0]], dtype=F64)
    return logp, old, adv_t, mask


def test_ppo_metrics_on_hand_made_ratios():
    logp, old, adv, mask = ratio_batch()
    _, m = policy_loss("ppo", logp, old, adv, mask, dual_clip=3.0)
    # low: r < 0.8 ∧ Â < 0 → r = 0.5; high: r > 1.2 ∧ Â > 0 → r = 1.3; dual: Â < 0 ∧ r > 3 → 6.0
    assert m["clipfrac_low"] == pytest.approx(1 / 6)
    assert m["clipfrac_high"] == pytest.approx(1 / 6)
    assert m["clipfrac_dual"] == pytest.approx(1 / 6)
    verl_clipfrac = sum(-clip(r, 0.8, 1.2) * a > -r * a for r, a in zip(R, R_ADV)) / 6
    assert m["clipfrac"] == pytest.approx(verl_clipfrac) == pytest.approx(2 / 6)
    assert m["ratio_mean"] == pytest.approx(sum(R) / 6, rel=1e-12)
    assert m["ratio_min"] == pytest.approx(0.5) and m["ratio_max"] == pytest.approx(6.0)
    assert m["approx_kl_k1"] == pytest.approx(sum(-math.log(r) for r in R) / 6, rel=1e-12)
    assert m["approx_kl_k3"] == pytest.approx(sum(r - 1 - math.log(r) for r in R) / 6,
                                              rel=1e-12)
    assert m["n_tokens"] == 6 and m["n_seqs"] == 1
    assert all(isinstance(v, float) for v in m.values())
    # clip-higher 0.28 no longer clips r = 1.3 at the top... but still does with 0.25
    assert policy_loss("ppo", logp, old, adv, mask, clip_high=0.35)[1]["clipfrac_high"] == 0.0
    # without dual clip, no dual fraction
    assert policy_loss("ppo", logp, old, adv, mask)[1]["clipfrac_dual"] == 0.0
    assert policy_loss("two_sided", logp, old, adv, mask, delta=3.0)[1]["clipfrac_dual"] == \
        pytest.approx(1 / 6)


def test_cispo_and_sapo_metrics():
    logp, old, adv, mask = ratio_batch()
    m = policy_loss("cispo", logp, old, adv, mask, clip_low=0.2)[1]       # bounds [0.8, 5]
    assert m["clipfrac_low"] == pytest.approx(1 / 6)                       # r = 0.5
    assert m["clipfrac_high"] == pytest.approx(1 / 6)                      # r = 6
    assert m["clipfrac"] == pytest.approx(2 / 6) and m["clipfrac_dual"] == 0.0
    m = policy_loss("sapo", logp, old, adv, mask)[1]
    gate = [4 * sigmoid(t * (r - 1)) * (1 - sigmoid(t * (r - 1)))
            for r, t in zip(R, [1.05, 1.05, 1.0, 1.0, 1.05, 1.05])]
    assert m["sapo_gate"] == pytest.approx(sum(gate) / 6, rel=1e-12)
    assert m["clipfrac"] == 0.0


def test_gspo_metrics_use_sequence_ratio():
    logp = torch.tensor([[0.01, 0.03], [-0.02, 0.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    m = policy_loss("gspo", logp, torch.zeros_like(logp), torch.tensor([1.0, -1.0]).double(),
                    mask)[1]
    s1, s2 = math.exp(0.02), math.exp(-0.02)                               # both clipped
    assert m["ratio_mean"] == pytest.approx((2 * s1 + s2) / 3, rel=1e-12)
    assert m["clipfrac_high"] == pytest.approx(2 / 3) and m["clipfrac_low"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------------
# Rollout-vs-training correction (§8)
# ----------------------------------------------------------------------------------------------

RHO = [0.5, 3.0, 1.5]        # exp(ℓ^old − ℓ^roll) per token


def rollout_batch():
    logp = torch.tensor([[-1.0, -0.5, -0.8]], dtype=F64).requires_grad_()
    old = torch.tensor([[-1.1, -0.4, -0.8]], dtype=F64)
    roll = old - torch.log(torch.tensor([RHO], dtype=F64))
    return logp, old, torch.tensor([0.7], dtype=F64), torch.ones(1, 3, dtype=F64), roll


@pytest.mark.parametrize("level, mode, lower, upper, weights", [
    ("token", "truncate", None, 2.0, [0.5, 2.0, 1.5]),                 # Token-TIS min(ρ, C)
    ("sequence", "truncate", None, 2.0, [2.0, 2.0, 2.0]),              # Π ρ = 2.25 → 2
    ("sequence", "truncate", None, 3.0, [2.25, 2.25, 2.25]),
    ("token", "mask", 0.6, 2.0, [0.0, 0.0, 1.5]),                      # Token-MIS ρ·1[in]
    ("token", "mask", None, 2.0, [0.5, 0.0, 1.5]),
    ("sequence", "mask", None, 2.0, [0.0, 0.0, 0.0]),                  # Seq-MIS
    ("sequence", "mask", 0.5, 3.0, [2.25, 2.25, 2.25]),
    ("token", "truncate", 0.6, 2.0, [0.6, 2.0, 1.5]),                  # TRL clip_min
])
def test_rollout_is_weights(level, mode, lower, upper, weights):
    logp, old, adv, mask, roll = rollout_batch()
    base, _ = policy_loss("ppo", logp, old, adv, mask)
    (g_base,) = torch.autograd.grad(base, logp)
    loss, m = policy_loss("ppo", logp, old, adv, mask, rollout_logp=roll, rollout_is=level,
                          rollout_is_mode=mode, rollout_is_threshold=upper,
                          rollout_is_threshold_lower=lower)
    (g,) = torch.autograd.grad(loss, logp)
    per_tok = ref_token_losses("ppo", logp.tolist(), old.tolist(), [0.7], [[1, 1, 1]])[0]
    assert loss.item() == pytest.approx(sum(w * v for w, v in zip(weights, per_tok)) / 3,
                                        rel=1e-12, abs=1e-15)
    torch.testing.assert_close(g, g_base * torch.tensor([weights], dtype=F64))  # ρ̂ detached
    assert m["rollout_is_weight_mean"] == pytest.approx(sum(weights) / 3, rel=1e-12)
    changed = [abs(w - r) > 1e-12 for w, r in
               zip(weights, RHO if level == "token" else [2.25] * 3)]
    assert m["rollout_is_frac_modified"] == pytest.approx(sum(changed) / 3)
    log_rho = [math.log(r) for r in RHO]
    assert m["mismatch_kl_k1"] == pytest.approx(sum(-x for x in log_rho) / 3, rel=1e-12)
    assert m["mismatch_kl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in log_rho) / 3,
                                                rel=1e-12)


def test_rollout_is_none_reports_metrics_without_weighting():
    logp, old, adv, mask, roll = rollout_batch()
    base, m0 = policy_loss("ppo", logp, old, adv, mask)
    loss, m = policy_loss("ppo", logp, old, adv, mask, rollout_logp=roll, rollout_is=None)
    assert loss.item() == base.item() and "mismatch_kl_k1" in m and "mismatch_kl_k1" not in m0


def test_rollout_is_default_is_token_tis_at_two_and_nan_rollout_means_ratio_one():
    logp, old, adv, mask, roll = rollout_batch()
    a, _ = policy_loss("ppo", logp, old, adv, mask, rollout_logp=roll)
    b, _ = policy_loss("ppo", logp, old, adv, mask, rollout_logp=roll, rollout_is="token",
                       rollout_is_mode="truncate", rollout_is_threshold=2.0)
    assert a.item() == b.item()
    roll_nan = roll.clone()
    roll_nan[0, 1] = NAN
    _, m = policy_loss("ppo", logp, old, adv, mask, rollout_logp=roll_nan)
    assert m["rollout_is_weight_mean"] == pytest.approx((0.5 + 1.0 + 1.5) / 3)


def test_rollout_is_batch_normalize():
    logp, old, adv, mask, roll = rollout_batch()
    _, m = policy_loss("ppo", logp, old, adv, mask, rollout_logp=roll,
                       rollout_is_batch_normalize=True)
    assert m["rollout_is_weight_mean"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# §9.9 edge cases
# ----------------------------------------------------------------------------------------------

EVERY = ALL + ["vanilla"]


@pytest.mark.parametrize("name", EVERY + ["kpo"])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("compat", ["native", "verl", "trl"])
def test_fully_masked_micro_batch_is_zero_with_zero_grad(name, agg, compat):
    logp = torch.full((3, 5), NAN, requires_grad=True)
    old = torch.full((3, 5), INF)
    adv = torch.full((3,), NAN)
    loss, m = policy_loss(name, logp, old, adv, torch.zeros(3, 5), agg, compat=compat,
                          rollout_logp=torch.full((3, 5), NAN))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(3, 5))
    assert all(math.isfinite(v) for v in m.values()) and m["n_tokens"] == 0


@pytest.mark.parametrize("name", EVERY + ["kpo"])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_empty_row_changes_nothing_in_native(name, agg):
    logp, old, adv, _, mask = random_batch(7, scale=0.3)
    kw = {"compat": "trl"} if name in SEQ_LOSSES else {}
    ext = [torch.cat([x, torch.zeros_like(x[:1])]) for x in (logp, old, adv, mask)]
    lp1, lp2 = logp.clone().requires_grad_(), ext[0].clone().requires_grad_()
    a, _ = policy_loss(name, lp1, old, adv, mask, agg, max_len=9, **kw)
    b, _ = policy_loss(name, lp2, ext[1], ext[2], ext[3], agg, max_len=9, **kw)
    if kw:      # trl counts the empty row in the seq-mean denominators
        factor = 1.0 if agg == "token-mean" else (len(mask) + 1) / len(mask)
        assert a.item() == pytest.approx(b.item() * factor, rel=1e-12)
        return
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-14)
    torch.testing.assert_close(lp2.grad[:-1], lp1.grad, rtol=1e-14, atol=0)


def test_single_token_rows_gspo_equals_ppo():
    """L_i = 1: s_i = r_{i,1}, so GSPO is token PPO with the same ε."""
    logp = torch.tensor([[-0.2], [-1.0], [-0.5]], dtype=F64)
    old = logp - torch.tensor([[0.01], [-0.02], [0.0005]], dtype=F64)
    adv = torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    mask = torch.ones(3, 1, dtype=F64)
    out = []
    for name in ("gspo", "ppo"):
        lp = logp.clone().requires_grad_()
        loss, _ = policy_loss(name, lp, old, adv, mask, "token-mean", clip_low=3e-4,
                              clip_high=4e-4)
        out.append((loss.item(), torch.autograd.grad(loss, lp)[0]))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-14)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", EVERY + ["kpo"])
def test_zero_advantages_give_zero_loss_and_gradient(name):
    logp, old, _, _, mask = random_batch(2)
    lp = logp.clone().requires_grad_()
    loss, _ = policy_loss(name, lp, old, torch.zeros(len(mask), dtype=F64), mask)
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()


@pytest.mark.parametrize("name", EVERY + ["kpo"])
@pytest.mark.parametrize("size", [50.0, 1000.0])
def test_huge_log_ratios_stay_finite(name, size):
    """|δ| = 50 or 1000 in fp32: native clamps δ to ±20 before exp (§1.4)."""
    logp = torch.tensor([[0.0, -size, 0.0, -1.0], [0.0, 0.0, -size, 0.0]], requires_grad=True)
    old = torch.tensor([[-size, 0.0, -1.0, -size], [-size, -size, 0.0, 0.0]])
    for adv in (torch.tensor([1.0, -1.0]), torch.tensor([-2.0, 0.0])):
        opts = {"compat": "verl"} if name in SEQ_LOSSES else {}
        loss, m = policy_loss(name, logp, old, adv, torch.ones(2, 4), **opts)
        (g,) = torch.autograd.grad(loss, logp)
        assert math.isfinite(loss.item()) and torch.isfinite(g).all()
        assert all(math.isfinite(v) for v in m.values())


def test_trl_compat_has_no_clamp_so_ratio_can_be_infinite():
    """compat='trl': r = e^δ unclamped (§1.4): e^100 = inf in fp32; Â < 0 gives +inf, Â = 0 NaN."""
    logp = torch.tensor([[0.0]], requires_grad=True)
    old = torch.tensor([[-100.0]])
    mask = torch.ones(1, 1)
    native, _ = policy_loss("ppo", logp, old, torch.tensor([-1.0]), mask)
    assert native.item() == pytest.approx(math.exp(20), rel=1e-6)
    trl, m = policy_loss("ppo", logp, old, torch.tensor([-1.0]), mask, compat="trl")
    assert trl.item() == INF and m["ratio_max"] == INF
    trl0, _ = policy_loss("ppo", logp, old, torch.tensor([0.0]), mask, compat="trl")
    assert math.isnan(trl0.item())
    # a dual clip bounds it even without the clamp
    capped, _ = policy_loss("ppo", logp, old, torch.tensor([-1.0]), mask, compat="trl",
                            dual_clip=3.0)
    assert capped.item() == 3.0


@pytest.mark.parametrize("name", EVERY + ["kpo"])
def test_bf16_inputs_are_upcast(name):
    logp, old, adv, _, mask = random_batch(4, scale=0.3, dtype=torch.float32)
    lp16 = logp.to(torch.bfloat16).requires_grad_()
    old16, adv16 = old.to(torch.bfloat16), adv.to(torch.bfloat16)
    opts = {"compat": "verl"} if name in SEQ_LOSSES else {}
    loss, _ = policy_loss(name, lp16, old16, adv16, mask.bool(), **opts)
    loss.backward()
    assert loss.dtype == torch.float32 and lp16.grad.dtype == torch.bfloat16
    lp32 = lp16.detach().float().requires_grad_()
    ref, _ = policy_loss(name, lp32, old16.float(), adv16.float(), mask, **opts)
    ref.backward()
    assert loss.item() == ref.item()                       # same fp32 arithmetic after upcast
    torch.testing.assert_close(lp16.grad, lp32.grad.to(torch.bfloat16))


# ----------------------------------------------------------------------------------------------
# compat differences (§9.2)
# ----------------------------------------------------------------------------------------------


def test_compat_log_ratio_clamp():
    logp = torch.tensor([[0.0]], dtype=F64)
    old = torch.tensor([[-30.0]], dtype=F64)
    adv, mask = torch.tensor([-1.0], dtype=F64), torch.ones(1, 1, dtype=F64)
    values = {c: policy_loss("ppo", logp, old, adv, mask, compat=c)[0].item()
              for c in ("native", "verl", "trl")}
    assert values["native"] == values["verl"] == pytest.approx(math.exp(20), rel=1e-14)
    assert values["trl"] == pytest.approx(math.exp(30), rel=1e-14)
    assert policy_loss("ppo", logp, old, adv, mask, log_ratio_clamp=25.0)[0].item() == \
        pytest.approx(math.exp(25), rel=1e-14)


def test_compat_dr_grpo_constant_and_empty_rows():
    logp, old, A, mask = tensors()
    mask = torch.cat([mask, torch.zeros(1, 4, dtype=F64)])
    logp2 = torch.cat([logp.detach(), torch.zeros(1, 4, dtype=F64)])
    old2, A2 = torch.cat([old, torch.zeros(1, 4, dtype=F64)]), torch.cat([A, A[:1]])
    agg = "seq-mean-token-sum-norm"
    native = policy_loss("ppo", logp2, old2, A2, mask, agg, max_len=16)[0].item()
    verl = policy_loss("ppo", logp2, old2, A2, mask, agg, max_len=16, compat="verl")[0].item()
    trl = policy_loss("ppo", logp2, old2, A2, mask, agg, max_len=16, compat="trl")[0].item()
    per_tok = ref_token_losses("ppo", clean(LP), OLD, ADV_SEQ, MASK)
    total = sum(map(sum, per_tok))
    assert native == pytest.approx(total / (3 * 16), rel=1e-12)            # B' = 3 non-empty
    assert verl == pytest.approx(total / 16, rel=1e-12)                     # no 1/B
    assert trl == pytest.approx(total / (4 * 16), rel=1e-12)                # B = 4 rows
    for agg in ("seq-mean-token-mean", "seq-mean-token-sum"):
        n = policy_loss("ppo", logp2, old2, A2, mask, agg)[0].item()
        t = policy_loss("ppo", logp2, old2, A2, mask, agg, compat="trl")[0].item()
        assert t == pytest.approx(n * 3 / 4, rel=1e-12)


@pytest.mark.parametrize("compat, opts, weights", [
    ("native", {}, [0.5, 1.1, 1.5, 5.0]),                   # absolute cap 5, no lower bound
    ("native", {"cap": 2.0, "clip_low": 0.2}, [0.8, 1.1, 1.5, 2.0]),
    ("native", {"clip_high": 0.2}, [0.5, 1.1, 1.2, 1.2]),   # relative 1 + clip_high
    ("verl", {}, [0.8, 1.1, 1.2, 1.2]),                     # verl: [1 − 0.2, 1 + 0.2]
    ("verl", {"clip_low": 10.0, "clip_high": 0.2}, [0.5, 1.1, 1.2, 1.2]),  # verl example
    ("trl", {"clip_high": 2.0}, [0.5, 1.1, 1.5, 2.0]),      # TRL: epsilon_high is absolute
    ("trl", {}, [0.5, 1.1, 1.5, 5.0]),
])
def test_compat_cispo_bounds(compat, opts, weights):
    ratios = [0.5, 1.1, 1.5, 7.0]
    logp = torch.tensor([[-0.3, -1.0, -2.0, -0.6]], dtype=F64, requires_grad=True)
    old = logp.detach() - torch.log(torch.tensor([ratios], dtype=F64))
    adv, mask = torch.tensor([0.9], dtype=F64), torch.ones(1, 4, dtype=F64)
    loss, _ = policy_loss("cispo", logp, old, adv, mask, compat=compat, **opts)
    loss.backward()
    lp = logp.detach()[0].tolist()
    assert loss.item() == pytest.approx(sum(-w * 0.9 * v for w, v in zip(weights, lp)) / 4,
                                        rel=1e-12)
    torch.testing.assert_close(logp.grad, -0.9 * torch.tensor([weights], dtype=F64) / 4)


def test_compat_gspo_verl_clamps_log_ratio_at_ten():
    logp = torch.tensor([[0.0, 0.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-15.0, -15.0]], dtype=F64)
    adv, mask = torch.tensor([-1.0], dtype=F64), torch.ones(1, 2, dtype=F64)
    for name in ("gspo", "gspo_token"):
        native = policy_loss(name, logp, old, adv, mask, compat="trl")
        verl = policy_loss(name, logp, old, adv, mask, compat="verl")
        assert native[1]["ratio_max"] == pytest.approx(math.exp(15), rel=1e-12)
        assert verl[1]["ratio_max"] == pytest.approx(math.exp(10), rel=1e-12)
        assert verl[0].item() == pytest.approx(math.exp(10), rel=1e-7)   # verl: L + 1e-8
        # above the clamp verl's gradient is zero; unclamped it is −Â·s·w
        assert (torch.autograd.grad(verl[0], logp)[0] == 0).all()
        assert (torch.autograd.grad(native[0], logp)[0] > 0).all()


def test_native_refuses_token_level_gspo_epsilon():
    logp, old, A, mask = tensors()
    with pytest.raises(ValueError, match="clip_high"):
        policy_loss("gspo", logp, old, A, mask, clip_high=0.2)
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss("luspo", logp, old, A, mask, clip_low=0.2, clip_high=1e-3)
    policy_loss("gspo", logp, old, A, mask, clip_low=0.2, clip_high=0.2, compat="verl")


# ----------------------------------------------------------------------------------------------
# KPO (spec §4.3): the filtered ratio inside the surrogate
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def kpo_module():
    import grouprl.losses.kpo

    return grouprl.losses.kpo


KPO_MASK = [[1, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]   # holes, left padding
KPO_LP = [[-1.0, -0.5, NAN, -0.3, -1.5], [-0.2, -0.9, -1.1, -0.4, -0.6], [NAN, -0.7, -1.3, NAN,
                                                                            INF]]
KPO_OLD = [[-1.4, -0.2, 0.0, -0.9, -0.8], [-0.2, -0.1, -1.9, -0.1, -1.6], [0.0, -1.5, -0.6,
                                                                           NAN, 0.0]]


@pytest.mark.parametrize("clip_", [True, False])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("params", [{}, {"Q": 0.05, "V": 0.5, "P0": 0.0, "x0": 0.3},
                                    {"Q": 0.3, "P0": 10.0, "x0": -0.2}])
def test_kpo_through_filter_exact(kpo_module, params, agg, clip_):
    logp, old, A, mask = tensors(KPO_LP, KPO_OLD, [1.2, -0.7, 0.4], KPO_MASK)
    loss, m = policy_loss("kpo", logp, old, A, mask, agg, clip=clip_, **params)
    loss.backward()
    lp = clean(KPO_LP)
    old_c = clean(KPO_OLD)
    ref = ref_loss("kpo", lp, old_c, [1.2, -0.7, 0.4], KPO_MASK, agg, clip=clip_, **params)
    assert loss.item() == pytest.approx(ref, rel=1e-12, abs=1e-14)
    g = fd_grad("kpo", lp, old_c, [1.2, -0.7, 0.4], KPO_MASK, agg, clip=clip_, **params)
    torch.testing.assert_close(logp.grad, g, rtol=1e-6, atol=1e-9)
    if not clip_:
        assert m["clipfrac"] == 0.0


def test_kpo_straight_through_gradient(kpo_module):
    """grad="straight_through": ∂L/∂ℓ_t = −Â_t·r̃_t·w_t on unclipped tokens (§4.3 B)."""
    logp, old, A, mask = tensors(KPO_LP, KPO_OLD, [1.2, -0.7, 0.4], KPO_MASK)
    loss, _ = policy_loss("kpo", logp, old, A, mask, grad="straight_through", Q=0.2)
    loss.backward()
    lp, old_c = clean(KPO_LP), clean(KPO_OLD)
    expected = torch.zeros(3, 5, dtype=F64)
    n_tok = sum(map(sum, KPO_MASK))
    for i, a in enumerate([1.2, -0.7, 0.4]):
        d = [lp[i][j] - old_c[i][j] if KPO_MASK[i][j] else 0.0 for j in range(5)]
        x = naive_filter(d, KPO_MASK[i], 0.2, 1.0, 1.0, 0.0)
        for j in range(5):
            rt = math.exp(x[j])
            inside = not ((a > 0 and rt > 1.28) or (a < 0 and rt < 0.8))
            if KPO_MASK[i][j] and inside:
                expected[i, j] = -a * rt / n_tok
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-15)


def test_kpo_with_gain_one_is_token_ppo(kpo_module):
    """Q → ∞ (K → 1): x̂_t = δ_t and KPO-clipped reduces to token PPO (§4.4 tests)."""
    logp, old, adv, _, mask = random_batch(9, scale=0.5)
    a, _ = policy_loss("kpo", logp, old, adv, mask, Q=1e12)
    b, _ = policy_loss("ppo", logp, old, adv, mask, clip_high=0.28)
    assert a.item() == pytest.approx(b.item(), rel=1e-9)


def test_kpo_options_are_forwarded(kpo_module):
    logp, old, adv, _, mask = random_batch(9, scale=0.5)
    base = policy_loss("kpo", logp, old, adv, mask)[0].item()
    for opts in ({"method": "scan", "chunk_size": 3}, {"method": "operator"}):
        assert policy_loss("kpo", logp, old, adv, mask, **opts)[0].item() == \
            pytest.approx(base, rel=1e-12)
    assert policy_loss("kpo", logp, old, adv, mask, domain="ratio")[0].item() != base
    with pytest.raises(ValueError, match="method"):
        policy_loss("kpo", logp, old, adv, mask, method="bogus")


# ----------------------------------------------------------------------------------------------
# Registry and validation
# ----------------------------------------------------------------------------------------------


def test_registry_names():
    names = available_policy_losses()
    for required in ("ppo", "two_sided", "gspo", "gspo_token", "cispo", "sapo", "luspo", "kpo"):
        assert required in names


@pytest.mark.parametrize("name, kwargs, option", [
    ("nope", {}, "name"),
    ("ppo", {"agg": "mean"}, "agg"),
    ("ppo", {"compat": "reference"}, "compat"),
    ("ppo", {"epsilon": 0.2}, "epsilon"),
    ("ppo", {"dual_clip": 1.0}, "dual_clip"),
    ("ppo", {"dual_clip": 0.5}, "dual_clip"),
    ("ppo", {"clip_low": -0.1}, "clip_low"),
    ("ppo", {"clip_high": float("nan")}, "clip_high"),
    ("ppo", {"delta": 4.0}, "delta"),                     # not a ppo option
    ("two_sided", {"delta": 1.0}, "delta"),
    ("sapo", {"tau_neg": 0.0}, "tau_neg"),
    ("sapo", {"clip_low": 0.2}, "clip_low"),
    ("ppo", {"rollout_is": "geometric"}, "rollout_is"),
    ("ppo", {"rollout_is_mode": "clip"}, "rollout_is_mode"),
    ("ppo", {"rollout_is_threshold": 0.0}, "rollout_is_threshold"),
    ("ppo", {"rollout_is_threshold_lower": 3.0}, "rollout_is_threshold_lower"),
    ("ppo", {"log_ratio_clamp": -1.0}, "log_ratio_clamp"),
    ("kpo", {"grad": "both"}, "grad"),
    ("kpo", {"domain": "prob"}, "domain"),
    ("kpo", {"V": 0.0}, "V"),
    ("kpo", {"chunk_size": 0}, "chunk_size"),
    ("cispo", {"cap": 1.0}, "cap"),                       # cap ≤ 1 raises (§3.3)
    ("cispo", {"cap": 0.2}, "cap"),
    ("cispo", {"clip_high": 0.0}, "clip_high"),
    ("cispo", {"cap": 2.0, "clip_high": 0.2}, "cap"),
    ("cispo", {"clip_high": 0.2, "compat": "trl"}, "clip_high"),   # TRL's unset-epsilon_high
    ("cispo", {"clip_high": 1.0, "compat": "trl"}, "clip_high"),
    ("cispo", {"cap": 3.0, "compat": "verl"}, "cap"),
    ("cispo", {"clip_low": 0.2, "compat": "trl"}, "clip_low"),
])
def test_bad_options_raise_naming_the_option(name, kwargs, option):
    logp, old, A, mask = tensors()
    with pytest.raises(ValueError, match=option):
        policy_loss(name, logp, old, A, mask, **kwargs)


def test_unknown_option_message_lists_accepted_options():
    logp, old, A, mask = tensors()
    with pytest.raises(ValueError, match="accepted options: .*clip_high"):
        policy_loss("ppo", logp, old, A, mask, clip_ratio=0.2)


@pytest.mark.parametrize("arg", ["old_logp", "advantages", "mask", "rollout_logp", "logp"])
def test_bad_shapes_raise_naming_the_argument(arg):
    logp, old, A, mask = tensors()
    args = {"logp": logp, "old_logp": old, "advantages": A, "mask": mask,
            "rollout_logp": old.clone()}
    args[arg] = args[arg][:, :2] if args[arg].dim() == 2 else args[arg][:2]
    if arg == "logp":
        args[arg] = logp[0]
    with pytest.raises(ValueError, match=arg):
        policy_loss("ppo", args["logp"], args["old_logp"], args["advantages"], args["mask"],
                    rollout_logp=args["rollout_logp"])


def test_integer_advantages_raise():
    logp, old, _, mask = tensors()
    with pytest.raises(ValueError, match="advantages"):
        policy_loss("ppo", logp, old, torch.tensor([1, 0, 1]), mask)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("name", EVERY + ["kpo"])
def test_empty_shapes(name, shape):
    logp = torch.zeros(shape, requires_grad=True)
    loss, m = policy_loss(name, logp, logp.detach(), torch.zeros(shape[0]), torch.ones(shape))
    loss.backward()
    assert loss.item() == 0.0 and m["n_tokens"] == 0 and m["ratio_min"] == 1.0


def test_policy_loss_options_validates_without_computing():
    from grouprl.losses import policy_loss_options

    opts = policy_loss_options("ppo", clip_high=0.28)
    assert opts["clip_high"] == 0.28 and opts["clip_low"] == 0.2
    with pytest.raises(ValueError, match="clip_ratio: unknown option for policy loss 'ppo'"):
        policy_loss_options("ppo", clip_ratio=0.2)
