"""PA-MoE options: every default of spec-seed-systems §3.3 in one checked, documented place.

The paper body (arXiv 2602.17038) could not be read and the released code never calls its router
(spec §3.2), so nearly every value below is a documented choice (``[GUESS]`` in the spec), tagged
``[CODE]`` where the released scripts fix it. ``docs/pa-moe.md`` explains each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grouprl.validation import check_choice, check_int, check_number

__all__ = ["ATTENTION_PROJECTIONS", "ALL_PROJECTIONS", "MODES", "ROUTER_GRADS", "JOINT_PLACEMENTS",
           "EXPERT_LOGPROBS", "SWITCH_FORMS", "PAMoEOptions", "check_target_modules"]

#: q/k/v/o: the targets of the code's ``CognitiveExpertMixture`` [CODE mixture]
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
#: all seven projections of a Llama/Qwen2 block: the code's training wrapper [CODE wrapper]
ALL_PROJECTIONS = (*ATTENTION_PROJECTIONS, "gate_proj", "up_proj", "down_proj")

MODES = ("pa-moe", "reference", "token")
ROUTER_GRADS = ("joint", "straight_through", "soft")
JOINT_PLACEMENTS = ("broadcast", "first")
EXPERT_LOGPROBS = ("q", "hysteresis")
SWITCH_FORMS = ("tv", "overlap")


def check_target_modules(name: str, value: Sequence[str]) -> tuple[str, ...]:
    """``value`` as a non-empty tuple of module-name suffixes; ``ValueError`` naming ``name``."""
    if isinstance(value, str) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name}: expected a non-empty sequence of module names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class PAMoEOptions:
    """All PA-MoE settings (spec §3.3). Attributes:

    mode: ``"pa-moe"`` (E experts + phase router), ``"reference"`` (what the released code
        trains: one LoRA on all seven projections, router unused; ``num_experts`` is forced to 1
        and ``target_modules`` defaults to :data:`ALL_PROJECTIONS`) or ``"token"`` (the study's
        token-level baseline: E experts mixed per token by a soft gate in every layer, no
        phase router).
    num_experts: E, LoRA experts per target layer; 4 [CODE scripts].
    rank: LoRA rank r; 32 [CODE scripts]. alpha: LoRA α; ``None`` means 2r [CODE].
    dropout: LoRA dropout on the adapter input; 0.05 [CODE].
    target_modules: module-name suffixes that get multi-LoRA layers; ``None``: q/k/v/o
        [CODE mixture] in pa-moe mode, all seven projections in reference mode.
    router_grad: how the router learns from the RL objective: ``"joint"`` (default; expert
        log-prob added to the importance ratio, hard routing), ``"straight_through"`` (hard
        forward, gradient to q through the adapters), ``"soft"`` (w = q in both rollout and
        training; needs HF generation).
    joint_placement: where ``log q(e)`` joins the token log-probs: ``"broadcast"`` (every response
        token; each token ratio is ``q_new/q_old · π_new/π_old``) or ``"first"`` (first response
        token only; the row's summed log-prob is the joint log-prob).
    expert_logprob: the stored/recomputed expert log-prob: ``"q"`` (log q_t(e_t), spec) or
        ``"hysteresis"`` (log-probability of e_t under the sample-then-hysteresis rule).
    temperature_init, temperature_min, temperature_decay: T_k = max(T_min, T_0 γ^k) (1, 0.1, 0.95).
    hysteresis_margin: δ: switch only if q(e') − q(e_prev) > δ; 0.2.
    switch_coef, switch_form: λ_sw (0.1) and ``"tv"`` (½‖q_t − q_{t−1}‖₁) or ``"overlap"``
        (1 − ⟨q_t, q_{t−1}⟩).
    load_balance_coef: λ_lb (0.01) [CODE form].
    router_width: MLP width (256); history_dim: GRU state size (128); history_proj: size of the
        projected observation fed to the GRU (128); feature_layer: hidden-state layer pooled for
        the router features (−1 = last).
    """

    mode: str = "pa-moe"
    num_experts: int = 4
    rank: int = 32
    alpha: float | None = None
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    router_grad: str = "joint"
    joint_placement: str = "broadcast"
    expert_logprob: str = "q"
    temperature_init: float = 1.0
    temperature_min: float = 0.1
    temperature_decay: float = 0.95
    hysteresis_margin: float = 0.2
    switch_coef: float = 0.1
    switch_form: str = "tv"
    load_balance_coef: float = 0.01
    router_width: int = 256
    history_dim: int = 128
    history_proj: int = 128
    feature_layer: int = -1

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_int("num_experts", self.num_experts, 1)
        check_int("rank", self.rank, 1)
        check_number("alpha", self.alpha, 0.0, low_open=True, none_ok=True)
        check_number("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules",
                               check_target_modules("target_modules", self.target_modules))
        check_choice("router_grad", self.router_grad, ROUTER_GRADS)
        check_choice("joint_placement", self.joint_placement, JOINT_PLACEMENTS)
        check_choice("expert_logprob", self.expert_logprob, EXPERT_LOGPROBS)
        check_number("temperature_init", self.temperature_init, 0.0, low_open=True)
        check_number("temperature_min", self.temperature_min, 0.0, low_open=True)
        check_number("temperature_decay", self.temperature_decay, 0.0, 1.0, low_open=True)
        check_number("hysteresis_margin", self.hysteresis_margin, 0.0, 1.0)
        check_number("switch_coef", self.switch_coef, 0.0)
        check_choice("switch_form", self.switch_form, SWITCH_FORMS)
        check_number("load_balance_coef", self.load_balance_coef, 0.0)
        check_int("router_width", self.router_width, 1)
        check_int("history_dim", self.history_dim, 1)
        check_int("history_proj", self.history_proj, 1)
        check_int("feature_layer", self.feature_layer)
        if self.mode == "reference" and self.num_experts != 1:
            object.__setattr__(self, "num_experts", 1)

    @property
    def lora_alpha(self) -> float:
        """α, with ``None`` resolved to 2r [CODE]."""
        return float(2 * self.rank if self.alpha is None else self.alpha)

    @property
    def targets(self) -> tuple[str, ...]:
        """The target module suffixes, with ``None`` resolved by mode."""
        if self.target_modules is not None:
            return self.target_modules
        return ALL_PROJECTIONS if self.mode == "reference" else ATTENTION_PROJECTIONS

    @property
    def uses_router(self) -> bool:
        """False in reference mode (the released training never calls its router) and in token
        mode (its gates live in the layers)."""
        return self.mode == "pa-moe"
