"""PreSafe step C: one optimizer step of L = L_SFT + γ·L_aux on a batch of alignment rows
(spec §4.2; the formulas are in :mod:`grouprl.presafe.aux`).

Per batch B of n rows with T target tokens, over micro-batches b::

    L_SFT = −Σ_b Σ_t m_t log π(y_t | x, y_<t) / T            token mean over the whole batch
    L_aux = Σ_b (|b| / n) · aux_loss(ℓ_b, d_b)                row mean over the whole batch
    L     = L_SFT + γ·L_aux                                   joint_loss, summed per micro-batch

so the accumulated gradient is that of the batch loss for any micro-batching. The token
log-probs come from :func:`grouprl.policy.response_logprobs` (the same forward as plain SFT);
with γ > 0 that forward also records the hidden states (:func:`capture_hidden_states`) and
z(x) is read at the last prompt token. With γ = 0 no hidden state is captured, the head gets
no gradient and the step is plain SFT, bitwise. Non-finite loss or gradient: the step is
skipped (``train/skipped_updates``).

The head is a separate module: the checkpoint's model file never holds it; its weights travel
in the checkpoint's ``state`` (:func:`head_state`, :func:`load_head_state`) so a resumed run
continues exactly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from grouprl.policy import response_logprobs
from grouprl.presafe import AuxHead, aux_loss, capture_hidden_states, joint_loss, last_prompt_state
from grouprl.train.presafe_data import AlignmentTensors

__all__ = ["presafe_step", "head_state", "load_head_state"]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def presafe_step(model: torch.nn.Module, head: AuxHead, optimizer: torch.optim.Optimizer,
                 params: list[torch.nn.Parameter], data: AlignmentTensors, idx: torch.Tensor, *,
                 gamma: float, layer: int = -1, pool_layers: int = 1, loss_kind: str = "bce",
                 micro_batch_size: int, grad_clip: float | None) -> dict[str, float]:
    """One optimizer step on rows ``idx`` (module docstring); returns its metrics."""
    t0 = time.perf_counter()
    lr = float(optimizer.param_groups[0]["lr"])
    dev = _device(model)
    optimizer.zero_grad(set_to_none=True)
    n = int(idx.numel())
    tokens = float(data.target_mask[idx].sum())
    sums = {"sft": 0.0, "aux": 0.0, "hits": 0.0, "prob_harmful": 0.0, "prob_benign": 0.0}
    counts = {"harmful": 0, "benign": 0}
    finite = True
    for mb in idx.split(micro_batch_size):
        rows = {k: v.to(dev) for k, v in data.rows(mb).items()}
        l_aux = None
        if gamma > 0:
            with capture_hidden_states(model) as capture:
                logp, _ = response_logprobs(model, rows["prompt_ids"], rows["prompt_mask"],
                                            rows["target_ids"], rows["target_mask"])
            z = last_prompt_state(capture.last, rows["prompt_ids"].shape[1], layer=layer,
                                  pool_layers=pool_layers)
            logit = head(z)
            l_aux = aux_loss(loss_kind, logit, rows["signal"]) * (mb.numel() / n)
        else:
            logp, _ = response_logprobs(model, rows["prompt_ids"], rows["prompt_mask"],
                                        rows["target_ids"], rows["target_mask"])
        mask = rows["target_mask"].to(logp.dtype)
        l_sft = -(logp * mask).sum() / tokens
        loss = joint_loss(l_sft, l_aux, gamma)
        if not torch.isfinite(loss.detach()):
            finite = False
            break
        loss.backward()
        sums["sft"] += float(l_sft.detach())
        if l_aux is not None:
            prob = torch.sigmoid(logit.detach())
            harm = rows["harmful"]
            sums["aux"] += float(l_aux.detach())
            sums["hits"] += float(((prob >= 0.5) == (rows["signal"] >= 0.5)).sum())
            sums["prob_harmful"] += float(prob[harm].sum())
            sums["prob_benign"] += float(prob[~harm].sum())
            counts["harmful"] += int(harm.sum())
            counts["benign"] += int((~harm).sum())
    grad_norm = float("nan")
    if finite:
        grads = [p for p in params if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            grads, grad_clip if grad_clip is not None else float("inf")))
        finite = math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {"presafe/sft_loss": sums["sft"], "actor/grad_norm": grad_norm, "actor/lr": lr,
               "train/skipped_updates": 0.0 if finite else 1.0, "train/queries": float(n),
               "train/target_tokens": tokens, "timing/step_s": time.perf_counter() - t0}
    metrics["presafe/loss"] = sums["sft"] + gamma * sums["aux"]
    if gamma > 0:
        metrics.update({"presafe/aux_loss": sums["aux"], "presafe/aux_accuracy": sums["hits"] / n})
        for side in ("harmful", "benign"):
            if counts[side]:
                metrics[f"presafe/aux_prob_{side}"] = sums[f"prob_{side}"] / counts[side]
    return metrics


def head_state(head: AuxHead) -> dict[str, np.ndarray]:
    """The head's weights as numpy arrays (a checkpoint's plain-data ``state``)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in head.state_dict().items()}


def load_head_state(head: AuxHead, state: dict[str, Any]) -> None:
    """Restore :func:`head_state` into ``head`` (exact)."""
    dev = next(head.parameters()).device
    head.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(dev) for k, v in state.items()})
