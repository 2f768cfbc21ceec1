"""The BERT-style signal classifier g (PreSafe step A, spec §4.2 item 3): ``transformers``'
``BertForSequenceClassification`` with two classes (comply = 0, refuse = 1), trained on the
query alone (``bert_input: query``) or on query + safe response (``query+response``).

Two ways to get one, both offline:

* :func:`build_bert_classifier` — from scratch (``BertConfig``), on the policy's own tokenizer:
  the input is ``[CLS] query [SEP]`` (``[CLS] query [SEP] response [SEP]``, token type 1 on
  the response), where ``[CLS]`` and ``[SEP]`` are two ids appended after the tokenizer's
  vocabulary, padding is the tokenizer's pad id, and the sequence is cut to ``max_length``;
* :func:`load_bert_classifier` — a local BERT checkpoint directory (model + its tokenizer,
  ``local_files_only``; never downloaded), fine-tuned with a fresh 2-class head.

:func:`train_classifier` is plain AdamW on the cross-entropy, shuffled by a seeded generator;
initialisation and dropout run under a forked RNG seeded with ``seed``, so the global torch
RNG is untouched and the same inputs give the same classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerBase,
)

from grouprl.validation import UserError, check_choice, check_int, check_number

__all__ = ["BERT_INPUTS", "SignalClassifier", "build_bert_classifier", "load_bert_classifier",
           "train_classifier", "classifier_logits", "classifier_accuracy", "describe"]

BERT_INPUTS = ("query", "query+response")


@dataclass
class SignalClassifier:
    """A 2-class BERT and how its inputs are encoded. ``own_tokenizer``: a checkpoint's BERT
    tokenizer (else the policy's, with ``cls_id`` / ``sep_id`` appended to its vocabulary)."""

    model: BertForSequenceClassification
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    own_tokenizer: bool = False
    cls_id: int = 0
    sep_id: int = 0
    pad_id: int = 0

    def encode(self, queries: Sequence[str], responses: Sequence[str] | None = None
               ) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (right-padded)."""
        if responses is not None and len(responses) != len(queries):
            raise ValueError(f"responses: {len(responses)} for {len(queries)} queries")
        if self.own_tokenizer:
            return dict(self.tokenizer(list(queries), None if responses is None else
                                       list(responses), truncation=True, padding=True,
                                       max_length=self.max_length, return_tensors="pt"))
        enc = lambda t: self.tokenizer(list(t), add_special_tokens=False)["input_ids"]  # noqa: E731
        q_ids = enc(queries)
        r_ids = enc(responses) if responses is not None else [None] * len(q_ids)
        rows, types = [], []
        for q, r in zip(q_ids, r_ids):
            ids = [self.cls_id, *q, self.sep_id]
            kind = [0] * len(ids)
            if r is not None:
                ids += [*r, self.sep_id]
                kind += [1] * (len(r) + 1)
            rows.append(ids[:self.max_length])
            types.append(kind[:self.max_length])
        width = max(len(r) for r in rows)
        out = {"input_ids": torch.full((len(rows), width), self.pad_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
               "token_type_ids": torch.zeros((len(rows), width), dtype=torch.long)}
        for i, (ids, kind) in enumerate(zip(rows, types)):
            out["input_ids"][i, :len(ids)] = torch.tensor(ids)
            out["attention_mask"][i, :len(ids)] = 1
            out["token_type_ids"][i, :len(ids)] = torch.tensor(kind)
        return out


def build_bert_classifier(tokenizer: PreTrainedTokenizerBase, *, hidden_size: int = 64,
                          num_layers: int = 2, num_heads: int = 2,
                          intermediate_size: int = 128, max_length: int = 128,
                          dropout: float = 0.1, seed: int = 0) -> SignalClassifier:
    """A randomly initialised 2-class BERT on ``tokenizer``'s ids (module docstring)."""
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("intermediate_size", intermediate_size)):
        check_int(name, value, 1)
    check_int("max_length", max_length, 4)
    check_number("dropout", dropout, 0.0, 1.0, high_open=True)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size: {hidden_size} must be divisible by num_heads={num_heads}")
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        (tokenizer.eos_token_id or 0)
    config = BertConfig(vocab_size=vocab + 2, hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size, max_position_embeddings=max_length,
                        type_vocab_size=2, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=pad, num_labels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    return SignalClassifier(model, tokenizer, max_length, False, vocab, vocab + 1, pad)


def load_bert_classifier(path: str | Path, *, max_length: int = 128,
                         seed: int = 0) -> SignalClassifier:
    """A local BERT checkpoint (directory with its config, weights and tokenizer) with a 2-class
    head (a new head initialised with ``seed`` when the checkpoint has none)."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UserError(f"presafe.bert_path: {str(path)!r} is not a local directory (grouprl "
                        "never downloads; null builds a small BERT from scratch)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(
            directory, num_labels=2, local_files_only=True, ignore_mismatched_sizes=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    limit = getattr(model.config, "max_position_embeddings", max_length)
    return SignalClassifier(model, tokenizer, min(max_length, limit), own_tokenizer=True)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_classifier(clf: SignalClassifier, queries: Sequence[str], labels: Sequence[int], *,
                     responses: Sequence[str] | None = None, epochs: int = 10,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Fine-tune ``clf`` on (query[, response]) → label (1 = refuse) with AdamW on the mean
    cross-entropy; returns the per-step losses (module docstring: seeded, global RNG kept)."""
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_number("lr", lr, 0.0, low_open=True)
    if not queries:
        raise ValueError("queries: no labelled examples to train the classifier on")
    if len(labels) != len(queries):
        raise ValueError(f"labels: {len(labels)} for {len(queries)} queries")
    for v in labels:
        check_choice("label", v, (0, 1))
    dev = _device(clf.model)
    data = {k: v.to(dev) for k, v in clf.encode(queries, responses).items()}
    y = torch.tensor(list(labels), dtype=torch.long, device=dev)
    opt = torch.optim.AdamW(clf.model.parameters(), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    clf.model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(y), generator=order).split(batch_size):
                idx = idx.to(dev)
                out = clf.model(**{k: v[idx] for k, v in data.items()}, labels=y[idx])
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                losses.append(float(out.loss.detach()))
    clf.model.eval()
    return losses


@torch.no_grad()
def classifier_logits(clf: SignalClassifier, queries: Sequence[str],
                      responses: Sequence[str] | None = None, *,
                      batch_size: int = 64) -> torch.Tensor:
    """(N, 2) float32 logits (comply, refuse), eval mode, on the CPU."""
    if not queries:
        return torch.zeros((0, 2))
    was = clf.model.training
    clf.model.eval()
    dev = _device(clf.model)
    parts = []
    for i in range(0, len(queries), batch_size):
        chunk = clf.encode(queries[i:i + batch_size],
                           None if responses is None else responses[i:i + batch_size])
        parts.append(clf.model(**{k: v.to(dev) for k, v in chunk.items()}).logits.float().cpu())
    clf.model.train(was)
    return torch.cat(parts)


def classifier_accuracy(logits: torch.Tensor, labels: Sequence[int]) -> float:
    """Share of rows whose arg-max class is the label (NaN when there are none)."""
    if not len(labels):
        return float("nan")
    return float((logits.argmax(-1) == torch.tensor(list(labels))).float().mean())


def describe(clf: SignalClassifier) -> dict[str, Any]:
    """Size facts for the logs: parameters, layers, hidden size, vocabulary."""
    c = clf.model.config
    return {"parameters": sum(p.numel() for p in clf.model.parameters()),
            "layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
            "vocab_size": c.vocab_size}
