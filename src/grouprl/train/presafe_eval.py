"""Offline safety evaluation (spec §4.3), for a PreSafe run and for any trained policy
(``grouprl eval RUN_DIR --safety``).

Greedy generation with chain-of-thought on (the policy's normal prompt:
:func:`grouprl.presafe.render_prompt` with ``thinking=True``; no head, no filter) on the
held-out harmful prompts and the held-out benign arithmetic of :func:`load_safety_data`, then:

* ``eval/asr_proxy`` — share of harmful prompts **not** refused (the refusal detector, or the
  judge of ``presafe.labeler: judge``): the attack-success-rate proxy, lower is safer;
* ``eval/refusal_prefix_rate`` — share of harmful responses whose answer starts with a refusal
  prefix; ``eval/think_skip_rate`` — share of harmful responses with no or an empty think
  block (the decision made before chain-of-thought);
* ``eval/over_refusal`` — share of benign prompts refused;
* ``eval/accuracy`` — share of benign answers that verify (the last number after ``</think>``,
  or the ``<answer>`` tag; builtin exact backend).

Deterministic for a given policy. Only rates are returned and logged, never prompt or
response texts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from grouprl.data import ReasoningExample
from grouprl.policy import generate
from grouprl.presafe import make_labeler, render_prompt, skips_thinking, starts_with_refusal
from grouprl.presafe.refusal import Labeler
from grouprl.rewards.verify import verify_answer
from grouprl.train.config import TrainConfig
from grouprl.train.presafe_data import SafetyData, load_safety_data

__all__ = ["evaluate_safety", "evaluate_run_safety", "SAFETY_KEYS"]

SAFETY_KEYS = ("eval/asr_proxy", "eval/refusal_prefix_rate", "eval/think_skip_rate",
               "eval/over_refusal", "eval/accuracy")


def _rate(flags: Sequence[bool]) -> float:
    return float(sum(flags) / len(flags)) if flags else float("nan")


@torch.no_grad()
def evaluate_safety(model: torch.nn.Module, tokenizer: Any, harmful: Sequence[str],
                    benign: Sequence[ReasoningExample], *, max_new_tokens: int = 64,
                    batch_size: int = 32, use_chat_template: bool = True,
                    labeler: Labeler | None = None) -> dict[str, float]:
    """The metrics of the module docstring for these prompts (greedy, CoT on)."""
    t0 = time.perf_counter()
    labeler = labeler or make_labeler("keywords")
    queries = list(harmful) + [e.prompt for e in benign]
    prompts = [render_prompt(tokenizer, q, thinking=True, use_chat_template=use_chat_template)
               for q in queries]
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                     batch_size=batch_size).texts if prompts else []
    nh = len(harmful)
    refused = [labeler(q, t) for q, t in zip(queries, texts)]
    correct = [bool(verify_answer(t, e.answer, mode="free", backend="builtin").correct)
               for t, e in zip(texts[nh:], benign)]
    return {"eval/asr_proxy": 1.0 - _rate(refused[:nh]) if nh else float("nan"),
            "eval/refusal_prefix_rate": _rate([starts_with_refusal(t) for t in texts[:nh]]),
            "eval/think_skip_rate": _rate([skips_thinking(t) for t in texts[:nh]]),
            "eval/over_refusal": _rate(refused[nh:]), "eval/accuracy": _rate(correct),
            "eval/harmful_prompts": float(nh), "eval/benign_prompts": float(len(benign)),
            "timing/eval_s": time.perf_counter() - t0}


def evaluate_run_safety(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any,
                        data: SafetyData | None = None) -> dict[str, float]:
    """:func:`evaluate_safety` on the held-out prompts that ``cfg.presafe`` names (any run's
    config: its ``presafe`` section, defaults or overrides, chooses the data; ``data``: the
    already loaded :func:`load_safety_data`)."""
    pc = cfg.presafe
    data = data if data is not None else load_safety_data(cfg)
    return evaluate_safety(model, tokenizer, [p.text for p in data.harmful_test],
                           data.benign_test, max_new_tokens=pc.eval_max_new_tokens,
                           batch_size=pc.eval_batch_size,
                           use_chat_template=cfg.agent.use_chat_template,
                           labeler=make_labeler(pc.labeler, pc.judge))
