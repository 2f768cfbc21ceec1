"""KPO ratio builder: an online, causal Kalman filter over the per-token log importance ratios.

He, Feng, Cheng, Feng, An, "Online Causal Kalman Filtering for Stable and Effective Policy
Optimization", arXiv 2602.10609 (KPO); library spec ``spec-losses.md`` §4.

Model (spec §4.2, a scalar local-level / random-walk model per sequence)::

    x_t = x_{t-1} + w_t,  w_t ~ N(0, Q)          latent "desired" (log-)ratio
    z_t = x_t + v_t,      v_t ~ N(0, V)          observation: z_t = δ_t = logp_t − old_logp_t

    p_t = P_{t-1} + Q                            predict
    K_t = p_t / (p_t + V)                        Kalman gain
    x̂_t = x̂_{t-1} + K_t (z_t − x̂_{t-1})           update  (= (1 − K_t) x̂_{t-1} + K_t z_t)
    P_t = (1 − K_t) p_t

KPO then uses r̃_t = exp(x̂_t) in place of the token ratio r_t in a GRPO-style surrogate (KPO, or
KPO-clipped with the PPO clip on r̃; spec §4.3). This module only builds log r̃ = x̂; the shaper and
the aggregator live elsewhere.

Vectorisation (spec §4.4). Q, V and P0 are fixed, so K_t depends only on how many tokens have been
observed, never on the data, and the filter is a fixed lower-triangular linear map::

    x̂_t = A_t x̂_0 + Σ_{s≤t} W_{ts} z_s,   a_s = 1 − K_s,  A_t = Π_{u≤t} a_u,
    W_{ts} = K_s Π_{u=s+1..t} a_u = K_s exp(Σ_{s<u≤t} log a_u).

The operators are built once in float64 (the exponent as a masked cumulative sum per start s, not
as a difference Λ_t − Λ_s of global prefix sums, which would cancel for weak smoothing over long
rows), cast to the compute dtype and cached.

Masked tokens (``mask == 0``: padding, tool/observation tokens inside a multi-turn response) are not
fed to the filter: the state is *held* (a = 1, b = 0) and P does not advance (spec §4.4 "Masked
tokens inside a response"). Hence token t of row i uses gain K[c_{i,t}] with
c_{i,t} = Σ_{u≤t} m_{i,u}, and the filter output at token t is exactly the output of the hole-free
filter run on the row's *compacted* observed tokens, read at position c_{i,t}. We therefore
compact every row once (one ``scatter``), run the hole-free operator, and read back with one
``gather`` (x̂ after 0 observations = x̂_0). This handles interior holes, left padding (equivalent
to shifting the row left), right padding and fully masked rows with the same data-independent
operator, so both methods below accept any mask.

Two exact implementations of the hole-free filter (both equal a per-token recursion to ~1e-15 in
float64, see ``tests/losses/test_kpo.py``):

* ``method="operator"``: the dense (T, T) operator, built once in float64 per (T, Q, V, P0) and
  cached per device/dtype; the filter is one ``(N, T) @ (T, T)`` matmul. O(N T²) FLOPs, T² memory.
* ``method="scan"``: a two-level chunked scan. Inside each chunk of C tokens apply that chunk's
  (C, C) block of W (one batched matmul over all chunks, carry-in zero); the state carried between
  chunks obeys the same kind of linear recursion at chunk granularity, which is itself a fixed
  (T/C, T/C) lower-triangular operator (one more small matmul). No Python loop over tokens or
  chunks. O(N T C) FLOPs, T·C + (T/C)² memory.
* ``method="auto"``: ``operator`` when T ≤ ``AUTO_OPERATOR_MAX_T`` (512), else ``scan``. The
  choice needs no device sync (masks never force the scan, thanks to the compaction above).
  Measured on CPU (2 threads, N = 64, forward + backward): the dense matmul wins up to T ≈ 384
  (0.70 vs 0.79 ms at T = 256), the scan beyond (1.3 vs 3.3 ms at T = 1024, 4.9 vs 43 ms at
  T = 4096). Above a few thousand tokens the dense operator is also too large (T² floats: 4 GB
  in float32 at T = 32k, plus float64 temporaries while it is built), so request
  ``method="operator"`` explicitly only for moderate T.

What is confirmed by the paper and what is a chosen default (spec §4.1, §4.2, §10.1):

* Confirmed [PAPER abstract]: latent IS-ratio state evolving over the tokens of a sequence, a
  Kalman filter updated online and causally (x̂_t uses tokens ≤ t only). [SECONDARY]: fixed
  Q = 1e-6 and V = 1, hence data-independent gains.
* Chosen defaults (the paper's method section was not available; spec §4.2/§4.4 recommendations):
  ``domain="log"`` (state = log-ratio; ``"ratio"`` filters r = exp(δ) instead), x̂_0 = 0 (ratio 1,
  the on-policy prior), P0 = 1 (provisional), ``grad="through_filter"`` (provisional), masked tokens
  hold the state without a predict step, the filter is reset for every row (spec §10.1: assumed),
  and the observation clamp δ ∈ [−20, 20] before filtering (the library's ratio clamp policy; spec
  §4.4 edge cases).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch

from grouprl.validation import check_choice, check_int, check_number, memoize

__all__ = ["AUTO_OPERATOR_MAX_T", "DOMAINS", "GRADS", "METHODS", "KalmanOptions",
           "kalman_filter_log_ratio", "kalman_gain_schedule", "kalman_options"]

DOMAINS = ("log", "ratio")
GRADS = ("through_filter", "straight_through", "token_straight_through")
METHODS = ("auto", "operator", "scan")

#: ``method="auto"`` uses the dense operator up to this padded length and the chunked scan above.
AUTO_OPERATOR_MAX_T = 512

_MAX_CACHED_OPERATORS = 8
_GAINS: dict[tuple[float, float, float], tuple[list[float], list[float], float]] = {}
_OPERATORS: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()


# ----------------------------------------------------------------------------------------------
# Gain schedule and the fixed linear operators (built once in float64, cached)
# ----------------------------------------------------------------------------------------------


def kalman_gain_schedule(length: int, *, Q: float = 1e-6, V: float = 1.0,
                         P0: float = 1.0) -> torch.Tensor:
    """K_1..K_length (float64, CPU) of the recursion ``p = P + Q; K = p/(p + V); P = (1 − K) p``.

    The schedule depends only on (Q, V, P0) and the number of observed tokens (spec §4.4). With
    Q = 0 it equals ``1/(V/P0 + t)``; it tends to K_∞ = p_∞/(p_∞ + V), p_∞ = (Q + √(Q² + 4QV))/2.
    """
    check_int("length", length, 0)
    o = kalman_options(Q=Q, V=V, P0=P0)
    return torch.tensor(_schedule(length, o.Q, o.V, o.P0)[0][:length], dtype=torch.float64)


def _schedule(length: int, Q: float, V: float, P0: float) -> tuple[list[float], list[float]]:
    """Gains K_t and a_t = 1 − K_t for t = 1..≥length, cached per (Q, V, P0), extended on demand.

    Computed once by the scalar recursion (never per call). The algebraically identical stable
    forms a_t = V/(p_t + V) and P_t = a_t p_t are used instead of 1 − K_t: with a diffuse prior
    (P0 ≫ V) K_1 rounds to within 1e-16 of 1 and 1 − K_1 would lose all its digits, corrupting
    every later gain.
    """
    key = (Q, V, P0)
    K, a, P = _GAINS.get(key, ([], [], P0))                  # P = P_n after the n cached gains
    if len(K) < length:
        for _ in range(max(length, 2 * len(K), 64) - len(K)):
            p = P + Q                                        # p_t = P_{t-1} + Q
            K.append(p / (p + V))                            # K_t = p_t / (p_t + V)
            a.append(V / (p + V))                            # a_t = 1 − K_t
            P = a[-1] * p                                    # P_t = (1 − K_t) p_t
        _GAINS[key] = (K, a, P)
    return K, a


def _gain_tensors(length: int, Q: float, V: float,
                  P0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """K (length,) and log a (length,) in float64; log a = −inf where a underflows to 0."""
    K_list, a_list = _schedule(length, Q, V, P0)
    K = torch.tensor(K_list[:length], dtype=torch.float64)
    return K, torch.log(torch.tensor(a_list[:length], dtype=torch.float64))


def _segment_log_products(log_a: torch.Tensor) -> torch.Tensor:
    """S[..., s, t] = Σ_{s<u≤t} log a_u for t ≥ s (0 on the diagonal; entries t < s are junk).

    A masked cumsum per start s rather than Λ_t − Λ_s: no cancellation, so Π a_u keeps full
    relative precision even when Λ_t is large (weak smoothing over long sequences; spec §4.4
    "keep Λ differences local"), and a zero a (log a = −inf) gives an exact 0 without inf − inf.
    """
    M = log_a.shape[-1]
    idx = torch.arange(M)
    later = idx[None, :] > idx[:, None]                                      # u > s
    terms = torch.where(later, log_a.unsqueeze(-2), torch.zeros((), dtype=log_a.dtype))
    return torch.cumsum(terms, dim=-1)


def _cache_get(key: tuple,
               build: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """LRU cache of the float64-built operators, keyed by (kind, sizes, Q, V, P0, device, dtype)."""
    hit = _OPERATORS.get(key)
    if hit is not None:
        _OPERATORS.move_to_end(key)
        return hit
    with torch.no_grad():
        value = build()
    _OPERATORS[key] = value
    while len(_OPERATORS) > _MAX_CACHED_OPERATORS:
        _OPERATORS.popitem(last=False)
    return value


def _dense_operator(T: int, Q: float, V: float, P0: float, device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(Wᵀ (T, T), A (T,)) with x̂ = z @ Wᵀ + x̂_0 A for a hole-free row (spec §4.4 method 1)."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        K, log_a = _gain_tensors(T, Q, V, P0)
        idx = torch.arange(T)
        causal = idx[None, :] >= idx[:, None]                                # [s, t]: t ≥ s
        # Wᵀ[s, t] = W_ts = K_s Π_{u=s+1..t} a_u
        Wt = torch.where(causal, K[:, None] * torch.exp(_segment_log_products(log_a)), 0.0)
        A = torch.exp(torch.cumsum(log_a, 0))                                # A_t = Π_{u≤t} a_u
        return Wt.to(device, dtype), A.to(device, dtype)

    return _cache_get(("dense", T, Q, V, P0, str(device), dtype), build)


def _scan_operators(n_chunks: int, C: int, Q: float, V: float, P0: float, device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Blocks for the two-level chunked scan (spec §4.4 method 2), 0-based token j = kC + c.

    Wbᵀ (n, C, C):  Wbᵀ[k, d, c] = W[kC+c, kC+d], the within-chunk block (carry-in zero).
    carry (n, C):   Π_{u=kC..kC+c} a_u, the weight of the state entering chunk k.
    Gᵀ (n, n):      Gᵀ[j, k] = Π_{u=(j+1)C..kC−1} a_u for j < k, the chunk-level operator.
    Ah (n,):        Π_{u<kC} a_u, the weight of x̂_0 on the state entering chunk k.
    """

    def build() -> tuple[torch.Tensor, ...]:
        K, log_a = _gain_tensors(n_chunks * C, Q, V, P0)
        K, log_a = K.view(n_chunks, C), log_a.view(n_chunks, C)
        idx = torch.arange(C)
        causal = idx[None, :] >= idx[:, None]                                # [d, c]: c ≥ d
        WbT = torch.where(causal, K[:, :, None] * torch.exp(_segment_log_products(log_a)), 0.0)
        local_log = torch.cumsum(log_a, 1)                                   # chunk-local Λ
        carry = torch.exp(local_log)
        tot = local_log[:, -1]                                               # log Π over chunk k
        k = torch.arange(n_chunks)
        # Gᵀ[j, k] = exp(Σ_{j<l<k} tot_l) = exp(S[j, k−1]) for k > j.
        S = _segment_log_products(tot)
        GT = torch.zeros(n_chunks, n_chunks, dtype=torch.float64)
        GT[:, 1:] = torch.where(k[None, 1:] > k[:, None], torch.exp(S[:, :-1]), 0.0)
        Ah = torch.exp(torch.cat([tot.new_zeros(1), torch.cumsum(tot, 0)[:-1]]))  # Σ_{l<k}
        return tuple(x.to(device, dtype) for x in (WbT, carry, GT, Ah))

    return _cache_get(("scan", n_chunks, C, Q, V, P0, str(device), dtype), build)


def _filter_dense(z: torch.Tensor, x0: float, Q: float, V: float, P0: float) -> torch.Tensor:
    """Hole-free filter, one matmul: x̂ = z Wᵀ + x̂_0 A."""
    Wt, A = _dense_operator(z.shape[1], Q, V, P0, z.device, z.dtype)
    out = z @ Wt
    return out + x0 * A if x0 != 0.0 else out


def _filter_scan(z: torch.Tensor, x0: float, Q: float, V: float, P0: float,
                 C: int) -> torch.Tensor:
    """Hole-free filter, two-level chunked scan (exactly equal to the dense operator)."""
    N, T = z.shape
    C = min(C, T)
    n = -(-T // C)
    if n * C != T:  # right-pad with zeros: causal, so the first T outputs are unchanged
        z = torch.cat([z, z.new_zeros(N, n * C - T)], dim=1)
    WbT, carry, GT, Ah = _scan_operators(n, C, Q, V, P0, z.device, z.dtype)
    zk = z.view(N, n, C).transpose(0, 1)                                    # (n, N, C)
    local = torch.bmm(zk, WbT).transpose(0, 1)                              # (N, n, C), carry-in 0
    h = local[:, :, -1] @ GT                                                # state entering chunk k
    if x0 != 0.0:
        h = h + x0 * Ah
    out = local + h.unsqueeze(-1) * carry                                   # add carried-in state
    return out.reshape(N, n * C)[:, :T]


# ----------------------------------------------------------------------------------------------
# Options (validated once per distinct value set) and the public entry point
# ----------------------------------------------------------------------------------------------


class KalmanOptions(NamedTuple):
    """The validated options of :func:`kalman_filter_log_ratio` (Q, V, P0, x0 as floats)."""

    Q: float
    V: float
    P0: float
    x0: float
    domain: str
    grad: str
    method: str
    chunk_size: int
    clamp: float | None


@memoize
def kalman_options(*, Q: float = 1e-6, V: float = 1.0, P0: float = 1.0, x0: float = 0.0,
                   domain: str = "log", grad: str = "through_filter", method: str = "auto",
                   chunk_size: int = 64, clamp: float | None = 20.0) -> KalmanOptions:
    """Validate the filter options (see :func:`kalman_filter_log_ratio` for their meaning and
    defaults) once per distinct set of values; ``ValueError`` names the bad option."""
    check_number("Q", Q, 0.0)
    check_number("V", V, 0.0, low_open=True)
    check_number("P0", P0, 0.0)
    check_number("x0", x0)
    check_choice("domain", domain, DOMAINS)
    check_choice("grad", grad, GRADS)
    check_choice("method", method, METHODS)
    check_int("chunk_size", chunk_size, 1)
    check_number("clamp", clamp, 0.0, low_open=True, none_ok=True)
    return KalmanOptions(float(Q), float(V), float(P0), float(x0), domain, grad, method,
                         chunk_size, clamp)


def kalman_filter_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, *, Q: float = 1e-6,
                            V: float = 1.0, P0: float = 1.0, x0: float = 0.0,
                            domain: str = "log", grad: str = "through_filter",
                            method: str = "auto", chunk_size: int = 64,
                            clamp: float | None = 20.0) -> torch.Tensor:
    """KPO filtered log-ratio log r̃_{i,t} = x̂_{i,t} (arXiv 2602.10609; spec §4.2–§4.4).

    Per row i, over the observed tokens (``mask != 0``) in order, with z_t = clamp(δ_t, ±clamp)::

        p_t = P_{t-1} + Q;   K_t = p_t/(p_t + V);   P_t = (1 − K_t) p_t
        x̂_t = (1 − K_t) x̂_{t-1} + K_t z_t

    starting from (x̂_0, P_0) = (x0, P0) in every row (the filter is reset per sequence). A masked
    token does not update the filter: its output is the held state x̂ after the observed tokens
    before it (x0 before the first one), and P does not advance (no predict step; spec §4.4).
    NaN/inf at masked positions never reach the arithmetic (``torch.where`` before any op), so they
    change neither the output nor the gradient; masked positions get zero gradient.

    Args:
        log_ratio: (N, T) per-token log importance ratios δ = logp − old_logp (any float dtype).
        mask: (N, T) bool or float response mask; nonzero = observed (carries loss).
        Q: process noise (≥ 0). Default 1e-6 [SECONDARY: EMA-KPO/IS-KPO abstracts].
        V: measurement noise (> 0). Default 1.0 [SECONDARY]. K → 1 (V → 0 or Q → ∞) gives the raw
            token ratio (token-level PPO/GRPO).
        P0: prior variance (≥ 0). Default 1.0 = V [chosen, provisional; spec §4.2]: K_t ≈ 1/(t+1),
            a causal running mean, then a ~1000-token EMA (K_∞ ≈ √(Q/V)). Q = 0 with P0 → ∞ gives
            the prefix mean of δ, i.e. GSPO's length-normalised log s_i at the last token.
        x0: prior log-ratio x̂_0. Default 0.0 (ratio 1, the on-policy prior) [chosen; spec §4.2].
            With ``domain="ratio"`` the state starts at exp(x0).
        domain: "log" (default, [chosen]; spec §10.1 open question): filter δ, return x̂.
            "ratio": filter r = exp(z) from the prior exp(x0) and return
            log(max(r̂, tiny)) (``tiny`` = smallest normal of the compute dtype). r̂ is a convex
            combination of positive ratios, so the clamp only guards float underflow.
        grad: "through_filter" (default, [chosen, provisional]; spec §4.3 (A)): autograd through the
            linear filter, ∂x̂_t/∂δ_s = W_ts (front-loaded positional weighting, see the spec).
            "straight_through" (alias "token_straight_through", spec §4.3 (B), GSPO-token style):
            value x̂ but gradient identity, ``out = sg(x̂) + z − sg(z)`` with z = clamp(δ) on
            observed tokens and 0 elsewhere, so exp(out) = sg(r̃)·e^{ℓ−sg(ℓ)} and
            ∂out_t/∂δ_s = 1[s = t]·m_t (0 where |δ_t| > clamp, as for the filtered path).
        method: "auto" (default), "operator" (dense (T, T) matmul) or "scan" (chunked); equal up to
            float rounding. See the module docstring.
        chunk_size: C, tokens per chunk for ``method="scan"`` (≥ 1). Default 64 (spec: 64–256;
            fastest on CPU in benchmarks/losses.py; a GPU may prefer 256).
        clamp: observations are clamped to [−clamp, clamp] before filtering (default 20.0, the
            library's log-ratio clamp, spec §4.4); ``None`` disables it.

    Returns:
        (N, T) filtered log-ratio. Computed and returned in float32 for float32/float16/bfloat16
        inputs and in float64 for float64 inputs (bf16 noise ~1e-2 exceeds many K_t z_t increments,
        spec §4.4, so the result is not rounded back to bf16); gradients flow back to the input
        dtype.
    """
    _check_inputs(log_ratio, mask)
    Q, V, P0, x0, domain, grad, method, chunk_size, clamp = kalman_options(
        Q=Q, V=V, P0=P0, x0=x0, domain=domain, grad=grad, method=method, chunk_size=chunk_size,
        clamp=clamp)

    cdtype = torch.float64 if log_ratio.dtype == torch.float64 else torch.float32
    N, T = log_ratio.shape
    m = mask != 0
    delta = torch.where(m, log_ratio.to(cdtype), 0.0)       # masked NaN/inf never enter arithmetic
    if N == 0 or T == 0:
        return delta
    z = delta.clamp(-clamp, clamp) if clamp is not None else delta
    z_log = z
    if domain == "ratio":
        if x0 > math.log(torch.finfo(cdtype).max):
            raise ValueError(f"x0: exp(x0) must be finite for domain='ratio', got {x0!r}")
        z, x0 = torch.exp(z), math.exp(x0)                   # filter r = e^z from prior e^{x0}

    # Compact each row's observed tokens to the left (hold semantics: token t uses K[c_t]).
    count = torch.cumsum(m, dim=1)                           # c_{i,t} = Σ_{u≤t} m_{i,u}
    dest = torch.where(m, count - 1, T)                      # masked tokens go to a dummy column
    z_packed = z.new_zeros(N, T + 1).scatter(1, dest, z)[:, :T]

    use_operator = method == "operator" or (method == "auto" and T <= AUTO_OPERATOR_MAX_T)
    if use_operator:
        x_packed = _filter_dense(z_packed, x0, Q, V, P0)
    else:
        x_packed = _filter_scan(z_packed, x0, Q, V, P0, chunk_size)

    # x̂ after c observed tokens, c = 0..T (c = 0: the prior), read back at every position.
    x_all = torch.cat([x_packed.new_full((N, 1), x0), x_packed], dim=1)
    x_hat = x_all.gather(1, count)
    if domain == "ratio":
        x_hat = torch.log(x_hat.clamp_min(torch.finfo(cdtype).tiny))

    if grad == "through_filter":
        return x_hat
    return x_hat.detach() + (z_log - z_log.detach())        # value x̂, gradient identity on m


# ----------------------------------------------------------------------------------------------
# Validation (errors name the option and the accepted values)
# ----------------------------------------------------------------------------------------------


def _check_inputs(log_ratio: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(log_ratio, torch.Tensor) or not log_ratio.is_floating_point():
        raise ValueError("log_ratio: must be a floating-point torch.Tensor of shape (N, T)")
    if log_ratio.dim() != 2:
        raise ValueError(f"log_ratio: must have shape (N, T), got {tuple(log_ratio.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != log_ratio.shape:
        raise ValueError(f"mask: must be a tensor of shape {tuple(log_ratio.shape)}, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)}")
    if mask.device != log_ratio.device:
        raise ValueError(f"mask: must be on {log_ratio.device}, got {mask.device}")
