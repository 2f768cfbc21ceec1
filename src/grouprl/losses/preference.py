"""Pairwise offline preference losses: DPO, cDPO, IPO, robust DPO, SimPO, ORPO, HyPO.

Spec-losses §6. Inputs are per-pair *summed* response log-probs ``Λ(y) = Σ_t m_t ℓ_t`` (N,)
of the chosen ``y_w`` and rejected ``y_l`` completions (fp32 sums, spec §6), and for the
reference-based losses the same sums under the frozen reference model. With

    Δ_θ = Λ^θ(y_w) − Λ^θ(y_l),      Δ_ref = Λ^ref(y_w) − Λ^ref(y_l),      h = Δ_θ − Δ_ref

the per-pair losses are (β > 0, ε the label-smoothing / flip rate, γ a margin)::

    dpo     −(1−ε)·logσ(βh) − ε·logσ(−βh)              (ε = 0: DPO; ε > 0: cDPO)
    cdpo    same as dpo, default ε = 0.1
    robust  [−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1 − 2ε)
    ipo     (h̄ − 1/(2β))²,  h̄ = length-normalised h (TRL)
    simpo   −(1−ε)·logσ(z) − ε·logσ(−z),   z = β·Λ(y_w)/L_w − β·Λ(y_l)/L_l − γ
    orpo    L_NLL(y_w) − λ·mean logσ(lo(y_w) − lo(y_l)),  lo(y) = Λ̄ − log(1 − e^Λ̄), λ = β
    hypo    −logσ(β(Δ_θ − max{0, Δ_ref}) − γ)

and the returned loss is their mean over pairs. Everything uses ``logsigmoid`` (never
``log(sigmoid)``) and fp32 (fp64 inputs stay fp64); reference log-probs are detached.

Length normalisation (``length_normalize=True``, default for ipo; always on for simpo and orpo):
each side's score is divided by its own token count ``L = max(length, 1)`` (TRL clamps at 1),
e.g. ``h̄ = (Λ^θ_w − Λ^ref_w)/L_w − (Λ^θ_l − Λ^ref_l)/L_l``.

Metrics (floats, TRL names): ``loss``; ``rewards/chosen``, ``rewards/rejected`` (means of the
per-side implicit rewards that enter the loss: β·(Λ^θ − Λ^ref) for reference-based losses, β·Λ̄^θ
for simpo/orpo, each length-normalised when the loss is); ``rewards/accuracies`` (fraction of
pairs with chosen reward > rejected reward, strict as TRL); ``rewards/margins`` (mean difference);
``logps/chosen``, ``logps/rejected`` (means of the policy inputs as given); hypo adds
``hypo/pessimistic_frac`` (fraction with Δ_ref < 0); orpo adds ``nll_loss``,
``log_odds_ratio`` (mean logσ(lo_w − lo_l)) and ``log_odds_chosen`` (mean lo_w − lo_l).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from grouprl.validation import (
    canonical_name,
    check_bool,
    check_number,
    check_options,
    memoize,
)

__all__ = ["PREFERENCE_LOSSES", "PREFERENCE_ALIASES", "canonical_preference_loss",
           "preference_loss", "log1mexp"]


@dataclass(frozen=True)
class _Spec:
    needs_ref: bool
    defaults: dict  # accepted options and their default values (None = computed)


# Defaults: DPO/IPO/cDPO/rDPO/HyPO β = 0.1 (DPO paper and TRL `beta`); cDPO and rDPO ε = 0.1
# (spec §6 table); SimPO β = 2.0, γ = 0.25·β (princeton-nlp/SimPO `SimPOConfig`: beta=2.0,
# gamma_beta_ratio=0.25); ORPO λ = 0.1 (TRL `ORPOConfig.beta`); HyPO γ = 0 (spec §6, §10.2).
PREFERENCE_LOSSES: dict[str, _Spec] = {
    "dpo": _Spec(True, {"beta": 0.1, "label_smoothing": 0.0, "length_normalize": False}),
    "cdpo": _Spec(True, {"beta": 0.1, "label_smoothing": 0.1, "length_normalize": False}),
    "robust": _Spec(True, {"beta": 0.1, "label_smoothing": 0.1, "length_normalize": False}),
    "ipo": _Spec(True, {"beta": 0.1, "length_normalize": True}),
    "simpo": _Spec(False, {"beta": 2.0, "gamma": None, "label_smoothing": 0.0}),
    "orpo": _Spec(False, {"beta": 0.1, "nll_loss": None}),
    "hypo": _Spec(True, {"beta": 0.1, "gamma": 0.0, "length_normalize": False}),
}
# TRL `DPOConfig.loss_type` names for the same losses, and common spellings.
PREFERENCE_ALIASES = {"sigmoid": "dpo", "rdpo": "robust", "hybrid_dpo": "hypo"}
_SIMPO_GAMMA_BETA_RATIO = 0.25


def canonical_preference_loss(name: str) -> str:
    """Map a loss name or alias to a key of ``PREFERENCE_LOSSES``; ValueError otherwise."""
    return canonical_name("name", "preference loss", name, tuple(PREFERENCE_LOSSES),
                          PREFERENCE_ALIASES)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − eˣ)`` for x ≤ 0, stable: branch at −ln 2 (Mächler 2012; spec §6 ORPO row)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)),
                       torch.log(-torch.expm1(x)))


def _sigmoid_ce(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``−(1−ε)·logσ(z) − ε·logσ(−z)`` (binary cross-entropy with soft label 1−ε)."""
    loss = -F.logsigmoid(z)
    if eps != 0.0:
        loss = (1.0 - eps) * loss - eps * F.logsigmoid(-z)
    return loss


def _as_vector(arg: str, x: object, n: int, dtype: torch.dtype, device: torch.device
               ) -> torch.Tensor:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.full((n,), float(x), dtype=dtype, device=device)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{arg}: expected a tensor of shape ({n},) or a number, got "
                         f"{type(x).__name__}")
    if x.dim() == 0:
        x = x.expand(n)
    if tuple(x.shape) != (n,):
        raise ValueError(f"{arg}: expected shape ({n},) to match chosen_logp, got "
                         f"{tuple(x.shape)}")
    return x.to(device=device, dtype=dtype)


def _length(arg: str, x: object, n: int, dtype: torch.dtype, device: torch.device,
            loss: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"{arg}: required by {loss!r} with length normalisation (token count "
                         f"of each response, shape ({n},)); pass {arg}=... or, where accepted, "
                         f"length_normalize=False")
    length = _as_vector(arg, x, n, dtype, device).detach()
    if bool((length < 0).any()) or not bool(torch.isfinite(length).all()):
        raise ValueError(f"{arg}: token counts must be finite and >= 0")
    return length.clamp(min=1.0)  # TRL: mask.sum().clamp(min=1)


class _Options(NamedTuple):
    loss: str          # canonical loss name
    needs_ref: bool
    beta: float        # β
    eps: float         # ε (label smoothing / flip rate), 0 where the loss has none
    gamma: float       # γ (margin), 0 where the loss has none
    normalize: bool    # divide each side's score by its length


@memoize
def _options(name: str, beta: float | None, label_smoothing: float | None, gamma: float | None,
             length_normalize: bool | None, nll_loss_given: bool) -> _Options:
    """Validate the loss name and options once per distinct values (cached, so a training loop
    calling :func:`preference_loss` per micro-batch does no option checking)."""
    loss_name = canonical_preference_loss(name)
    spec = PREFERENCE_LOSSES[loss_name]
    given = {"beta": beta, "label_smoothing": label_smoothing, "gamma": gamma,
             "length_normalize": length_normalize, "nll_loss": True if nll_loss_given else None}
    check_options(f"preference loss {loss_name!r}", [k for k, v in given.items() if v is not None],
                  list(spec.defaults))
    opts = {k: (given[k] if given[k] is not None else d) for k, d in spec.defaults.items()}
    b = float(check_number("beta", opts["beta"], 0.0, low_open=True))
    eps = 0.0
    if "label_smoothing" in opts:
        robust = loss_name == "robust"
        eps = float(check_number("label_smoothing", opts["label_smoothing"], 0.0,
                                 0.5 if robust else 1.0, high_open=robust,
                                 note=f"for {loss_name!r}"))
    if loss_name == "simpo" and opts["gamma"] is None:
        opts["gamma"] = _SIMPO_GAMMA_BETA_RATIO * b
    g = float(check_number("gamma", opts["gamma"])) if "gamma" in opts else 0.0
    normalize = check_bool("length_normalize",
                           opts.get("length_normalize", loss_name in ("simpo", "orpo")))
    return _Options(loss_name, spec.needs_ref, b, eps, g, normalize)


def preference_loss(
    name: str,
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor | None = None,
    ref_rejected_logp: torch.Tensor | None = None,
    *,
    beta: float | None = None,
    label_smoothing: float | None = None,
    gamma: float | None = None,
    length_normalize: bool | None = None,
    chosen_length: torch.Tensor | float | None = None,
    rejected_length: torch.Tensor | float | None = None,
    nll_loss: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise preference loss ``name`` averaged over N pairs, and its metrics (spec §6).

    Losses (see the module docstring for the shared notation Δ_θ, Δ_ref, h):

    - ``"dpo"`` (alias ``"sigmoid"``): Rafailov et al. 2023, arXiv 2305.18290, Eq. 7:
      ``−logσ(βh)``; with ``label_smoothing=ε > 0`` it is cDPO (below). β = 0.1.
    - ``"cdpo"``: conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences and
      relationship to IPO"): ``−(1−ε)logσ(βh) − ε·logσ(−βh)``, ε = 0.1 by default. Biased
      under label noise. Not available as a DPO loss in TRL 1.16 ("sigmoid" ignores ε there).
    - ``"robust"`` (alias ``"rdpo"``): Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO",
      arXiv 2403.00409, §3: ``[−(1−ε)logσ(βh) + ε·logσ(−βh)] / (1−2ε)``, unbiased for flip rate
      ε ∈ [0, 0.5); ε = 0.1 by default (TRL's default is 0.0, which is plain DPO).
    - ``"ipo"``: Azar et al. 2023, arXiv 2310.12036, Eq. 17: ``(h̄ − 1/(2β))²`` with β in the
      role of τ; h̄ length-normalised as TRL (confirmed there with the IPO authors), so
      ``chosen_length``/``rejected_length`` are required unless ``length_normalize=False``
      (the paper's summed form).
    - ``"simpo"``: Meng, Xia, Chen 2024, arXiv 2405.14734, Eq. 6 (reference-free):
      ``−logσ(β·Λ_w/L_w − β·Λ_l/L_l − γ)``; lengths required; β = 2.0 and γ = 0.25·β by
      default (the released code's ``beta`` and ``gamma_beta_ratio``; TRL's CPO defaults
      β = 0.1, γ = 0.5 are not the paper's). ``label_smoothing`` applies as in TRL CPO.
    - ``"orpo"``: Hong, Lee, Thorne 2024, arXiv 2403.07691 (reference-free):
      ``L_NLL(y_w) − λ·mean_i logσ(lo_w,i − lo_l,i)``, ``lo(y) = Λ̄ − log(1 − e^Λ̄)`` with the
      *mean* token log-prob Λ̄ = Λ/L and a stable ``log1mexp``; λ = ``beta`` = 0.1 (TRL).
      ``L_NLL`` is ``nll_loss`` if given (e.g. TRL's cross-entropy over prompt + chosen
      response), else the token mean over the batch's chosen responses ``−Σ_i Λ_w,i / Σ_i L_w,i``.
    - ``"hypo"`` (alias ``"hybrid_dpo"``): HyPO, Yuan et al., arXiv 2602.11902 (ICLR 2026):
      ``−logσ(β(Δ_θ − max{0, Δ_ref}) − γ)``. On optimistic/neutral pairs (Δ_ref ≥ 0) it is
      exactly DPO; on pessimistic pairs (Δ_ref < 0) the reference is treated as neutral and it
      is the reference-free ``−logσ(βΔ_θ − γ)``. ``max{0, Δ_ref}`` is a constant, so only the
      logit shifts and the gradient weight σ(−βΔ_θ) ≥ σ(−βh) on pessimistic pairs. The paper's
      β, margin and length normalisation are unknown (spec §10.2): defaults are DPO's (β = 0.1,
      summed log-probs, γ = 0), with ``gamma`` and ``length_normalize`` exposed.

    Args:
        name: loss name or alias (above).
        chosen_logp, rejected_logp: Λ^θ(y_w), Λ^θ(y_l), summed policy log-probs, shape (N,).
        ref_chosen_logp, ref_rejected_logp: Λ^ref, required by dpo, cdpo, robust, ipo, hypo and
            refused by the reference-free simpo and orpo. Detached.
        beta: β (> 0); per-loss default as listed.
        label_smoothing: ε, for dpo/cdpo/simpo in [0, 1] and robust in [0, 0.5).
        gamma: margin γ subtracted from the logit (simpo, hypo).
        length_normalize: dpo/cdpo/robust/ipo/hypo: divide each side's log-ratio by its length.
        chosen_length, rejected_length: response token counts (N,) or a number; clamped to ≥ 1.
        nll_loss: orpo only: a precomputed scalar L_NLL(y_w) (with gradient) to use as is.

    Returns:
        ``(loss, metrics)``: the scalar mean loss and a dict of Python floats (module docstring).

    Raises:
        ValueError: unknown ``name``; an option the loss does not use; a missing or unexpected
            reference; missing lengths; shapes that do not match; out-of-range options.
    """
    loss_name, needs_ref, b, eps, g, normalize = _options(
        name, beta, label_smoothing, gamma, length_normalize, nll_loss is not None)

    # --- inputs -------------------------------------------------------------------------------
    for arg, x in (("chosen_logp", chosen_logp), ("rejected_logp", rejected_logp)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{arg}: expected a floating-point tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
    if chosen_logp.dim() != 1 or chosen_logp.numel() == 0:
        raise ValueError(f"chosen_logp: expected a non-empty 1-D tensor (one summed log-prob per "
                         f"pair), got shape {tuple(chosen_logp.shape)}")
    if rejected_logp.shape != chosen_logp.shape:
        raise ValueError(f"rejected_logp: shape {tuple(rejected_logp.shape)} must equal "
                         f"chosen_logp shape {tuple(chosen_logp.shape)}")
    n, device = chosen_logp.shape[0], chosen_logp.device
    dtype = torch.promote_types(torch.promote_types(chosen_logp.dtype, rejected_logp.dtype),
                                torch.float32)
    pw, pl = chosen_logp.to(dtype), rejected_logp.to(dtype)

    if needs_ref:
        for arg, x in (("ref_chosen_logp", ref_chosen_logp),
                       ("ref_rejected_logp", ref_rejected_logp)):
            if x is None:
                raise ValueError(f"{arg}: required by {loss_name!r} (a reference-based loss); "
                                 f"pass the reference model's summed log-probs, shape ({n},)")
        rw = _as_vector("ref_chosen_logp", ref_chosen_logp, n, dtype, device).detach()
        rl = _as_vector("ref_rejected_logp", ref_rejected_logp, n, dtype, device).detach()
    else:
        for arg, x in (("ref_chosen_logp", ref_chosen_logp),
                       ("ref_rejected_logp", ref_rejected_logp)):
            if x is not None:
                raise ValueError(f"{arg}: not used by {loss_name!r} (reference-free); pass None")
        rw = rl = None

    if normalize:
        lw = _length("chosen_length", chosen_length, n, dtype, device, loss_name)
        ll = _length("rejected_length", rejected_length, n, dtype, device, loss_name)
    else:
        for arg, x in (("chosen_length", chosen_length), ("rejected_length", rejected_length)):
            if x is not None:
                raise ValueError(f"{arg}: not used by {loss_name!r} without length "
                                 f"normalisation; pass length_normalize=True or drop it")
        lw = ll = None

    # --- per-side scores s (what the loss compares) and implicit rewards β·s -----------------
    if needs_ref:
        sw, sl = pw - rw, pl - rl  # log-ratios Λ^θ − Λ^ref
    else:
        sw, sl = pw, pl
    if normalize:
        sw, sl = sw / lw, sl / ll
    extra: dict[str, torch.Tensor] = {}

    # --- losses -------------------------------------------------------------------------------
    if loss_name in ("dpo", "cdpo"):
        h = sw - sl  # h = Δ_θ − Δ_ref
        per_pair = _sigmoid_ce(b * h, eps)  # −(1−ε)logσ(βh) − ε logσ(−βh)
    elif loss_name == "robust":
        h = sw - sl
        per_pair = (-(1.0 - eps) * F.logsigmoid(b * h) + eps * F.logsigmoid(-b * h)) \
            / (1.0 - 2.0 * eps)  # rDPO, unbiased under flip rate ε
    elif loss_name == "ipo":
        h = sw - sl  # h̄ when length-normalised
        per_pair = (h - 1.0 / (2.0 * b)).square()  # (h̄ − 1/(2τ))², τ = β
    elif loss_name == "simpo":
        z = b * (sw - sl) - g  # β Λ̄_w − β Λ̄_l − γ
        per_pair = _sigmoid_ce(z, eps)
    elif loss_name == "hypo":
        cw, cl = (lw, ll) if normalize else (1.0, 1.0)
        d_theta = pw / cw - pl / cl  # Δ_θ
        d_ref = rw / cw - rl / cl  # Δ_ref (a constant)
        z = b * (d_theta - d_ref.clamp(min=0.0)) - g  # β(Δ_θ − max{0, Δ_ref}) − γ
        per_pair = -F.logsigmoid(z)
        extra["hypo/pessimistic_frac"] = (d_ref < 0).to(dtype).mean()
    else:  # orpo
        log_odds = (sw - sl) - (log1mexp(sw) - log1mexp(sl))  # lo(y_w) − lo(y_l), Λ̄ = Λ/L
        ratio = F.logsigmoid(log_odds)
        if nll_loss is None:
            nll = -(pw.sum() / lw.sum())  # token mean over the chosen responses
        else:
            if not isinstance(nll_loss, torch.Tensor) or nll_loss.numel() != 1:
                raise ValueError("nll_loss: expected a scalar tensor (L_NLL of the chosen "
                                 "responses)")
            nll = nll_loss.reshape(()).to(dtype)
        loss = nll - b * ratio.mean()  # L_NLL − λ·mean logσ(log-odds ratio)
        extra.update({"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(),
                      "log_odds_chosen": log_odds.detach().mean()})
    if loss_name != "orpo":
        loss = per_pair.mean()

    # --- metrics (one host sync) --------------------------------------------------------------
    with torch.no_grad():
        r_w, r_l = b * sw.detach(), b * sl.detach()
        names = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                 "rewards/margins", "logps/chosen", "logps/rejected", *extra]
        values = torch.stack([loss.detach(), r_w.mean(), r_l.mean(), (r_w > r_l).to(dtype).mean(),
                              (r_w - r_l).mean(), pw.detach().mean(), pl.detach().mean(),
                              *(v.to(dtype) for v in extra.values())])
        metrics = dict(zip(names, values.tolist()))
    return loss, metrics
