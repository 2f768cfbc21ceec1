"""PhGPO's learner on the tool head: the supervised epoch (stage 1), the per-task RL update
(stages 2 and 3) and the held-out evaluation (spec §2.3–§2.7, docs/tool-planning.md).

Per RL task (the released code's order)::

    group = rollout_group(task, logits_fn, store, ...)        # G rollouts, fused sampling
    A     = trajectory_advantages(group.returns)              # GRPO per task, same A each step
    ℓ     = policy(state texts of every step)                 # recomputed with gradients
    L     = step_loss(ℓ, group.steps, A, labels, w_sl, ...)   # CE + PPO-clip − entropy
    one optimizer step (grad clip optim.grad_clip)
    store.update(actions_i, m_i, ...) for each rollout        # deposits + context write
    elite.add(...)                                            # stage 3, or tf < 0.4

Evaporation runs before every ``evaporate_every``-th task of an epoch (protected in stage 3).
Sampling runs the policy in eval mode (no dropout) under ``no_grad``; the update in train mode.

Evaluation (spec §2.6): every held-out task, ``eval_rollouts`` rollouts, ε = 0, no teacher
forcing, stochastic sampling from a generator seeded afresh each call (so evaluating never
moves a training RNG), with β = 0 and with β = ``eval_beta`` on the training store (test-time
memory, read only). Next-tool accuracy: argmax of the head on the held-out reference states.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from grouprl.phgpo.elite import EliteBuffer, EliteTrajectory
from grouprl.phgpo.episode import rollout_group
from grouprl.phgpo.metrics import is_success, next_tool_accuracy
from grouprl.phgpo.objective import step_loss
from grouprl.phgpo.rewards import RewardConfig, trajectory_advantages
from grouprl.phgpo.schedules import evaporation_due
from grouprl.phgpo.store import PheromoneStore
from grouprl.phgpo.synthetic import ToolTask
from grouprl.phgpo.tool_head import ToolHeadPolicy
from grouprl.train.config_schema import PhGPOConfig
from grouprl.train.tool_data import ToolData, supervised_samples, task_state
from grouprl.train.tool_stages import EpochSettings

__all__ = ["ToolLearner", "ELITE_TF_BELOW"]

ELITE_TF_BELOW = 0.4
"""Stage 2 fills the elite buffer once teacher forcing is below this (spec §2.7)."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class ToolLearner:
    """The tool-head policy, its optimizer, the pheromone store and the elite buffer."""

    def __init__(self, pc: PhGPOConfig, policy: ToolHeadPolicy, tokenizer: Any,
                 optimizer: torch.optim.Optimizer, data: ToolData, store: PheromoneStore,
                 elite: EliteBuffer, reward_config: RewardConfig, *, grad_clip: float | None,
                 eval_tasks: int, seed: int) -> None:
        self.pc, self.policy, self.tok, self.optimizer = pc, policy, tokenizer, optimizer
        self.data, self.store, self.elite, self.rewards = data, store, elite, reward_config
        self.grad_clip, self.seed = grad_clip, seed
        self.test = data.test[:eval_tasks]

    # ------------------------------------------------------------------ policy

    def logits(self, states: Sequence[str]) -> torch.Tensor:
        return self.policy.tool_logits(self.tok, states, self.pc.max_length)

    def _sampling_logits(self, task: ToolTask):
        def fn(t: int, histories: Sequence[list[tuple[int, str]]]) -> torch.Tensor:
            states = [task_state(task, self.data.tool_names, [a for a, _ in h], [o for _, o in h])
                      for h in histories]
            return self.logits(states).float()
        return fn

    def _step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or float("inf"))
        self.optimizer.step()
        return float(norm)

    # ------------------------------------------------------------------ stage 1

    def supervised_epoch(self, settings: EpochSettings, rng: random.Random) -> dict[str, float]:
        """One pass of next-tool CE (label smoothing) over the reference-history states."""
        states, labels = supervised_samples(self.data.train, self.data.tool_names)
        order = list(range(len(states)))
        rng.shuffle(order)
        size = self.pc.supervised_batch_size
        losses, accs = [], []
        self.policy.train()
        for i in range(0, len(order), size):
            idx = order[i:i + size]
            logits = self.logits([states[j] for j in idx])
            loss = torch.nn.functional.cross_entropy(logits, labels[idx].to(logits.device),
                                                     label_smoothing=settings.label_smoothing)
            self._step(loss)
            losses.append(float(loss.detach()))
            accs.append(next_tool_accuracy(logits.detach().cpu(), labels[idx]))
        return {"train/sl_loss": _mean(losses), "train/next_tool_accuracy": _mean(accs)}

    # ------------------------------------------------------------------ stages 2 and 3

    def rl_task(self, task: ToolTask, settings: EpochSettings, generator: torch.Generator
                ) -> dict[str, float]:
        """Rollouts of one task, one update, then the deposits (module docstring)."""
        pc, names = self.pc, self.data.tool_names
        emb = self.data.embedding(task)
        self.policy.eval()
        with torch.no_grad():
            group = rollout_group(
                task.reference, self._sampling_logits(task), self.store,
                lambda t, a: self.data.simulate(task, t, a), names, group_size=pc.group_size,
                max_steps=settings.horizon, beta=settings.beta, lam=settings.lam,
                embedding=emb, temperature=pc.temperature, top_k=pc.top_k,
                epsilon=settings.epsilon, teacher_forcing=settings.teacher_forcing,
                first_step_use_pheromone=pc.first_step_use_pheromone,
                ratio_mode=pc.ratio_mode, reference_success=task.success,
                reward_config=self.rewards, generator=generator)
        adv = trajectory_advantages(group.returns, [0] * pc.group_size, std=pc.advantage_std)
        horizon = len(group.actions[0])
        states = [task_state(task, names, group.actions[i][:t], group.outputs[i][:t])
                  for t in range(horizon) for i in range(pc.group_size)]   # rows (step, rollout)
        self.policy.train()
        logits = self.logits(states)
        loss, m = step_loss(logits, group.steps, adv[group.rollout].to(logits.dtype),
                            group.labels.to(logits.device), sl_weight=settings.sl_weight,
                            ratio_mode=pc.ratio_mode, clip=pc.clip,
                            entropy_coef=pc.entropy_coef,
                            label_smoothing=settings.label_smoothing)
        grad_norm = self._step(loss)
        fill = settings.stage == 3 or settings.teacher_forcing < ELITE_TF_BELOW
        successes = []
        for actions, match, model_match in zip(group.actions, group.match, group.model_match):
            used = [task.reference_variants[t] for t, a in enumerate(actions)
                    if a == task.reference[t]]
            self.store.update(actions, match, reference_success=task.success, variants=used,
                              embedding=emb, task_key=str(task.task_id))
            success = is_success(match, task.success)
            successes.append(float(success))
            if fill:
                self.elite.add(EliteTrajectory(task.task_id, tuple(actions), match,
                                               model_match, success))
        return {"train/loss": float(loss.detach()), "train/grad_norm": grad_norm,
                "train/match_rate": _mean(group.match), "train/success_rate": _mean(successes),
                "train/model_match": _mean(group.model_match),
                "train/return": _mean(group.returns), **{f"train/{k}": v for k, v in m.items()}}

    def rl_epoch(self, tasks: Sequence[ToolTask], settings: EpochSettings,
                 generator: torch.Generator) -> dict[str, float]:
        """Every task of the epoch (evaporating before every ``evaporate_every``-th)."""
        rows: list[dict[str, float]] = []
        for index, task in enumerate(tasks):
            if evaporation_due(index, self.pc.evaporate_every):
                self.store.evaporate(protect=settings.stage == 3)
            rows.append(self.rl_task(task, settings, generator))
        return {k: _mean([r[k] for r in rows]) for k in rows[0]} if rows else {}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        """Held-out match rate and success at β = 0 and β = eval_beta; next-tool accuracy."""
        pc, names = self.pc, self.data.tool_names
        self.policy.eval()
        out: dict[str, float] = {}
        with torch.no_grad():
            states, labels = supervised_samples(self.test, names)
            logits = torch.cat([self.logits(states[i:i + 64]).float().cpu()
                                for i in range(0, len(states), 64)])
            out["eval/next_tool_accuracy"] = next_tool_accuracy(logits, labels)
            for suffix, beta in (("_beta0", 0.0), ("", pc.eval_beta)):
                generator = torch.Generator().manual_seed(self.seed + 99)
                match, success = [], []
                for task in self.test:
                    group = rollout_group(
                        task.reference, self._sampling_logits(task), self.store,
                        lambda t, a, task=task: self.data.simulate(task, t, a), names,
                        group_size=pc.eval_rollouts, max_steps=pc.max_steps, beta=beta,
                        lam=pc.fusion_lambda[1], embedding=self.data.embedding(task),
                        temperature=pc.temperature, top_k=pc.top_k, epsilon=0.0,
                        first_step_use_pheromone=pc.first_step_use_pheromone,
                        ratio_mode=pc.ratio_mode, reference_success=task.success,
                        reward_config=self.rewards, generator=generator)
                    match += group.match
                    success += [float(is_success(m, task.success)) for m in group.match]
                out[f"eval/match_rate{suffix}"] = _mean(match)
                out[f"eval/success_rate{suffix}"] = _mean(success)
        out["eval/uniform_match_rate"] = 1.0 / len(names)
        return out
