"""Task-agnostic ("scalar") pheromone of PhGPO (Li et al., arXiv 2602.13691; spec §2.4).

Released code: ``ScalarPheromoneSystem`` / ``PheromoneEnhancer`` of
``train_grpo_aco_v12_qwen_7b.py`` (v12). Two tables, float64:

* ``tool[a⁻, a]`` = τ_tool(a⁻ → a), shape ``[n_tools + 1, n_tools]``; row ``n_tools`` is the
  ``__START__`` symbol (the "previous tool" of step 0). Initial value τ0.
* ``param[v]`` = τ_param of argument-schema variant v (a variant belongs to one tool), shape
  ``[n_variants]``. Initial value τ0.

Update rules, with m the trajectory's prefix match ratio (spec §2.6) and every value capped at
τ_max:

* success (m ≥ 0.7 and the reference run succeeded): ``τ += α_g · m · mult`` on each transition,
  and ``τ_param += 0.3 · m`` on each used variant;
* not success but m > 0.3: ``τ += α_l · m · 0.5``; otherwise nothing (v12 has no negative deposit);
* evaporation: ``τ ← max(τ_min, (1 − ρ) · τ)`` (the parameter table with ρ/2); protected edges
  are floored at 5.0 instead of τ_min when ``protect=True`` (stage 3);
* golden edges (end of stage 2): used ≥ 3 times with success rate ≥ 0.5; those with ≥ 5
  successful uses become protected;
* warm-up (before stage 3, 3 rounds) and injection (every 3 epochs of stage 3): golden edges get
  ``α_g · strength · rate`` (× 0.5 for injection, top 100 only), elite transitions get
  ``α_g · strength · model_match``; strength 8.0 (warm-up) and 5.0 (injection).

Edge statistics (uses, successes) are counted per transition occurrence at every
:meth:`TransitionPheromone.deposit` call, whatever the deposit amount [GUESS: the code's counter
granularity is not stated in the spec].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from grouprl.validation import check_int, check_number

__all__ = ["PheromoneConfig", "TransitionPheromone", "transitions"]


@dataclass(frozen=True)
class PheromoneConfig:
    """Constants of the scalar pheromone (defaults: v12 ``Config``, spec §2.4).

    Attributes:
        tau0, tau_min, tau_max: τ0 = 1 (initial), τ_min = 0.5 (evaporation floor), τ_max = 20.
        rho: evaporation rate ρ = 0.01; ``param_rho_scale``: the parameter table uses ρ · 0.5.
        alpha_global, elite_multiplier: success deposit α_g · m · mult (0.5, 5.0).
        alpha_local, partial_scale: partial deposit α_l · m · 0.5 (α_l = 0.3).
        success_match, partial_match: m ≥ 0.7 is a success, m > 0.3 a partial deposit.
        param_rate: ``τ_param += 0.3 · m`` on success.
        golden_min_uses, golden_min_rate: golden edge = ≥ 3 uses and success rate ≥ 0.5.
        protect_min_successes, protected_floor: ≥ 5 successes → protected, floored at 5.0.
        warmup_rounds, warmup_strength: 3 rounds of α_g · 8.0 · (rate | model match).
        inject_strength, inject_top, inject_golden_scale: α_g · 5.0 · model match for elite
            transitions, α_g · 5.0 · rate · 0.5 for the top-100 golden edges.
    """

    tau0: float = 1.0
    tau_min: float = 0.5
    tau_max: float = 20.0
    rho: float = 0.01
    param_rho_scale: float = 0.5
    alpha_global: float = 0.5
    elite_multiplier: float = 5.0
    alpha_local: float = 0.3
    partial_scale: float = 0.5
    success_match: float = 0.7
    partial_match: float = 0.3
    param_rate: float = 0.3
    golden_min_uses: int = 3
    golden_min_rate: float = 0.5
    protect_min_successes: int = 5
    protected_floor: float = 5.0
    warmup_rounds: int = 3
    warmup_strength: float = 8.0
    inject_strength: float = 5.0
    inject_top: int = 100
    inject_golden_scale: float = 0.5

    def __post_init__(self) -> None:
        check_number("tau_min", self.tau_min, 0.0, low_open=True)
        check_number("tau_max", self.tau_max, self.tau_min)
        check_number("tau0", self.tau0, self.tau_min, self.tau_max)
        check_number("protected_floor", self.protected_floor, self.tau_min, self.tau_max)
        for name in ("rho", "param_rho_scale", "success_match", "partial_match",
                     "golden_min_rate"):
            check_number(name, getattr(self, name), 0.0, 1.0)
        for name in ("alpha_global", "elite_multiplier", "alpha_local", "partial_scale",
                     "param_rate", "warmup_strength", "inject_strength", "inject_golden_scale"):
            check_number(name, getattr(self, name), 0.0)
        for name in ("golden_min_uses", "protect_min_successes", "warmup_rounds", "inject_top"):
            check_int(name, getattr(self, name), 0)


def transitions(actions: Sequence[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The transitions (a⁻_t, a_t) of a trajectory, with a⁻_0 = ``start`` (``__START__``)."""
    nxt = torch.as_tensor(list(actions), dtype=torch.long)
    prev = torch.cat([torch.tensor([start]), nxt[:-1]]) if len(nxt) else nxt
    return prev, nxt


class TransitionPheromone:
    """τ_tool and τ_param tables with the v12 update rules (module docstring)."""

    def __init__(self, num_tools: int, num_variants: int = 0,
                 config: PheromoneConfig | None = None) -> None:
        check_int("num_tools", num_tools, 1)
        check_int("num_variants", num_variants, 0)
        self.config = config or PheromoneConfig()
        self.num_tools, self.num_variants = num_tools, num_variants
        shape = (num_tools + 1, num_tools)
        self.tool = torch.full(shape, self.config.tau0, dtype=torch.float64)
        self.param = torch.full((num_variants,), self.config.tau0, dtype=torch.float64)
        self.uses = torch.zeros(shape, dtype=torch.long)
        self.successes = torch.zeros(shape, dtype=torch.long)
        self.protected = torch.zeros(shape, dtype=torch.bool)

    @property
    def start(self) -> int:
        """Row index of ``__START__``."""
        return self.num_tools

    # -- reading ---------------------------------------------------------------------------

    def values(self, prev: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """τ_tool(a⁻_b → c_bj) for rows ``prev`` [B] and candidates [B, k]: shape [B, k]."""
        return self.tool[prev.long().unsqueeze(-1), candidates.long()]

    def is_success(self, match: float, reference_success: bool = True) -> bool:
        """Success = m ≥ 0.7 and the reference run succeeded (spec §2.6)."""
        return match >= self.config.success_match and bool(reference_success)

    def deposit_amount(self, match: float, reference_success: bool = True) -> float:
        """Δτ per transition: α_g·m·mult on success, α_l·m·0.5 if m > 0.3, else 0."""
        c = self.config
        check_number("match", match, 0.0, 1.0)
        if self.is_success(match, reference_success):
            return c.alpha_global * match * c.elite_multiplier          # α_g · m · mult
        if match > c.partial_match:
            return c.alpha_local * match * c.partial_scale              # α_l · m · 0.5
        return 0.0

    # -- updates ---------------------------------------------------------------------------

    def _add(self, prev: torch.Tensor, nxt: torch.Tensor, amount: float | torch.Tensor) -> None:
        """τ[a⁻, a] ← min(τ_max, τ[a⁻, a] + amount) for every listed transition."""
        amount = torch.as_tensor(amount, dtype=torch.float64).expand(prev.shape)
        self.tool.index_put_((prev, nxt), amount, accumulate=True)
        self.tool.clamp_(max=self.config.tau_max)

    def _check_actions(self, actions: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(actions), dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_tools):
            raise ValueError(f"actions: tool ids must lie in [0, {self.num_tools}), got "
                             f"{ids.tolist()}")
        return ids

    def deposit(self, actions: Sequence[int], match: float, reference_success: bool = True,
                variants: Sequence[int] = ()) -> float:
        """Deposit on every transition of one trajectory; returns the per-transition Δτ.

        Also counts each transition's uses and successes (for golden edges), and on success
        adds ``param_rate · m`` to the used variants' τ_param.
        """
        prev, nxt = transitions(self._check_actions(actions).tolist(), self.start)
        amount = self.deposit_amount(match, reference_success)
        success = self.is_success(match, reference_success)
        one = torch.ones_like(prev)
        self.uses.index_put_((prev, nxt), one, accumulate=True)
        if success:
            self.successes.index_put_((prev, nxt), one, accumulate=True)
        if amount > 0:
            self._add(prev, nxt, amount)
        if success and len(variants):
            v = torch.as_tensor(list(variants), dtype=torch.long)
            if int(v.min()) < 0 or int(v.max()) >= self.num_variants:
                raise ValueError(f"variants: ids must lie in [0, {self.num_variants}), got "
                                 f"{v.tolist()}")
            gain = torch.full(v.shape, self.config.param_rate * match, dtype=torch.float64)
            self.param.index_put_((v,), gain, accumulate=True)     # τ_param += 0.3 · m
            self.param.clamp_(max=self.config.tau_max)
        return amount

    def evaporate(self, protect: bool = False) -> None:
        """τ ← max(floor, (1 − ρ)·τ); τ_param ← max(τ_min, (1 − ρ/2)·τ_param).

        floor = τ_min, or ``protected_floor`` (5.0) on protected edges when ``protect``.
        """
        c = self.config
        floor = torch.full_like(self.tool, c.tau_min)
        if protect:
            floor = torch.where(self.protected, torch.full_like(floor, c.protected_floor), floor)
        self.tool = torch.maximum((1.0 - c.rho) * self.tool, floor)
        rho_param = c.rho * c.param_rho_scale
        self.param = torch.clamp_min((1.0 - rho_param) * self.param, c.tau_min)

    def success_rate(self) -> torch.Tensor:
        """successes / uses per edge (0 where unused)."""
        return self.successes.double() / self.uses.clamp_min(1).double()

    def golden_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges [G, 2], success rate [G]): ≥ ``golden_min_uses`` uses, rate ≥ 0.5.

        Ordered by rate, then successes, descending (ties: row-major edge order) — the order
        the injection's top-100 cut uses [GUESS: ranking key not given by the spec].
        """
        c = self.config
        rate = self.success_rate()
        mask = (self.uses >= max(c.golden_min_uses, 1)) & (rate >= c.golden_min_rate)
        edges = mask.nonzero()
        r, s = rate[mask], self.successes[mask].double()
        order = sorted(range(len(edges)), key=lambda i: (-float(r[i]), -float(s[i])))
        order_t = torch.tensor(order, dtype=torch.long)
        return edges[order_t].reshape(-1, 2), r[order_t]

    def protect_golden(self) -> int:
        """Mark golden edges with ≥ ``protect_min_successes`` successes as protected; count."""
        edges, _ = self.golden_edges()
        keep = self.successes[edges[:, 0], edges[:, 1]] >= self.config.protect_min_successes
        self.protected[edges[keep, 0], edges[keep, 1]] = True
        return int(keep.sum())

    def _reinforce(self, elites: Sequence[tuple[Sequence[int], float]], strength: float,
                   golden_scale: float, top: int | None) -> None:
        """Golden edges += α_g·strength·rate·scale; elite transitions += α_g·strength·match."""
        base = self.config.alpha_global * strength
        edges, rate = self.golden_edges()
        if top is not None:
            edges, rate = edges[:top], rate[:top]
        if len(edges):
            self._add(edges[:, 0], edges[:, 1], base * rate * golden_scale)
        for actions, model_match in elites:
            check_number("model_match", model_match, 0.0, 1.0)
            prev, nxt = transitions(self._check_actions(actions).tolist(), self.start)
            self._add(prev, nxt, base * model_match)

    def warm_up(self, elites: Sequence[tuple[Sequence[int], float]]) -> None:
        """Stage-3 warm-up: ``warmup_rounds`` × (golden α_g·8·rate, elite α_g·8·match).

        ``elites``: (actions, model-match ratio) of the successful elite trajectories.
        """
        for _ in range(self.config.warmup_rounds):
            self._reinforce(elites, self.config.warmup_strength, 1.0, None)

    def inject(self, elites: Sequence[tuple[Sequence[int], float]]) -> None:
        """Stage-3 periodic injection: elite α_g·5·match; top-100 golden α_g·5·rate·0.5."""
        c = self.config
        self._reinforce(elites, c.inject_strength, c.inject_golden_scale, c.inject_top)

    # -- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (``torch.save(weights_only=True)``-safe)."""
        return {"config": asdict(self.config), "num_tools": self.num_tools,
                "num_variants": self.num_variants, "tool": self.tool.clone(),
                "param": self.param.clone(), "uses": self.uses.clone(),
                "successes": self.successes.clone(), "protected": self.protected.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` returned (sizes must match)."""
        if (state["num_tools"], state["num_variants"]) != (self.num_tools, self.num_variants):
            raise ValueError(f"state: sizes (num_tools, num_variants) = "
                             f"{(state['num_tools'], state['num_variants'])} do not match "
                             f"{(self.num_tools, self.num_variants)}")
        self.config = PheromoneConfig(**state["config"])
        for name in ("tool", "param", "uses", "successes", "protected"):
            setattr(self, name, state[name].clone())
