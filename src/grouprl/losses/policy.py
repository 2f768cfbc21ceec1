"""Policy-gradient surrogates (spec-losses §1, §3, §4.3, §8, §9.1): shapers, registry, entry point.

A loss is a composition of pure pieces on (N, T) tensors with an explicit mask:

    ratio builder (ratios.py / kpo.py) → shaper (this file) → × rollout IS weight → aggregate

``policy_loss(name, logp, old_logp, advantages, mask, agg, **options)`` runs the pipeline and
returns ``(loss, metrics)``. All losses are minimised; ``Â`` is a constant (detached), as are
``ℓ^old`` and ``ℓ^roll``. Ratios are formed in fp32 (fp64 kept) from a log-ratio clamped to ±20
(native and verl; TRL does not clamp). Masked positions are replaced by 0 with ``torch.where``
before any arithmetic, so NaN/inf padding never reaches a value or a gradient.

Options are validated once per distinct ``(name, compat, agg, options)`` and the result cached,
so the trainer's call on every micro-batch does no option checking (only cheap shape checks).

Registry (``available_policy_losses()``):

=============  ===================================================  =====================
name           per-token loss                                       default aggregation
=============  ===================================================  =====================
ppo            ``max(−rÂ, −clip(r, 1−ε_lo, 1+ε_hi)Â)`` [+ dual clip]  token-mean
dual_clip      ppo with ``dual_clip=3.0`` (verl ``vanilla``)        token-mean
vanilla        alias of dual_clip (verl's name)                     token-mean
two_sided      ppo with ``r̃ = min(r, δ)`` in the unclipped branch    token-mean
gspo           ppo on ``s_i = exp(mean_t δ)``, ε 3e-4/4e-4          seq-mean-token-mean
gspo_token     ppo on ``sg(s_i)·π/sg(π)``                           seq-mean-token-mean
luspo          gspo values                                          seq-mean-token-sum
cispo          ``−sg(clip(r))·Â·ℓ^θ``                               token-mean
sapo           ``−(4/τ)σ(τ(r−1))·Â``                                seq-mean-token-mean
kpo            ppo (or ``−r̃Â``) on the Kalman-filtered ratio r̃       token-mean
kl_cov         ``−rÂ`` + ``k·|δ|`` on the top-covariance tokens       seq-mean-token-mean
=============  ===================================================  =====================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from grouprl.validation import check_bool, check_choice, check_number, check_options, memoize

from .aggregate import AGG_MODES, COMPATS, aggregate, bool_mask
from .kpo import kalman_filter_log_ratio, kalman_options
from .ratios import (
    LOG_RATIO_CLAMP,
    compute_dtype,
    masked,
    rollout_is_weights,
    sequence_log_ratio,
    straight_through_log_ratio,
    token_log_ratio,
)

__all__ = ["policy_loss", "available_policy_losses", "ppo_clip", "cispo_surrogate",
           "sapo_surrogate", "kl_cov_mask", "METRIC_NAMES"]

_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<default>"})()
GSPO_CLAMP_VERL = 10.0      # verl ``compute_policy_loss_gspo`` clamps log s_{i,t} at max 10 (§3.2)
GSPO_EPS_LIMIT = 1e-2       # native refuses a GSPO ε this large (a token-level ε by mistake, §9.2)
CISPO_CAP_NATIVE = 5.0      # ScaleRL absolute cap ε_max = 5 (TRL docs, §3.3)


# ----------------------------------------------------------------------------------------------
# Shapers: per-token loss from a ratio and the advantage
# ----------------------------------------------------------------------------------------------


def ppo_clip(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float,
             dual_clip: float | None = None, delta: float | None = None) -> torch.Tensor:
    """PPO clipped surrogate with clip-higher, dual clip and two-sided clip (§1.1–1.3).

    ``L = max(−r̃·Â, −clip(r, 1−ε_lo, 1+ε_hi)·Â)`` with ``r̃ = min(r, δ)`` for two-sided clipping
    (INTELLECT-2, TRL ``delta``) and ``r̃ = r`` otherwise (Schulman et al. 2017, arXiv 1707.06347
    Eq. 7; DAPO clip-higher ε_hi = 0.28, arXiv 2503.14476). Dual clip (Ye et al. 2019, arXiv
    1912.09729; verl ``clip_ratio_c``): ``L ← min(L, −c·Â)`` where ``Â < 0``.
    """
    unclipped = -adv * (ratio if delta is None else ratio.clamp(max=delta))   # −r̃Â
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)             # −clip(r)Â
    loss = torch.maximum(unclipped, clipped)                                  # max(−r̃Â, −clip(r)Â)
    if dual_clip is None:
        return loss
    return torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)  # min(L, −cÂ) if Â<0


def cispo_surrogate(ratio: torch.Tensor, adv: torch.Tensor, logp: torch.Tensor,
                    lower: float | None, upper: float) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv 2506.13585 §3.1): ``L = −sg(clip(r, lower, upper))·Â·ℓ^θ`` (§3.3).

    Gradient ``−r̂Â∇ℓ^θ``: no token ever loses its gradient, the IS weight is bounded instead.
    """
    weight = ratio.clamp(lower, upper).detach()                               # r̂ = clip(r)
    return -weight * adv * logp                                               # −sg(r̂)·Â·ℓ^θ


def sapo_surrogate(ratio: torch.Tensor, adv: torch.Tensor, tau_pos: float,
                   tau_neg: float) -> torch.Tensor:
    """SAPO soft gate (arXiv 2511.20347; spec §3.4): ``L = −(4/τ)·σ(τ(r−1))·Â``.

    ``τ = τ_pos`` where ``Â > 0`` and ``τ_neg`` otherwise. ``d/dr (4/τ)σ(τ(r−1)) = 4σ(1−σ)``,
    which is 1 at ``r = 1``; as ``τ → 0`` the gate tends to ``2/τ + (r − 1)``.
    """
    tau = torch.where(adv > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))  # τ_{i,t}
    return -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * adv           # −f_τ(r)·Â


@torch.no_grad()
def kl_cov_mask(adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor,
                ratio: float) -> torch.Tensor:
    """KL-Cov token selection (Cui et al. 2025, arXiv 2505.22617; verl ``kl_cov``): bool (N, T).

    Ranks the valid tokens of the call by the detached covariance term
    ``(Â_{i,t} − mean Â)·(ℓ^θ_{i,t} − mean ℓ^θ)`` (both means over the valid tokens) and marks the
    ``k = max(int(n_valid·ratio), 1)`` largest; nothing when ``ratio == 0`` or no token is valid.
    Every valid token is eligible (no bounds, unlike Clip-Cov). Ties are broken by
    ``torch.topk`` (unspecified order, as in verl).
    """
    m = bool_mask(mask)
    n_valid = int(m.sum())
    selected = torch.zeros_like(m)
    if ratio == 0 or n_valid == 0:
        return selected
    k = max(int(n_valid * ratio), 1)                                          # verl k_percent_nums
    a = torch.where(m, adv, 0.0)
    lp = torch.where(m, logp.to(a.dtype), 0.0)
    cov = (a - a.sum() / n_valid) * (lp - lp.sum() / n_valid)               # (Â − Ā)(ℓ − ℓ̄)
    cov = torch.where(m, cov, -math.inf).flatten()
    return selected.flatten().index_fill_(0, torch.topk(cov, k).indices, True).view_as(m)


# ----------------------------------------------------------------------------------------------
# Registry entries: each maps the prepared batch and its options to a per-token loss
# ----------------------------------------------------------------------------------------------


class _Batch(NamedTuple):
    raw_logp: torch.Tensor  # ℓ^θ as given (padding may hold NaN): use masked_logp()
    delta: torch.Tensor     # δ = ℓ^θ − ℓ^old, masked, clamped per compat
    adv: torch.Tensor       # Â broadcast to (N, T), masked, detached
    mask: torch.Tensor      # bool
    compat: str

    def masked_logp(self) -> torch.Tensor:
        """ℓ^θ in the compute dtype, 0 on padding, with gradient."""
        return masked(self.raw_logp, self.mask, self.delta.dtype)


class _Shaped(NamedTuple):
    loss: torch.Tensor      # (N, T) per-token loss
    ratio: torch.Tensor     # (N, T) the ratio value the shaper used (metrics)
    low: torch.Tensor       # bool: clipped at the lower bound
    high: torch.Tensor      # bool: clipped at the upper bound
    dual: torch.Tensor      # bool: dual / two-sided cap active
    extra: dict[str, torch.Tensor]


def _ppo_shaped(ratio: torch.Tensor, adv: torch.Tensor, o: Mapping[str, Any],
                delta: float | None = None) -> _Shaped:
    lo, hi, c = o["clip_low"], o["clip_high"], o.get("dual_clip")
    loss = ppo_clip(ratio, adv, lo, hi, c, delta)
    cap = c if c is not None else delta
    low = (ratio < 1.0 - lo) & (adv < 0)                       # TRL low_clip
    high = (ratio > 1.0 + hi) & (adv > 0)                      # TRL high_clip
    if cap is None:
        dual = torch.zeros_like(low)
    else:                                                      # verl pg_clipfrac_lower
        dual = (adv < 0) & (torch.maximum(ratio, ratio.clamp(1.0 - lo, 1.0 + hi)) > cap)
    return _Shaped(loss, ratio, low, high, dual, {})


def _ppo(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """PPO / clip-higher / dual clip on the token ratio ``r = exp(δ)`` (§1.1, §1.2)."""
    return _ppo_shaped(torch.exp(b.delta), b.adv, o)


def _two_sided(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """Two-sided clip (INTELLECT-2 arXiv 2505.07291 §4.1, TRL ``delta``; §1.3).

    ``L = −min(min(r, δ)·Â, clip(r)·Â)``; equals dual clip with ``c = δ`` when ``δ > 1+ε_hi``.
    """
    return _ppo_shaped(torch.exp(b.delta), b.adv, o, delta=o["delta"])


def _gspo_log_ratio(b: _Batch) -> torch.Tensor:
    log_s = sequence_log_ratio(b.delta, b.mask)                # log s_i = (1/L_i) Σ_t m δ
    return log_s.clamp(max=GSPO_CLAMP_VERL) if b.compat == "verl" else log_s


def _gspo(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071 §4.1; spec §3.1), sequence-level ratio.

    ``s_i = exp((1/L_i) Σ_t m δ)``, ``L_{i,t} = −min(s_i Â, clip(s_i, 1−ε_lo, 1+ε_hi) Â)`` on every
    token of row i (per-token ``Â_{i,t}`` is accepted and broadcast against ``s_i``). Paper
    ε_lo = 3e-4, ε_hi = 4e-4 (§5.1). Under compat="verl" ``log s_i ≤ 10`` as verl's ``gspo``.
    """
    s = torch.exp(_gspo_log_ratio(b))[:, None].expand_as(b.delta)            # s_i
    return _ppo_shaped(s, b.adv, o)


def _gspo_token(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """GSPO-token (arXiv 2507.18071 §4.2; verl ``gspo``; spec §3.2).

    ``log s_{i,t} = ℓ^θ_{i,t} − sg(ℓ^θ_{i,t}) + sg(log s_i)``: value ``s_i``, gradient
    ``s_i ∇ℓ^θ_{i,t}``; allows per-token ``Â_{i,t}``. Under compat="verl" ``log s_{i,t} ≤ 10``.
    """
    log_st = straight_through_log_ratio(b.raw_logp, sequence_log_ratio(b.delta, b.mask), b.mask)
    if b.compat == "verl":
        log_st = log_st.clamp(max=GSPO_CLAMP_VERL)
    return _ppo_shaped(torch.exp(log_st), b.adv, o)


def _cispo(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """CISPO (arXiv 2506.13585 §3.1; spec §3.3): ``−sg(clip(r, lower, upper))·Â·ℓ^θ``.

    Bounds by compat: native ``[1−clip_low or none, cap=5.0]`` (or ``1+clip_high``); verl
    ``[1−clip_low, 1+clip_high]`` relative (0.2/0.2, verl's example uses clip_low=10); TRL
    ``min(r, clip_high)`` with ``clip_high`` an absolute cap (TRL ``epsilon_high``). A cap ≤ 1 is
    refused.
    """
    r = torch.exp(b.delta)
    lower, upper = o["_lower"], o["_upper"]
    loss = cispo_surrogate(r, b.adv, b.masked_logp(), lower, upper)
    low = r < lower if lower is not None else torch.zeros_like(b.mask)
    return _Shaped(loss, r, low, r > upper, torch.zeros_like(b.mask), {})


def _sapo(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """SAPO (spec §3.4): ``−(4/τ)σ(τ(r−1))Â``, τ_pos = 1.0, τ_neg = 1.05 (verl, TRL defaults).

    No hard clip, so the clip fractions are 0; ``sapo_gate`` reports the mean gradient scale
    ``4σ(1−σ)`` (1 on-policy).
    """
    r = torch.exp(b.delta)
    loss = sapo_surrogate(r, b.adv, o["tau_pos"], o["tau_neg"])
    tau = torch.where(b.adv > 0, r.new_tensor(o["tau_pos"]), r.new_tensor(o["tau_neg"]))
    sig = torch.sigmoid(tau * (r - 1.0))
    none = torch.zeros_like(b.mask)
    return _Shaped(loss, r, none, none, none, {"sapo_gate": 4.0 * sig * (1.0 - sig)})


def _kpo(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """KPO (He et al. 2026, arXiv 2602.10609; spec §4.3) on the Kalman-filtered ratio.

    ``r̃_{i,t} = exp(x̂_{i,t})`` with ``x̂`` the causal Kalman filter of ``z = δ`` (clamped) from
    :func:`grouprl.losses.kpo.kalman_filter_log_ratio`. KPO-clipped (``clip=True``, default, the
    variant reported best): ``−min(r̃Â, clip(r̃)Â)``; KPO: ``−r̃Â``. The paper's ε and
    aggregation are unknown (§4.3, §10): defaults are the library's GRPO settings, ε 0.2/0.28 and
    token-mean, as the spec recommends. Filter defaults Q=1e-6, V=1 (paper, via secondary
    sources); x0=0, P0=1, domain="log" and grad="through_filter" are the spec's provisional
    choices.
    """
    x_hat = kalman_filter_log_ratio(b.delta, b.mask.to(b.delta.dtype), Q=o["Q"], V=o["V"],
                                    P0=o["P0"], x0=o["x0"], domain=o["domain"], grad=o["grad"],
                                    method=o["method"], chunk_size=o["chunk_size"],
                                    clamp=o["_clamp"])
    x_hat = torch.where(b.mask, x_hat.to(b.delta.dtype), 0.0)
    if o["_clamp"] is not None:
        x_hat = x_hat.clamp(-o["_clamp"], o["_clamp"])
    r = torch.exp(x_hat)                                                      # r̃ = e^x̂
    if o["clip"]:
        return _ppo_shaped(r, b.adv, o)
    none = torch.zeros_like(b.mask)
    return _Shaped(-r * b.adv, r, none, none, none, {})                       # −r̃Â


def _kl_cov(b: _Batch, o: Mapping[str, Any]) -> _Shaped:
    """KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv
    2505.22617; verl ``compute_policy_loss_kl_cov``; used by DOT, spec-rewards §A7.2).

    ``L_{i,t} = −r·Â`` on every token (vanilla, unclipped) and ``−r·Â + k·|ℓ^θ − ℓ^old|`` on the
    tokens picked by :func:`kl_cov_mask` (top ``kl_cov_ratio`` of the valid tokens by
    covariance), ``k = ppo_kl_coef``. The ranking is over the tokens *of this call*: verl calls the
    loss once per micro-batch, so the selection (and ``n_valid``) is per micro-batch there too and
    depends on the micro-batch size. ``|δ|`` has zero gradient at δ = 0 (on-policy step).
    """
    r = torch.exp(b.delta)
    loss = -b.adv * r                                                         # −Â·r
    picked = kl_cov_mask(b.adv, b.masked_logp().detach(), b.mask, o["kl_cov_ratio"])
    loss = torch.where(picked, loss + o["ppo_kl_coef"] * b.delta.abs(), loss)  # + k·|δ|
    none = torch.zeros_like(b.mask)
    return _Shaped(loss, r, none, none, none, {"kl_cov_frac": picked})


# ----------------------------------------------------------------------------------------------
# Option validation
# ----------------------------------------------------------------------------------------------


def _check_clip(o: dict[str, Any], name: str, compat: str) -> None:
    check_number("clip_low", o["clip_low"], 0.0)
    check_number("clip_high", o["clip_high"], 0.0)
    if "dual_clip" in o:
        check_number("dual_clip", o["dual_clip"], 1.0, low_open=True, none_ok=True)
    if name in ("gspo", "gspo_token", "luspo") and compat == "native":
        for key in ("clip_low", "clip_high"):
            if o[key] >= GSPO_EPS_LIMIT:
                raise ValueError(
                    f"{key}: {name} clips a sequence-level ratio; the paper uses 3e-4/4e-4 and "
                    f"a value >= {GSPO_EPS_LIMIT} (got {o[key]!r}) is almost certainly a "
                    f"token-level ε. Pass compat='verl' or 'trl' to skip this check")


def _check_two_sided(o: dict[str, Any], name: str, compat: str) -> None:
    _check_clip(o, name, compat)
    check_number("delta", o["delta"], 1.0, low_open=True)


def _check_cispo(o: dict[str, Any], name: str, compat: str) -> None:
    lo, hi, cap = o["clip_low"], o["clip_high"], o["cap"]
    given = {k for k in ("clip_low", "clip_high", "cap") if o[k] is not _UNSET}
    for key in given:
        check_number(key, o[key], 0.0)
    if compat == "verl":
        if "cap" in given:
            raise ValueError("cap: not read under compat='verl', whose CISPO bounds are "
                             "1-clip_low and 1+clip_high; accepted options are clip_low, "
                             "clip_high")
        lower = 1.0 - (0.2 if lo is _UNSET else lo)
        upper = 1.0 + (0.2 if hi is _UNSET else hi)
    elif compat == "trl":
        if "clip_low" in given:
            raise ValueError("clip_low: TRL's CISPO has no lower bound; accepted options under "
                             "compat='trl' are clip_high (absolute cap, TRL epsilon_high) or cap")
        if given >= {"clip_high", "cap"}:
            raise ValueError("cap: give either clip_high or cap under compat='trl', not both")
        lower = None
        upper = hi if hi is not _UNSET else (CISPO_CAP_NATIVE if cap is _UNSET else cap)
    else:
        if given >= {"clip_high", "cap"}:
            raise ValueError("cap: give either cap (absolute) or clip_high (relative, cap = "
                             "1+clip_high), not both")
        lower = None if lo is _UNSET else 1.0 - lo
        upper = 1.0 + hi if hi is not _UNSET else (CISPO_CAP_NATIVE if cap is _UNSET else cap)
    if upper <= 1.0:
        which = "clip_high" if "clip_high" in given or compat == "verl" else "cap"
        raise ValueError(f"{which}: the CISPO upper bound on the IS weight must be > 1, got "
                         f"{upper!r} (an absolute cap <= 1 scales every gradient down; TRL's "
                         f"epsilon_high falls back to 0.2 when unset)")
    o["_lower"], o["_upper"] = lower, upper


def _check_sapo(o: dict[str, Any], name: str, compat: str) -> None:
    check_number("tau_pos", o["tau_pos"], 0.0, low_open=True)
    check_number("tau_neg", o["tau_neg"], 0.0, low_open=True)


def _check_kpo(o: dict[str, Any], name: str, compat: str) -> None:
    _check_clip(o, name, compat)
    kalman_options(Q=o["Q"], V=o["V"], P0=o["P0"], x0=o["x0"], domain=o["domain"],
                   grad=o["grad"], method=o["method"], chunk_size=o["chunk_size"],
                   clamp=o["_clamp"])
    check_bool("clip", o["clip"])


def _check_kl_cov(o: dict[str, Any], name: str, compat: str) -> None:
    check_number("kl_cov_ratio", o["kl_cov_ratio"], 0.0, 1.0,
                 note="fraction of the valid tokens; 0.002 = 0.2 %")
    check_number("ppo_kl_coef", o["ppo_kl_coef"], 0.0)


@dataclass(frozen=True)
class _Entry:
    shaper: Callable[[_Batch, Mapping[str, Any]], _Shaped]
    check: Callable[[dict[str, Any], str, str], None]
    agg: str
    defaults: dict[str, Any] = field(default_factory=dict)


_PPO = {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
_GSPO = {"clip_low": 3e-4, "clip_high": 4e-4}
_REGISTRY: dict[str, _Entry] = {
    "ppo": _Entry(_ppo, _check_clip, "token-mean", _PPO),
    "dual_clip": _Entry(_ppo, _check_clip, "token-mean", {**_PPO, "dual_clip": 3.0}),
    "vanilla": _Entry(_ppo, _check_clip, "token-mean", {**_PPO, "dual_clip": 3.0}),
    "two_sided": _Entry(_two_sided, _check_two_sided, "token-mean",
                        {"clip_low": 0.2, "clip_high": 0.2, "delta": 4.0}),
    "gspo": _Entry(_gspo, _check_clip, "seq-mean-token-mean", _GSPO),
    "gspo_token": _Entry(_gspo_token, _check_clip, "seq-mean-token-mean", _GSPO),
    "luspo": _Entry(_gspo, _check_clip, "seq-mean-token-sum", _GSPO),
    "cispo": _Entry(_cispo, _check_cispo, "token-mean",
                    {"clip_low": _UNSET, "clip_high": _UNSET, "cap": _UNSET}),
    "sapo": _Entry(_sapo, _check_sapo, "seq-mean-token-mean", {"tau_pos": 1.0, "tau_neg": 1.05}),
    "kpo": _Entry(_kpo, _check_kpo, "token-mean",
                  {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": None, "clip": True,
                   "Q": 1e-6, "V": 1.0, "P0": 1.0, "x0": 0.0, "domain": "log",
                   "grad": "through_filter", "method": "auto", "chunk_size": 64}),
    "kl_cov": _Entry(_kl_cov, _check_kl_cov, "seq-mean-token-mean",
                     {"kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0}),
}
_COMMON = {"rollout_is": "token", "rollout_is_mode": "truncate", "rollout_is_threshold": 2.0,
           "rollout_is_threshold_lower": None, "rollout_is_batch_normalize": False,
           "log_ratio_clamp": _UNSET}

METRIC_NAMES = ("ratio_mean", "ratio_min", "ratio_max", "clipfrac", "clipfrac_low",
                "clipfrac_high", "clipfrac_dual", "approx_kl_k1", "approx_kl_k3", "n_tokens",
                "n_seqs")


def available_policy_losses() -> tuple[str, ...]:
    """Names accepted by :func:`policy_loss`."""
    return tuple(_REGISTRY)


def policy_loss_options(name: str, compat: str = "native", **options: Any) -> dict[str, Any]:
    """Validate the options of loss ``name`` and fill in its defaults, without computing it
    (a trainer checks its config with this before any work starts). Returns a new dict."""
    return dict(_prepare(name, compat, None, tuple(options.items())).options)


class _Prepared(NamedTuple):
    entry: _Entry
    agg: str                    # the aggregation mode (the loss's default when None was given)
    options: Mapping[str, Any]  # defaults filled in, derived bounds added; read-only


@memoize
def _prepare(name: str, compat: str, agg: str | None,
             options: tuple[tuple[str, Any], ...]) -> _Prepared:
    """Validate a policy loss's name, compat, aggregation and options once per distinct set of
    values (cached), so :func:`policy_loss` does no option checking on every micro-batch."""
    check_choice("name", name, tuple(_REGISTRY))
    check_choice("compat", compat, COMPATS)
    entry = _REGISTRY[name]
    agg = entry.agg if agg is None else check_choice("agg", agg, AGG_MODES)
    return _Prepared(entry, agg, MappingProxyType(_resolve_options(name, compat, dict(options))))


def _resolve_options(name: str, compat: str, options: dict[str, Any]) -> dict[str, Any]:
    entry = _REGISTRY[name]
    accepted = {**entry.defaults, **_COMMON}
    check_options(f"policy loss {name!r}", options, sorted(accepted))
    o = {**accepted, **options}
    if o["log_ratio_clamp"] is _UNSET:
        o["log_ratio_clamp"] = None if compat == "trl" else LOG_RATIO_CLAMP
    check_number("log_ratio_clamp", o["log_ratio_clamp"], 0.0, low_open=True, none_ok=True)
    o["_clamp"] = o["log_ratio_clamp"]
    entry.check(o, name, compat)
    check_choice("rollout_is", o["rollout_is"], ("token", "sequence", None))
    check_choice("rollout_is_mode", o["rollout_is_mode"], ("truncate", "mask"))
    check_bool("rollout_is_batch_normalize", o["rollout_is_batch_normalize"])
    check_number("rollout_is_threshold", o["rollout_is_threshold"], 0.0, low_open=True)
    check_number("rollout_is_threshold_lower", o["rollout_is_threshold_lower"], 0.0,
                 o["rollout_is_threshold"], low_open=True, high_open=True, none_ok=True)
    return o


def _check_inputs(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, rollout_logp: torch.Tensor | None) -> None:
    named = {"logp": logp, "old_logp": old_logp, "advantages": advantages, "mask": mask,
             "rollout_logp": rollout_logp}
    for key, value in named.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: must be a torch.Tensor, got {type(value).__name__}")
    if logp.dim() != 2 or not logp.is_floating_point():
        raise ValueError(f"logp: must be a floating (N, T) tensor, got dtype {logp.dtype} and "
                         f"shape {tuple(logp.shape)}")
    for key in ("old_logp", "mask", "rollout_logp"):
        value = named[key]
        if value is not None and value.shape != logp.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} must equal logp's "
                             f"{tuple(logp.shape)}")
        if value is not None and key != "mask" and not value.is_floating_point():
            raise ValueError(f"{key}: must be a floating tensor, got {value.dtype}")
    if advantages.shape not in (logp.shape[:1], logp.shape) or \
            not advantages.is_floating_point():
        raise ValueError(f"advantages: must be a floating (N,) or (N, T) tensor matching logp "
                         f"{tuple(logp.shape)}, got {advantages.dtype} "
                         f"{tuple(advantages.shape)}")


@torch.no_grad()
def _metrics(b: _Batch, s: _Shaped, rollout: Any) -> dict[str, float]:
    m = b.mask
    dt = b.delta.dtype
    n_tok = m.sum().to(dt)
    denom = n_tok.clamp(min=1)

    def mean(x: torch.Tensor, zero_padded: bool = False) -> torch.Tensor:
        """Masked token mean; ``zero_padded``: x is already 0 on padding (skip the where)."""
        if x.dtype == torch.bool:                              # a fraction: count, no cast
            return (x & m).sum().to(dt) / denom
        return (x if zero_padded else torch.where(m, x, 0.0)).sum().to(dt) / denom

    ratio = s.ratio.detach().to(dt)
    delta = b.delta.detach()
    empty = ratio.numel() == 0
    values = {
        "ratio_mean": mean(ratio),
        "ratio_min": n_tok if empty else torch.where(m, ratio, math.inf).amin(),
        "ratio_max": n_tok if empty else torch.where(m, ratio, -math.inf).amax(),
        "clipfrac": mean(s.low | s.high),                      # verl pg_clipfrac
        "clipfrac_low": mean(s.low),
        "clipfrac_high": mean(s.high),
        "clipfrac_dual": mean(s.dual),
        "approx_kl_k1": -mean(delta, True),                    # KL(old‖θ) ≈ E[−δ]  (verl ppo_kl)
        "approx_kl_k3": mean(torch.expm1(delta) - delta, True),  # E[r − 1 − δ]; δ = 0 on padding
        "n_tokens": n_tok,
        "n_seqs": m.any(-1).sum().to(dt),
    }
    values.update({k: mean(v) for k, v in s.extra.items()})
    if rollout is not None:
        log_rho = rollout.log_rho
        values["rollout_is_weight_mean"] = mean(rollout.weight, True)
        values["rollout_is_frac_modified"] = mean(rollout.modified)
        values["mismatch_kl_k1"] = -mean(log_rho, True)        # KL(roll‖old) ≈ E[−log ρ]
        values["mismatch_kl_k3"] = mean(torch.expm1(log_rho) - log_rho, True)
    out = dict(zip(values, torch.stack(list(values.values())).tolist()))
    if out["n_tokens"] == 0:
        out.update(ratio_mean=1.0, ratio_min=1.0, ratio_max=1.0)
    return out


def policy_loss(name: str, logp: torch.Tensor, old_logp: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor, agg: str | None = None, *,
                rollout_logp: torch.Tensor | None = None,
                global_tokens: int | float | torch.Tensor | None = None,
                global_seqs: int | float | torch.Tensor | None = None,
                max_len: int | None = None, compat: str = "native",
                **options: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy-gradient loss ``Agg(ρ̂ ⊙ L(r, Â), m)`` and its metrics (spec-losses §1–§4, §8).

    Args:
        name: a loss from :func:`available_policy_losses` (module table).
        logp: (N, T) ``ℓ^θ``, with gradient; any float dtype (bf16 is upcast to fp32).
        old_logp: (N, T) ``ℓ^old`` (detached). Pass ``logp.detach()`` on the on-policy step.
        advantages: (N,) per sequence (broadcast over tokens) or (N, T) per token; detached.
        mask: (N, T) bool or 0/1; masked entries of every input may hold NaN/inf.
        agg: aggregation mode (see :mod:`grouprl.losses.aggregate`); None = the loss's default
            from its paper/reference code (module table): token-mean for the token-level
            losses, seq-mean-token-mean for gspo/gspo_token/sapo (GSPO paper; verl forces it
            for sapo) and kl_cov (DOT, spec-rewards §A7.2), seq-mean-token-sum for luspo
            (LUSPO = GSPO × L_i; pass "token-mean" for the length-mean normaliser, open
            question §10.5).
        rollout_logp: (N, T) inference-engine ``ℓ^roll``; when given, the per-token loss is
            multiplied by the rollout-correction weight ``ρ̂`` of ``ρ = exp(ℓ^old − ℓ^roll)``
            (decoupled mode, §8) and mismatch metrics are reported.
        global_tokens, global_seqs, max_len: the mini-batch normalisers, passed to
            :func:`~grouprl.losses.aggregate.aggregate` (micro-batch invariance, §2.2).
        compat: "native" (default, safe), "verl" or "trl":

            * log-ratio clamp ±20 before exp (native, verl) / none (trl);
            * GSPO ``log s ≤ 10`` (verl);
            * empty rows excluded from B' (native, verl) / counted (trl);
            * Dr. GRPO ``seq-mean-token-sum-norm`` with 1/B (native, trl) / without (verl);
            * CISPO bounds: absolute cap 5.0 (native) / relative ``1±clip`` (verl) / absolute
              ``clip_high`` (trl);
            * GSPO ε ≥ 1e-2 refused (native only).

            Dual clip is never implied: verl's ``vanilla`` (c = 3) is the ``dual_clip`` name.

    Options (keyword, per loss; unknown names raise ``ValueError``):
        ppo, dual_clip, vanilla: ``clip_low=0.2``, ``clip_high=0.2`` (0.28 = DAPO clip-higher),
            ``dual_clip=None`` (or c > 1; 3.0 for dual_clip/vanilla, verl ``clip_ratio_c``).
        two_sided: ``clip_low=0.2``, ``clip_high=0.2``, ``delta=4.0`` (INTELLECT-2, > 1).
        gspo, gspo_token, luspo: ``clip_low=3e-4``, ``clip_high=4e-4`` (GSPO paper §5.1; the
            LUSPO ranges are unknown, GSPO's are used as the spec suggests).
        cispo: ``cap`` (absolute upper bound, native default 5.0 = ScaleRL), ``clip_low``
            (relative lower bound 1−clip_low, default none), ``clip_high`` (native/verl:
            upper = 1+clip_high; trl: absolute cap). A bound ≤ 1 raises.
        sapo: ``tau_pos=1.0``, ``tau_neg=1.05``.
        kpo: ``Q=1e-6``, ``V=1.0``, ``P0=1.0``, ``x0=0.0``, ``domain="log"``,
            ``grad="through_filter"`` | ``"straight_through"``, ``clip=True``,
            ``method="auto"``, ``chunk_size=64``, ``clip_low=0.2``, ``clip_high=0.28``,
            ``dual_clip=None``.
        kl_cov: ``kl_cov_ratio=0.002`` (fraction of the call's valid tokens that get the KL
            term, 0.2 % as in DOT, spec §A7.2; verl's fallback is 0.0002; 0 = vanilla ``−rÂ``),
            ``ppo_kl_coef=1.0``; default aggregation seq-mean-token-mean (DOT). For verl's
            unclamped ratio pass ``log_ratio_clamp=None``.
        all: ``rollout_is="token"`` | ``"sequence"`` | None (used only with ``rollout_logp``;
            None keeps the mismatch metrics without weighting), ``rollout_is_mode="truncate"``
            | ``"mask"``, ``rollout_is_threshold=2.0`` (verl; TRL uses 3.0),
            ``rollout_is_threshold_lower=None``, ``rollout_is_batch_normalize=False``,
            ``log_ratio_clamp`` (20.0, None under compat="trl").

    Returns:
        ``(loss, metrics)``: a 0-d fp32 (fp64 for fp64 input) tensor and a dict of floats:
        ``ratio_mean/min/max`` (masked token stats of the ratio the shaper used: r, s_i, r̃;
        1.0 when nothing is unmasked), ``clipfrac`` (tokens where the clipped branch is active,
        verl ``pg_clipfrac``; for cispo the tokens whose weight was clipped),
        ``clipfrac_low`` / ``clipfrac_high`` (TRL ``low_clip``: r < 1−ε_lo and Â < 0;
        ``high_clip``: r > 1+ε_hi and Â > 0; cispo: r below / above its bounds),
        ``clipfrac_dual`` (Â < 0 and the dual / two-sided cap active, verl
        ``pg_clipfrac_lower``), ``approx_kl_k1`` (mean −δ) and ``approx_kl_k3``
        (mean ``e^δ − 1 − δ``) of old vs new, ``n_tokens``, ``n_seqs``; ``sapo_gate`` for
        sapo; ``kl_cov_frac`` (fraction of the valid tokens that got the KL term) for kl_cov;
        with ``rollout_logp``: ``rollout_is_weight_mean``, ``rollout_is_frac_modified``,
        ``mismatch_kl_k1``, ``mismatch_kl_k3`` (rollout vs old). Metrics are local to the call.
    """
    entry, agg, o = _prepare(name, compat, agg, tuple(options.items()))   # cached validation
    _check_inputs(logp, old_logp, advantages, mask, rollout_logp)

    m = bool_mask(mask)
    dt = compute_dtype(logp)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    b = _Batch(raw_logp=logp,
               delta=token_log_ratio(logp, old_logp, m, o["_clamp"]),      # δ = ℓ^θ − ℓ^old
               adv=masked(adv.expand(logp.shape), m, dt).detach(),          # Â_{i,t}
               mask=m, compat=compat)
    shaped = entry.shaper(b, o)
    loss_mat = shaped.loss
    rollout = None
    if rollout_logp is not None:
        rollout = rollout_is_weights(old_logp, rollout_logp, m, level=o["rollout_is"] or "token",
                                     mode=o["rollout_is_mode"],
                                     threshold=o["rollout_is_threshold"],
                                     threshold_lower=o["rollout_is_threshold_lower"],
                                     batch_normalize=o["rollout_is_batch_normalize"],
                                     clamp=o["_clamp"])
        if o["rollout_is"] is not None:
            loss_mat = loss_mat * rollout.weight.to(loss_mat.dtype)          # ρ̂ ⊙ L
    loss = aggregate(loss_mat, m, agg, global_tokens, global_seqs, max_len, compat=compat)
    return loss, _metrics(b, shaped, rollout)
