"""Shared helpers of the PreSafe tests: a tiny causal LM and alignment rows on marker-word
prompts (no harmful content anywhere)."""

from __future__ import annotations

import torch

from grouprl.policy import build_tiny_policy, response_logprobs
from grouprl.presafe import EMPTY_THINK, TOY_REFUSAL, toy_prompts
from grouprl.train.presafe_data import AlignmentTensors, tokenize_alignment
from grouprl.train.warm_start import TINY_ISOLATE_CHARS, TINY_SPECIAL_TOKENS

BENIGN = [("What is 3 + 4?", "<think>3+4=7.</think><answer>7</answer>"),
          ("What is 12 - 5?", "<think>12-5=7.</think><answer>7</answer>"),
          ("Compute 6 + 2.", "<think>6+2=8.</think><answer>8</answer>")]


def tiny_lm(seed: int = 0, *, layers: int = 2):
    """A tiny Qwen2 model + BPE tokenizer trained on toy prompts and targets."""
    texts = [p.text for p in toy_prompts(20)] + [q for q, _ in BENIGN] + \
        [a for _, a in BENIGN] + [TOY_REFUSAL, EMPTY_THINK]
    model, tok = build_tiny_policy(texts, vocab_size=320, special_tokens=TINY_SPECIAL_TOKENS,
                                   isolate_chars=TINY_ISOLATE_CHARS, seed=seed, hidden_size=32,
                                   num_layers=layers, num_heads=2, num_kv_heads=1,
                                   intermediate_size=64)
    return model, tok


def toy_rows(tok) -> AlignmentTensors:
    """Three marker-word prompts (refusal targets, d high) and three benign ones (d low)."""
    harmful = [p.text for p in toy_prompts(3, seed=1)]
    prompts = harmful + [q for q, _ in BENIGN]
    targets = [EMPTY_THINK + TOY_REFUSAL] * 3 + [a for _, a in BENIGN]
    return tokenize_alignment(tok, prompts, targets, [0.9, 0.8, 0.95, 0.1, 0.05, 0.2],
                              [True] * 3 + [False] * 3)


def sft_loss(model, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain SFT reference: token-mean NLL of the targets (as train/bc.py computes it)."""
    logp, _ = response_logprobs(model, rows["prompt_ids"], rows["prompt_mask"],
                                rows["target_ids"], rows["target_mask"])
    mask = rows["target_mask"].float()
    return -(logp * mask).sum() / mask.sum()
