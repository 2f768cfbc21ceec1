"""Training components: config, setup, sampling, the reward and advantage stages, the learner,
checkpoints, metrics, evaluation (the recipes that compose them: :mod:`grouprl.recipes`).

Algorithms live in :mod:`grouprl.advantages`, :mod:`grouprl.losses` and :mod:`grouprl.rewards`;
this package composes them with :mod:`grouprl.agent`, :mod:`grouprl.envs` and
:mod:`grouprl.policy` and knows no recipe (docs/architecture.md).
"""

from grouprl.train.config import ConfigError, TrainConfig, config_keys, load_config
from grouprl.train.run import load_run_config, load_trained_policy
from grouprl.train.sampling import task_seeds
from grouprl.train.setup import TrainResult

__all__ = ["ConfigError", "TrainConfig", "config_keys", "load_config", "TrainResult",
           "load_run_config", "load_trained_policy", "task_seeds"]
