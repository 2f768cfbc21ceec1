"""Config checks that need more than one key, or an algorithm's own options, done in one pass
before any work starts. Each error names the key and the fix (:class:`ConfigError`).

Algorithms are checked through their declarations, never by name: an estimator or loss that
declares ``single_turn`` needs ``env.max_steps=1``; dict-typed options
(``algorithm.estimator_options``, ``algorithm.loss_options``, ``reward.options``,
``rollout.oversampling``, ``rollout.dot_truncation``) are validated by the typed options of the
estimator / loss / shaper they belong to, so a typo lists the valid names.

Inputs are checked before any work too: ``model.device`` (cpu, cuda, cuda:N or auto),
``model.path`` (:func:`grouprl.policy.builtin.check_model_path`: each way a model directory can
be missing or incomplete has its message; a ``builtin:NAME`` or ``.gguf`` path is checked
without converting it) and the env's data (:func:`check_env_data`: an env class
that declares ``prepare_data`` loads its dataset here, once, and shares it with its workers).
:func:`check_resources` estimates the rollout's memory once the policy is loaded and refuses a
batch that cannot fit, naming the ``rollout.*`` keys to change.
``rollout.generation_backend=vllm`` needs the rl recipe, a CUDA ``model.device`` and vLLM in
this environment (:func:`check_generation_backend`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from grouprl.advantages import available_estimators, estimator_options, estimator_spec
from grouprl.agent.memory import HistoryMemory
from grouprl.agent.prompts import PromptTemplate, template_from_config
from grouprl.agent.rollout import render_prompt
from grouprl.envs import LazyFactory, available_envs
from grouprl.envs.multitask import check_tasks
from grouprl.envs.registry import resolve_factory
from grouprl.losses import SEQUENCE_LOSSES, available_policy_losses
from grouprl.losses.objective import make_objective, objective_class
from grouprl.phgpo import ContextConfig, PheromoneConfig
from grouprl.phgpo import RewardConfig as PhgpoRewards
from grouprl.phgpo.bfcl import load_bfcl
from grouprl.phgpo.schedules import CurriculumStage
from grouprl.policy.backends import BackendUnavailable, require_vllm
from grouprl.policy.builtin import builtin_model_names, check_model_path, is_model_spec
from grouprl.policy.generate import prompt_token_limit
from grouprl.rewards.shaping import available_shapers, make_shaper
from grouprl.rewards.stage import dot_options, split_reward_options
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.estimate import run_settings
from grouprl.train.pamoe import check_pamoe_config
from grouprl.train.sampling import oversampling_options, single_turn
from grouprl.train.setup import resolve_device
from grouprl.train.team_checks import check_multiagent_config
from grouprl.validation import UserError, check_options

__all__ = ["check_rl_config", "check_phgpo_config", "check_model_config", "check_env_data",
           "check_generation_backend",
           "check_resources", "RolloutMemory", "available_memory", "estimate_rollout_memory"]

_GIB = 1024 ** 3


def _wrap(key: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_model_config(cfg: TrainConfig) -> None:
    """``model.device`` is cpu, cuda, cuda:N (present) or auto; ``model.path`` is a complete
    local model directory, or a ``builtin:NAME`` / ``.gguf`` file that can be converted
    (:func:`grouprl.policy.builtin.check_model_path`; nothing is converted here)."""
    resolve_device(cfg.model.device)
    if cfg.model.path is None:
        return
    if not is_model_spec(cfg.model.path) and not Path(cfg.model.path).expanduser().exists():
        raise ConfigError(f"model.path: {cfg.model.path!r} is not a local directory (grouprl "
                          "never downloads at run time; set model.path=null for the tiny model, "
                          f"or use a .gguf file or one of {builtin_model_names()})")
    try:
        check_model_path(cfg.model.path)
    except UserError as err:
        raise ConfigError(f"model.path: {err}") from None


def check_generation_backend(cfg: TrainConfig) -> None:
    """``rollout.generation_backend=vllm``: the RL recipe only, a CUDA ``model.device``, and
    vLLM importable in this environment with a CUDA device
    (:func:`grouprl.policy.backends.require_vllm`)."""
    if cfg.rollout.generation_backend != "vllm":
        return
    if cfg.mode != "rl":
        raise ConfigError(f"rollout.generation_backend: vllm serves the rl recipe's rollouts; "
                          f"mode={cfg.mode} generates with its own loop, so set "
                          "rollout.generation_backend=hf")
    if resolve_device(cfg.model.device).type != "cuda":
        raise ConfigError(f"rollout.generation_backend: vllm runs on CUDA GPUs only, but "
                          f"model.device={cfg.model.device!r} resolves to the CPU; set "
                          "model.device=cuda (on a GPU machine with vLLM installed) or "
                          "rollout.generation_backend=hf")
    try:
        require_vllm()
    except BackendUnavailable as err:
        raise ConfigError(str(err)) from None


def check_env_data(cfg: TrainConfig) -> None:
    """Load the env's data in this process when its class declares ``prepare_data(**kwargs)``
    (the reasoning env: parse the dataset once and share it with the pool's workers), for the
    training kwargs and, when they differ, the evaluation kwargs. A data error becomes a
    :class:`ConfigError` naming ``env.kwargs`` / ``eval.env_kwargs``. An env whose module cannot
    be imported is left to fail where it is made (optional packages)."""
    try:
        factory = resolve_factory(cfg.env.name)
        target = factory.load() if isinstance(factory, LazyFactory) else factory
    except (ImportError, ValueError, TypeError):
        return
    prepare = getattr(target, "prepare_data", None)
    if not callable(prepare):
        return
    train_kwargs = dict(cfg.env.kwargs)
    eval_kwargs = {**train_kwargs, **cfg.eval.env_kwargs}
    for key, kwargs in (("env.kwargs", train_kwargs), ("eval.env_kwargs", eval_kwargs)):
        if key == "eval.env_kwargs" and eval_kwargs == train_kwargs:
            continue
        try:
            prepare(**kwargs)
        except (UserError, FileNotFoundError) as err:
            raise ConfigError(f"{key}: {err}") from None


def check_rl_config(cfg: TrainConfig) -> PromptTemplate:
    """Every cross-key check of an RL run; returns the prompt template (a multi-agent run:
    :func:`check_multiagent_config`, which ``grouprl config`` reaches through here)."""
    check_generation_backend(cfg)
    check_pamoe_config(cfg)
    if cfg.env.name == "multitask":               # its tasks, before any env is made
        try:
            check_tasks(cfg.env.kwargs.get("tasks"))
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
    if cfg.mode == "multiagent":
        return check_multiagent_config(cfg)
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
    template = _wrap("agent.template", template_from_config, cfg.agent.template)
    check_env_data(cfg)
    return template


def _phgpo_options(cls: type, options: dict) -> Any:
    check_options(cls.__name__, options, [f.name for f in fields(cls)])
    try:
        return cls(**options)
    except TypeError as err:                     # a missing key or a value of the wrong type
        raise ValueError(str(err)) from None


def check_phgpo_config(cfg: TrainConfig) -> None:
    """``phgpo.*`` cross-key rules: the curriculum entries, the [start, end, epochs] ramps, the
    pheromone / context / rewards option mappings, a run with epochs, the model path, and the
    BFCL data when ``phgpo.task=bfcl`` (a missing package names ``pip install``)."""
    pc = cfg.phgpo
    for i, entry in enumerate(pc.curriculum):
        _wrap(f"phgpo.curriculum[{i}]", _phgpo_options, CurriculumStage, entry)
    for key in ("beta_stage2", "beta_stage3", "fusion_lambda", "sl_weight"):
        ramp = getattr(pc, key)
        if len(ramp) != 3 or ramp[2] < 1 or ramp[2] != int(ramp[2]):
            raise ConfigError(f"phgpo.{key}: expected [start, end, epochs] with epochs an "
                              f"integer >= 1, got {ramp}")
    for key, cls in (("pheromone", PheromoneConfig), ("context", ContextConfig),
                     ("rewards", PhgpoRewards)):
        _wrap(f"phgpo.{key}", _phgpo_options, cls, getattr(pc, key))
    if pc.supervised_epochs + sum(int(e["epochs"]) for e in pc.curriculum) \
            + pc.stage3_epochs == 0:
        raise ConfigError("phgpo.supervised_epochs: the run has no epoch (also "
                          "phgpo.curriculum=[] and phgpo.stage3_epochs=0); set one > 0")
    check_model_config(cfg)
    if pc.task == "bfcl":
        _wrap("phgpo.task", load_bfcl, pc.bfcl_category)


def _check_estimator(name: str, options: dict, inputs: dict) -> None:
    """The estimator's typed options; per-row inputs it declares get a placeholder."""
    placeholders = {option: torch.zeros(0) for option in inputs if option not in options}
    estimator_options(name, **options, **placeholders)


# ------------------------------------------------------------------------------------------
# Rollout memory
# ------------------------------------------------------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _host_available() -> int | None:
    """Bytes of RAM this process can still use: ``MemAvailable`` (/proc/meminfo, else
    ``os.sysconf``), lowered to the cgroup's remaining limit when one is set."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            found.append(max(0, limit - usage))
            break
    return min(found) if found else None


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes where ``device``'s tensors live: the CUDA device's free memory, or the host's
    available RAM (cgroup limit included); ``None`` when it cannot be measured."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    return _host_available()


@dataclass(frozen=True)
class RolloutMemory:
    """The memory estimate of one rollout (bytes), from :func:`check_resources`.

    ``generation_*`` is needed on the model's device while one generate call runs
    (``generation_rows`` rows at once): the KV cache of every row padded to
    ``prompt_tokens + response_tokens`` (it is one rectangular tensor per layer, so one row that
    runs to ``max_new_tokens`` makes every row that long) and the float32 log-softmax and
    probabilities of one decoding step. ``stored`` is the host memory of the rollout's kept
    tensors (``rows`` rows: prompt ids and mask, response ids and mask, log-probs and old
    log-probs). Prompt tokens are a lower bound (the prompt template's own text) unless given.
    """

    rows: int
    generation_rows: int
    prompt_tokens: int
    response_tokens: int
    kv_cache: int
    logits: int
    stored: int

    @property
    def generation(self) -> int:
        return self.kv_cache + self.logits

    def per_generation_row(self) -> int:
        return (self.kv_cache + self.logits) // max(self.generation_rows, 1)


def _kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of KV cache one token of one row takes (0 when the config does not say)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    hidden = getattr(config, "hidden_size", None)
    if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads:
        head_dim = hidden // heads
    if not all(isinstance(x, int) and x > 0 for x in (layers, kv_heads, head_dim)):
        return 0
    try:
        itemsize = next(model.parameters()).element_size()
    except StopIteration:
        itemsize = 4
    return 2 * layers * kv_heads * head_dim * itemsize


def _template_tokens(cfg: TrainConfig, tokenizer: Any, template: PromptTemplate | None) -> int:
    """Tokens of the prompt template's own text (no task, observation or history): a lower
    bound on every prompt's length; 1 when it cannot be rendered."""
    if template is None or tokenizer is None:
        return 1
    try:
        text = render_prompt(template, HistoryMemory(1, cfg.agent.history_length), 0, task="",
                             observation="", admissible=None, tokenizer=tokenizer,
                             use_chat_template=cfg.agent.use_chat_template)
        return max(1, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return 1


def estimate_rollout_memory(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any = None,
                            template: PromptTemplate | None = None, *,
                            prompt_tokens: int | None = None) -> RolloutMemory:
    """The :class:`RolloutMemory` of one iteration's first rollout try with ``cfg``."""
    ro = cfg.rollout
    rows = ro.groups_per_batch * ro.group_size
    gen_rows = max(rows, cfg.eval.episodes)
    if ro.generation_batch_size is not None:
        gen_rows = min(gen_rows, ro.generation_batch_size)
    response = ro.max_new_tokens
    prompt = prompt_tokens if prompt_tokens is not None else \
        _template_tokens(cfg, tokenizer, template)
    limit = prompt_token_limit(model, response, ro.max_prompt_tokens)
    if limit is not None:
        prompt = min(prompt, limit)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        vocab = len(tokenizer) if tokenizer is not None else 0
    return RolloutMemory(
        rows=rows, generation_rows=gen_rows, prompt_tokens=prompt, response_tokens=response,
        kv_cache=gen_rows * (prompt + response) * _kv_bytes_per_token(model),
        logits=gen_rows * vocab * 4 * 2,
        stored=rows * (prompt * 16 + response * 24))


def _free_note(free: int, kept: int) -> str:
    if not kept:
        return f"{free / _GIB:.1f} GiB is available"
    return (f"{free / _GIB:.1f} GiB is available and the kept rollout takes "
            f"{kept / _GIB:.1f} GiB of it")


def check_resources(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any = None,
                    template: PromptTemplate | None = None, *, prompt_tokens: int | None = None,
                    available: dict[str, int | None] | None = None) -> RolloutMemory:
    """Refuse, before the first rollout, a rollout that cannot fit in memory.

    Estimates :class:`RolloutMemory` (a lower bound: prompts are counted at the template's own
    length unless ``prompt_tokens`` is given) and compares it with the free memory of the
    model's device and of the host (:func:`available_memory`; ``available`` overrides them as
    ``{"device": bytes, "host": bytes}``, ``None`` = unknown, not checked). On a CPU model the
    generation and the stored rollout share the host's memory. Raises :class:`ConfigError`
    naming ``rollout.group_size``, ``rollout.groups_per_batch`` and, when generating fewer rows
    at once would fit, the ``rollout.generation_batch_size`` to set. Returns the estimate.
    """
    est = estimate_rollout_memory(cfg, model, tokenizer, template, prompt_tokens=prompt_tokens)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if available is None:
        available = {"device": available_memory(device), "host": available_memory("cpu")}
    on_host = device.type != "cuda"
    host_free, device_free = available.get("host"), available.get("device")
    if on_host:
        device_free = host_free
    ro = cfg.rollout
    batch = (f"rollout.groups_per_batch={ro.groups_per_batch} × rollout.group_size="
             f"{ro.group_size} = {est.rows} rows")
    tokens = f"{est.prompt_tokens}+{est.response_tokens} tokens per row"
    if host_free is not None and est.stored > host_free:
        raise ConfigError(
            f"rollout memory: keeping one rollout of {batch} ({tokens}) needs about "
            f"{est.stored / _GIB:.1f} GiB of host memory, but {host_free / _GIB:.1f} GiB is "
            "available; lower rollout.group_size or rollout.groups_per_batch "
            "(or rollout.max_new_tokens)")
    room = None if device_free is None else device_free - (est.stored if on_host else 0)
    if room is not None and est.generation > room:
        fits = room // max(est.per_generation_row(), 1)
        hint = (f"set rollout.generation_batch_size={fits} (or less) to generate fewer rows at "
                f"once, or lower rollout.group_size or rollout.groups_per_batch"
                if fits >= 1 else "lower rollout.group_size, rollout.groups_per_batch or "
                "rollout.max_new_tokens, or use a smaller model")
        where = "host" if on_host else str(device)
        raise ConfigError(
            f"rollout memory: generating {est.generation_rows} rows at once ({batch}; "
            f"rollout.generation_batch_size={ro.generation_batch_size}) needs about "
            f"{est.generation / _GIB:.1f} GiB on {where} (KV cache "
            f"{est.kv_cache / _GIB:.1f} GiB for {tokens}, logits {est.logits / _GIB:.1f} GiB), "
            f"but {_free_note(device_free, est.stored if on_host else 0)}; {hint}")
    return est
