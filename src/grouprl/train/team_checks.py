"""Start-up checks of a multi-agent run (``mode: multiagent``), before any work: the team
(:func:`grouprl.train.team_config.build_team`: agents, overrides, model groups, orchestra, task,
advantage options), each group's loss options, the device, and every model in use (a local
path must exist and be complete; a tiny model's vocabulary must hold the team's tags). Every
mistake is a :class:`~grouprl.train.config.ConfigError` naming the key; ``grouprl config``
reaches this through :func:`grouprl.train.checks.check_rl_config`.
"""

from __future__ import annotations

from pathlib import Path

from grouprl.distributed import launched_by_torchrun
from grouprl.policy.builtin import check_model_path, is_model_spec
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.setup import resolve_device
from grouprl.train.team_config import Team, build_team, model_settings
from grouprl.train.team_models import TINY_VOCAB_FLOOR
from grouprl.train.team_update import team_objectives
from grouprl.validation import UserError

__all__ = ["check_multiagent_config"]


def check_multiagent_config(cfg: TrainConfig) -> Team:
    """``multiagent.*`` (:func:`grouprl.train.team_config.build_team`: agents, overrides, model
    groups, orchestra, task, advantage options), each group's loss options, the device and every
    model path in use; the recipe has no reference model or LoRA, and under torchrun its models
are replicated (not FSDP2). Returns the team."""
    if cfg.algorithm.kl_coef > 0:
        raise ConfigError("algorithm.kl_coef: the multiagent recipe has no reference model "
                          "(Dr. MAS trains without a KL term); set algorithm.kl_coef=0")
    if cfg.model.lora.enabled:
        raise ConfigError("model.lora.enabled: the multiagent recipe trains full models; set "
                          "model.lora.enabled=false")
    if cfg.distributed.model_sharding == "fsdp2" and launched_by_torchrun():
        raise ConfigError("distributed.model_sharding: the multiagent recipe replicates its "
                          "models (one per group); set distributed.model_sharding=replicated")
    resolve_device(cfg.model.device)
    team = build_team(cfg)
    team_objectives(cfg, team)
    for model in dict.fromkeys(g.model for g in team.groups.groups):
        path, tiny = model_settings(cfg, model)
        own = cfg.multiagent.models.get(model, {})
        if path is None and tiny.vocab_size < TINY_VOCAB_FLOOR:
            key = f"multiagent.models.{model}.tiny" if "vocab_size" in own.get("tiny", {}) \
                else "model.tiny"
            raise ConfigError(f"{key}.vocab_size: a team's tiny model needs >= "
                              f"{TINY_VOCAB_FLOOR} (256 bytes + reserved + team tags), got "
                              f"{tiny.vocab_size}")
        key = f"multiagent.models.{model}.path" if "path" in own else "model.path"
        if path is not None and not is_model_spec(path) and not Path(path).expanduser().exists():
            raise ConfigError(f"{key}: {path!r} is not a local directory (grouprl never downloads "
                              "at run time; null builds a tiny model)")
        if path is not None:
            try:
                check_model_path(path)
            except UserError as err:
                raise ConfigError(f"{key}: {err}") from None
    return team
