"""PreSafe steps A and B: the safe model's decisions, the classifier's signals d(x) and the
alignment targets (spec §4.2), computed once per run and cached.

Step A, for every training query x (harmful and benign):

1. y_safe = M_safe(x), greedy, with thinking disabled (:func:`grouprl.presafe.render_prompt`
   with ``thinking=False``); M_safe is the policy itself (``safe_model: same``, before any
   training), a local model (a path), or the toy's scripted model (``scripted``);
2. r(x, y_safe) ∈ {refuse = 1, comply = 0} by the labeler (keywords or a judge);
3. the classifier g is trained on ``bert_train_size`` of the labelled queries (a seeded
   permutation); the others measure its held-out accuracy;
4. d(x) = P_g(refuse | x) for every training query (``signal: soft``, or hard).

Step B: the CoT-on prompt of x (the policy's normal prompt) and its target — for a harmful
query a refusal after an empty think block (the safe model's own refusal with
``harmful_target: cot_off_refusal``; ``refusal_text`` when it complied, or always with
``fixed``), for a benign one the reference solution, or with ``benign_target: self_cot`` the
policy's own greedy CoT-on answer when it verifies correct (else the reference).

Cache: ``run_dir/presafe_alignment.json`` holds the prompts' targets, d(x), the harmful flags
and the step metrics with a SHA-256 fingerprint of the queries and of the config keys that
determine them; a resumed or repeated run with the same fingerprint reuses it (so its signals
are exactly the same). Only targets are stored — refusals and benign answers — never a safe
response to a harmful query that was not a refusal; query texts are stored as hashes only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grouprl.policy import generate, load_policy
from grouprl.presafe import (
    build_bert_classifier,
    classifier_accuracy,
    classifier_logits,
    decision_signal,
    load_bert_classifier,
    make_labeler,
    refusal_target,
    render_prompt,
    scripted_safe_responses,
    train_classifier,
)
from grouprl.rewards.verify import verify_answer
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.presafe_data import SafetyData
from grouprl.train.safe_io import write_text_atomically

__all__ = ["ALIGNMENT_FILE", "Alignment", "safe_model_responses", "prepare_alignment",
           "build_alignment", "TRAINING_ONLY_KEYS"]

ALIGNMENT_FILE = "presafe_alignment.json"
_VERSION = "grouprl-presafe-alignment-v1"
TRAINING_ONLY_KEYS = ("aux_weight", "aux_layer", "aux_pool_layers", "aux_loss", "epochs",
                      "batch_size", "micro_batch_size", "max_length", "eval_every",
                      "eval_max_new_tokens", "eval_batch_size", "harmful_test", "benign_test")
"""``presafe.*`` keys that do not change steps A and B (left out of the fingerprint)."""


@dataclass
class Alignment:
    """The alignment rows (CoT-on prompts, targets, d(x), harmful flags) and step A/B metrics."""

    prompts: list[str]
    targets: list[str]
    signals: list[float]
    harmful: list[bool]
    metrics: dict[str, float] = field(default_factory=dict)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fingerprint(cfg: TrainConfig, queries: Sequence[str]) -> str:
    conf = config_to_dict(cfg)
    model = {k: v for k, v in conf["model"].items() if k not in ("device", "lora")}
    presafe = {k: v for k, v in conf["presafe"].items() if k not in TRAINING_ONLY_KEYS}
    record = {"version": _VERSION, "queries": [_digest(q) for q in queries], "model": model,
              "presafe": presafe, "seed": cfg.seed,
              "use_chat_template": cfg.agent.use_chat_template}
    return _digest(json.dumps(record, sort_keys=True, default=str))


def safe_model_responses(cfg: TrainConfig, model: torch.nn.Module, tok: Any,
                         queries: Sequence[str], answers: Sequence[str | None],
                         device: torch.device, echo: Callable[[str], None]) -> list[str]:
    """y_safe for each query: greedy, thinking disabled (step A.1)."""
    pc = cfg.presafe
    if pc.safe_model == "scripted":
        return scripted_safe_responses(queries, answers)
    if pc.safe_model == "same":
        safe, safe_tok = model, tok
    else:
        safe, safe_tok = load_policy(pc.safe_model, dtype=cfg.model.dtype, device=device,
                                     echo=echo)
    prompts = [render_prompt(safe_tok, q, thinking=False,
                             use_chat_template=cfg.agent.use_chat_template) for q in queries]
    return generate(safe, safe_tok, prompts, max_new_tokens=pc.safe_max_new_tokens,
                    do_sample=False, batch_size=pc.eval_batch_size).texts


def _signals(cfg: TrainConfig, tok: Any, queries: list[str], responses: list[str],
             labels: list[int], device: torch.device) -> tuple[list[float], dict[str, float]]:
    """Train g on a seeded subset of the labelled queries; d(x) of every query (A.3–A.4)."""
    pc = cfg.presafe
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(cfg.seed))
    fit, held = order[:pc.bert_train_size].tolist(), order[pc.bert_train_size:].tolist()
    if pc.bert_path is not None:
        clf = load_bert_classifier(pc.bert_path, max_length=pc.bert_max_length, seed=cfg.seed)
    else:
        clf = build_bert_classifier(tok, hidden_size=pc.bert_hidden_size,
                                    num_layers=pc.bert_layers, num_heads=pc.bert_heads,
                                    intermediate_size=2 * pc.bert_hidden_size,
                                    max_length=pc.bert_max_length, dropout=pc.bert_dropout,
                                    seed=cfg.seed)
    clf.model.to(device)
    pairs = pc.bert_input == "query+response"
    pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    losses = train_classifier(clf, pick(queries, fit), pick(labels, fit),
                              responses=pick(responses, fit) if pairs else None,
                              epochs=pc.bert_epochs, batch_size=pc.bert_batch_size,
                              lr=pc.bert_lr, seed=cfg.seed)
    logits = classifier_logits(clf, queries, responses if pairs else None,
                               batch_size=pc.eval_batch_size)
    d = decision_signal(logits, pc.signal)
    metrics = {"signals/bert_parameters": float(sum(p.numel() for p in clf.model.parameters())),
               "signals/bert_train_queries": float(len(fit)),
               "signals/bert_heldout_queries": float(len(held)),
               "signals/bert_loss_first": losses[0], "signals/bert_loss_last": losses[-1],
               "signals/bert_train_accuracy": classifier_accuracy(logits[fit],
                                                                  pick(labels, fit))}
    if held:
        metrics["signals/bert_heldout_accuracy"] = classifier_accuracy(logits[held],
                                                                       pick(labels, held))
    return d.tolist(), metrics


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def build_alignment(cfg: TrainConfig, model: torch.nn.Module, tok: Any, data: SafetyData,
                    device: torch.device, echo: Callable[[str], None]) -> Alignment:
    """Steps A and B (module docstring) on the training queries."""
    pc = cfg.presafe
    t0 = time.perf_counter()
    queries = [p.text for p in data.harmful_train] + [e.prompt for e in data.benign_train]
    answers = [None] * len(data.harmful_train) + [e.answer for e in data.benign_train]
    harmful = [True] * len(data.harmful_train) + [False] * len(data.benign_train)
    nh = len(data.harmful_train)
    safe = safe_model_responses(cfg, model, tok, queries, answers, device, echo)
    labeler = make_labeler(pc.labeler, pc.judge)
    labels = [int(labeler(q, r)) for q, r in zip(queries, safe)]
    signals, metrics = _signals(cfg, tok, queries, safe, labels, device)
    cot = [render_prompt(tok, q, thinking=True, use_chat_template=cfg.agent.use_chat_template)
           for q in queries]
    use_own = pc.harmful_target == "cot_off_refusal"
    targets = [refusal_target(safe[i] if use_own and labels[i] else pc.refusal_text, cot[i])
               for i in range(nh)]
    fallback = sum(1 for i in range(nh) if not (use_own and labels[i]))
    kept = 0
    if pc.benign_target == "self_cot":
        own = generate(model, tok, cot[nh:], max_new_tokens=pc.cot_max_new_tokens,
                       do_sample=False, batch_size=pc.eval_batch_size).texts
        for e, text in zip(data.benign_train, own):
            ok = bool(verify_answer(text, e.answer, mode="free", backend="builtin").correct)
            targets.append(text if ok else (e.solution or e.answer))
            kept += ok
    else:
        targets += [e.solution or e.answer for e in data.benign_train]
    metrics.update({
        "signals/safe_refusal_rate_harmful": _mean(labels[:nh]),
        "signals/safe_refusal_rate_benign": _mean(labels[nh:]),
        "signals/d_mean_harmful": _mean(signals[:nh]), "signals/d_mean_benign": _mean(signals[nh:]),
        "data/harmful_queries": float(nh), "data/benign_queries": float(len(queries) - nh),
        "data/harmful_fixed_refusals": float(fallback), "data/self_cot_kept": float(kept),
        "timing/signals_s": time.perf_counter() - t0})
    held = metrics.get("signals/bert_heldout_accuracy")
    echo(f"step A: the safe model ({pc.safe_model}) refused "
         f"{sum(labels[:nh])}/{nh} harmful and {sum(labels[nh:])}/{len(queries) - nh} benign "
         f"training queries; classifier trained on {int(metrics['signals/bert_train_queries'])}"
         + (f", held-out accuracy {held:.1%}" if held is not None else "")
         + f"; mean d(x): harmful {metrics['signals/d_mean_harmful']:.3f}, benign "
         f"{metrics['signals/d_mean_benign']:.3f}")
    return Alignment(cot, targets, signals, harmful, metrics)


def prepare_alignment(cfg: TrainConfig, model: torch.nn.Module, tok: Any, data: SafetyData,
                      run_dir: Path, device: torch.device,
                      echo: Callable[[str], None]) -> Alignment:
    """The cached alignment of this run (module docstring), built when missing or stale."""
    queries = [p.text for p in data.harmful_train] + [e.prompt for e in data.benign_train]
    key = _fingerprint(cfg, queries)
    path = Path(run_dir) / ALIGNMENT_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        if saved.get("fingerprint") == key:
            echo(f"steps A/B: reusing {path.name} (same queries and settings)")
            cot = [render_prompt(tok, q, thinking=True,
                                 use_chat_template=cfg.agent.use_chat_template) for q in queries]
            return Alignment(cot, saved["targets"], saved["signals"], saved["harmful"],
                             saved["metrics"])
        echo(f"steps A/B: {path.name} was made for other queries or settings; recomputing")
    out = build_alignment(cfg, model, tok, data, device, echo)
    write_text_atomically(path, json.dumps({
        "version": _VERSION, "fingerprint": key, "targets": out.targets,
        "signals": out.signals, "harmful": out.harmful, "metrics": out.metrics}, indent=1))
    return out
