"""Config section of PA-MoE (``model.pamoe``; docs/pa-moe.md): a phase-routed mixture of LoRA
experts on the policy of the RL recipe. Part of the schema (:mod:`grouprl.train.config_schema`),
kept in its own module like :mod:`grouprl.train.presafe_config`. The algorithm defaults are those
of :class:`grouprl.moe.PAMoEOptions` (spec-seed-systems §3.3; [CODE] = the released scripts,
otherwise a documented choice); the trainer-only keys are marked (trainer).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from grouprl.moe import PAMoEOptions
from grouprl.train.config_types import SCHEMA, Bool, Float, Int, Str

__all__ = ["PAMoEConfig", "pamoe_options"]


@dataclass(config=SCHEMA)
class PAMoEConfig:
    """PA-MoE (Yang et al., arXiv 2602.17038): E LoRA experts per target layer of the frozen
    policy, one expert per environment step chosen by a phase router learned from the RL
    objective (docs/pa-moe.md). Replaces ``model.lora``; the base is the KL reference."""

    enabled: Bool = Field(False, description="train a mixture of LoRA experts routed per env "
                          "step instead of model.lora (multi-turn RL recipe)")
    mode: Literal["pa-moe", "reference", "token"] = Field(
        "pa-moe", description="pa-moe: E experts + phase router; reference: what the released "
        "code trains (one LoRA on all seven projections, r=32, router unused); token: the "
        "token-level MoE baseline (E experts mixed per token by a soft gate per layer)")
    num_experts: Int = Field(4, ge=1, description="E, LoRA experts per target layer [CODE]")
    rank: Int = Field(32, ge=1, description="LoRA rank r of each expert [CODE]")
    alpha: Float | None = Field(None, gt=0.0, description="LoRA α (null = 2r [CODE])")
    dropout: Float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter input "
                           "[CODE]")
    target_modules: list[Str] | None = Field(None, description="module-name suffixes with "
                                             "experts (null: q/k/v/o in pa-moe mode, all seven "
                                             "projections in reference mode)")
    router_grad: Literal["joint", "straight_through"] = Field(
        "joint", description="joint: log q(e) joins the importance ratio (hard routing); "
        "straight_through: hard forward, gradient to q through onehot(e) + q − sg(q)")
    joint_placement: Literal["broadcast", "first"] = Field(
        "broadcast", description="where log q(e) joins the token log-probs (joint): every "
        "response token, or the first one only")
    expert_logprob: Literal["q", "hysteresis"] = Field(
        "q", description="stored expert log-prob: log q_t(e_t) (spec) or the log-prob under "
        "the sample-then-hysteresis rule")
    temperature_init: Float = Field(1.0, gt=0.0, description="T_0 of T_k = max(T_min, T_0 γ^k)")
    temperature_min: Float = Field(0.1, gt=0.0, description="T_min")
    temperature_decay: Float = Field(0.95, gt=0.0, le=1.0, description="γ (k = iteration)")
    hysteresis_margin: Float = Field(0.2, ge=0.0, le=1.0, description="δ: switch experts only "
                                     "if q(e') − q(e_prev) > δ")
    switch_coef: Float = Field(0.1, ge=0.0, description="λ_sw, switching penalty weight")
    switch_form: Literal["tv", "overlap"] = Field("tv", description="tv: ½‖q_t − q_{t−1}‖₁; "
                                                  "overlap: 1 − ⟨q_t, q_{t−1}⟩")
    load_balance_coef: Float = Field(0.01, ge=0.0, description="λ_lb, load balance weight "
                                     "[CODE form]")
    router_width: Int = Field(256, ge=1, description="router MLP width")
    history_dim: Int = Field(128, ge=1, description="router GRU state size")
    history_proj: Int = Field(128, ge=1, description="projected observation size fed to the GRU")
    feature_layer: Int = Field(-1, description="hidden-state layer of the frozen base pooled "
                               "into router features (−1 = last)")
    feature_max_tokens: Int | None = Field(512, ge=1, description="(trainer) router features "
                                           "read the last this-many tokens of each text")
    router_lr: Float | None = Field(None, gt=0.0, description="(trainer) router learning rate "
                                    "(null = optim.lr)")
    pretrain_rollouts: Int = Field(0, ge=0, description="router pre-training (off by default): "
                                   "rollouts of the warm start whose steps the code's keyword "
                                   "labeller marks explore/interact/navigate/recover; the router "
                                   "learns them by cross-entropy before RL (needs 4 experts)")
    pretrain_epochs: Int = Field(5, ge=1, description="passes over the pre-training rollouts")
    pretrain_lr: Float = Field(1e-3, gt=0.0, description="Adam learning rate of pre-training")
    pretrain_navigate_after: Literal["processed", "taken"] = Field(
        "processed", description="keyword labeller: 'navigate' needs the object taken and "
        "processed (heated/cleaned/cooled), or only taken")


def pamoe_options(c: PAMoEConfig) -> PAMoEOptions:
    """The algorithm options of a config section (checked by :class:`PAMoEOptions`)."""
    return PAMoEOptions(
        mode=c.mode, num_experts=c.num_experts, rank=c.rank, alpha=c.alpha, dropout=c.dropout,
        target_modules=None if c.target_modules is None else tuple(c.target_modules),
        router_grad=c.router_grad, joint_placement=c.joint_placement,
        expert_logprob=c.expert_logprob, temperature_init=c.temperature_init,
        temperature_min=c.temperature_min, temperature_decay=c.temperature_decay,
        hysteresis_margin=c.hysteresis_margin, switch_coef=c.switch_coef,
        switch_form=c.switch_form, load_balance_coef=c.load_balance_coef,
        router_width=c.router_width, history_dim=c.history_dim, history_proj=c.history_proj,
        feature_layer=c.feature_layer)
