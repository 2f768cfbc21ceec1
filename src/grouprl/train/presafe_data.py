"""PreSafe data: the config checks, the train/test queries, the tiny model's corpus, and the
alignment rows as tensors.

Queries (:func:`load_safety_data`): the harmful prompts of ``presafe.harmful_sources``
(:mod:`grouprl.presafe.datasets`, split by prompt with ``presafe.test_fraction`` /
``split_seed``; ``harmful_train`` / ``harmful_test`` take a seeded sample) and the built-in
arithmetic as benign queries (its train / test splits, ``benign_train`` / ``benign_test``
problems of ``benign_difficulty``). Everything is seeded by ``presafe.split_seed``, not by
``seed``: runs with different seeds train on the same data.

Tensors (:func:`tokenize_alignment`): prompts left-padded, targets right-padded with the EOS
appended (the model learns to stop); with ``presafe.max_length = M`` a row keeps the prompt's
right end (at least ``M // 2`` tokens) and the target's beginning. Column ``P − 1`` of the
prompt block is then every row's last prompt token, where z(x) is read.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from grouprl.data import ReasoningExample
from grouprl.policy import left_pad
from grouprl.policy.builtin import is_model_spec
from grouprl.presafe import (
    EMPTY_THINK,
    TOY_REFUSAL,
    SafetyPrompt,
    benign_examples,
    load_harmful,
    make_labeler,
    split_by_prompt,
)
from grouprl.presafe.datasets import PACKAGE_SOURCES, package_dir
from grouprl.train.checks import check_model_config
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.setup import TinyCorpus
from grouprl.train.warm_start import TINY_ISOLATE_CHARS, TINY_SPECIAL_TOKENS
from grouprl.validation import UserError

__all__ = ["SafetyData", "AlignmentTensors", "check_presafe_config", "check_aux_position",
           "load_safety_data",
           "presafe_corpus", "tokenize_alignment"]


@dataclass
class SafetyData:
    """The queries of a run: harmful train / test prompts, benign train / test problems."""

    harmful_train: list[SafetyPrompt]
    harmful_test: list[SafetyPrompt]
    benign_train: list[ReasoningExample]
    benign_test: list[ReasoningExample]


def check_presafe_config(cfg: TrainConfig) -> None:
    """``presafe.*`` cross-key rules before any work: batch sizes, difficulty levels, the judge
    (imported here), the scratch BERT's shape, local ``safe_model`` / ``bert_path`` directories,
    the packages the harmful sources read (a missing one names its ``pip install``), the
    model."""
    pc = cfg.presafe
    if pc.micro_batch_size > pc.batch_size:
        raise ConfigError(f"presafe.micro_batch_size: {pc.micro_batch_size} must be <= "
                          f"presafe.batch_size ({pc.batch_size})")
    if not pc.harmful_sources:
        raise ConfigError("presafe.harmful_sources: empty; name at least one of harmbench, "
                          "donotanswer, advbench, toy")
    bad = [d for d in pc.benign_difficulty if d not in (1, 2, 3, 4)]
    if bad or not pc.benign_difficulty:
        raise ConfigError(f"presafe.benign_difficulty: levels are 1-4, got "
                          f"{pc.benign_difficulty}")
    if pc.labeler == "judge" or pc.judge is not None:
        try:
            make_labeler(pc.labeler, pc.judge)
        except UserError as err:
            raise ConfigError(str(err)) from None
    if pc.bert_path is None and pc.bert_hidden_size % pc.bert_heads:
        raise ConfigError(f"presafe.bert_hidden_size: {pc.bert_hidden_size} must be divisible "
                          f"by presafe.bert_heads ({pc.bert_heads})")
    for key, value in (("presafe.bert_path", pc.bert_path),
                       ("presafe.safe_model", None if pc.safe_model in ("same", "scripted")
                        else pc.safe_model)):
        if value is not None and not is_model_spec(value) \
                and not Path(value).expanduser().is_dir():
            raise ConfigError(f"{key}: {value!r} is not a local directory (grouprl never "
                              "downloads at run time)")
    for source in pc.harmful_sources:
        if source in PACKAGE_SOURCES:
            try:
                package_dir(PACKAGE_SOURCES[source][0], source)
            except UserError as err:
                raise ConfigError(str(err)) from None
    check_model_config(cfg)


def check_aux_position(cfg: TrainConfig, model: torch.nn.Module) -> None:
    """``presafe.aux_layer`` / ``aux_pool_layers`` fit the model's hidden states (the
    embeddings + one per layer)."""
    pc = cfg.presafe
    states = int(model.config.num_hidden_layers) + 1
    if not -states <= pc.aux_layer < states:
        raise ConfigError(f"presafe.aux_layer: {pc.aux_layer} is out of range; the model has "
                          f"{states} hidden states (0 = embeddings … {states - 1} = last "
                          "layer, -1 = last)")
    if pc.aux_pool_layers > pc.aux_layer % states + 1:
        raise ConfigError(f"presafe.aux_pool_layers: {pc.aux_pool_layers} hidden states do not "
                          f"fit below presafe.aux_layer={pc.aux_layer}")


def _sample(items: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` items, a seeded sample in the input order."""
    if limit is None or len(items) <= limit:
        return items
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def load_safety_data(cfg: TrainConfig) -> SafetyData:
    """The run's queries (module docstring); a :class:`ConfigError` when a side is empty."""
    pc = cfg.presafe
    try:
        harmful = load_harmful(pc.harmful_sources, toy_count=pc.toy_prompts, seed=pc.split_seed)
        train, test = split_by_prompt(harmful, pc.test_fraction, pc.split_seed)
        levels = list(pc.benign_difficulty)
        benign_train = benign_examples("train", pc.benign_train, difficulty=levels,
                                       seed=pc.split_seed)
        benign_test = benign_examples("test", pc.benign_test, difficulty=levels,
                                      seed=pc.split_seed)
    except (UserError, ValueError) as err:
        raise ConfigError(str(err) if isinstance(err, UserError) else
                          f"presafe: {err}") from None
    if not train or not test:
        raise ConfigError(f"presafe.test_fraction: {len(train)} training and {len(test)} "
                          f"held-out harmful prompts of {len(harmful)}; change test_fraction "
                          "or add sources")
    return SafetyData(_sample(train, pc.harmful_train, pc.split_seed),
                      _sample(test, pc.harmful_test, pc.split_seed + 1),
                      benign_train, benign_test)


def presafe_corpus(cfg: TrainConfig, data: SafetyData) -> TinyCorpus:
    """The tiny model's tokenizer corpus: the training queries, the reference solutions, the
    refusals and the empty think block (never a held-out prompt)."""
    texts = [p.text for p in data.harmful_train] + [e.prompt for e in data.benign_train]
    texts += [e.solution or e.answer for e in data.benign_train]
    texts += [cfg.presafe.refusal_text, TOY_REFUSAL, EMPTY_THINK, "The answer is 0."]
    return TinyCorpus(texts, TINY_SPECIAL_TOKENS, TINY_ISOLATE_CHARS, "the presafe queries")


@dataclass
class AlignmentTensors:
    """Alignment rows: prompts left-padded, targets right-padded, d(x), harmful flags."""

    prompt_ids: torch.Tensor    # (N, P) int64
    prompt_mask: torch.Tensor   # (N, P)
    target_ids: torch.Tensor    # (N, R) int64
    target_mask: torch.Tensor   # (N, R)
    signal: torch.Tensor        # (N,) float32 d(x)
    harmful: torch.Tensor       # (N,) bool

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``idx``, cut to their own longest prompt and target (left / right)."""
        pm = self.prompt_mask[idx]
        p = max(1, int(pm.sum(1).max()))
        tm = self.target_mask[idx]
        r = max(1, int(tm.sum(1).max()))
        width = pm.shape[1]
        return {"prompt_ids": self.prompt_ids[idx, width - p:], "prompt_mask": pm[:, width - p:],
                "target_ids": self.target_ids[idx, :r], "target_mask": tm[:, :r],
                "signal": self.signal[idx], "harmful": self.harmful[idx]}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _truncate(prompt: list[int], target: list[int], max_length: int | None
              ) -> tuple[list[int], list[int]]:
    if max_length is None or len(prompt) + len(target) <= max_length:
        return prompt, target
    keep = min(len(prompt), max(max_length - len(target), max_length // 2))
    return prompt[len(prompt) - keep:], target[:max_length - keep]


def tokenize_alignment(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str],
                       signals: Sequence[float], harmful: Sequence[bool], *,
                       max_length: int | None = None) -> AlignmentTensors:
    """Tokenise rendered prompts and their targets once (module docstring); no special tokens
    but the EOS appended to each target. An empty prompt becomes the BOS (else EOS) token."""
    n = len(prompts)
    if not n or not (len(targets) == len(signals) == len(harmful) == n):
        raise ValueError(f"alignment rows: {n} prompts, {len(targets)} targets, "
                         f"{len(signals)} signals, {len(harmful)} flags; need equal, > 0")
    enc = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tokenizer.eos_token_id
    stand_in = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [_truncate(list(p) or [stand_in], [*t, eos] if eos is not None else list(t),
                      max_length) for p, t in zip(enc(prompts), enc(targets))]
    prompt_ids, prompt_mask = left_pad([p for p, _ in rows], pad)
    targets_t = [torch.tensor(t, dtype=torch.long) for _, t in rows]
    target_ids = pad_sequence(targets_t, batch_first=True, padding_value=pad)
    target_mask = pad_sequence([torch.ones_like(t) for t in targets_t], batch_first=True)
    return AlignmentTensors(prompt_ids, prompt_mask, target_ids, target_mask,
                            torch.tensor(list(signals), dtype=torch.float32),
                            torch.tensor(list(harmful), dtype=torch.bool))
