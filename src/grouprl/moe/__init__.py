"""PA-MoE: phase-aware mixture of LoRA experts (arXiv 2602.17038; spec-seed-systems §3).

* :mod:`.lora`      multi-LoRA layers (E experts per frozen linear, one base pass), injection
                    into a HF causal LM, per-row routing (:func:`route`), adapters off, state
* :mod:`.router`    the phase router: goal-gated observation encoding, GRU history, MLP
* :mod:`.routing`   temperature annealing, assignment with hysteresis, expert log-probs, weights
* :mod:`.losses`    joint (expert, response) log-prob, router PG term, switching, load balance
* :mod:`.metrics`   expert usage per category, switch rate, router entropy, parameter occupancy
* :mod:`.features`  router features from the frozen base (mean-pooled hidden states)
* :mod:`.phases`    the code's keyword phase labeller (optional router pre-training)
* :mod:`.state`     checkpoint state (experts + router)
* :mod:`.options`   every option and default, checked

The package imports torch and :mod:`grouprl.validation` only; docs/pa-moe.md explains the design.
"""

from .features import pooled_features, text_features
from .lora import (
    MultiLoRALinear,
    Routing,
    adapters_disabled,
    add_token_gates,
    clear_routing,
    inject_multi_lora,
    load_multi_lora_state_dict,
    multi_lora_layers,
    multi_lora_state_dict,
    route,
    set_routing,
)
from .losses import (
    joint_logprob,
    joint_token_logprobs,
    load_balance_loss,
    router_aux_loss,
    router_pg_loss,
    switching_penalty,
)
from .metrics import (
    category_shares,
    expert_usage,
    parameter_occupancy,
    router_entropy,
    router_metrics,
    switch_rate,
)
from .options import ALL_PROJECTIONS, ATTENTION_PROJECTIONS, PAMoEOptions
from .phases import PHASES, keyword_phases, phase_pretrain_loss
from .router import PhaseRouter, RouterStep, route_step
from .routing import (
    apply_hysteresis,
    assign_experts,
    expert_log_prob,
    hysteresis_distribution,
    propose_experts,
    routing_probs,
    routing_weights,
    temperature_at,
    transitions,
)
from .state import ROUTER_ATTRIBUTE, attached_router, load_pamoe_state_dict, pamoe_state_dict

__all__ = [
    "ALL_PROJECTIONS", "ATTENTION_PROJECTIONS", "PAMoEOptions", "PHASES",
    "MultiLoRALinear", "Routing", "adapters_disabled", "add_token_gates", "clear_routing",
    "inject_multi_lora",
    "load_multi_lora_state_dict", "multi_lora_layers", "multi_lora_state_dict", "route",
    "set_routing", "PhaseRouter", "RouterStep", "route_step", "apply_hysteresis",
    "assign_experts", "expert_log_prob", "hysteresis_distribution", "propose_experts",
    "routing_probs", "routing_weights", "temperature_at", "transitions", "joint_logprob",
    "joint_token_logprobs", "load_balance_loss", "router_aux_loss", "router_pg_loss",
    "switching_penalty", "category_shares", "expert_usage", "parameter_occupancy",
    "router_entropy", "router_metrics", "switch_rate", "pooled_features", "text_features",
    "keyword_phases", "phase_pretrain_loss", "load_pamoe_state_dict", "pamoe_state_dict",
    "ROUTER_ATTRIBUTE", "attached_router",
]
