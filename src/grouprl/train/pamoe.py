"""PA-MoE in the RL recipe (docs/pa-moe.md "Trainer integration"; spec-seed-systems §3.3):
the phase router picks one LoRA expert per environment step at rollout, and the learner
recomputes the same routing to train experts and router from the RL objective.

Per rollout step (:class:`StepRouter`, a :class:`grouprl.agent.rollout.StepRouting`)::

    g, o_t   = pooled base features of the goal (once per episode) and the observation
    e_t, ℓ_e = route_step(router, o_t, g, h_{t−1}, e_{t−1}, T_k)     sampled + hysteresis
    y_t      = generate(prompt_t) with every layer routed to e_t       one call per expert
    store    expert, expert_logp = ℓ_e, router_obs = o_t, router_goal = g     per row

Per update (:class:`PhaseRouting`, a :class:`grouprl.train.row_policy.RowPolicy`)::

    q        = softmax(router(obs, goal, experts; teacher-forced per trajectory) / T_k)
    joint    : ℓ_row ← ℓ_row + log q(e) (new) and + ℓ_e (old), placement broadcast | first
    straight : forward weights onehot(e) + q − sg(q), token log-probs unchanged
    L       += λ_sw · switching(q) + λ_lb · load_balance(q)            once per mini-batch

``T_k = max(T_min, T_0 γ^k)`` with k the iteration. Reference mode (one LoRA, router unused)
routes nothing: every hook is the identity, so it trains exactly what the released code trains.
The router lives on the policy as the sub-module ``pamoe_router`` (saved with the experts,
:mod:`grouprl.train.checkpoint_model`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from grouprl.batch import Rollout, factorize
from grouprl.distributed import launched_by_torchrun
from grouprl.moe import (
    ROUTER_ATTRIBUTE,
    PAMoEOptions,
    PhaseRouter,
    adapters_disabled,
    add_token_gates,
    attached_router,
    category_shares,
    expert_log_prob,
    inject_multi_lora,
    joint_token_logprobs,
    route,
    route_step,
    router_aux_loss,
    router_metrics,
    routing_probs,
    routing_weights,
    temperature_at,
    text_features,
)
from grouprl.policy.merge import merge_generations
from grouprl.train.config import ConfigError
from grouprl.train.pamoe_config import pamoe_options
from grouprl.train.pamoe_pretrain import PRETRAIN_ITERATION, RouterPretraining, pretrain_router
from grouprl.train.row_policy import PLAIN, RowForward

__all__ = ["ROUTER_MODULE", "attach_pamoe", "PhaseRouting", "StepRouter", "check_pamoe_config",
           "make_phase_routing", "policy_routing"]

ROUTER_MODULE = ROUTER_ATTRIBUTE
"""Name of the router sub-module on the policy model."""


def attach_pamoe(model: torch.nn.Module, options: PAMoEOptions) -> PhaseRouter | None:
    """Inject E experts into ``model`` (base frozen) and, in pa-moe mode, attach a fresh fp32
    router as ``model.pamoe_router``; returns the router (None in reference and token mode;
    token mode adds a soft gate per token to every layer instead)."""
    inject_multi_lora(model, num_experts=options.num_experts, rank=options.rank,
                      alpha=options.lora_alpha, dropout=options.dropout,
                      target_modules=options.targets)
    if options.mode == "token":                         # baseline: a soft gate per token
        add_token_gates(model)
    if not options.uses_router:
        return None
    device = next(model.parameters()).device
    router = PhaseRouter(model.config.hidden_size, options.num_experts,
                         width=options.router_width, history_dim=options.history_dim,
                         history_proj=options.history_proj).to(device)
    model.add_module(ROUTER_MODULE, router)
    return router


def _layout(rows: Rollout) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(b, s, B, S)``: each row's trajectory slot b and step position s (rows of a trajectory
    are its steps 0..L−1: trajectories are kept or dropped whole)."""
    b, n_traj = factorize(rows.batch.traj_id, "traj_id")
    step = torch.as_tensor(rows.batch.step).long()
    return b, step, n_traj, int(step.max()) + 1 if step.numel() else 0


class _RoutedForward:
    """One micro-batch of routed rows (:class:`grouprl.train.row_policy.RowForward`)."""

    def __init__(self, owner: PhaseRouting, rows: Rollout, idx: torch.Tensor, grad: bool):
        self.owner, self.rows, self.idx = owner, rows, idx
        self.experts = rows.expert[idx]
        with torch.enable_grad() if grad else torch.no_grad():
            self.q = owner.probs(rows)[idx]                             # (n, E), graph if grad

    def context(self) -> contextlib.AbstractContextManager:
        o = self.owner
        if o.options.router_grad == "straight_through":
            device = next(o.model.parameters()).device
            w = routing_weights(self.q, self.experts.to(self.q.device), "straight_through")
            return route(o.model, weights=w.to(device))                # onehot(e) + q − sg(q)
        return route(o.model, experts=self.experts)

    def joint(self, logp: torch.Tensor, mask: torch.Tensor, old_logp: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        o = self.owner.options
        if o.router_grad != "joint":
            return logp, old_logp
        e = self.experts.to(self.q.device)
        new = expert_log_prob(self.q, e, kind=o.expert_logprob, margin=o.hysteresis_margin,
                              previous=self.owner.previous(self.rows)[self.idx].to(e.device))
        old = self.rows.expert_logp[self.idx]
        put = o.joint_placement
        return (joint_token_logprobs(logp, mask, new.to(logp.device), put),
                None if old_logp is None else
                joint_token_logprobs(old_logp, mask, old.to(old_logp.device), put))


class PhaseRouting:
    """The routed policy of a run: rollout routers (:meth:`sampling`, :meth:`evaluation`) and
    the learner hooks (:class:`grouprl.train.row_policy.RowPolicy`)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, options: PAMoEOptions,
                 router: PhaseRouter | None, *, feature_max_tokens: int | None = None,
                 feature_batch_size: int | None = None,
                 pretraining: RouterPretraining | None = None) -> None:
        self.model, self.tokenizer, self.options, self.router = model, tokenizer, options, router
        self.pretraining = pretraining or RouterPretraining()
        self.feature_max_tokens, self.feature_batch_size = feature_max_tokens, feature_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.set_iteration(0)

    def set_iteration(self, iteration: int) -> None:
        """T_k of iteration k (rollout and update of that iteration)."""
        o = self.options
        self.temperature = temperature_at(iteration, o.temperature_init, o.temperature_min,
                                          o.temperature_decay)

    def pretrain(self, sampler: Any) -> dict[str, float]:
        """Router pre-training before RL (:mod:`grouprl.train.pamoe_pretrain`; off unless
        ``pretrain_rollouts`` > 0): the sampler's rollouts of pseudo-iterations
        ``PRETRAIN_ITERATION + k`` labelled by the keyword phases."""
        n = self.pretraining.rollouts
        if self.router is None or n == 0:
            return {}
        with torch.no_grad():
            rollouts = [sampler.rollout(PRETRAIN_ITERATION + k)[0] for k in range(n)]
        return pretrain_router(self, rollouts, self.pretraining)

    # ---------------------------------------------------------------- rollout
    def sampling(self, generator: torch.Generator | None) -> StepRouter | None:
        """The training rollout's step router (experts sampled with ``generator``)."""
        return None if self.router is None else StepRouter(self, greedy=False,
                                                           generator=generator)

    def evaluation(self) -> StepRouter | None:
        """The evaluation rollout's step router (argmax proposals, hysteresis kept)."""
        return None if self.router is None else StepRouter(self, greedy=True, generator=None)

    def features(self, texts: list[str]) -> torch.Tensor:
        """(N, d) router features of ``texts`` from the frozen base."""
        return text_features(self.model, self.tokenizer, texts, layer=self.options.feature_layer,
                             max_tokens=self.feature_max_tokens,
                             batch_size=self.feature_batch_size)

    # ---------------------------------------------------------------- learner hooks
    def probs(self, rows: Rollout) -> torch.Tensor:
        """(N, E) q of every row, recomputed teacher-forced over whole trajectories."""
        return routing_probs(self.logits(rows), self.temperature)

    def logits(self, rows: Rollout) -> torch.Tensor:
        """(N, E) router logits z of every row, teacher-forced over whole trajectories."""
        b, s, n_traj, n_steps = _layout(rows)
        device = next(self.router.parameters()).device
        d = rows.router_obs.shape[-1]
        obs = torch.zeros(n_traj, n_steps, d, device=device)
        obs[b, s] = rows.router_obs.to(device)
        goal = torch.zeros(n_traj, d, device=device)
        goal[b] = rows.router_goal.to(device)
        experts = torch.zeros(n_traj, n_steps, dtype=torch.long, device=device)
        experts[b, s] = rows.expert.long().to(device)
        return self.router(obs, goal, experts)[b, s]                        # (N, E)

    def previous(self, rows: Rollout) -> torch.Tensor:
        """(N,) e_{t−1} of every row (−1 at a trajectory's first step)."""
        b, s, n_traj, n_steps = _layout(rows)
        grid = torch.full((n_traj, n_steps + 1), -1, dtype=torch.long)
        grid[b, s + 1] = rows.expert.long()
        return grid[b, s]

    def _categories(self, rows: Rollout) -> tuple[torch.Tensor | None, tuple[str, ...]]:
        names = tuple(sorted({c for c in rows.category if c is not None}))
        if not names or len(rows.category) != len(rows) or None in rows.category:
            return None, ()
        code = {c: i for i, c in enumerate(names)}
        return torch.tensor([code[c] for c in rows.category], dtype=torch.long), names

    def begin(self, rows: Rollout) -> dict[str, float]:
        """Router metrics of the rollout (q recomputed = the rollout's q, spec check 8) and
        ``pamoe/trainable_parameters`` (experts, gates and router)."""
        size = {"pamoe/trainable_parameters": float(self.trainable)}
        if self.router is None:
            return size
        with torch.no_grad():
            q = self.probs(rows).cpu()
        category, names = self._categories(rows)
        b = torch.as_tensor(rows.batch.traj_id)
        return {**size, **router_metrics(q, rows.expert.long(), b,
                                         torch.as_tensor(rows.batch.step), self.temperature,
                                         category, names)}

    def micro_batch(self, rows: Rollout, idx: torch.Tensor, *, grad: bool) -> RowForward:
        if self.router is None:
            return PLAIN.micro_batch(rows, idx, grad=grad)
        return _RoutedForward(self, rows, idx, grad)

    def mini_batch_loss(self, rows: Rollout, idx: torch.Tensor
                        ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """λ_sw · switching + λ_lb · load balance over the mini-batch's rows, and the
        occupancy indicators ``router/occupancy/<category>`` = 1[share > 0.5] with rows
        weighted by |A_n| · L_n (their policy-gradient weight; metrics averaged over the
        iteration's mini-batches give the paper's parameter occupancy)."""
        metrics: dict[str, float] = {}
        category, names = self._categories(rows)
        if category is not None and rows.advantages is not None:
            weight = rows.advantages[idx].double().abs() * \
                rows.response_mask[idx].sum(-1).double()
            shares = category_shares(category[idx], len(names), weight)
            metrics.update({f"router/occupancy/{c}": float(shares[i] > 0.5)
                            for i, c in enumerate(names)})
        if self.router is None:
            return None, metrics
        o = self.options
        q = self.probs(rows)[idx]
        loss, m = router_aux_loss(q, torch.as_tensor(rows.batch.traj_id)[idx],
                                  torch.as_tensor(rows.batch.step)[idx],
                                  switch_coef=o.switch_coef,
                                  load_balance_coef=o.load_balance_coef,
                                  switch_form=o.switch_form)
        return loss, {**metrics, **m}


class StepRouter:
    """The phase router at rollout (:class:`grouprl.agent.rollout.StepRouting`): per env, the
    goal feature, the GRU state h and the last expert; per step, one generation call per
    expert present (every forward of a call uses that expert, whatever the engine's
    chunking), merged back in prompt order."""

    def __init__(self, owner: PhaseRouting, *, greedy: bool,
                 generator: torch.Generator | None) -> None:
        self.owner, self.greedy, self.generator = owner, greedy, generator
        self._columns: list[dict[str, torch.Tensor]] = []

    def start(self, goals: list[str]) -> None:
        router = self.owner.router
        self.goal = self.owner.features(goals) if goals else None
        self.state = router.initial_state(len(goals))
        self.prev = torch.full((len(goals),), -1, dtype=torch.long, device=self.state.device)
        self._columns = []

    def generate(self, generate_fn: Callable[[list[str]], Any], prompts: list[str],
                 envs: list[int], observations: list[str]) -> Any:
        o, owner = self.owner.options, self.owner
        env = torch.tensor(envs, dtype=torch.long, device=self.state.device)
        obs = owner.features(observations).to(self.state.device)
        goal = self.goal[env].to(self.state.device)
        step = route_step(owner.router, obs, goal, self.state[env], self.prev[env],
                          temperature=owner.temperature, margin=o.hysteresis_margin,
                          greedy=self.greedy, logprob_kind=o.expert_logprob,
                          generator=self.generator)
        self.state[env], self.prev[env] = step.state, step.experts
        experts = step.experts.cpu()
        parts, rows = [], []
        for e in torch.unique(experts).tolist():
            sub = torch.nonzero(experts == e).flatten().tolist()
            with route(owner.model, experts=int(e)):
                parts.append(generate_fn([prompts[j] for j in sub]))
            rows.append(sub)
        self._columns.append({"expert": experts, "expert_logp": step.log_prob.float().cpu(),
                              "router_obs": obs.float().cpu(), "router_goal": goal.float().cpu()})
        return merge_generations(parts, rows, owner.pad_id)

    def columns(self) -> dict[str, torch.Tensor]:
        if not self._columns:
            return {}
        return {k: torch.cat([c[k] for c in self._columns]) for k in self._columns[0]}


def policy_routing(cfg: Any, model: torch.nn.Module, tokenizer: Any, iteration: int = 0
                   ) -> PhaseRouting | Any:
    """The routing of a loaded run's policy (experts already attached; :data:`PLAIN` without
    ``model.pamoe``), at the router temperature of ``iteration``."""
    if not cfg.model.pamoe.enabled:
        return PLAIN
    routing, _ = make_phase_routing(cfg, model, tokenizer, attach=False)
    routing.set_iteration(iteration)
    return routing


def check_pamoe_config(cfg: Any) -> None:
    """Cross-key checks of ``model.pamoe`` (``ConfigError`` naming the key and the fix)."""
    p = cfg.model.pamoe
    if not p.enabled:
        return
    if cfg.mode != "rl":
        raise ConfigError(f"model.pamoe.enabled: PA-MoE trains in mode: rl only (this run is "
                          f"mode: {cfg.mode}); set model.pamoe.enabled=false")
    if cfg.model.lora.enabled:
        raise ConfigError("model.pamoe.enabled: the experts replace model.lora; set "
                          "model.lora.enabled=false (model.pamoe.rank/alpha/target_modules "
                          "size the experts)")
    if cfg.rollout.generation_backend != "hf":
        raise ConfigError("model.pamoe.enabled: routed generation needs the HF loop; set "
                          "rollout.generation_backend=hf")
    if p.pretrain_rollouts and (p.mode != "pa-moe" or p.num_experts < 4):
        raise ConfigError("model.pamoe.pretrain_rollouts: the keyword labeller has 4 phases; "
                          "router pre-training needs model.pamoe.mode=pa-moe and "
                          "model.pamoe.num_experts >= 4 (or set pretrain_rollouts=0)")
    if launched_by_torchrun() or cfg.distributed.model_sharding != "replicated":
        raise ConfigError("model.pamoe.enabled: PA-MoE runs in one process for now; start "
                          "without torchrun/--nproc and with distributed.model_sharding="
                          "replicated")


def make_phase_routing(cfg: Any, model: torch.nn.Module, tokenizer: Any, *,
                       attach: bool = True) -> tuple[PhaseRouting, Callable[[], Any]]:
    """``(routing, reference_context)`` of a ``model.pamoe`` run: experts injected and router
    attached (``attach=False``: already there, e.g. a loaded run), and the context that turns
    every expert off (the base: the KL reference)."""
    p = cfg.model.pamoe
    options = pamoe_options(p)
    router = attach_pamoe(model, options) if attach else attached_router(model)
    routing = PhaseRouting(model, tokenizer, options, router,
                           feature_max_tokens=p.feature_max_tokens,
                           feature_batch_size=cfg.rollout.generation_batch_size,
                           pretraining=RouterPretraining(p.pretrain_rollouts, p.pretrain_epochs,
                                                         p.pretrain_lr,
                                                         p.pretrain_navigate_after))
    return routing, (lambda: adapters_disabled(model))
