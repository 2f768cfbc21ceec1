"""PhGPO's three stages as epochs (spec §2.7): the epoch plan, each epoch's schedule values and
the stage clocks (protection, warm-up, injection).

The run is a list of epochs (one recipe iteration each): ``phgpo.supervised_epochs`` of stage 1,
the curriculum's epochs of stage 2, ``phgpo.stage3_epochs`` of stage 3; epochs are counted
from 0 inside each stage (:mod:`grouprl.phgpo.schedules`). Per epoch e of its stage:

* stage 2: horizon and teacher forcing from the curriculum; ``w_sl``, β, λ ramps
  ``v0 + (v1 − v0)·min(1, e/S)`` from ``phgpo.sl_weight``, ``beta_stage2``, ``fusion_lambda``;
  ε = ``phgpo.epsilon``;
* stage 3: horizon ``phgpo.max_steps``; w_sl = 0; β from ``beta_stage3``; λ at its end value;
  ``ε = max(floor, ε0·(1 − e/E))``; tf = ``stage3_tf``, or ``stage3_tf_boost`` while the
  elite success fraction < 0.1;
* before stage 3's first epoch: ``protect_golden()`` (the end of stage 2), then
  ``warm_up(elite successes)``; after stage-3 epochs 2, 5, 8, …: ``inject(elite successes)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from grouprl.phgpo import schedules
from grouprl.phgpo.elite import EliteBuffer
from grouprl.phgpo.store import PheromoneStore
from grouprl.phgpo.synthetic import ToolTask
from grouprl.train.config_schema import PhGPOConfig

__all__ = ["EpochSettings", "epoch_plan", "curriculum_stages", "epoch_settings",
           "epoch_tasks", "begin_epoch", "end_epoch", "to_plain", "to_tensors", "store_stats"]


@dataclass(frozen=True)
class EpochSettings:
    """What one epoch runs: its stage (1, 2, 3), its epoch within the stage, and the schedule
    values (β, λ, ε, teacher forcing, w_sl, horizon, CE label smoothing)."""

    stage: int
    stage_epoch: int
    beta: float = 0.0
    lam: float = 0.0
    epsilon: float = 0.0
    teacher_forcing: float = 0.0
    sl_weight: float = 0.0
    horizon: int = 1
    label_smoothing: float = 0.0


def curriculum_stages(pc: PhGPOConfig) -> tuple[schedules.CurriculumStage, ...]:
    """``phgpo.curriculum`` as :class:`~grouprl.phgpo.schedules.CurriculumStage` entries."""
    return tuple(schedules.CurriculumStage(**entry) for entry in pc.curriculum)


def epoch_plan(pc: PhGPOConfig) -> list[tuple[int, int]]:
    """(stage, epoch within the stage) of every epoch of the run, in order."""
    stage2 = sum(s.epochs for s in curriculum_stages(pc))
    return ([(1, e) for e in range(pc.supervised_epochs)] + [(2, e) for e in range(stage2)]
            + [(3, e) for e in range(pc.stage3_epochs)])


def _ramp(values: list[float], epoch: int) -> float:
    start, end, epochs = values
    return schedules.linear_ramp(epoch, start, end, int(epochs))


def epoch_settings(pc: PhGPOConfig, stage: int, epoch: int, elite: EliteBuffer
                   ) -> EpochSettings:
    """The schedule values of ``epoch`` of ``stage`` (module docstring)."""
    if stage == 1:
        return EpochSettings(1, epoch, label_smoothing=pc.label_smoothing)
    if stage == 2:
        stages = curriculum_stages(pc)
        return EpochSettings(2, epoch, beta=_ramp(pc.beta_stage2, epoch),
                             lam=_ramp(pc.fusion_lambda, epoch), epsilon=pc.epsilon,
                             teacher_forcing=schedules.teacher_forcing(epoch, stages),
                             sl_weight=_ramp(pc.sl_weight, epoch),
                             horizon=schedules.horizon(epoch, stages),
                             label_smoothing=pc.stage2_label_smoothing)
    tf = schedules.stage3_teacher_forcing(elite.success_fraction(), pc.stage3_tf,
                                          pc.stage3_tf_boost)
    return EpochSettings(3, epoch, beta=_ramp(pc.beta_stage3, epoch),
                         lam=pc.fusion_lambda[1],
                         epsilon=schedules.stage3_epsilon(epoch, pc.epsilon_epochs, pc.epsilon,
                                                          pc.epsilon_floor),
                         teacher_forcing=tf, horizon=pc.max_steps,
                         label_smoothing=pc.stage2_label_smoothing)


def epoch_tasks(pc: PhGPOConfig, train: list[ToolTask], settings: EpochSettings,
                elite: EliteBuffer, rng: random.Random) -> list[ToolTask]:
    """The tasks of an RL epoch: those with |ref| ≤ horizon in stage 2, shuffled by ``rng``,
    at most ``tasks_per_epoch``; in stage 3 the last ``elite_replay`` share replays the tasks
    of elite trajectories (when the buffer holds any)."""
    pool = [t for t in train if settings.stage == 3 or len(t.reference) <= settings.horizon]
    pool = pool or list(train)
    order = pool[:]
    rng.shuffle(order)
    order = order[:pc.tasks_per_epoch or len(order)]
    replay = round(pc.elite_replay * len(order)) if settings.stage == 3 and elite.general else 0
    if replay:
        ids = {t.task_id: t for t in train}
        order[len(order) - replay:] = [ids[e.task_id] for e in elite.sample(replay, rng)]
    return order


def _successes(elite: EliteBuffer) -> list[tuple[tuple[int, ...], float]]:
    return [(e.actions, e.model_match) for e in elite.successes]


def begin_epoch(settings: EpochSettings, store: PheromoneStore, elite: EliteBuffer
                ) -> dict[str, float]:
    """Stage 3's first epoch: protect the golden edges (end of stage 2), then warm up."""
    if settings.stage != 3 or settings.stage_epoch != 0:
        return {}
    protected = store.scalar.protect_golden()
    store.scalar.warm_up(_successes(elite))
    return {"pheromone/protected_new": float(protected)}


def end_epoch(pc: PhGPOConfig, settings: EpochSettings, store: PheromoneStore,
              elite: EliteBuffer) -> None:
    """Stage 3: inject the elite successes after every ``inject_every``-th epoch."""
    if settings.stage == 3 and schedules.injection_due(settings.stage_epoch, pc.inject_every):
        store.scalar.inject(_successes(elite))


def store_stats(store: PheromoneStore, elite: EliteBuffer) -> dict[str, float]:
    """Pheromone and elite-buffer statistics for the metrics."""
    tau = store.scalar.tool
    golden, _ = store.scalar.golden_edges()
    return {"pheromone/tau_mean": float(tau.mean()), "pheromone/tau_max": float(tau.max()),
            "pheromone/tau_min": float(tau.min()), "pheromone/golden_edges": float(len(golden)),
            "pheromone/protected_edges": float(store.scalar.protected.sum()),
            "pheromone/context_entries": float(len(store.memory)),
            "elite/size": float(len(elite.general)),
            "elite/success_fraction": elite.success_fraction()}


def to_plain(obj: Any) -> Any:
    """A state dict with every tensor as ``{"tensor": nested list, "dtype", "shape"}`` (a
    checkpoint ``state`` holds plain data only; float64, int64 and bool values round-trip
    exactly through Python floats, ints and bools)."""
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj.detach().cpu().reshape(-1).tolist(),
                "dtype": str(obj.dtype).removeprefix("torch."), "shape": list(obj.shape)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def to_tensors(obj: Any) -> Any:
    """The inverse of :func:`to_plain`."""
    if isinstance(obj, dict) and set(obj) == {"tensor", "dtype", "shape"}:
        dtype = getattr(torch, obj["dtype"])
        return torch.tensor(obj["tensor"], dtype=dtype).reshape(obj["shape"])
    if isinstance(obj, dict):
        return {k: to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_tensors(v) for v in obj)
    return obj
