"""Config sections of the recipes beside RL and preference training: ``multiagent`` (Dr. MAS,
``mode: multiagent``) and ``phgpo`` (PhGPO tool planning, ``mode: phgpo``). Part of the schema
(:mod:`grouprl.train.config_schema`), kept apart so each module stays one screenful of sections.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from grouprl.train.config_types import SCHEMA, Bool, Float, Int, Str, list_default

__all__ = ["MultiAgentConfig", "PhGPOConfig"]


@dataclass(config=SCHEMA)
class MultiAgentConfig:
    """A team of LLM agents (``mode: multiagent``; Dr. MAS, arXiv 2602.08847;
    docs/multi-agent.md). Tasks per iteration, group size and sampling come from ``rollout.*``,
    the loss from ``algorithm.loss*``, the optimizer from ``optim.*``, held-out tasks from
    ``eval.episodes`` / ``eval.seed_offset``."""

    task: Literal["math", "search"] = Field(
        "math", description="math: MathRefine (Solver <-> Verifier) on the built-in arithmetic; "
        "search: SearchRoute (Verifier -> Search | Answer) on the synthetic knowledge base")
    orchestra: Str | None = Field(None, description="'package.module:factory' returning a user "
                                  "orchestra (called with orchestra_kwargs); null = the task's "
                                  "built-in one")
    orchestra_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="orchestra keyword arguments (math: max_loops=2, "
        "unparsed_verdict=approve; search: unparsed_verdict=yes, last_step_search=false)")
    task_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="task env keyword arguments (math: difficulty, size, "
        "data_seed; search: kb_seed, history_length, top_k, hops)")
    max_steps: Int | None = Field(None, ge=1, description="env steps per episode (null = the "
                                  "task's: math 1, search 4)")
    agents: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-agent settings by name: model (the model name it "
        "runs on) and overrides lr, weight_decay, micro_batch_size, clip_ratio, grad_clip, "
        "temperature, top_p, max_new_tokens; e.g. {Verifier: {lr: 0.0}}")
    agent_overrides: dict[str, list[Any]] = Field(
        default_factory=dict, description="released list form: {lr: [1e-6, 2e-6]}, one entry "
        "per agent in team order (null keeps the agent's value)")
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-model settings by model name: path (default "
        "model.path; null = a tiny model) and tiny (model.tiny keys, e.g. {vocab_size: 384})")
    share_models: Bool = Field(False, description="agents naming one model share its weights "
                               "and optimizer (false: one model + optimizer per agent)")
    baseline: Literal["agent", "trajectory", "step"] = Field(
        "agent", description="advantage statistics: agent (Dr. MAS, per task group and agent), "
        "trajectory (vanilla GRPO), step (global step-level ablation)")
    compat: Literal["native", "reference"] = Field(
        "native", description="reference: the released statistics and padded duplicates")
    advantage_mode: Literal["mean_std_norm", "mean_norm"] = Field(
        "mean_std_norm", description="divide by σ + ε (mean_std_norm) or not (mean_norm)")
    epsilon: Float = Field(1e-6, ge=0.0, description="ε added to σ")
    invalid_penalty: Float | None = Field(None, ge=0.0, description="subtracted from an "
                                          "invalid row's reward (null = math 0.1, search 0.01)")
    pad_divisor: Int | None = Field(None, ge=1, description="compat reference: pad each model "
                                    "group's rows to a multiple of it (null = lcm of the "
                                    "groups' micro-batch sizes); must be null or 1 if native")
    update_num: Int = Field(1, ge=1, description="optimizer steps per model group per epoch, "
                            "whatever its row count (adaptive mini-batching)")
    eval_k: Int = Field(4, ge=1, description="runs per held-out task (val_n): val/pass@k and "
                        "val/avg@k over eval.episodes tasks")
    warm_start_samples: Int = Field(0, ge=0, description="SFT each model group on this many "
                                    "scripted expert replies before RL (bc.epochs, bc.batch_size, "
                                    "bc.lr; 0 = none; bc.enabled is not used)")


@dataclass(config=SCHEMA)
class PhGPOConfig:
    """PhGPO tool planning (``mode: phgpo``; Li et al., arXiv 2602.13691; docs/tool-planning.md):
    a tool-head policy (``model.*``, LoRA from ``model.lora``), three stages (supervised,
    imitation + RL with a horizon curriculum, RL fine-tune), one iteration = one epoch. Optimizer
    from ``optim.*``, checkpoints ``save_every`` epochs, held-out evaluation ``eval.every``
    epochs on ``eval.episodes`` test tasks at most; ``iterations`` is not used."""

    task: Literal["synthetic", "bfcl"] = Field(
        "synthetic", description="synthetic: the built-in tool graph (12 tools); bfcl: BFCL "
        "multi-turn tasks from the bfcl-eval package (pip install --no-deps bfcl-eval)")
    num_tasks: Int = Field(60, ge=2, description="synthetic: tasks generated")
    task_seed: Int = Field(0, ge=0, description="synthetic: seed of the task generator")
    bfcl_category: Literal["base", "long_context", "miss_func", "miss_param"] = Field(
        "base", description="bfcl: the multi-turn category")
    test_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="held-out share of the tasks "
                                 "(split by task, seeded by split_seed)")
    split_seed: Int = Field(42, ge=0, description="seed of the train/test split")
    max_length: Int = Field(256, ge=16, description="state tokens kept (left-truncated)")
    supervised_epochs: Int = Field(3, ge=0, description="stage 1: epochs of next-tool CE on "
                                   "the reference-history states")
    supervised_batch_size: Int = Field(32, ge=1, description="stage 1: states per step")
    label_smoothing: Float = Field(0.1, ge=0.0, lt=1.0, description="stage 1 CE label "
                                   "smoothing")
    stage2_label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0, description="stage 2 CE label "
                                          "smoothing [GUESS]")
    curriculum: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"max_steps": 3, "epochs": 6, "tf_start": 0.40, "tf_end": 0.25},
            {"max_steps": 5, "epochs": 6, "tf_start": 0.35, "tf_end": 0.20},
            {"max_steps": 7, "epochs": 6, "tf_start": 0.30, "tf_end": 0.15},
            {"max_steps": 10, "epochs": 7, "tf_start": 0.25, "tf_end": 0.10}],
        description="stage 2 horizon curriculum: {max_steps, epochs, tf_start, tf_end} each "
        "(tasks with |ref| <= max_steps; teacher forcing tf_start -> tf_end); [] = no stage 2")
    stage3_epochs: Int = Field(25, ge=0, description="stage 3 (RL fine-tune) epochs")
    stage3_tf: Float = Field(0.05, ge=0.0, le=1.0, description="stage 3 teacher forcing")
    stage3_tf_boost: Float = Field(0.15, ge=0.0, le=1.0, description="stage 3 teacher forcing "
                                   "while the elite success fraction < 0.1")
    elite_replay: Float = Field(0.2, ge=0.0, le=1.0, description="stage 3 share of tasks "
                                "replayed from the elite buffer")
    tasks_per_epoch: Int | None = Field(None, ge=1, description="tasks per RL epoch (null = "
                                        "every eligible training task)")
    beta_stage2: list[Float] = Field(default_factory=list_default(0.7, 0.8, 20),
                                     description="β ramp [start, end, epochs] of stage 2 "
                                     "(q ∝ p·τ^β)")
    beta_stage3: list[Float] = Field(default_factory=list_default(0.5, 0.7, 15),
                                     description="β ramp [start, end, epochs] of stage 3")
    fusion_lambda: list[Float] = Field(default_factory=list_default(0.2, 0.5, 20),
                                       description="context fusion weight λ ramp [start, end, "
                                       "epochs] (stage 2, then held)")
    sl_weight: list[Float] = Field(default_factory=list_default(0.7, 0.3, 20),
                                   description="stage 2 weight of the supervised CE term "
                                   "[start, end, epochs]; stage 3 uses 0")
    ratio_mode: Literal["fused", "reference", "policy"] = Field(
        "fused", description="importance ratio (spec §2.9): fused (ratio 1 at θ_old), "
        "reference (the released code's biased ratio), policy (plain softmax)")
    temperature: Float = Field(0.7, gt=0.0, description="sampling temperature T of p")
    top_k: Int = Field(20, ge=1, description="candidates kept (top-k of p)")
    epsilon: Float = Field(0.05, ge=0.0, le=1.0, description="ε-exploration (stage 3 decays "
                           "it to epsilon_floor over epsilon_epochs)")
    epsilon_floor: Float = Field(0.01, ge=0.0, le=1.0, description="stage 3 ε floor")
    epsilon_epochs: Int = Field(25, ge=1, description="stage 3 ε decay length")
    first_step_use_pheromone: Bool = Field(False, description="use τ at step 0 (the "
                                           "__START__ row)")
    evaporate_every: Int = Field(20, ge=1, description="evaporate before every n-th task of "
                                 "an epoch")
    inject_every: Int = Field(3, ge=1, description="stage 3: inject elites after every n-th "
                              "epoch")
    group_size: Int = Field(5, ge=2, description="rollouts per task G (GRPO group)")
    max_steps: Int = Field(20, ge=1, description="step limit of a rollout (stage 3, eval)")
    use_context: Bool = Field(True, description="task-dependent context pheromone")
    context_write: Literal["deposit", "direct"] = Field(
        "deposit", description="context write rule [GUESS]")
    embedding: Literal["hashed"] = Field("hashed", description="task embedding: hashed bag of "
                                         "words (sentence-transformers are not built in)")
    embedding_dim: Int = Field(64, ge=4, description="hashed embedding size")
    pheromone: dict[str, Any] = Field(default_factory=dict, description="PheromoneConfig "
                                      "overrides (tau_min, tau_max, rho, alpha_global, ...)")
    context: dict[str, Any] = Field(default_factory=dict, description="ContextConfig overrides "
                                    "(capacity, min_similarity, decay, ...)")
    rewards: dict[str, Any] = Field(default_factory=dict, description="RewardConfig overrides "
                                    "(exact, mismatch, gamma, ...)")
    advantage_std: Literal["population", "unbiased"] = Field(
        "population", description="GRPO σ at trajectory level (population: the code's)")
    entropy_coef: Float = Field(0.02, ge=0.0, description="entropy bonus c_H")
    clip: Float = Field(0.2, gt=0.0, description="PPO clip ε")
    eval_rollouts: Int = Field(8, ge=1, description="evaluation rollouts per held-out task")
    eval_beta: Float = Field(0.7, gt=0.0, description="β of the pheromone-guided evaluation "
                             "(reported beside β = 0)")
