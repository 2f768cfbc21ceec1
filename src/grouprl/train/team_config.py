"""The team of a multi-agent run from its config (``mode: multiagent``; docs/multi-agent.md).

:func:`build_team` turns ``multiagent.*`` (with ``optim.*``, ``algorithm.micro_batch_size`` and
``rollout.*`` as the per-agent defaults) into a :class:`Team`:

- the agents: the task's built-in ones (math: Solver, Verifier; search: Verifier, Search,
  Answer) or those of a user orchestra (``multiagent.orchestra``), each given its model name and
  overrides from ``multiagent.agents.<name>`` and then ``multiagent.agent_overrides`` (released
  list form); settings resolve as ``defaults ← agent overrides``::

      defaults = {lr: optim.lr, weight_decay: optim.weight_decay, grad_clip: optim.grad_clip,
                  micro_batch_size: algorithm.micro_batch_size, temperature: rollout.temperature,
                  top_p: rollout.top_p, max_new_tokens: rollout.max_new_tokens}

- the model groups (:func:`grouprl.multiagent.build_model_groups`: one per agent, or one per
  model name with ``share_models``; conflicting settings on a shared model are a start-up error);
- the orchestra, the training and held-out env factories (math: the arithmetic ``train`` and
  ``test`` splits; search: one knowledge base, held-out seeds from ``eval.seed_offset``);
- the advantage options (:class:`grouprl.multiagent.TeamAdvantageOptions`): the invalid-output
  penalty defaults to the task's (math 0.1, search 0.01); under ``compat: reference`` the padding
  divisor defaults to ``lcm`` of the groups' micro-batch sizes (one device, W = 1).

Every mistake is a :class:`~grouprl.train.config.ConfigError` naming the ``multiagent`` key.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grouprl.envs.base import TextEnv
from grouprl.multiagent import (
    MATH_INVALID_PENALTY,
    OVERRIDE_KEYS,
    SEARCH_INVALID_PENALTY,
    AgentSpec,
    KnowledgeBase,
    MathRefine,
    MathTeamEnv,
    ModelGroups,
    Orchestra,
    SearchKBEnv,
    SearchRoute,
    TeamAdvantageOptions,
    build_model_groups,
    overrides_from_lists,
    reference_divisor,
)
from grouprl.train.config import ConfigError, TrainConfig, build_config
from grouprl.train.config_schema import TinyModelConfig
from grouprl.validation import UserError

__all__ = ["Team", "TaskInfo", "TASKS", "build_team", "group_defaults", "model_settings"]


@dataclass(frozen=True)
class TaskInfo:
    """What a built-in task fixes: its steps, penalty, and the verdict metric of its Verifier."""

    max_steps: int
    invalid_penalty: float
    verdict_metric: str          # e.g. "math/approve_rate": share of verdicts == positive
    positive: str
    choices: tuple[str, ...]


TASKS = {"math": TaskInfo(1, MATH_INVALID_PENALTY, "math/approve_rate", "approve",
                          ("approve", "reject")),
         "search": TaskInfo(4, SEARCH_INVALID_PENALTY, "search/answer_rate", "yes", ("yes", "no"))}


@dataclass(frozen=True)
class Team:
    """Everything a multi-agent run is made of, except models (:mod:`.team_models`)."""

    task: str
    agents: tuple[AgentSpec, ...]
    orchestra: Orchestra
    groups: ModelGroups
    make_env: Callable[[], TextEnv]
    make_eval_env: Callable[[], TextEnv]
    max_steps: int
    advantage: TeamAdvantageOptions
    info: TaskInfo

    def settings(self, agent: str) -> dict[str, Any]:
        """The merged settings of ``agent`` (its model group's)."""
        return dict(self.groups[self.groups.group_of[agent]].settings)


def group_defaults(cfg: TrainConfig) -> dict[str, Any]:
    """The run's values of the per-agent settings (module docstring)."""
    o, ro = cfg.optim, cfg.rollout
    return {"lr": o.lr, "weight_decay": o.weight_decay, "grad_clip": o.grad_clip,
            "micro_batch_size": cfg.algorithm.micro_batch_size, "temperature": ro.temperature,
            "top_p": ro.top_p, "max_new_tokens": ro.max_new_tokens}


def _import(spec: str, key: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"{key}: {spec!r} must look like 'package.module:name'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}: cannot load {spec!r} ({err})") from None


def _orchestra(cfg: TrainConfig, max_steps: int) -> Orchestra:
    ma = cfg.multiagent
    kwargs = dict(ma.orchestra_kwargs)
    try:
        if ma.orchestra is not None:
            made = _import(ma.orchestra, "multiagent.orchestra")(**kwargs)
        elif ma.task == "math":
            made = MathRefine(**kwargs)
        else:
            made = SearchRoute(max_steps=max_steps, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"multiagent.orchestra_kwargs: {err}") from None
    if not isinstance(made, Orchestra):
        raise ConfigError(f"multiagent.orchestra: {ma.orchestra!r} returned a "
                          f"{type(made).__name__}, not an orchestra (an object with agents and "
                          "run(team))")
    return made


def _with_config(orchestra: Orchestra, cfg: TrainConfig) -> Orchestra:
    """The built-in orchestra rebuilt on agents carrying ``multiagent.agents`` settings."""
    ma = cfg.multiagent
    agents = list(orchestra.agents)
    names = [a.name for a in agents]
    for name, entry in ma.agents.items():
        if name not in names:
            raise ConfigError(f"multiagent.agents.{name}: no agent named {name!r}; the team's "
                              f"agents are {', '.join(names)}")
        if not isinstance(entry, dict):
            raise ConfigError(f"multiagent.agents.{name}: expected a mapping of settings, got "
                              f"{entry!r}")
        entry = dict(entry)
        k = names.index(name)
        model = entry.pop("model", agents[k].model)
        try:
            agents[k] = dataclasses.replace(agents[k], model=model,
                                            overrides={**agents[k].overrides, **entry})
        except ValueError as err:
            raise ConfigError(f"multiagent.agents.{name}: {err} (accepted: model, "
                              f"{', '.join(OVERRIDE_KEYS)})") from None
    try:
        agents = overrides_from_lists(agents, ma.agent_overrides)
    except UserError as err:
        raise ConfigError(str(err)) from None
    except ValueError as err:
        raise ConfigError(f"multiagent.agent_overrides: {err}") from None
    if ma.orchestra is not None:        # a user orchestra keeps its objects; settings by name
        return _Renamed(orchestra, tuple(agents))
    if ma.task == "math":
        return dataclasses.replace(orchestra, solver=agents[0], verifier=agents[1])
    return dataclasses.replace(orchestra, verifier=agents[0], search=agents[1], answer=agents[2])


class _Renamed:
    """A user orchestra seen with the configured agents (settings are looked up by name)."""

    def __init__(self, inner: Orchestra, agents: tuple[AgentSpec, ...]) -> None:
        self.inner, self.agents = inner, agents

    def run(self, team: Any) -> list[str]:
        return self.inner.run(team)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _envs(cfg: TrainConfig, max_steps: int
          ) -> tuple[Callable[[], TextEnv], Callable[[], TextEnv]]:
    ma = cfg.multiagent
    kw = dict(ma.task_kwargs)
    try:
        if ma.task == "math":
            def train_env() -> TextEnv:
                return MathTeamEnv(**{"split": "train", **kw})

            def eval_env() -> TextEnv:
                return MathTeamEnv(**{**kw, "split": "test"})
        else:
            kb = KnowledgeBase(kw.pop("kb_seed", 0))

            def train_env() -> TextEnv:
                return SearchKBEnv(max_steps=max_steps, knowledge_base=kb, **kw)
            eval_env = train_env
        train_env().close()
        eval_env().close()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"multiagent.task_kwargs: {err}") from None
    return train_env, eval_env


def build_team(cfg: TrainConfig) -> Team:
    """The :class:`Team` of ``cfg`` (module docstring); ``ConfigError`` naming the key."""
    ma = cfg.multiagent
    info = TASKS[ma.task]
    max_steps = ma.max_steps or info.max_steps
    orchestra = _with_config(_orchestra(cfg, max_steps), cfg)
    agents = tuple(orchestra.agents)
    try:
        groups = build_model_groups(agents, ma.share_models, group_defaults(cfg))
    except UserError as err:
        raise ConfigError(str(err)) from None
    for g in groups.groups:
        if "." in g.name or not g.name:
            raise ConfigError(f"multiagent.agents: model group name {g.name!r} may not contain "
                              "'.' (it names the group's weights in checkpoints)")
    unknown = sorted(set(ma.models) - {a.model for a in agents})
    if unknown:
        raise ConfigError(f"multiagent.models.{unknown[0]}: no agent runs on model "
                          f"{unknown[0]!r}; models in use: "
                          f"{', '.join(sorted({a.model for a in agents}))}")
    for name in ma.models:
        model_settings(cfg, name)
    if ma.compat == "native" and ma.pad_divisor not in (None, 1):
        raise ConfigError(f"multiagent.pad_divisor: padding reproduces the released code and "
                          f"needs multiagent.compat=reference; got {ma.pad_divisor} with native")
    divisor = ma.pad_divisor or (reference_divisor(
        [g.settings["micro_batch_size"] for g in groups.groups]) if ma.compat == "reference"
        else 1)
    penalty = info.invalid_penalty if ma.invalid_penalty is None else ma.invalid_penalty
    advantage = TeamAdvantageOptions(baseline=ma.baseline, compat=ma.compat,
                                     invalid_penalty=penalty, epsilon=ma.epsilon,
                                     mode=ma.advantage_mode, pad_divisor=divisor,
                                     pad_seed=cfg.seed)
    make_env, make_eval_env = _envs(cfg, max_steps)
    return Team(ma.task, agents, orchestra, groups, make_env, make_eval_env, max_steps,
                advantage, info)


def model_settings(cfg: TrainConfig, model: str) -> tuple[str | None, TinyModelConfig]:
    """``(path, tiny)`` of model name ``model``: ``multiagent.models.<model>`` over
    ``model.path`` / ``model.tiny``."""
    entry = cfg.multiagent.models.get(model, {})
    key = f"multiagent.models.{model}"
    if not isinstance(entry, dict) or set(entry) - {"path", "tiny"}:
        raise ConfigError(f"{key}: expected a mapping with keys path and/or tiny, got {entry!r}")
    path = entry.get("path", cfg.model.path)
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"{key}.path: expected a string or null, got {path!r}")
    tiny = {**dataclasses.asdict(cfg.model.tiny), **entry.get("tiny", {})}
    try:
        return path, build_config(tiny, TinyModelConfig)
    except ConfigError as err:
        raise ConfigError(f"{key}.tiny.{err}") from None
