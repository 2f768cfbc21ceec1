"""The config schema: one pydantic dataclass per section, every field a default and a help string
(TRL's ``GRPOConfig`` style; the paper is named where a default comes from one).

Defaults are the built-in default job: a tiny Qwen2-architecture model on built-in Sokoban,
behaviour cloning, then GiGPO with PPO-clip (spec-agentic-credit §1.4 hyper-parameters where they
apply to a CPU-sized run). Loading and overrides: :mod:`grouprl.train.config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from grouprl.train.config_modes import MultiAgentConfig, PhGPOConfig
from grouprl.train.config_types import SCHEMA, Bool, Float, Int, Str, list_default
from grouprl.train.pamoe_config import PAMoEConfig
from grouprl.train.presafe_config import PreSafeConfig

__all__ = ["SCHEMA", "Int", "Bool", "Str", "Float", "TinyModelConfig", "LoraConfig", "ModelConfig",
           "EnvConfig", "AgentConfig",
           "RolloutConfig", "VLLMConfig", "AlgorithmConfig", "RewardConfig", "PreferenceConfig",
           "OptimConfig",
           "BCConfig", "EvalConfig", "LoggingConfig", "DistributedConfig", "MultiAgentConfig",
           "PhGPOConfig", "PreSafeConfig", "TrainConfig"]

@dataclass(config=SCHEMA)
class TinyModelConfig:
    """The tiny Qwen2-architecture model built when ``model.path`` is null."""

    vocab_size: Int = Field(512, ge=64, description="BPE vocabulary trained on the run's own "
                            "text (the env's expert episodes, or the preference pairs)")
    hidden_size: Int = Field(128, ge=8, description="hidden width")
    num_layers: Int = Field(4, ge=1, description="decoder layers")
    num_heads: Int = Field(4, ge=1, description="attention heads")
    num_kv_heads: Int = Field(2, ge=1, description="key/value heads (grouped-query attention)")
    intermediate_size: Int = Field(384, ge=8, description="MLP width")
    tokenizer_episodes: Int = Field(200, ge=1, description="expert episodes whose text trains "
                                    "the BPE")
    isolate_chars: Str | None = Field(None, description="characters kept as single tokens; "
                                      "null = the env's grid symbols (Sokoban: #_OX√PS)")


@dataclass(config=SCHEMA)
class LoraConfig:
    """LoRA adapters on the policy (PEFT); the frozen base is then the KL reference."""

    enabled: Bool = Field(False, description="train LoRA adapters instead of all weights")
    rank: Int = Field(8, ge=1, description="LoRA rank r")
    alpha: Float = Field(16.0, gt=0.0, description="LoRA scaling α (update scaled by α/r)")
    dropout: Float = Field(0.0, ge=0.0, le=1.0, description="dropout on the LoRA input")
    target_modules: list[Str] = Field(default_factory=list_default("q_proj", "k_proj", "v_proj",
                                                            "o_proj"),
                                      description="module names that get adapters")


@dataclass(config=SCHEMA)
class ModelConfig:
    """The policy model."""

    path: Str | None = Field(None, description="local HF model directory, a .gguf file or "
                             "builtin:smollm2-135m-instruct (GGUF converted once, cached); null "
                             "= build the tiny model (nothing is downloaded at run time)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="parameter dtype")
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="autocast dtype of the forward passes of RL rollouts, log-probs, "
        "updates and evaluation; parameters and optimizer stay in model.dtype; null = "
        "model.dtype. bfloat16 pays off on GPUs and on CPUs with AMX/AVX512-BF16 "
        "(benchmarks/real_model.py)")
    device: Str = Field("cpu", description="cpu, cuda, cuda:N or auto (cuda when available)")
    trust_remote_code: Bool = Field(False, description="allow the model directory's own code")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig,
                                  description="the tiny model (model.path=null)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters")
    pamoe: PAMoEConfig = Field(default_factory=PAMoEConfig,
                               description="PA-MoE: LoRA experts routed per env step")


@dataclass(config=SCHEMA)
class EnvConfig:
    """The environment: a registered name or ``package.module:Class``."""

    name: Str = Field("sokoban", description="a registered env name (sokoban, reasoning, "
                      "textworld_express, scienceworld, ...) or 'package.module:Class'")
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"dim_room": [5, 5], "num_boxes": 1, "max_solution_length": 2},
        description="keyword arguments of the env constructor")
    backend: Literal["serial", "thread", "process", "ray"] = Field(
        "thread", description="where env steps run: thread (default: step_timeout fires on "
        "Python-level hangs; envs that block in native code are refused), process (isolates "
        "crashes and any hang; for envs you do not trust), serial (in-process, no deadline), "
        "ray (one Ray actor per env, isolated like process; for envs that must run on other "
        "hosts: pip install 'grouprl[ray]', cluster from RAY_ADDRESS, else a local instance)")
    num_workers: Int | None = Field(None, ge=1, description="process/thread workers (null = "
                                    "one per env, capped by the CPU count)")
    max_steps: Int = Field(4, ge=1, description="episode step limit (truncation); 1 = single-"
                           "turn rows (reasoning)")
    step_timeout: Float | None = Field(30.0, gt=0.0, description="seconds an env step may take "
                                       "before the env is restarted and its episode dropped")
    max_failed_fraction: Float = Field(0.5, ge=0.0, le=1.0, description="fault budget: the "
                                       "fraction of an iteration's trajectories that may fail "
                                       "(exception, crash, hang past step_timeout; each is "
                                       "dropped and its env restarted) before the run saves a "
                                       "checkpoint and stops; 1 = never stop")


@dataclass(config=SCHEMA)
class AgentConfig:
    """How observations become prompts and replies become actions (verl-agent §1.2)."""

    template: Any = Field("sokoban_compact", description="a template name or {no_history, "
                          "with_history} format strings")
    history_length: Int = Field(2, ge=0, description="memory window k: past (observation, "
                                "action) records in the prompt (spec-agentic-credit §1.2)")
    action_tag: Str | None = Field("action", description="the reply's action is inside "
                                   "<tag>...</tag>; null = the whole reply")
    allow_plain: Bool = Field(False, description="accept an untagged reply as the action")
    raw_action: Bool | None = Field(None, description="pass the whole reply to the env unparsed "
                                    "(null = true for env 'reasoning', false otherwise)")
    use_chat_template: Bool = Field(True, description="apply the tokenizer's chat template if "
                                    "it has one")


@dataclass(config=SCHEMA)
class VLLMConfig:
    """The colocated vLLM engine (rollout.generation_backend=vllm; docs/distributed.md)."""

    gpu_memory_utilization: Float = Field(0.3, gt=0.0, le=1.0, description="share of the GPU's "
                                          "memory vLLM takes for its weights and KV cache (the "
                                          "trainer keeps the rest)")
    enable_sleep_mode: Bool = Field(True, description="free the engine's GPU memory during the "
                                    "policy update (llm.sleep / wake_up)")
    sleep_level: Int = Field(2, ge=1, le=2, description="1 = offload the engine's weights to CPU "
                             "while asleep; 2 = discard them (reloaded from the policy after "
                             "each update)")
    max_model_len: Int | None = Field(None, ge=1, description="prompt + response tokens the "
                                      "engine serves; null = the model's context")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the engine's weight dtype; auto = the policy config's dtype")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="further vllm.LLM "
                                          "arguments, e.g. {max_num_seqs: 64, enforce_eager: "
                                          "true}")


@dataclass(config=SCHEMA)
class RolloutConfig:
    """Sampling of one iteration's groups."""

    groups_per_batch: Int = Field(8, ge=1, description="tasks per iteration (verl "
                                  "train_batch_size)")
    group_size: Int = Field(8, ge=1, description="episodes per task, reset to the same state "
                            "(verl env.rollout.n)")
    max_new_tokens: Int = Field(8, ge=1, description="tokens generated per step (L_cap of the "
                                "length shapers, DRPO's L_max)")
    temperature: Float = Field(1.0, gt=0.0, description="sampling temperature (also divides the "
                               "logits when log-probs are recomputed)")
    top_p: Float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    stop: list[Str] = Field(default_factory=list_default("</action>"), description="stop strings "
                            "(the reply ends after the first one)")
    generation_batch_size: Int | None = Field(None, ge=1, description="prompts per generate "
                                              "call (null = all at once)")
    generation_backend: Literal["hf", "vllm"] = Field(
        "hf", description="rollout engine: hf = grouprl's own sampling loop on the policy "
        "(its log-probs are the learner's); vllm = a colocated vLLM engine (CUDA, extra 'vllm' "
        "in its own environment; old_logp is then recomputed by the learner, docs/"
        "distributed.md)")
    max_prompt_tokens: Int | None = Field(
        None, ge=1, description="longer prompts are left-truncated to their last N tokens "
        "(counted in train/truncated_prompts; a warning names this key); null = the model's "
        "context (max_position_embeddings) minus max_new_tokens")
    dynamic_sampling: Bool = Field(False, description="DAPO dynamic sampling: drop groups whose "
                                   "episode returns are all equal and roll out again")
    max_sample_batches: Int = Field(10, ge=1, description="dynamic sampling: rollout tries per "
                                    "iteration (the last try keeps everything)")
    oversampling: dict[str, Any] | None = Field(
        None, description="DOT predictive oversampling with dynamic sampling (spec-rewards "
        "§A7.3): {window: 20, init: 1.5, min: 1.2, max: 5.0}")
    dot_truncation: dict[str, Any] | None = Field(
        None, description="DOT outlier truncation of all-correct groups (single-turn, spec-"
        "rewards §A7): {alpha: 3.0, margin: 32}")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig,
                             description="the vLLM engine (generation_backend=vllm)")


@dataclass(config=SCHEMA)
class AlgorithmConfig:
    """Advantage estimator and policy loss."""

    estimator: Str = Field("gigpo", description="grouprl.advantages estimator: grpo, dr_grpo, "
                           "rloo, reinforce_pp, canon, gigpo (Feng et al. 2025), hgpo, graphgpo")
    estimator_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the estimator (gamma, step_weight, "
        "history_length, ...); validated against its typed options")
    loss: Str = Field("ppo", description="policy loss: ppo (PPO-clip), gspo, cispo, sapo, kpo, "
                      "kl_cov, drpo, ... (grouprl.losses)")
    loss_options: dict[str, Any] = Field(default_factory=dict, description="options of the "
                                         "loss (clip_low, clip_high, dual_clip, ...)")
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                      "seq-mean-token-sum-norm"] | None = Field(
        None, description="loss aggregation (spec-losses §2); null = the loss's default")
    kl_coef: Float = Field(0.0, ge=0.0, description="β_KL of the KL-to-reference penalty "
                           "(verl-agent uses 0.01; costs a reference forward pass)")
    kl_kind: Str = Field("low_var_kl", description="KL estimator: k1, k2, k3/low_var_kl, abs, mse")
    entropy_coef: Float = Field(0.001, description="β_H: entropy bonus coefficient")
    ppo_epochs: Int = Field(1, ge=1, description="passes over the rollout per iteration")
    num_mini_batches: Int = Field(2, ge=1, description="optimizer steps per epoch")
    micro_batch_size: Int = Field(64, ge=1, description="rows per forward/backward")


@dataclass(config=SCHEMA)
class RewardConfig:
    """Reward shaping of single-turn (reasoning) rollouts, applied after the verifier."""

    shaping: Str | None = Field(None, description="kimi, grpo_lambda, dler, hapo, laser, "
                                "laser_d, laser_de, overlong (null = the verifier's 0/1 reward)")
    options: dict[str, Any] = Field(default_factory=dict, description="options of the shaper "
                                    "(e.g. grpo_lambda: {alpha: 0.2})")
    format_weight: Float = Field(0.0, ge=0.0, description="weight of the format reward added "
                                 "to the correctness reward (spec-rewards §C4)")
    format_style: Literal["r1_zero", "tag_count", "r1_distill"] = Field(
        "r1_zero", description="format reward / well-formedness check (spec-rewards §C4)")


@dataclass(config=SCHEMA)
class PreferenceConfig:
    """Offline pairwise preference training (``mode: preference``; spec-losses §6)."""

    dataset: Str = Field("builtin:arithmetic_pairs", description="builtin:arithmetic_pairs, a "
                         ".jsonl or .parquet file of {prompt, chosen, rejected}, or hf:NAME")
    eval_dataset: Str | None = Field(None, description="held-out pairs; null = the dataset's "
                                     "test split (builtin) or the last eval_fraction of the file")
    eval_fraction: Float = Field(0.1, ge=0.0, le=0.9, description="held-out share of the "
                                 "training file when there is no eval_dataset")
    split: Str = Field("train", description="dataset split")
    limit: Int | None = Field(None, ge=1, description="use at most this many training pairs")
    prompt_field: Str = Field("prompt", description="field holding the prompt")
    chosen_field: Str = Field("chosen", description="field holding the preferred response")
    rejected_field: Str = Field("rejected", description="field holding the other response")
    loss: Str = Field("dpo", description="dpo (Rafailov et al. 2023), cdpo, robust, ipo, "
                      "simpo, orpo, hypo")
    loss_options: dict[str, Any] = Field(default_factory=dict, description="options of the "
                                         "loss (beta, label_smoothing, gamma, ...)")
    epochs: Int = Field(3, ge=1, description="passes over the training pairs")
    batch_size: Int = Field(32, ge=1, description="pairs per optimizer step")
    micro_batch_size: Int = Field(16, ge=1, description="pairs per forward/backward")
    max_length: Int | None = Field(None, ge=8, description="truncate prompt + response to this "
                                   "many tokens (prompt kept from the left)")
    sft_epochs: Int = Field(1, ge=0, description="tiny model only: fine-tune on the chosen "
                            "responses first; the result is the reference model")
    eval_every: Int = Field(50, ge=0, description="evaluate every n optimizer steps (0 = only "
                            "at the end)")


@dataclass(config=SCHEMA)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: Float = Field(3e-4, gt=0.0, description="peak learning rate")
    weight_decay: Float = Field(0.0, ge=0.0, description="AdamW weight decay")
    betas: list[Float] = Field(default_factory=list_default(0.9, 0.999), description="AdamW betas")
    eps: Float = Field(1e-8, gt=0.0, description="AdamW epsilon")
    grad_clip: Float | None = Field(1.0, gt=0.0, description="max gradient norm (null = no "
                                    "clipping)")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="decay after warm-up, per iteration (RL) or step (preference)")
    warmup_iterations: Int = Field(0, ge=0, description="linear warm-up length")


@dataclass(config=SCHEMA)
class BCConfig:
    """Behaviour cloning warm start on expert trajectories (a random model finds no reward)."""

    enabled: Bool = Field(True, description="clone the env's expert before RL")
    episodes: Int = Field(300, ge=1, description="expert episodes (distinct seeds)")
    epochs: Int = Field(3, ge=1, description="passes over the expert steps")
    batch_size: Int = Field(32, ge=1, description="samples per update")
    lr: Float = Field(1e-3, gt=0.0, description="learning rate")
    max_updates: Int | None = Field(None, ge=1, description="stop after this many updates")


@dataclass(config=SCHEMA)
class EvalConfig:
    """Held-out evaluation (one episode per held-out task)."""

    episodes: Int = Field(128, ge=1, description="held-out tasks, one episode each")
    seed_offset: Int = Field(1_000_000, ge=0, description="held-out seeds are seed_offset + i "
                             "(training draws below it)")
    temperature: Float = Field(1.0, ge=0.0, description="0 = greedy; 1.0 = the rollout policy "
                               "itself (verl-agent validates at 0.4)")
    every: Int = Field(20, ge=0, description="evaluate every n iterations (0 = only before/after)")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="env.kwargs overrides "
                                       "for evaluation (e.g. {split: test})")


@dataclass(config=SCHEMA)
class LoggingConfig:
    """Where metrics go besides ``run_dir/metrics.jsonl``."""

    progress: Bool = Field(True, description="progress bar on stderr")
    tensorboard: Bool = Field(False, description="TensorBoard events (extra 'logging')")
    wandb: Bool = Field(False, description="Weights & Biases (extra 'logging')")
    wandb_project: Str | None = Field(None, description="W&B project name")


@dataclass(config=SCHEMA)
class DistributedConfig:
    """Data-parallel training under ``torchrun`` (docs/distributed.md). The world size comes from
    the launcher (``grouprl train --nproc N`` or ``torchrun --nproc_per_node N -m grouprl
    train``); one process ignores this section."""

    model_sharding: Literal["replicated", "fsdp2"] = Field(
        "replicated", description="replicated: every rank holds the whole model, gradients "
        "all-reduced once per mini-batch (small and LoRA models); fsdp2: parameters, gradients "
        "and optimizer state sharded with fully_shard (models that do not fit one device; "
        "full-parameter training only)")
    timeout_s: Float = Field(1800.0, gt=0.0, description="collective timeout: a rank waiting "
                             "longer for the others fails the run")


@dataclass(config=SCHEMA)
class TrainConfig:
    """A whole run."""

    mode: Literal["rl", "preference", "multiagent", "phgpo", "presafe"] = Field(
        "rl", description="rl: rollouts + group advantages; preference: offline pairs; "
        "multiagent: a team of agents (multiagent.*); phgpo: tool planning (phgpo.*); "
        "presafe: safety alignment before chain-of-thought (presafe.*)")
    seed: Int = Field(0, description="seed of every RNG of the run")
    run_dir: Str = Field("runs/default", description="where config, metrics and checkpoints go")
    iterations: Int = Field(60, ge=0, description="RL iterations")
    save_every: Int = Field(20, ge=0, description="checkpoint every n iterations (0 = only at "
                            "the end)")
    keep_last: Int = Field(2, ge=1, description="checkpoints kept")
    threads: Int | None = Field(None, ge=1, description="torch intra-op threads (null = torch "
                                "default)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy model")
    env: EnvConfig = Field(default_factory=EnvConfig, description="the environment")
    agent: AgentConfig = Field(default_factory=AgentConfig, description="prompts and actions")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="sampling")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig,
                                       description="estimator and loss")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="reward shaping")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig,
                                         description="preference mode")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer")
    bc: BCConfig = Field(default_factory=BCConfig, description="behaviour cloning")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="logging")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="data parallel (torchrun)")
    multiagent: MultiAgentConfig = Field(default_factory=MultiAgentConfig,
                                         description="multi-agent team (mode: multiagent)")
    phgpo: PhGPOConfig = Field(default_factory=PhGPOConfig,
                               description="PhGPO tool planning (mode: phgpo)")
    presafe: PreSafeConfig = Field(default_factory=PreSafeConfig,
                                   description="PreSafe safety alignment (mode: presafe)")
