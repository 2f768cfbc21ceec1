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

Data parallel (``comm``; docs/distributed.md): the policy is replicated (rank 0's weights) and
every rank holds the same pheromone store and elite buffer, which is what keeps the ranks'
sampling distributions consistent:

* an RL epoch runs in rounds of W tasks (task ``i·W + r`` on rank r; every rank draws the same
  epoch plan). Each round: the evaporation due before its first task; every rank rolls out its
  task on the store as it stands; one optimizer step on the round's loss
  ``Σ_r Σ_{steps of r} L_t / N`` (N = the round's steps on every rank: each rank scales its task
  mean by ``n_r / N``; gradients all-reduced, SUM); then every rank gathers every rank's
  rollouts (actions, match) and applies the deposits, elite additions and the evaporations due
  before the round's other tasks **in task order** — the identical store on every rank. With
  W = 1 this is the one-process loop (one task per step);
* the supervised epoch shares each mini-batch's rows (contiguous shares; each rank's CE mean
  scaled by ``n_r / n``; gradients all-reduced), so a step equals the one-process step;
* evaluation shares the held-out tasks (each rank's generator offset by its first task; rank 0
  keeps the one-process stream) and the reference states, and gathers the results.

A parameter without a gradient on every rank (e.g. an LM head the tool head never reads) keeps
``grad = None`` as in one process (AdamW skips it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from grouprl.distributed import LOCAL, Comm, all_reduce_gradients, shard_bounds
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
                 eval_tasks: int, seed: int, comm: Comm = LOCAL) -> None:
        self.pc, self.policy, self.tok, self.optimizer = pc, policy, tokenizer, optimizer
        self.data, self.store, self.elite, self.rewards = data, store, elite, reward_config
        self.grad_clip, self.seed, self.comm = grad_clip, seed, comm
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

    def _step(self, loss: torch.Tensor | None) -> float:
        """Backward (``None``: this rank has no rows this step), the gradient all-reduce (data
        parallel), clip, one optimizer step; returns the (global) gradient norm."""
        self.optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.comm.distributed:           # only parameters some rank has a gradient for
            has = self.comm.max(torch.tensor([float(p.grad is not None) for p in params]))
            all_reduce_gradients([p for p, h in zip(params, has.tolist()) if h], self.comm)
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or float("inf"))
        self.optimizer.step()
        return float(norm)

    def _scale(self, loss: torch.Tensor, rows: int, total: int) -> torch.Tensor:
        """A rank's mean loss over ``rows`` of the step's ``total`` rows, as its share of the
        global mean (× 1 exactly in one process)."""
        return loss * (rows / total) if self.comm.distributed else loss

    def _total(self, rows: int) -> int:
        return int(self.comm.sum(torch.tensor([rows]))[0]) if self.comm.distributed else rows

    # ------------------------------------------------------------------ stage 1

    def supervised_epoch(self, settings: EpochSettings, rng: random.Random) -> dict[str, float]:
        """One pass of next-tool CE (label smoothing) over the reference-history states."""
        states, labels = supervised_samples(self.data.train, self.data.tool_names)
        order = list(range(len(states)))
        rng.shuffle(order)
        size = self.pc.supervised_batch_size
        losses, accs, sums = [], [], []
        self.policy.train()
        for i in range(0, len(order), size):
            batch = order[i:i + size]
            lo, hi = shard_bounds(len(batch), self.comm.world_size, self.comm.rank)
            idx = batch[lo:hi]
            if not idx:                     # a rank without rows of this mini-batch
                self._step(None)
                sums += [0.0, 0.0]
                continue
            logits = self.logits([states[j] for j in idx])
            loss = torch.nn.functional.cross_entropy(logits, labels[idx].to(logits.device),
                                                     label_smoothing=settings.label_smoothing)
            self._step(self._scale(loss, len(idx), len(batch)))
            losses.append(float(loss.detach()))
            accs.append(next_tool_accuracy(logits.detach().cpu(), labels[idx]))
            sums += [losses[-1] * len(idx) / len(batch), accs[-1] * len(idx) / len(batch)]
        if self.comm.distributed:           # each mini-batch's global mean, then their mean
            sums = self.comm.sum_floats(sums)
            losses, accs = sums[0::2], sums[1::2]
        return {"train/sl_loss": _mean(losses), "train/next_tool_accuracy": _mean(accs)}

    # ------------------------------------------------------------------ stages 2 and 3

    def _rollout(self, task: ToolTask, settings: EpochSettings, generator: torch.Generator):
        """The task's G rollouts on the store as it stands (no gradient, eval mode)."""
        pc = self.pc
        self.policy.eval()
        with torch.no_grad():
            return rollout_group(
                task.reference, self._sampling_logits(task), self.store,
                lambda t, a: self.data.simulate(task, t, a), self.data.tool_names,
                group_size=pc.group_size, max_steps=settings.horizon, beta=settings.beta,
                lam=settings.lam, embedding=self.data.embedding(task),
                temperature=pc.temperature, top_k=pc.top_k, epsilon=settings.epsilon,
                teacher_forcing=settings.teacher_forcing,
                first_step_use_pheromone=pc.first_step_use_pheromone,
                ratio_mode=pc.ratio_mode, reference_success=task.success,
                reward_config=self.rewards, generator=generator)

    def _loss(self, task: ToolTask, group: Any, settings: EpochSettings
              ) -> tuple[torch.Tensor, dict[str, float]]:
        """GRPO advantages of the group, the mean step loss over its rows (train mode)."""
        pc, names = self.pc, self.data.tool_names
        adv = trajectory_advantages(group.returns, [0] * pc.group_size, std=pc.advantage_std)
        horizon = len(group.actions[0])
        states = [task_state(task, names, group.actions[i][:t], group.outputs[i][:t])
                  for t in range(horizon) for i in range(pc.group_size)]   # rows (step, rollout)
        self.policy.train()
        logits = self.logits(states)
        return step_loss(logits, group.steps, adv[group.rollout].to(logits.dtype),
                         group.labels.to(logits.device), sl_weight=settings.sl_weight,
                         ratio_mode=pc.ratio_mode, clip=pc.clip, entropy_coef=pc.entropy_coef,
                         label_smoothing=settings.label_smoothing)

    def _deposit(self, task: ToolTask, rollouts: Sequence[tuple[list[int], float, float]],
                 settings: EpochSettings) -> None:
        """Each rollout's deposit and context write, and its elite entry (module docstring)."""
        fill = settings.stage == 3 or settings.teacher_forcing < ELITE_TF_BELOW
        emb = self.data.embedding(task)
        for actions, match, model_match in rollouts:
            used = [task.reference_variants[t] for t, a in enumerate(actions)
                    if a == task.reference[t]]
            self.store.update(actions, match, reference_success=task.success, variants=used,
                              embedding=emb, task_key=str(task.task_id))
            if fill:
                self.elite.add(EliteTrajectory(task.task_id, tuple(actions), match,
                                               model_match, is_success(match, task.success)))

    def rl_round(self, tasks: Sequence[ToolTask], settings: EpochSettings,
                 generator: torch.Generator, first: int = 0) -> list[dict[str, float]]:
        """One round (its tasks are the epoch's ``first``, ``first + 1``, …): rank r rolls out
        ``tasks[r]`` (none when there are fewer tasks than ranks), one optimizer step on every
        rank's rows, then every rank's deposits in task order (module docstring). Returns the
        metrics of each task, in task order."""
        task = tasks[self.comm.rank] if self.comm.rank < len(tasks) else None
        group = self._rollout(task, settings, generator) if task is not None else None
        rows = len(group.rollout) if group is not None else 0
        total = self._total(rows)
        loss, m = self._loss(task, group, settings) if group is not None else (None, {})
        grad_norm = self._step(self._scale(loss, rows, total) if loss is not None else None)
        mine = None
        if group is not None:
            successes = [float(is_success(x, task.success)) for x in group.match]
            mine = (list(zip(group.actions, group.match, group.model_match)), {
                "train/loss": float(loss.detach()), "train/grad_norm": grad_norm,
                "train/match_rate": _mean(group.match), "train/success_rate": _mean(successes),
                "train/model_match": _mean(group.model_match),
                "train/return": _mean(group.returns), **{f"train/{k}": v for k, v in m.items()}})
        parts = self.comm.gather(mine) if self.comm.distributed else [mine]
        for k, part in enumerate(parts[:len(tasks)]):
            if k and evaporation_due(first + k, self.pc.evaporate_every):
                self.store.evaporate(protect=settings.stage == 3)
            self._deposit(tasks[k], part[0], settings)
        return [part[1] for part in parts[:len(tasks)]]

    def rl_epoch(self, tasks: Sequence[ToolTask], settings: EpochSettings,
                 generator: torch.Generator) -> dict[str, float]:
        """Every task of the epoch in rounds of W (evaporating before every
        ``evaporate_every``-th task; module docstring)."""
        rows: list[dict[str, float]] = []
        size = self.comm.world_size
        for first in range(0, len(tasks), size):
            if evaporation_due(first, self.pc.evaporate_every):
                self.store.evaporate(protect=settings.stage == 3)
            rows += self.rl_round(tasks[first:first + size], settings, generator, first)
        return {k: _mean([r[k] for r in rows]) for k in rows[0]} if rows else {}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        """Held-out match rate and success at β = 0 and β = eval_beta; next-tool accuracy
        (data parallel: shared tasks and states, gathered; module docstring)."""
        pc, names, comm = self.pc, self.data.tool_names, self.comm
        self.policy.eval()
        out: dict[str, float] = {}
        with torch.no_grad():
            states, labels = supervised_samples(self.test, names)
            lo, hi = shard_bounds(len(states), comm.world_size, comm.rank)
            logits = [self.logits(states[i:min(i + 64, hi)]).float().cpu()
                      for i in range(lo, hi, 64)]
            if comm.distributed:
                logits = [part for parts in comm.gather(logits) for part in parts]
            out["eval/next_tool_accuracy"] = next_tool_accuracy(
                torch.cat(logits) if logits else torch.zeros(0, len(names)), labels)
            first, last = shard_bounds(len(self.test), comm.world_size, comm.rank)
            for suffix, beta in (("_beta0", 0.0), ("", pc.eval_beta)):
                generator = torch.Generator().manual_seed(self.seed + 99 + 7_919 * first)
                match, success = [], []
                for task in self.test[first:last]:
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
                if comm.distributed:
                    parts = comm.gather((match, success))
                    match = [x for p in parts for x in p[0]]
                    success = [x for p in parts for x in p[1]]
                out[f"eval/match_rate{suffix}"] = _mean(match)
                out[f"eval/success_rate{suffix}"] = _mean(success)
        out["eval/uniform_match_rate"] = 1.0 / len(names)
        return out
