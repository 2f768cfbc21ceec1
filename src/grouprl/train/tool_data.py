"""Tool-planning data and policy for the PhGPO recipe: the task source (``phgpo.task``), the
state texts, the supervised (state, next tool) samples of stage 1, the tiny model's corpus, and
the tool-head policy (:class:`grouprl.phgpo.tool_head.ToolHeadPolicy`) on the run's LM.

* ``synthetic``: :func:`grouprl.phgpo.synthetic.synthetic_tasks` (``phgpo.num_tasks``,
  ``phgpo.task_seed``) split by :func:`~grouprl.phgpo.synthetic.split_tasks`;
* ``bfcl``: :func:`grouprl.phgpo.bfcl.load_bfcl` split by task with
  :func:`~grouprl.phgpo.bfcl.split_bfcl` (``phgpo.test_fraction``, ``phgpo.split_seed``).

The state of a task after a history is :func:`grouprl.phgpo.state.state_text` (spec §2.2): the
same text in the supervised data, the rollouts, the update and the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grouprl.phgpo.bfcl import BfclSimulator, load_bfcl, split_bfcl
from grouprl.phgpo.context import hashed_text_embedding
from grouprl.phgpo.state import state_text
from grouprl.phgpo.synthetic import (
    TOOLS,
    ToolSimulator,
    ToolTask,
    split_tasks,
    synthetic_tasks,
    variant_ids,
)
from grouprl.phgpo.tool_head import ToolHeadPolicy
from grouprl.policy import LoraOptions, build_tiny_policy, load_policy, resolve_dtype
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.config_diff import as_json, flatten, select
from grouprl.train.saved_model import (
    NOT_RECORDED,
    load_verified_model_dir,
    save_model_dir_atomically,
)
from grouprl.train.setup import BASE_MODEL_DIR, TinyCorpus

__all__ = ["ToolData", "load_tool_data", "task_state", "supervised_samples", "tool_corpus",
           "base_model_record", "build_tool_policy"]

BASE_MODEL_KEYS = ("model", "phgpo.task", "phgpo.num_tasks", "phgpo.task_seed",
                   "phgpo.bfcl_category", "phgpo.test_fraction", "phgpo.split_seed")
"""The keys that determine the tiny base model of a PhGPO run (its tokenizer is trained on the
training tasks' states)."""


@dataclass
class ToolData:
    """Train and held-out tasks, the tool names, the variant count and the simulator."""

    train: list[ToolTask]
    test: list[ToolTask]
    tool_names: list[str]
    num_variants: int
    simulate: Callable[[ToolTask, int, int], str]
    embedding_dim: int = 64

    def embedding(self, task: ToolTask) -> torch.Tensor:
        """The task embedding e(x) of the context pheromone (hashed bag of words [GUESS])."""
        return hashed_text_embedding(task.query, self.embedding_dim)

    def by_id(self) -> dict[int, ToolTask]:
        return {t.task_id: t for t in self.train}


def load_tool_data(cfg: TrainConfig) -> ToolData:
    """The tasks of ``phgpo.task`` (a missing bfcl-eval is a UserError naming the install)."""
    pc = cfg.phgpo
    if pc.task == "bfcl":
        data = load_bfcl(pc.bfcl_category)
        train, test = split_bfcl(data.tasks, pc.test_fraction, pc.split_seed)
        return ToolData(train, test, data.tool_names, data.num_variants,
                        BfclSimulator(data.tool_names).execute, pc.embedding_dim)
    tasks = synthetic_tasks(pc.task_seed, pc.num_tasks)
    train, test = split_tasks(tasks, pc.test_fraction, pc.split_seed)
    return ToolData(train, test, [t.name for t in TOOLS], sum(map(len, variant_ids())),
                    ToolSimulator().execute, pc.embedding_dim)


def task_state(task: ToolTask, names: Sequence[str], actions: Sequence[int],
               outputs: Sequence[str]) -> str:
    """The state text after the steps (``actions``, ``outputs``) of ``task``."""
    return state_text(task.name, task.query, [(names[a], o) for a, o in zip(actions, outputs)])


def supervised_samples(tasks: Sequence[ToolTask], names: Sequence[str]
                       ) -> tuple[list[str], torch.Tensor]:
    """Stage 1's (state on the reference history, next reference tool) pairs, task by task."""
    states, labels = [], []
    for task in tasks:
        for t, tool in enumerate(task.reference):
            states.append(task_state(task, names, task.reference[:t], task.outputs[:t]))
            labels.append(tool)
    return states, torch.tensor(labels, dtype=torch.long)


def tool_corpus(data: ToolData) -> TinyCorpus:
    """The tiny model's tokenizer corpus: every supervised state of the training tasks."""
    states, _ = supervised_samples(data.train, data.tool_names)
    return TinyCorpus(states, source="the tool tasks' states")


def build_tool_policy(cfg: TrainConfig, run_dir: Path, data: ToolData,
                      echo: Callable[[str], None]) -> tuple[ToolHeadPolicy, Any]:
    """``model.*``'s LM (tiny model on :func:`tool_corpus`, or ``model.path``) with a linear
    tool head over ``data.tool_names`` and ``model.lora``'s adapters when enabled."""
    lm, tok = _load_lm(cfg, run_dir, data, echo)
    lo = cfg.model.lora
    lora = LoraOptions(rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout,
                       target_modules=tuple(lo.target_modules)) if lo.enabled else None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return ToolHeadPolicy(lm, len(data.tool_names), lora=lora, seed=cfg.seed), tok


def base_model_record(cfg: TrainConfig) -> dict[str, Any]:
    """The flat config record saved with (and checked against) the run's tiny base model."""
    return select(flatten(as_json(config_to_dict(cfg))), BASE_MODEL_KEYS, NOT_RECORDED)


def _load_lm(cfg: TrainConfig, run_dir: Path, data: ToolData, echo: Callable[[str], None]
             ) -> tuple[torch.nn.Module, Any]:
    """``model.path``, else the run's verified tiny base model, else a tiny model built on
    :func:`tool_corpus` and saved atomically to ``run_dir/base_model`` (checksummed)."""
    m = cfg.model
    if m.path is not None:
        return load_policy(m.path, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                           echo=echo)
    base, record = run_dir / BASE_MODEL_DIR, base_model_record(cfg)
    loaded = load_verified_model_dir(base, record, dtype=m.dtype)
    if loaded is not None:
        return loaded
    corpus, t = tool_corpus(data), m.tiny
    echo(f"building the tiny model (tokenizer on {len(corpus.texts)} states of the tool tasks)")
    lm, tok = build_tiny_policy(corpus.texts, vocab_size=t.vocab_size, seed=cfg.seed,
                                hidden_size=t.hidden_size, num_layers=t.num_layers,
                                num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                                intermediate_size=t.intermediate_size)
    save_model_dir_atomically(lm, tok, base, record)
    return lm.to(resolve_dtype(m.dtype)), tok
