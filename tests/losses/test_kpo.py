"""KPO Kalman-filtered log-ratio (spec-losses §4): exactness, limits, gradients, masking, options.

The reference is a naive per-token Python recursion in float64 (below); the vectorised operator and
chunked-scan paths must equal it to 1e-12 on random inputs, including masks with holes inside a
sequence, left/right padding, fully masked rows and T = 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grouprl.losses import kpo
from grouprl.losses.kpo import kalman_filter_log_ratio, kalman_gain_schedule

# (Q, V, P0, x0): the library defaults, weak and strong smoothing, a steady-state prior and a
# diffuse prior with Q = 0.
CONFIGS = [
    (1e-6, 1.0, 1.0, 0.0),
    (0.05, 0.5, 0.0, 0.3),
    (0.3, 1.0, 10.0, -0.2),
    (1e-3, 2.0, 1e-3, 0.0),
    (0.0, 1.0, 1e6, 0.1),
]


def naive_kalman(log_ratio: torch.Tensor, mask: torch.Tensor, *, Q: float = 1e-6, V: float = 1.0,
                 P0: float = 1.0, x0: float = 0.0, domain: str = "log",
                 clamp: float | None = 20.0) -> torch.Tensor:
    """Per-token recursion, float64: masked tokens hold (x̂, P) and output the held x̂.

    P_t = (1 − K_t) p_t is evaluated as V p_t/(p_t + V) (as the library does): identical algebra,
    but 1 − K_t loses its digits when K_t ≈ 1 (diffuse prior).
    """
    out = torch.empty(log_ratio.shape, dtype=torch.float64)
    for i, (row, mrow) in enumerate(zip(log_ratio.double().tolist(), mask.tolist())):
        x = math.exp(x0) if domain == "ratio" else x0
        P = P0
        for t, (d, m) in enumerate(zip(row, mrow)):
            if m:
                z = d if clamp is None else min(max(d, -clamp), clamp)
                if domain == "ratio":
                    z = math.exp(z)
                p = P + Q                 # predict
                K = p / (p + V)           # gain
                x = x + K * (z - x)       # update
                P = V / (p + V) * p       # (1 − K) p, in the form that keeps its digits
            out[i, t] = math.log(x) if domain == "ratio" else x
    return out


def random_case(N: int, T: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random log-ratios and a mask mixing every layout: holes, left/right padding, empty rows."""
    g = torch.Generator().manual_seed(seed)
    lr = scale * torch.randn(N, T, generator=g, dtype=torch.float64)
    mask = torch.rand(N, T, generator=g) < 0.7                              # holes everywhere
    layouts = torch.randint(0, 5, (N,), generator=g)
    for i in range(N):
        L = int(torch.randint(0, T + 1, (1,), generator=g))
        if layouts[i] == 0:
            mask[i] = torch.arange(T) < L                                   # right padding
        elif layouts[i] == 1:
            mask[i] = torch.arange(T) >= T - L                              # left padding
        elif layouts[i] == 2:
            mask[i] &= torch.arange(T) < L                                  # holes + right pad
    if N > 1:
        mask[0] = False                                                     # fully masked row
        mask[1] = True                                                      # full row
    return lr, mask


# ----------------------------------------------------------------------------------------------
# Exactness against the per-token recursion
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,chunk_size", [("operator", 256), ("scan", 16), ("scan", 7),
                                               ("scan", 1), ("scan", 256), ("auto", 64)])
@pytest.mark.parametrize("domain", ["log", "ratio"])
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("N,T", [(6, 1), (9, 37), (7, 300)])
def test_matches_naive_recursion(method, chunk_size, domain, cfg, N, T):
    Q, V, P0, x0 = cfg
    lr, mask = random_case(N, T, seed=N * 1000 + T)
    got = kalman_filter_log_ratio(lr, mask, Q=Q, V=V, P0=P0, x0=x0, domain=domain,
                                  method=method, chunk_size=chunk_size)
    want = naive_kalman(lr, mask, Q=Q, V=V, P0=P0, x0=x0, domain=domain)
    assert got.dtype == torch.float64 and got.shape == (N, T)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["operator", "scan"])
def test_float_mask_and_clamp(method):
    lr, mask = random_case(5, 50, seed=3, scale=15.0)                       # many |δ| > 20
    fmask = mask.double()
    for clamp in (20.0, 3.0, None):
        got = kalman_filter_log_ratio(lr, fmask, method=method, chunk_size=8, clamp=clamp, Q=0.01)
        want = naive_kalman(lr, mask, clamp=clamp, Q=0.01)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def decimal_kalman(log_ratio, mask, *, Q, V, P0, x0, domain, digits=60) -> torch.Tensor:
    """The same recursion in 60-digit decimal arithmetic (a reference free of float rounding)."""
    from decimal import Decimal, localcontext

    out = torch.empty(log_ratio.shape, dtype=torch.float64)
    with localcontext() as ctx:
        ctx.prec = digits
        for i, (row, mrow) in enumerate(zip(log_ratio.tolist(), mask.tolist())):
            x = Decimal(x0).exp() if domain == "ratio" else Decimal(x0)
            P, Qd, Vd = Decimal(P0), Decimal(Q), Decimal(V)
            for t, (d, m) in enumerate(zip(row, mrow)):
                if m:
                    z = Decimal(min(max(d, -20.0), 20.0))
                    z = z.exp() if domain == "ratio" else z
                    p = P + Qd
                    K = p / (p + Vd)
                    x, P = x + K * (z - x), (1 - K) * p
                out[i, t] = float(x.ln()) if domain == "ratio" else float(x)
    return out


@pytest.mark.parametrize("method", ["operator", "scan"])
@pytest.mark.parametrize("Q,V,P0", [(1.0, 1.0, 1e8), (0.1, 10.0, 1e8), (1.0, 1e-4, 1e-3)])
def test_wide_range_ratio_domain_against_exact_arithmetic(method, Q, V, P0):
    """Ratios over e^±20: the float64 recursion x + K(z − x) loses ~1e-10 here (x ≫ result), the
    operator form Σ W_ts z_s (non-negative weights, positive terms) stays within 1e-14."""
    lr, mask = random_case(4, 40, seed=25, scale=10.0)
    got = kalman_filter_log_ratio(lr, mask, Q=Q, V=V, P0=P0, x0=0.4, domain="ratio",
                                  method=method, chunk_size=7)
    want = decimal_kalman(lr, mask, Q=Q, V=V, P0=P0, x0=0.4, domain="ratio")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_auto_above_operator_threshold_uses_exact_scan():
    T = kpo.AUTO_OPERATOR_MAX_T + 37
    lr, mask = random_case(3, T, seed=11)
    got = kalman_filter_log_ratio(lr, mask, Q=1e-3)
    torch.testing.assert_close(got, naive_kalman(lr, mask, Q=1e-3), rtol=0, atol=1e-12)


def test_long_sequence_scan_equals_operator_float64():
    lr, mask = random_case(3, 3000, seed=5)
    a = kalman_filter_log_ratio(lr, mask, method="operator")
    b = kalman_filter_log_ratio(lr, mask, method="scan", chunk_size=128)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, naive_kalman(lr, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["operator", "scan"])
def test_float32_production_path(method):
    lr, mask = random_case(4, 2000, seed=9, scale=0.3)
    got = kalman_filter_log_ratio(lr.float(), mask, method=method)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_kalman(lr.float(), mask), rtol=1e-5, atol=1e-6)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(N=st.integers(1, 4), T=st.integers(1, 40), chunk=st.integers(1, 12),
       seed=st.integers(0, 10_000), Q=st.sampled_from([0.0, 1e-6, 0.01, 0.5]),
       V=st.sampled_from([1e-3, 1.0, 5.0]), P0=st.sampled_from([0.0, 1.0, 1e4]),
       x0=st.sampled_from([0.0, -0.5, 0.25]), domain=st.sampled_from(["log", "ratio"]))
def test_property_random_masks(N, T, chunk, seed, Q, V, P0, x0, domain):
    lr, mask = random_case(N, T, seed)
    want = naive_kalman(lr, mask, Q=Q, V=V, P0=P0, x0=x0, domain=domain)
    for method in ("operator", "scan"):
        got = kalman_filter_log_ratio(lr, mask, Q=Q, V=V, P0=P0, x0=x0, domain=domain,
                                      method=method, chunk_size=chunk)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Masking semantics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["operator", "scan"])
def test_left_padding_equals_shifted_row_and_holes_hold_state(method):
    lr, _ = random_case(1, 12, seed=1)
    right = torch.tensor([[1] * 8 + [0] * 4], dtype=torch.bool)
    left = torch.tensor([[0] * 4 + [1] * 8], dtype=torch.bool)
    lr_left = torch.cat([torch.zeros(1, 4, dtype=torch.float64), lr[:, :8]], dim=1)
    kw = dict(Q=0.01, x0=0.2, method=method, chunk_size=5)
    out_r = kalman_filter_log_ratio(lr, right, **kw)
    out_l = kalman_filter_log_ratio(lr_left, left, **kw)
    torch.testing.assert_close(out_l[:, 4:], out_r[:, :8], rtol=0, atol=1e-14)
    assert torch.all(out_l[:, :4] == 0.2)                                    # prior before data
    assert torch.all(out_r[:, 8:] == out_r[:, 7:8])                          # held after data
    hole = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out_h = kalman_filter_log_ratio(lr, hole, **kw)
    assert out_h[0, 2] == out_h[0, 1] and out_h[0, 3] == out_h[0, 1] and out_h[0, 5] == out_h[0, 4]


@pytest.mark.parametrize("grad", ["through_filter", "straight_through"])
@pytest.mark.parametrize("domain", ["log", "ratio"])
@pytest.mark.parametrize("method", ["operator", "scan"])
def test_nan_inf_at_masked_positions_change_nothing(grad, domain, method):
    lr, mask = random_case(6, 30, seed=4)
    dirty = lr.clone()
    bad = torch.tensor([math.nan, math.inf, -math.inf])
    dirty[~mask] = bad[torch.arange(int((~mask).sum())) % 3].double()
    w = torch.randn(6, 30, dtype=torch.float64)
    outs, grads = [], []
    for x in (torch.where(mask, lr, 0.0), dirty):
        x = x.clone().requires_grad_(True)
        out = kalman_filter_log_ratio(x, mask, Q=0.01, domain=domain, grad=grad, method=method,
                                      chunk_size=8)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])
    assert torch.isfinite(outs[1]).all() and torch.isfinite(grads[1]).all()
    assert torch.all(grads[1][~mask] == 0)


@pytest.mark.parametrize("method", ["operator", "scan"])
def test_fully_masked_rows_and_empty_batch(method):
    lr = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    out = kalman_filter_log_ratio(lr, mask, x0=0.3, method=method, chunk_size=4)
    assert torch.all(out == 0.3)
    out.sum().backward()
    assert torch.all(lr.grad == 0)
    empty = kalman_filter_log_ratio(torch.zeros(0, 5), torch.zeros(0, 5), method=method)
    assert empty.shape == (0, 5)
    assert kalman_filter_log_ratio(torch.zeros(2, 0), torch.zeros(2, 0)).shape == (2, 0)


def test_causal():
    lr, mask = random_case(4, 40, seed=8)
    mask[:] = True
    base = kalman_filter_log_ratio(lr, mask, Q=0.01, method="scan", chunk_size=6)
    bumped = lr.clone()
    bumped[:, 17] += 1.0
    out = kalman_filter_log_ratio(bumped, mask, Q=0.01, method="scan", chunk_size=6)
    assert torch.equal(out[:, :17], base[:, :17])
    assert torch.all(out[:, 17:] != base[:, 17:])


# ----------------------------------------------------------------------------------------------
# Limits (spec §4.4)
# ----------------------------------------------------------------------------------------------


def test_single_token():
    lr = torch.tensor([[0.7], [-2.0]], dtype=torch.float64)
    mask = torch.ones(2, 1)
    out = kalman_filter_log_ratio(lr, mask, Q=1e-6, V=1.0, P0=1.0)
    K1 = (1.0 + 1e-6) / (1.0 + 1e-6 + 1.0)
    torch.testing.assert_close(out, K1 * lr, rtol=0, atol=1e-15)            # r̃ = exp(K_1 z_1)


@pytest.mark.parametrize("kw", [dict(V=1e-20), dict(Q=1e13)])
@pytest.mark.parametrize("method", ["operator", "scan"])
def test_unit_gain_limit_is_token_ratio(kw, method):
    """K → 1: the filtered log-ratio is the raw token log-ratio (token-level PPO/GRPO)."""
    lr, mask = random_case(6, 50, seed=2)
    out = kalman_filter_log_ratio(lr, mask, method=method, chunk_size=8, **kw)
    torch.testing.assert_close(out[mask], lr[mask], rtol=0, atol=1e-9)
    held = naive_kalman(lr, mask, **kw)                                     # holes: last δ seen
    torch.testing.assert_close(out, held, rtol=0, atol=1e-9)


def test_exact_unit_gain_no_nan():
    """V so small that K == 1 and a = V/(p + V) == 0 in float64: products through a = 0 are 0."""
    lr, mask = random_case(4, 30, seed=6)
    V = 5e-324                                                              # smallest subnormal
    assert kalman_gain_schedule(3, Q=10.0, V=V, P0=0.0)[0] == 1.0
    assert kpo._schedule(3, 10.0, V, 0.0)[1][0] == 0.0
    for method in ("operator", "scan"):
        out = kalman_filter_log_ratio(lr, mask, Q=10.0, V=V, P0=0.0, x0=0.3, method=method,
                                      chunk_size=4)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, naive_kalman(lr, mask, Q=10.0, V=V, P0=0.0, x0=0.3),
                                   rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", ["operator", "scan"])
def test_diffuse_prior_no_process_noise_is_prefix_mean_gspo(method):
    """Q = 0, P0 → ∞: x̂_t = prefix mean of the observed δ; at t = L_i, GSPO's log s_i."""
    lr, mask = random_case(8, 60, seed=7)
    out = kalman_filter_log_ratio(lr, mask, Q=0.0, P0=1e12, method=method, chunk_size=16)
    m = mask.double()
    csum = torch.cumsum(torch.where(mask, lr, 0.0), 1)
    cnt = torch.cumsum(m, 1)
    prefix_mean = torch.where(cnt > 0, csum / cnt.clamp_min(1), 0.0)
    torch.testing.assert_close(out, prefix_mean, rtol=0, atol=1e-9)
    gspo_log_s = (torch.where(mask, lr, 0.0)).sum(1) / m.sum(1).clamp_min(1)
    has = mask.any(1)
    torch.testing.assert_close(out[has, -1], gspo_log_s[has], rtol=0, atol=1e-9)


def test_gain_schedule():
    t = torch.arange(1, 501, dtype=torch.float64)
    torch.testing.assert_close(kalman_gain_schedule(500, Q=0.0, V=2.0, P0=0.5),
                               1.0 / (2.0 / 0.5 + t), rtol=1e-14, atol=0)
    K = kalman_gain_schedule(20_000)                                        # defaults
    assert abs(K[0].item() - 0.5) < 1e-6                                    # spec §4.2 table
    assert abs(K[99].item() - 9.9e-3) < 1e-4
    assert abs(K[999].item() - 1.3e-3) < 1e-4
    Q, V = 1e-6, 1.0
    p_inf = 0.5 * (Q + math.sqrt(Q * Q + 4 * Q * V))
    assert abs(K[-1].item() - p_inf / (p_inf + V)) < 1e-7                  # K_∞ ≈ 9.995e-4
    assert torch.equal(kalman_gain_schedule(100), K[:100])                  # prefix-consistent


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["log", "ratio"])
@pytest.mark.parametrize("method", ["operator", "scan"])
def test_through_filter_gradcheck(domain, method):
    lr, mask = random_case(4, 11, seed=12, scale=0.5)
    lr.requires_grad_(True)

    def f(x: torch.Tensor) -> torch.Tensor:
        return kalman_filter_log_ratio(x, mask, Q=0.02, P0=1.0, x0=0.1, domain=domain,
                                       method=method, chunk_size=4)

    assert torch.autograd.gradcheck(f, (lr,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(f, (lr,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_through_filter_jacobian_is_lower_triangular_operator():
    lr = 0.1 * torch.randn(1, 9, dtype=torch.float64)
    mask = torch.ones(1, 9, dtype=torch.bool)
    J = torch.autograd.functional.jacobian(
        lambda x: kalman_filter_log_ratio(x, mask, Q=0.01, method="scan", chunk_size=4), lr)
    J = J.reshape(9, 9)
    assert torch.all(J.triu(1) == 0) and torch.all(J.diagonal() > 0)
    K = kalman_gain_schedule(9, Q=0.01)
    torch.testing.assert_close(J.diagonal(), K, rtol=0, atol=1e-15)         # ∂x̂_t/∂z_t = K_t


@pytest.mark.parametrize("grad", ["straight_through", "token_straight_through"])
@pytest.mark.parametrize("domain", ["log", "ratio"])
@pytest.mark.parametrize("method", ["operator", "scan"])
def test_straight_through_value_and_identity_gradient(grad, domain, method):
    lr, mask = random_case(5, 23, seed=13)
    lr[0, 3] = 25.0                                                          # outside the clamp
    mask[0, 3] = True
    x = lr.clone().requires_grad_(True)
    kw = dict(Q=0.01, domain=domain, method=method, chunk_size=5)
    out = kalman_filter_log_ratio(x, mask, grad=grad, **kw)
    ref = kalman_filter_log_ratio(lr, mask, **kw)
    assert torch.equal(out.detach(), ref)                                   # value: filtered
    w = torch.randn(5, 23, dtype=torch.float64)
    (out * w).sum().backward()
    inside = mask & (lr.abs() <= 20.0)
    assert torch.equal(x.grad, torch.where(inside, w, 0.0))                 # gradient: identity
    # exp(out) has gradient r̃_t ∇δ_t, spec §4.3 (B).
    x2 = lr.clone().requires_grad_(True)
    torch.exp(kalman_filter_log_ratio(x2, mask, grad=grad, **kw)).sum().backward()
    torch.testing.assert_close(x2.grad, torch.where(inside, torch.exp(ref), 0.0))


# ----------------------------------------------------------------------------------------------
# Dtypes, validation, caching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("method", ["operator", "scan"])
def test_low_precision_inputs_computed_in_float32(dtype, method):
    lr, mask = random_case(4, 70, seed=14, scale=0.5)
    x = lr.to(dtype).requires_grad_(True)
    out = kalman_filter_log_ratio(x, mask, Q=0.01, method=method, chunk_size=16)
    assert out.dtype == torch.float32
    want = naive_kalman(x.detach().double(), mask, Q=0.01)                  # same (rounded) input
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("kw,name", [
    (dict(Q=-1e-6), "Q"), (dict(Q=math.nan), "Q"), (dict(V=0.0), "V"), (dict(V=-1.0), "V"),
    (dict(P0=-1.0), "P0"), (dict(P0=math.inf), "P0"), (dict(x0=math.nan), "x0"),
    (dict(chunk_size=0), "chunk_size"), (dict(chunk_size=2.5), "chunk_size"),
    (dict(clamp=0.0), "clamp"), (dict(Q=True), "Q"),
])
def test_invalid_numbers_raise(kw, name):
    lr, mask = random_case(2, 5, seed=0)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        kalman_filter_log_ratio(lr, mask, **kw)


@pytest.mark.parametrize("option,accepted", [("domain", kpo.DOMAINS), ("grad", kpo.GRADS),
                                             ("method", kpo.METHODS)])
def test_invalid_choices_raise_with_accepted_values(option, accepted):
    lr, mask = random_case(2, 5, seed=0)
    with pytest.raises(ValueError) as err:
        kalman_filter_log_ratio(lr, mask, **{option: "bogus"})
    msg = str(err.value)
    assert msg.startswith(f"{option}:") and "'bogus'" in msg
    assert all(repr(a) in msg for a in accepted)


def test_invalid_tensors_raise():
    with pytest.raises(ValueError, match="^log_ratio:"):
        kalman_filter_log_ratio(torch.zeros(5), torch.ones(5))
    with pytest.raises(ValueError, match="^log_ratio:"):
        kalman_filter_log_ratio(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5))
    with pytest.raises(ValueError, match="^mask:"):
        kalman_filter_log_ratio(torch.zeros(2, 5), torch.ones(2, 4))


def test_operator_cache_reused():
    a = kpo._dense_operator(33, 1e-6, 1.0, 1.0, torch.device("cpu"), torch.float32)
    b = kpo._dense_operator(33, 1e-6, 1.0, 1.0, torch.device("cpu"), torch.float32)
    assert a[0] is b[0]
    assert len(kpo._OPERATORS) <= kpo._MAX_CACHED_OPERATORS
