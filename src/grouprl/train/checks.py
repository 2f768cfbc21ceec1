"""Config checks that need more than one key, or an algorithm's own options, done in one pass
before any work starts. Each error names the key and the fix (:class:`ConfigError`).

Algorithms are checked through their declarations, never by name: an estimator or loss that
declares ``single_turn`` needs ``env.max_steps=1``; dict-typed options
(``algorithm.estimator_options``, ``algorithm.loss_options``, ``reward.options``,
``rollout.oversampling``, ``rollout.dot_truncation``) are validated by the typed options of the
estimator / loss / shaper they belong to, so a typo lists the valid names.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grouprl.advantages import available_estimators, estimator_options, estimator_spec
from grouprl.agent.prompts import PromptTemplate, template_from_config
from grouprl.envs import available_envs
from grouprl.losses import SEQUENCE_LOSSES, available_policy_losses
from grouprl.losses.objective import make_objective, objective_class
from grouprl.rewards.shaping import available_shapers, make_shaper
from grouprl.rewards.stage import dot_options, split_reward_options
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.estimate import run_settings
from grouprl.train.sampling import oversampling_options, single_turn
from grouprl.train.setup import resolve_device

__all__ = ["check_rl_config", "check_model_config"]


def _wrap(key: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_model_config(cfg: TrainConfig) -> None:
    """``model.device`` exists here; ``model.path`` is a local directory."""
    resolve_device(cfg.model.device)
    if cfg.model.path is not None and not Path(cfg.model.path).is_dir():
        raise ConfigError(f"model.path: {cfg.model.path!r} is not a local directory (grouprl "
                          "never downloads at run time; set model.path=null for the tiny model)")


def check_rl_config(cfg: TrainConfig) -> PromptTemplate:
    """Every cross-key check of an RL run; returns the prompt template."""
    a, r, ro = cfg.algorithm, cfg.reward, cfg.rollout
    if a.estimator not in available_estimators():
        raise ConfigError(f"algorithm.estimator: {a.estimator!r} is not accepted; choose one of: "
                          f"{', '.join(available_estimators())}")
    spec = estimator_spec(a.estimator)
    _wrap("algorithm.estimator_options", _check_estimator, a.estimator, a.estimator_options,
          spec.row_inputs(a.estimator_options))
    losses = available_policy_losses() + SEQUENCE_LOSSES
    if a.loss not in losses:
        raise ConfigError(f"algorithm.loss: {a.loss!r} is not accepted; choose one of: "
                          f"{', '.join(losses)}")
    _wrap("algorithm.loss_options", make_objective, a.loss, a.loss_options, a.loss_agg,
          run_settings(cfg))
    if ":" not in cfg.env.name and cfg.env.name not in available_envs():
        raise ConfigError(f"env.name: {cfg.env.name!r} is not accepted; choose one of: "
                          f"{', '.join(available_envs())} or 'package.module:Class'")
    needs_single = [(r.shaping is not None, "reward.shaping"),
                    (r.format_weight > 0, "reward.format_weight"),
                    (ro.dot_truncation is not None, "rollout.dot_truncation"),
                    (objective_class(a.loss).single_turn, f"algorithm.loss={a.loss}"),
                    (spec.single_turn, f"algorithm.estimator={a.estimator}")]
    for active, key in needs_single:
        if active and not single_turn(cfg):
            raise ConfigError(f"{key}: needs single-turn rollouts (one response per task); set "
                              "env.max_steps=1 with a one-step env such as env.name=reasoning")
    if r.shaping is not None and r.shaping not in available_shapers():
        raise ConfigError(f"reward.shaping: {r.shaping!r} is not accepted; choose one of: "
                          f"{', '.join(available_shapers())}")
    shaper_opts, _ = _wrap("reward.options", split_reward_options, r.shaping, r.options)
    _wrap("reward.options", make_shaper, r.shaping or "none", **shaper_opts)
    _wrap("rollout.dot_truncation", dot_options, ro.dot_truncation)
    _wrap("rollout.oversampling", oversampling_options, ro.oversampling)
    if ro.oversampling is not None and not ro.dynamic_sampling:
        raise ConfigError("rollout.oversampling: predictive oversampling replaces the dynamic-"
                          "sampling loop; set rollout.dynamic_sampling=true as well")
    check_model_config(cfg)
    return _wrap("agent.template", template_from_config, cfg.agent.template)


def _check_estimator(name: str, options: dict, inputs: dict) -> None:
    """The estimator's typed options; per-row inputs it declares get a placeholder."""
    placeholders = {option: torch.zeros(0) for option in inputs if option not in options}
    estimator_options(name, **options, **placeholders)
