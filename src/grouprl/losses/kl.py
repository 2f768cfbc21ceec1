"""Per-token KL penalty estimators (k1, k2, k3, abs, straight-through "+") and the entropy bonus.

Spec-losses §5.1. With ``u = ℓ^ref − ℓ^θ`` per token (samples from π_old ≈ π_θ; Schulman 2020,
"Approximating KL divergence", http://joschu.net/blog/kl-approx.html):

=====================  ==========================  ==============================================
kind (verl alias)      value                       gradient w.r.t. θ (on-policy expectation)
=====================  ==========================  ==============================================
``k1`` (``kl``)        −u = ℓ^θ − ℓ^ref            E[∇ℓ^θ] = 0: no useful gradient as a loss
``abs``                |u|                         sgn(ℓ^θ − ℓ^ref) ∇ℓ^θ
``k2`` (``mse``)       ½ u²                        (ℓ^θ − ℓ^ref) ∇ℓ^θ → ∇KL(π‖π_ref) (reverse KL)
``k3`` (``low_var_kl``) eᵘ − u − 1 ≥ 0             (1 − π_ref/π) ∇ℓ^θ → ∇KL(π_ref‖π) (forward KL)
``<kind>+``            value of <kind>,            gradient of k2:
                       sg(k) + k2 − sg(k2)         (ℓ^θ − ℓ^ref) ∇ℓ^θ
=====================  ==========================  ==============================================

k1 and k3 are unbiased estimators of KL(π‖π_ref); k3 has low variance. The straight-through
variants (verl PR #2953; "k1+" and "k3+" in the spec table) keep the *value* of the base estimator
(for logging / the KL-in-reward path) and the unbiased reverse-KL *gradient* of k2; "k2+" equals
"k2" and "abs+" is accepted by the same rule. In the verl snapshot the spec was read from
(``b178a3cd``) every "+" name raises ``NotImplementedError`` (spec §5.1 bug note, §10.3); this
module implements the documented semantics.

Numerics (spec §5.1, §9.2): for k3, u is clamped to [−20, 20] and the result to [−10, 10] as in
verl (``compat="native"`` and ``"verl"``), so tokens with a huge divergence get zero k3 gradient;
``compat="trl"`` applies no clamp (TRL GRPO). k1, k2 and abs are never clamped. The straight-
through gradient (k2 of the raw u) is never clamped, as in verl's implementation of "+".
Half-precision inputs are upcast to fp32 before any arithmetic (§9.9); fp64 stays fp64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from grouprl.validation import canonical_name, check_choice, memoize

from .logprobs import _run

__all__ = ["KL_KINDS", "KL_ALIASES", "COMPATS", "canonical_kl_kind", "kl_penalty",
           "entropy_from_logits"]

KL_KINDS = ("k1", "k2", "k3", "abs", "k1+", "k2+", "k3+", "abs+")
# verl `kl_loss_type` / `kl_penalty` names (core_algos.kl_penalty), plus their "+" forms.
KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3",
              "kl+": "k1+", "mse+": "k2+", "low_var_kl+": "k3+"}
COMPATS = ("native", "verl", "trl")

K3_LOG_RATIO_CLAMP = 20.0  # verl: u = clamp(ℓ^ref − ℓ^θ, −20, 20)
K3_VALUE_CLAMP = 10.0  # verl: clamp(k3, −10, 10)


def canonical_kl_kind(kind: str) -> str:
    """Map a kind or verl alias to one of ``KL_KINDS``; ValueError names the accepted values."""
    return canonical_name("kind", "KL estimator", kind, KL_KINDS, KL_ALIASES)


class _KLOptions(NamedTuple):
    base: str                # k1, k2, k3 or abs
    straight_through: bool   # the "+" form: value of base, gradient of k2
    clamp: bool              # verl's k3 clamps (native, verl), none under trl


@memoize
def _kl_options(kind: str, compat: str) -> _KLOptions:
    """``kind`` and ``compat`` validated once per distinct pair (``kl_penalty``'s hot path)."""
    name = canonical_kl_kind(kind)
    check_choice("compat", compat, COMPATS)
    return _KLOptions(name.rstrip("+"), name.endswith("+"), compat != "trl")


def _base_value(kind: str, logp: torch.Tensor, ref_logp: torch.Tensor, clamp: bool
                ) -> torch.Tensor:
    u = ref_logp - logp  # u = ℓ^ref − ℓ^θ
    if kind == "k1":
        return -u  # ℓ^θ − ℓ^ref
    if kind == "abs":
        return u.abs()
    if kind == "k2":
        return 0.5 * u.square()
    # k3 = e^u − u − 1 (≥ 0), verl low_var_kl clamps
    if clamp:
        u = u.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    k3 = torch.expm1(u) - u  # = e^u − 1 − u, exact near u = 0
    if clamp:
        k3 = k3.clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)
    return k3


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3", *,
               mask: torch.Tensor | None = None, compat: str = "native") -> torch.Tensor:
    """Per-token KL estimate ``k(ℓ^θ, ℓ^ref)`` (spec-losses §5.1), shape of ``logp``.

    ``u = ℓ^ref − ℓ^θ``; k1 = −u; k2 = ½u²; k3 = eᵘ − u − 1 (clamped as verl unless
    ``compat="trl"``); abs = |u|; ``<kind>+`` = sg(k) + k2 − sg(k2) (value of k, gradient of k2).
    See the module docstring for the gradient each estimator gives.

    Args:
        logp: ℓ^θ, current-policy log-probs (N, T), usually with gradient.
        ref_logp: ℓ^ref, reference log-probs, same shape; treated as given (the reference is a
            constant in every caller; no detach is applied, so a gradient still flows if asked).
        kind: one of "k1", "k2", "k3", "abs", "k1+", "k2+", "k3+", "abs+", or the verl names
            "kl", "mse", "low_var_kl" (and "kl+", "mse+", "low_var_kl+"). Default "k3" (verl's
            ``kl_loss_type="low_var_kl"`` default for KL-in-loss, §5.2).
        mask: optional (N, T) mask; where it is 0 the result is 0 and both inputs are replaced
            by 0 *before* the arithmetic, so NaN/inf in padded positions reach neither the value
            nor the gradient (spec §9.8, ``where``-style masking).
        compat: "native" (default) and "verl" clamp k3 as verl; "trl" does not clamp.

    Returns:
        (N, T) tensor in fp32 (fp64 for fp64 inputs); aggregate it with the loss aggregator.
    """
    o = _kl_options(kind, compat)
    for arg, x in (("logp", logp), ("ref_logp", ref_logp)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{arg}: expected a floating-point tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp: shape {tuple(ref_logp.shape)} must equal logp shape "
                         f"{tuple(logp.shape)}")
    dtype = torch.promote_types(torch.promote_types(logp.dtype, ref_logp.dtype), torch.float32)
    logp, ref_logp = logp.to(dtype), ref_logp.to(dtype)
    keep = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != logp.shape:
            raise ValueError(f"mask: expected a tensor of shape {tuple(logp.shape)}, got "
                             f"{tuple(getattr(mask, 'shape', ())) or type(mask).__name__}")
        keep = mask.bool() if mask.dtype == torch.bool else mask != 0
        logp = torch.where(keep, logp, 0.0)
        ref_logp = torch.where(keep, ref_logp, 0.0)

    value = _base_value(o.base, logp, ref_logp, clamp=o.clamp)
    if o.straight_through and o.base != "k2":
        k2 = 0.5 * (logp - ref_logp).square()
        value = value.detach() + (k2 - k2.detach())  # sg(k) + k2 − sg(k2)
    if keep is not None:
        value = torch.where(keep, value, 0.0)
    return value


def entropy_from_logits(logits: torch.Tensor, *, temperature: float = 1.0,
                        chunk_size: int | None = None) -> torch.Tensor:
    """Per-token entropy ``H = logsumexp(z) − Σ_v softmax(z)_v z_v``, ``z = logits / τ``.

    Spec-losses §5.3 (verl ``entropy_from_logits``), numerically stable (no log of a softmax
    that underflows) and differentiable. Computed block by block over the (N, T) positions (at
    most ``chunk_size`` positions per block, default ``max(1, 2**25 // V)``) with the softmax
    recomputed in backward, so half-precision logits are never upcast as a whole and autograd
    stores only the logits and two fp32 (N, T) vectors (see ``grouprl.losses.logprobs``).

    Args:
        logits: (N, T, V) or (T, V), any float dtype.
        temperature: τ > 0; verl and TRL take the entropy of the temperature-scaled logits.
        chunk_size: token positions per block; the result does not depend on it.

    Returns:
        (N, T) (or (T,)) entropy in fp32 (fp64 for fp64 logits).
    """
    _, ent = _run(logits, None, temperature, chunk_size, False, True)
    return ent
