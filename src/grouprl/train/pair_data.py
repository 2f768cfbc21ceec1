"""Preference pairs as tensors, and the preference config checks and data loading.

Tokenisation (once, before training): the prompt (wrapped in the tokenizer's chat template when
it has one and ``agent.use_chat_template``) is left-padded, each response right-padded, with
the EOS token appended to every response (TRL's DPO convention: the model learns to stop).
With ``preference.max_length = M``, a pair whose prompt plus longer response exceeds M keeps
the prompt's *right* end (the part next to the answer), at least ``M // 2`` tokens of it, and
the responses' *left* part (their beginnings) in the rest.

A pair whose chosen and rejected token ids are identical after this (truncation cut off where
they differ, or the tokenizer maps both texts to the same ids) carries no preference: it is
dropped with a :class:`grouprl.data.DataWarning` giving the count (pairs identical as text are
dropped when loaded, :func:`grouprl.data.load_pairs`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from grouprl.agent.prompts import apply_chat_template
from grouprl.data import DataWarning, load_pairs, split_holdout
from grouprl.distributed import launched_by_torchrun
from grouprl.losses.preference import (
    PREFERENCE_LOSSES,
    canonical_preference_loss,
    preference_loss,
)
from grouprl.policy import left_pad
from grouprl.train.checks import check_model_config
from grouprl.train.config import ConfigError, TrainConfig

__all__ = ["PairTensors", "tokenize_preference_pairs", "validate_preference_config",
           "load_preference_data", "loss_normalizes"]


# --------------------------------------------------------------------------- tokenised pairs

@dataclass
class PairTensors:
    """Tokenised preference pairs: prompts left-padded, responses right-padded to one width."""

    prompt_ids: torch.Tensor  # (N, P) int64, left-padded
    prompt_mask: torch.Tensor  # (N, P)
    chosen_ids: torch.Tensor  # (N, R) int64, right-padded
    chosen_mask: torch.Tensor  # (N, R)
    rejected_ids: torch.Tensor  # (N, R)
    rejected_mask: torch.Tensor  # (N, R)

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def chosen_length(self) -> torch.Tensor:
        return self.chosen_mask.sum(1)

    @property
    def rejected_length(self) -> torch.Tensor:
        return self.rejected_mask.sum(1)


def _truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int | None
              ) -> tuple[list[int], list[int], list[int]]:
    """Keep the prompt's right end (≥ max_length // 2 tokens) and the responses' left part."""
    if max_length is None:
        return prompt, chosen, rejected
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep:]
    room = max_length - keep
    return prompt, chosen[:room], rejected[:room]


def tokenize_preference_pairs(tokenizer: Any, pairs: Sequence[Any], *,
                              max_length: int | None = None, use_chat_template: bool = True,
                              append_eos: bool = True) -> PairTensors:
    """Tokenise ``pairs`` (objects with ``prompt``, ``chosen``, ``rejected``) once.

    The prompt goes through :func:`grouprl.agent.prompts.apply_chat_template` when the
    tokenizer has a chat template and ``use_chat_template``; nothing adds special tokens except
    the EOS appended to each response (``append_eos``, when the tokenizer has one). An empty
    prompt becomes the single BOS (else EOS) token. ``max_length``: see the module docstring.
    Pairs whose chosen and rejected ids end up identical are dropped with a ``DataWarning``
    (module docstring); :class:`ConfigError` when none is left.
    """

    if not pairs:
        raise ValueError("pairs: no preference pairs to tokenise (check preference.dataset)")
    templated = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
    prompts = [apply_chat_template(tokenizer, p.prompt) if templated else p.prompt for p in pairs]
    enc = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    p_ids, c_ids, r_ids = enc(prompts), enc([p.chosen for p in pairs]), \
        enc([p.rejected for p in pairs])
    eos = tokenizer.eos_token_id if append_eos else None
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    for i, (p, c, r) in enumerate(zip(p_ids, c_ids, r_ids)):
        if not p:
            if fallback is None:
                raise ValueError(f"pairs[{i}]: the prompt is empty and the tokenizer has neither "
                                 "a BOS nor an EOS token to stand in for it")
            p = [fallback]
        if eos is not None:
            c, r = [*c, eos], [*r, eos]
        rows.append(_truncate(list(p), list(c), list(r), max_length))
    same = [i for i, (_, c, r) in enumerate(rows) if c == r]
    if same:
        where = (f"after truncation to preference.max_length={max_length}; raise it to keep "
                 "them" if max_length is not None else "after tokenisation")
        if len(same) == len(rows):
            raise ConfigError(f"preference pairs: all {len(rows)} pairs have identical chosen "
                              f"and rejected tokens {where}")
        warnings.warn(f"dropped {len(same)} of {len(rows)} preference pairs whose chosen and "
                      f"rejected tokens are identical {where} (first: pair {same[0]})",
                      DataWarning, stacklevel=2)
        dropped = set(same)
        rows = [row for i, row in enumerate(rows) if i not in dropped]
    prompt_ids, prompt_mask = left_pad([p for p, _, _ in rows], pad)
    responses = [torch.tensor(x, dtype=torch.long) for _, c, r in rows for x in (c, r)]
    width = max(1, max(len(x) for x in responses))
    responses.append(torch.zeros(width, dtype=torch.long))  # forces the common width
    ids = pad_sequence(responses, batch_first=True, padding_value=pad)[:-1]
    mask = pad_sequence([torch.ones_like(x) for x in responses], batch_first=True)[:-1]
    return PairTensors(prompt_ids, prompt_mask, ids[0::2].clone(), mask[0::2].clone(),
                       ids[1::2].clone(), mask[1::2].clone())




def loss_normalizes(loss: str, options: Mapping[str, Any]) -> bool:
    """Whether ``loss`` with ``options`` divides each side by its token count."""
    if loss in ("simpo", "orpo"):
        return True
    return bool(options.get("length_normalize",
                            PREFERENCE_LOSSES[loss].defaults.get("length_normalize", False)))


def validate_preference_config(cfg: TrainConfig) -> str:
    """Checks of the ``preference`` section done before any work; the canonical loss name.
    Under ``torchrun`` the model must be replicated (``distributed.model_sharding``)."""
    pc = cfg.preference
    try:
        loss = canonical_preference_loss(pc.loss)
    except ValueError as err:
        raise ConfigError(f"preference.loss: {str(err).split(': ', 1)[-1]}") from None
    spec = PREFERENCE_LOSSES[loss]
    accepted = [k for k in spec.defaults if k != "nll_loss"]  # nll_loss is a tensor
    for key in pc.loss_options:
        if key not in accepted:
            raise ConfigError(f"preference.loss_options.{key}: not an option of the {loss!r} "
                              f"loss; accepted: {', '.join(accepted)}")
    one = torch.zeros(1)
    kwargs: dict[str, Any] = dict(pc.loss_options)
    if loss_normalizes(loss, pc.loss_options):
        kwargs.update(chosen_length=one + 1, rejected_length=one + 1)
    ref = (one - 1, one - 2) if spec.needs_ref else (None, None)
    try:
        preference_loss(loss, one - 1, one - 2, *ref, **kwargs)  # the loss's own validation
    except (ValueError, TypeError) as err:
        key, _, msg = str(err).partition(": ")
        where = f"preference.loss_options.{key}" if key in pc.loss_options else \
            "preference.loss_options"
        raise ConfigError(f"{where}: {msg or err}") from None
    if pc.micro_batch_size > pc.batch_size:
        raise ConfigError(f"preference.micro_batch_size: {pc.micro_batch_size} must be <= "
                          f"preference.batch_size ({pc.batch_size})")
    if launched_by_torchrun() and cfg.distributed.model_sharding != "replicated":
        raise ConfigError(f"distributed.model_sharding: {cfg.distributed.model_sharding} is not "
                          "supported by mode: preference (data parallel with a replicated model "
                          "only); set it to 'replicated' (with model.lora.enabled for a model "
                          "whose optimizer state does not fit one device)")
    check_model_config(cfg)
    return loss


def load_preference_data(cfg: TrainConfig) -> tuple[list, list]:
    """``(train_pairs, held_out_pairs)``: ``preference.eval_dataset`` if set (its "test" split),
    else the built-in dataset's "test" split, else the last ``eval_fraction`` of the training
    pairs (:func:`grouprl.data.split_holdout`, seeded). ``limit`` caps the loaded training
    pairs (before any hold-out split)."""

    pc = cfg.preference
    fields_ = {"prompt_field": pc.prompt_field, "chosen_field": pc.chosen_field,
               "rejected_field": pc.rejected_field}
    try:
        train = load_pairs(pc.dataset, split=pc.split, size=pc.limit, seed=cfg.seed, **fields_)
        held: list = []
        if pc.eval_dataset is None and pc.dataset.startswith("builtin:"):
            held = load_pairs(pc.dataset, split="test", seed=cfg.seed, **fields_)
        elif pc.eval_dataset is None and pc.eval_fraction > 0:
            train, held = split_holdout(train, pc.eval_fraction, seed=cfg.seed)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"preference.dataset: {err}") from None
    if pc.eval_dataset is not None:
        try:
            held = load_pairs(pc.eval_dataset, split="test", seed=cfg.seed, **fields_)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"preference.eval_dataset: {err}") from None
    if not train:
        raise ConfigError(f"preference.dataset: {pc.dataset!r} gave no training pairs")
    return list(train), list(held)


