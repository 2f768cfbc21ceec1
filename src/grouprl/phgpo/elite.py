"""Elite trajectory buffer of PhGPO stages 2–3 (spec §2.7, "Elite buffer").

* a general list: trajectories with model-match ≥ 0.3 (match over non-teacher-forced steps), at
  most 500, kept sorted by (success, model-match), best first;
* a success list: the successful ones, at most 250, sorted by model-match;
* sampling: half from the success list, the rest from the general list (with replacement
  [GUESS]); stage 3 replays 20% of its tasks from here;
* success fraction = |success list| / |general list| (0 when empty) [GUESS: the spec names the
  "elite success fraction" without its denominator]; it drives the stage-3 teacher forcing.

Sorting is stable, so among equal keys the earlier trajectory stays first.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from grouprl.validation import check_int, check_number

__all__ = ["EliteBuffer", "EliteTrajectory"]


@dataclass(frozen=True)
class EliteTrajectory:
    """A kept trajectory: task id, tool ids, match ratio m, model-match ratio, success."""

    task_id: int
    actions: tuple[int, ...]
    match: float
    model_match: float
    success: bool


class EliteBuffer:
    """General (≤ 500) and success (≤ 250) lists of elite trajectories."""

    def __init__(self, capacity: int = 500, success_capacity: int = 250,
                 min_model_match: float = 0.3) -> None:
        check_int("capacity", capacity, 1)
        check_int("success_capacity", success_capacity, 1)
        check_number("min_model_match", min_model_match, 0.0, 1.0)
        self.capacity, self.success_capacity = capacity, success_capacity
        self.min_model_match = min_model_match
        self.general: list[EliteTrajectory] = []
        self.successes: list[EliteTrajectory] = []

    def add(self, trajectory: EliteTrajectory) -> bool:
        """Keep ``trajectory`` if its model-match ≥ 0.3; returns whether it was kept."""
        if trajectory.model_match < self.min_model_match:
            return False
        self.general.append(trajectory)
        self.general.sort(key=lambda t: (not t.success, -t.model_match))
        del self.general[self.capacity:]
        if trajectory.success:
            self.successes.append(trajectory)
            self.successes.sort(key=lambda t: -t.model_match)
            del self.successes[self.success_capacity:]
        return True

    def success_fraction(self) -> float:
        """|success list| / |general list| (0 when empty)."""
        return len(self.successes) / len(self.general) if self.general else 0.0

    def sample(self, n: int, rng: random.Random) -> list[EliteTrajectory]:
        """n trajectories: ⌈n/2⌉ from the success list (if any), the rest from the general."""
        check_int("n", n, 0)
        from_success = (n + 1) // 2 if self.successes else 0
        picked = [rng.choice(self.successes) for _ in range(from_success)]
        pool: Sequence[EliteTrajectory] = self.general or self.successes
        return picked + ([rng.choice(pool) for _ in range(n - from_success)] if pool else [])

    def state_dict(self) -> dict[str, Any]:
        """Lists of plain dicts (exact round trip)."""
        return {"general": [asdict(t) for t in self.general],
                "successes": [asdict(t) for t in self.successes]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def make(d: dict[str, Any]) -> EliteTrajectory:
            return EliteTrajectory(**{**d, "actions": tuple(d["actions"])})
        self.general = [make(d) for d in state["general"]]
        self.successes = [make(d) for d in state["successes"]]
