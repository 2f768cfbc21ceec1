"""The auxiliary decision head and the joint PreSafe loss (step C, spec §4.2; [GUESS] design:
the paper body is unread, every choice below is a config option).

Symbols (spec §4.2 / §4.4):

* z(x) — the hidden state at the **last prompt token** (the position that generates the first
  chain-of-thought token: after the chat template and any ``<think>`` opener), taken from
  ``hidden_states[aux_layer]`` of the model's output (``-1`` = the last layer), or the mean of
  the ``aux_pool_layers`` layers ending there;
* the head is linear, d_model → 1: ℓ(x) = wᵀ z(x) + b, σ = σ(ℓ);
* d(x) ∈ [0, 1] — the decision signal (:mod:`grouprl.presafe.signals`).

The equations, one line each::

    L_aux = −[ d·log σ(ℓ) + (1 − d)·log(1 − σ(ℓ)) ]          aux_bce   (mean over rows)
    L_aux^KL = L_aux − H(d),  H(d) = −d log d − (1−d) log(1−d)  aux_kl    (same gradient)
    ∂L_aux/∂ℓ = σ(ℓ) − d ;   ∂L_aux/∂z = (σ(ℓ) − d)·w
    L = L_SFT + γ·L_aux                                        joint_loss (γ = aux_weight)

The 2-class form (a head with logits h = (h_comply, h_refuse), target q = (1 − d, d)) is
``CE = −Σ_c q_c log softmax(h)_c``, equal to L_aux for ℓ = h_refuse − h_comply, and
``KL(q ‖ softmax(h)) = CE − H(d)`` (:func:`two_class_ce`, :func:`two_class_kl`).

Worked example (spec §4.4 check 1, float64): z = [0.5, −1, 2, 0], w = [0.2, −0.1, 0.3, 0.5],
b = −0.2 → ℓ = 0.6, σ = 0.645656; d = 0.880797 → L_aux = 0.509010 (hard d = 1: 0.437488),
∂L/∂ℓ = −0.235141, ∂L/∂z = [−0.047028, 0.023514, −0.070542, −0.117570]; with head logits
[0.1, 0.7]: CE = 0.509010, KL = 0.143676; L_SFT = 1.2345, γ = 0.5 → L = 1.489005.

Only positions ≤ the last prompt token reach z (causal attention), so the auxiliary gradient
never touches response positions. The head is used in training only: it is a separate module,
never part of the policy, and generation never sees it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from grouprl.validation import check_choice, check_int, check_number

__all__ = ["AUX_LOSSES", "AuxHead", "last_prompt_state", "aux_bce", "aux_kl", "aux_loss",
           "binary_entropy", "two_class_ce", "two_class_kl", "joint_loss", "HiddenCapture",
           "capture_hidden_states"]

AUX_LOSSES = ("bce", "kl")


class AuxHead(torch.nn.Module):
    """ℓ(x) = wᵀ z(x) + b: one linear layer d_model → 1, float32 (z is cast to the head's
    dtype, whatever the policy's). Initialised with ``seed`` under a forked RNG (the global
    torch RNG is left untouched)."""

    def __init__(self, hidden_size: int, *, seed: int = 0) -> None:
        super().__init__()
        check_int("hidden_size", hidden_size, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.linear = torch.nn.Linear(hidden_size, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d_model) → (B,) logits ℓ."""
        return self.linear(z.to(self.linear.weight.dtype)).squeeze(-1)


def last_prompt_state(hidden_states: Sequence[torch.Tensor], prompt_length: int, *,
                      layer: int = -1, pool_layers: int = 1) -> torch.Tensor:
    """z(x): (B, d_model) hidden state at column ``prompt_length − 1`` (prompts left-padded, so
    that column is every row's last prompt token) of ``hidden_states[layer]``, or the mean of
    the ``pool_layers`` entries ending at ``layer``."""
    n = len(hidden_states)
    check_int("aux_pool_layers", pool_layers, 1)
    end = layer % n if -n <= layer < n else None
    if end is None:
        raise ValueError(f"aux_layer: {layer} is out of range for {n} hidden states "
                         f"(embeddings + {n - 1} layers)")
    if pool_layers > end + 1:
        raise ValueError(f"aux_pool_layers: {pool_layers} layers end at hidden state {end}; "
                         f"at most {end + 1} fit")
    states = [hidden_states[i][:, prompt_length - 1] for i in range(end - pool_layers + 1,
                                                                    end + 1)]
    return states[0] if pool_layers == 1 else torch.stack(states).mean(0)


def binary_entropy(d: torch.Tensor) -> torch.Tensor:
    """H(d) = −d log d − (1−d) log(1−d) (0 at d ∈ {0, 1})."""
    return -(torch.xlogy(d, d) + torch.xlogy(1 - d, 1 - d))


def aux_bce(logit: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """L_aux = mean over rows of −[d log σ(ℓ) + (1−d) log(1−σ(ℓ))] (numerically stable)."""
    return F.binary_cross_entropy_with_logits(logit, d.to(logit.dtype))


def aux_kl(logit: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """L_aux^KL = L_aux − mean H(d): 0 when σ(ℓ) = d; the gradient of :func:`aux_bce`."""
    d = d.to(logit.dtype)
    return aux_bce(logit, d) - binary_entropy(d).mean()


def aux_loss(kind: str, logit: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``kind`` ``"bce"`` (:func:`aux_bce`) or ``"kl"`` (:func:`aux_kl`)."""
    check_choice("aux_loss", kind, AUX_LOSSES)
    return aux_bce(logit, d) if kind == "bce" else aux_kl(logit, d)


def two_class_ce(head_logits: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """CE = −Σ_c q_c log softmax(h)_c with q = (1 − d, d); mean over rows."""
    q = torch.stack([1 - d, d], dim=-1).to(head_logits.dtype)
    return -(q * torch.log_softmax(head_logits, dim=-1)).sum(-1).mean()


def two_class_kl(head_logits: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ softmax(h)) = CE − H(d); mean over rows."""
    return two_class_ce(head_logits, d) - binary_entropy(d.to(head_logits.dtype)).mean()


def joint_loss(l_sft: torch.Tensor, l_aux: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """L = L_SFT + γ·L_aux. γ = 0 (or no L_aux) returns ``l_sft`` itself: plain SFT, bitwise."""
    check_number("aux_weight", gamma, 0.0)
    if gamma == 0 or l_aux is None:
        return l_sft
    return l_sft + gamma * l_aux


class HiddenCapture:
    """The hidden states of the forwards run inside :func:`capture_hidden_states`, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, ...]] = []

    @property
    def last(self) -> tuple[torch.Tensor, ...]:
        if not self.calls:
            raise RuntimeError("no forward ran while hidden states were captured")
        return self.calls[-1]


@contextmanager
def capture_hidden_states(model: torch.nn.Module) -> Iterator[HiddenCapture]:
    """Within the block, every ``model(...)`` call also returns its hidden states (the hook sets
    ``output_hidden_states=True``) and they are recorded in the yielded :class:`HiddenCapture`
    (graph kept: differentiable). The forward itself is unchanged, so a loss computed from its
    logits is bitwise the loss without the capture. Hooks are removed on exit."""
    capture = HiddenCapture()

    def pre(module: torch.nn.Module, args: Any, kwargs: dict) -> tuple[Any, dict]:
        return args, {**kwargs, "output_hidden_states": True}

    def post(module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        states = getattr(output, "hidden_states", None)
        if states is None:
            raise RuntimeError(f"{type(module).__name__}: returned no hidden_states with "
                               "output_hidden_states=True")
        capture.calls.append(tuple(states))

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True),
               model.register_forward_hook(post, with_kwargs=True)]
    try:
        yield capture
    finally:
        for h in handles:
            h.remove()
