"""Training configuration: typed dataclasses, YAML recipes and ``key=value`` overrides.

A recipe is plain YAML whose keys map 1:1 to the fields below (torchtune style)::

    grouprl train configs/sokoban_gigpo.yaml algorithm.estimator=hgpo rollout.group_size=4

Loading validates everything before any work starts: an unknown key names the key and lists the
accepted ones, a bad value names the key, the value and what is accepted (choices or range).
Defaults are the built-in default job: a tiny Qwen2-architecture model on built-in Sokoban,
behaviour cloning, then GiGPO with PPO-clip (spec-agentic-credit §1.4 hyper-parameters where they
apply to a CPU-sized run).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError", "TrainConfig", "load_config", "config_to_dict", "parse_overrides",
    "apply_overrides", "config_keys",
]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and the fix."""


def _opt(default: Any, *, choices: Sequence[Any] | None = None, low: float | None = None,
         high: float | None = None, low_open: bool = False, doc: str = "") -> Any:
    """A dataclass field with validation metadata (choices / inclusive-or-open range)."""
    meta = {"choices": choices, "low": low, "high": high, "low_open": low_open, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TinyModelConfig:
    """The tiny Qwen2-architecture model built when ``model.path`` is null."""

    vocab_size: int = _opt(512, low=64, doc="BPE vocabulary trained on the env's own text")
    hidden_size: int = _opt(128, low=8)
    num_layers: int = _opt(4, low=1)
    num_heads: int = _opt(4, low=1)
    num_kv_heads: int = _opt(2, low=1)
    intermediate_size: int = _opt(384, low=8)
    tokenizer_episodes: int = _opt(200, low=1, doc="expert episodes whose text trains the BPE")
    isolate_chars: str | None = _opt(None, doc="chars kept as single tokens; null = the env's "
                                     "grid_symbols (Sokoban: #_OX√PS)")


@dataclass
class LoraConfig:
    enabled: bool = _opt(False)
    rank: int = _opt(8, low=1)
    alpha: float = _opt(16.0, low=0.0, low_open=True)
    dropout: float = _opt(0.0, low=0.0, high=1.0)
    target_modules: list = _opt(["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    path: str | None = _opt(None, doc="local HF model directory; null = build the tiny model")
    dtype: str = _opt("float32", choices=("float32", "bfloat16", "float16"))
    device: str = _opt("cpu", doc="cpu, cuda, cuda:N or auto (cuda when available)")
    trust_remote_code: bool = _opt(False)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class EnvConfig:
    name: str = _opt("sokoban", doc="a registered env name or 'package.module:Class'")
    kwargs: dict = _opt({"dim_room": [5, 5], "num_boxes": 1, "max_solution_length": 2},
                        doc="keyword arguments of the env constructor")
    backend: str = _opt("serial", choices=("serial", "thread", "process"))
    num_workers: int | None = _opt(None, low=1)
    max_steps: int = _opt(4, low=1, doc="episode step limit (truncation)")
    step_timeout: float | None = _opt(30.0, low=0.0, low_open=True)


@dataclass
class AgentConfig:
    template: Any = _opt("sokoban_compact", doc="a template name or {no_history, with_history}")
    history_length: int = _opt(2, low=0, doc="memory window k (spec §1.2)")
    action_tag: str | None = _opt("action")
    allow_plain: bool = _opt(False, doc="accept an untagged reply as the action")
    raw_action: bool | None = _opt(None, doc="pass the whole reply to the env unparsed (null = "
                                   "true for env 'reasoning', false otherwise)")
    use_chat_template: bool = _opt(True, doc="apply the tokenizer's chat template if it has one")


@dataclass
class RolloutConfig:
    groups_per_batch: int = _opt(8, low=1, doc="tasks per iteration (verl train_batch_size)")
    group_size: int = _opt(8, low=1, doc="episodes per task (verl env.rollout.n)")
    max_new_tokens: int = _opt(8, low=1)
    temperature: float = _opt(1.0, low=0.0, low_open=True)
    top_p: float = _opt(1.0, low=0.0, high=1.0, low_open=True)
    stop: list = _opt(["</action>"])
    generation_batch_size: int | None = _opt(None, low=1)
    dynamic_sampling: bool = _opt(False, doc="drop groups whose episode returns are all equal")
    max_sample_batches: int = _opt(10, low=1, doc="dynamic sampling: rollout tries per iteration")
    oversampling: dict | None = _opt(None, doc="DOT predictive oversampling with dynamic "
                                     "sampling: {window: 20, init: 1.5, min: 1.2, max: 5.0}")
    dot_truncation: dict | None = _opt(None, doc="DOT outlier truncation of all-correct groups "
                                       "(single-turn): {alpha: 3.0, margin: 32}")


@dataclass
class AlgorithmConfig:
    estimator: str = _opt("gigpo", doc="grouprl.advantages estimator")
    estimator_options: dict = _opt({}, doc="options of the estimator (gamma, step_weight, ...)")
    loss: str = _opt("ppo", doc="grouprl.losses policy loss")
    loss_options: dict = _opt({}, doc="options of the loss (clip_ratio, ...)")
    loss_agg: str | None = _opt(None, choices=(None, "token-mean", "seq-mean-token-sum",
                                               "seq-mean-token-mean", "seq-mean-token-sum-norm"))
    kl_coef: float = _opt(0.0, low=0.0, doc="verl-agent uses 0.01 (configs/qwen_lora_*)")
    kl_kind: str = _opt("low_var_kl")
    entropy_coef: float = _opt(0.001)
    ppo_epochs: int = _opt(1, low=1)
    num_mini_batches: int = _opt(2, low=1, doc="optimizer steps per epoch")
    micro_batch_size: int = _opt(64, low=1, doc="rows per forward/backward")


@dataclass
class RewardConfig:
    """Reward shaping of single-turn (reasoning) rollouts, applied after the verifier."""

    shaping: str | None = _opt(None, doc="kimi, grpo_lambda, dler, hapo, laser, laser_d, "
                               "laser_de, overlong (null = the verifier's 0/1 reward)")
    options: dict = _opt({}, doc="options of the shaper (e.g. grpo_lambda: {alpha: 0.2})")
    format_weight: float = _opt(0.0, low=0.0, doc="weight of the format reward added to the "
                                "correctness reward")
    format_style: str = _opt("r1_zero", choices=("r1_zero", "tag_count", "r1_distill"),
                             doc="format reward / well-formedness check (spec §C4)")


@dataclass
class PreferenceConfig:
    """Offline pairwise preference training (``mode: preference``; spec-losses §6)."""

    dataset: str = _opt("builtin:arithmetic_pairs", doc="builtin:arithmetic_pairs, a .jsonl or "
                        ".parquet file of {prompt, chosen, rejected}, or hf:NAME (cached)")
    eval_dataset: str | None = _opt(None, doc="held-out pairs; null = the dataset's test split "
                                    "(builtin) or the last eval_fraction of the file")
    eval_fraction: float = _opt(0.1, low=0.0, high=0.9)
    split: str = _opt("train")
    limit: int | None = _opt(None, low=1, doc="use at most this many training pairs")
    prompt_field: str = _opt("prompt")
    chosen_field: str = _opt("chosen")
    rejected_field: str = _opt("rejected")
    loss: str = _opt("dpo", doc="dpo, cdpo, robust, ipo, simpo, orpo, hypo")
    loss_options: dict = _opt({}, doc="options of the loss (beta, label_smoothing, gamma, ...)")
    epochs: int = _opt(3, low=1)
    batch_size: int = _opt(32, low=1, doc="pairs per optimizer step")
    micro_batch_size: int = _opt(16, low=1, doc="pairs per forward/backward")
    max_length: int | None = _opt(None, low=8, doc="truncate prompt + response to this many "
                                  "tokens (prompt kept from the left)")
    sft_epochs: int = _opt(1, low=0, doc="tiny model only: fine-tune on the chosen responses "
                           "first; the result is the reference model")
    eval_every: int = _opt(50, low=0, doc="evaluate every n optimizer steps (0 = only at the "
                           "end)")


@dataclass
class OptimConfig:
    lr: float = _opt(3e-4, low=0.0, low_open=True)
    weight_decay: float = _opt(0.0, low=0.0)
    betas: list = _opt([0.9, 0.999])
    eps: float = _opt(1e-8, low=0.0, low_open=True)
    grad_clip: float | None = _opt(1.0, low=0.0, low_open=True)
    schedule: str = _opt("constant", choices=("constant", "linear", "cosine"))
    warmup_iterations: int = _opt(0, low=0)


@dataclass
class BCConfig:
    """Behaviour cloning warm start on expert trajectories (a random model finds no reward)."""

    enabled: bool = _opt(True)
    episodes: int = _opt(300, low=1, doc="expert episodes (distinct seeds)")
    epochs: int = _opt(3, low=1)
    batch_size: int = _opt(32, low=1)
    lr: float = _opt(1e-3, low=0.0, low_open=True)
    max_updates: int | None = _opt(None, low=1, doc="stop BC after this many updates")


@dataclass
class EvalConfig:
    episodes: int = _opt(128, low=1, doc="held-out tasks, one episode each")
    seed_offset: int = _opt(1_000_000, low=0, doc="held-out seeds are seed_offset + i")
    temperature: float = _opt(1.0, low=0.0, doc="0 = greedy; 1.0 = the rollout policy itself "
                              "(verl-agent validates at 0.4)")
    every: int = _opt(20, low=0, doc="evaluate every n iterations (0 = only before/after)")
    env_kwargs: dict = _opt({}, doc="env.kwargs overrides for evaluation (e.g. {split: test})")


@dataclass
class LoggingConfig:
    progress: bool = _opt(True)
    tensorboard: bool = _opt(False)
    wandb: bool = _opt(False)
    wandb_project: str | None = _opt(None)


@dataclass
class TrainConfig:
    mode: str = _opt("rl", choices=("rl", "preference"),
                     doc="rl: rollouts + group advantages; preference: offline pairs")
    seed: int = _opt(0)
    run_dir: str = _opt("runs/default")
    iterations: int = _opt(60, low=0, doc="RL iterations")
    save_every: int = _opt(20, low=0, doc="checkpoint every n iterations (0 = only at the end)")
    keep_last: int = _opt(2, low=1)
    threads: int | None = _opt(None, low=1, doc="torch intra-op threads (null = torch default)")
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------- building/validation

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits annotation ``tp`` (with int → float widening); the coerced value."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp is list or origin is list:
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, tuple) else value
    if tp is dict or origin is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return True, value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, f: dataclasses.Field, tp: Any) -> Any:
    ok, value = _type_ok(value, tp)
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__})")
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}: {value!r} is not accepted; choose one of: {shown}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (value < low or (meta.get("low_open") and value == low)):
            op = ">" if meta.get("low_open") else ">="
            raise ConfigError(f"{key}: must be {op} {low}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{key}: must be <= {high}, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; accepted keys under "
                          f"'{prefix.rstrip('.') or '<top>'}': {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if _is_dataclass_type(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = _check_value(key, value, fields[name], tp)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML/JSON-able)."""
    return dataclasses.asdict(cfg)


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf key with its default and documentation (for the README and ``--help``)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out.extend(config_keys(tp, prefix + f.name + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((prefix + f.name, default, f.metadata.get("doc", "")))
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` → nested dict; values are parsed as YAML scalars/lists."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. rollout.group_size=4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {key}: cannot parse value {raw!r} ({err})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: '{part}' is set to a value and a mapping")
        node[parts[-1]] = value
    return out


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any],
                    cls: type = TrainConfig, *, merge_leaf_dicts: bool = True) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base`` following the dataclass tree of ``cls``.

    A dict-valued leaf (``env.kwargs``, ``algorithm.estimator_options``, ...) is merged key by key
    when ``merge_leaf_dicts`` (command-line ``env.kwargs.num_boxes=2`` keeps the other arguments)
    and replaced as a whole otherwise (a recipe file's ``env.kwargs`` is the env's full argument
    list, so switching env never inherits the default env's arguments).
    """
    hints = typing.get_type_hints(cls) if _is_dataclass_type(cls) else {}
    merged = dict(base)
    for key, value in overrides.items():
        tp = hints.get(key)
        old = merged.get(key)
        if _is_dataclass_type(tp) and isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = apply_overrides(old, value, tp, merge_leaf_dicts=merge_leaf_dicts)
        elif merge_leaf_dicts and isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = {**old, **value}
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping = ()
                ) -> TrainConfig:
    """The validated config of a YAML recipe (None = built-in default) plus overrides."""
    import yaml

    data: dict[str, Any] = config_to_dict(TrainConfig())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{p}: top level must be a mapping of keys")
        _build(TrainConfig, loaded, "")  # validate the file's own keys first (clear errors)
        data = apply_overrides(data, loaded, merge_leaf_dicts=False)
    extra = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    data = apply_overrides(data, extra)
    return _build(TrainConfig, data, "")
