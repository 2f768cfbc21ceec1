"""Recipes: each composes the components of :mod:`grouprl.train` into one training loop that
fits a screen and names no algorithm (torchtune's split; DESIGN.md).

- :func:`grouprl.recipes.rl.train_rl` — agent and reasoning RL (``mode: rl``);
- :func:`grouprl.recipes.preference.train_preference` — offline pairs (``mode: preference``).
- :func:`grouprl.recipes.phgpo.train_phgpo` — tool planning with PhGPO (``mode: phgpo``).
- :func:`grouprl.recipes.multiagent.train_multiagent` — a team of agents, Dr. MAS
  (``mode: multiagent``).
- :func:`grouprl.recipes.presafe.train_presafe` — safety alignment before chain-of-thought,
  PreSafe (``mode: presafe``).

:func:`train` runs the recipe of ``cfg.mode``.
"""

from __future__ import annotations

from collections.abc import Callable

from grouprl.distributed import launched_by_torchrun
from grouprl.recipes.multiagent import train_multiagent
from grouprl.recipes.phgpo import train_phgpo
from grouprl.recipes.preference import train_preference
from grouprl.recipes.presafe import train_presafe
from grouprl.recipes.rl import train_rl
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.pamoe import check_pamoe_config
from grouprl.train.setup import TrainResult

__all__ = ["RECIPES", "train", "train_rl", "train_preference", "train_phgpo", "train_multiagent",
           "train_presafe", "TrainResult"]

DATA_PARALLEL = ("rl", "preference", "multiagent", "phgpo")
"""Modes that run under torchrun with several processes (the others refuse)."""

RECIPES: dict[str, Callable[..., TrainResult]] = {"rl": train_rl,
                                                  "preference": train_preference,
                                                  "phgpo": train_phgpo,
                                                  "multiagent": train_multiagent,
                                                  "presafe": train_presafe}


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
          echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of ``cfg.mode`` (``rl`` or ``preference``); returns its summary.
    ``force``: a resume accepts config changes outside the resumable keys
    (:mod:`grouprl.train.resume`). Under ``torchrun`` with several processes only the modes of
    :data:`DATA_PARALLEL` are data parallel (docs/distributed.md); the others refuse to start."""
    if launched_by_torchrun() and cfg.mode not in DATA_PARALLEL:
        raise ConfigError(f"mode: {cfg.mode} does not run data parallel yet (only "
                          f"{', '.join(DATA_PARALLEL)}); start it as one process, without "
                          "torchrun or --nproc")
    check_pamoe_config(cfg)                  # model.pamoe: mode rl, one process
    return RECIPES[cfg.mode](cfg, resume=resume, force=force, echo=echo)
