"""PhGPO stage schedules as pure functions of the epoch (spec §2.3, §2.4, §2.7).

Released code: ``Config``, ``train_mixed_imitation_rl`` and ``train_rl_finetune`` (v12).

* linear ramp over the first S epochs: ``v(e) = v0 + (v1 − v0) · min(1, e / S)`` (e counted from 0
  at the start of the stage) [GUESS: the spec gives the endpoints, not the index convention];
* stage 2 (mixed imitation + RL): supervised weight w_sl 0.7 → 0.3 over 20 epochs, β 0.7 → 0.8
  over 20, fusion λ 0.2 → 0.5 over 20; curriculum of four horizons, each with teacher forcing
  falling linearly inside the stage, ``tf(j) = tf0 + (tf1 − tf0) · j / (E − 1)`` for epoch j of
  E, so the first and last epochs take the two endpoints [GUESS];
* stage 3 (RL fine-tune): β 0.5 → 0.7 over 15 epochs; ``ε(e) = max(0.01, 0.05 · (1 − e / E))``
  with E = 25 [GUESS: "decays linearly, floor 0.01"]; teacher forcing 0.05, or 0.15 while the
  elite buffer's success fraction is below 0.1;
* evaporation every 20 tasks (task index 0, 20, 40, … within an epoch), injection every 3
  epochs (after epochs 2, 5, 8, …) [GUESS: the spec says "every 3 epochs"];
* horizon: ``H = min(max_steps, |ref|)``; a curriculum stage keeps episodes with |ref| ≤ max_steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grouprl.validation import check_choice, check_int, check_number

__all__ = ["CurriculumStage", "DEFAULT_CURRICULUM", "beta", "curriculum_position",
           "evaporation_due", "filter_by_horizon", "fusion_weight", "horizon",
           "injection_due", "linear_ramp", "sl_weight", "stage3_epsilon",
           "stage3_teacher_forcing", "teacher_forcing"]


@dataclass(frozen=True)
class CurriculumStage:
    """One horizon stage of stage 2: ``max_steps``, ``epochs``, teacher forcing start → end."""

    max_steps: int
    epochs: int
    tf_start: float
    tf_end: float

    def __post_init__(self) -> None:
        check_int("max_steps", self.max_steps, 1)
        check_int("epochs", self.epochs, 1)
        check_number("tf_start", self.tf_start, 0.0, 1.0)
        check_number("tf_end", self.tf_end, 0.0, 1.0)


#: Stage 2's curriculum (v12): 3 steps × 6 epochs, 5 × 6, 7 × 6, 10 × 7.
DEFAULT_CURRICULUM = (CurriculumStage(3, 6, 0.40, 0.25), CurriculumStage(5, 6, 0.35, 0.20),
                      CurriculumStage(7, 6, 0.30, 0.15), CurriculumStage(10, 7, 0.25, 0.10))


def linear_ramp(epoch: int, start: float, end: float, epochs: int) -> float:
    """``start + (end − start) · min(1, epoch / epochs)``."""
    check_int("epoch", epoch, 0)
    check_int("epochs", epochs, 1)
    return start + (end - start) * min(1.0, epoch / epochs)


def sl_weight(epoch: int, start: float = 0.7, end: float = 0.3, epochs: int = 20) -> float:
    """Stage-2 weight of the supervised CE term, w_sl: 0.7 → 0.3 over 20 epochs."""
    return linear_ramp(epoch, start, end, epochs)


def fusion_weight(epoch: int, start: float = 0.2, end: float = 0.5, epochs: int = 20) -> float:
    """Context-fusion weight λ: 0.2 → 0.5 over 20 epochs."""
    return linear_ramp(epoch, start, end, epochs)


def beta(stage: int, epoch: int) -> float:
    """Pheromone exponent β: stage 2 0.7 → 0.8 over 20 epochs, stage 3 0.5 → 0.7 over 15."""
    check_choice("stage", stage, (2, 3))
    return linear_ramp(epoch, 0.7, 0.8, 20) if stage == 2 else linear_ramp(epoch, 0.5, 0.7, 15)


def curriculum_position(epoch: int, stages: Sequence[CurriculumStage] = DEFAULT_CURRICULUM
                        ) -> tuple[int, int]:
    """(stage index, epoch within the stage) of a stage-2 epoch; past the end: the last epoch."""
    check_int("epoch", epoch, 0)
    if not stages:
        raise ValueError("stages: expected at least one curriculum stage")
    for index, stage in enumerate(stages):
        if epoch < stage.epochs:
            return index, epoch
        epoch -= stage.epochs
    return len(stages) - 1, stages[-1].epochs - 1


def teacher_forcing(epoch: int, stages: Sequence[CurriculumStage] = DEFAULT_CURRICULUM) -> float:
    """Stage-2 p_tf: ``tf0 + (tf1 − tf0) · j / (E − 1)`` inside the current stage."""
    index, j = curriculum_position(epoch, stages)
    s = stages[index]
    return s.tf_start + (s.tf_end - s.tf_start) * (j / (s.epochs - 1) if s.epochs > 1 else 0.0)


def horizon(epoch: int, stages: Sequence[CurriculumStage] = DEFAULT_CURRICULUM) -> int:
    """max_steps of the curriculum stage of a stage-2 epoch."""
    return stages[curriculum_position(epoch, stages)[0]].max_steps


def filter_by_horizon(reference_lengths: Sequence[int], max_steps: int) -> list[int]:
    """Indices of the episodes a curriculum stage keeps: |ref| ≤ max_steps."""
    check_int("max_steps", max_steps, 1)
    return [i for i, n in enumerate(reference_lengths) if n <= max_steps]


def stage3_epsilon(epoch: int, epochs: int = 25, start: float = 0.05, floor: float = 0.01
                   ) -> float:
    """``max(floor, start · (1 − epoch / epochs))``."""
    check_int("epoch", epoch, 0)
    check_int("epochs", epochs, 1)
    return max(floor, start * (1.0 - epoch / epochs))


def stage3_teacher_forcing(elite_success_fraction: float, base: float = 0.05,
                           boosted: float = 0.15, below: float = 0.1) -> float:
    """0.05, or 0.15 while the elite buffer's success fraction is below 0.1."""
    check_number("elite_success_fraction", elite_success_fraction, 0.0, 1.0)
    return boosted if elite_success_fraction < below else base


def evaporation_due(task_index: int, every: int = 20) -> bool:
    """Evaporate before task 0, 20, 40, … of an epoch."""
    check_int("task_index", task_index, 0)
    check_int("every", every, 1)
    return task_index % every == 0


def injection_due(epoch: int, every: int = 3) -> bool:
    """Inject after epochs every−1, 2·every−1, … of stage 3 (epochs counted from 0)."""
    check_int("epoch", epoch, 0)
    check_int("every", every, 1)
    return epoch % every == every - 1
