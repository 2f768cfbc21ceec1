"""The policy update: mini-batches → micro-batches → loss → clip → optimizer step.

One call of :func:`update_policy` is verl's ``update_policy`` for one iteration (spec-agentic-
credit §1.4): for each of ``ppo_epochs`` passes the rows are shuffled and cut into
``num_mini_batches`` mini-batches; each mini-batch is one optimizer step, accumulated over
micro-batches of ``micro_batch_size`` rows. The per-micro-batch losses are normalised by the
*mini-batch* token and sequence counts (``global_tokens``/``global_seqs``), so splitting a
mini-batch into micro-batches gives the same gradient as one big batch (spec-losses §2.2)::

    L = L_pg(ratio, Â)  +  β_KL · Agg(k(ℓ^θ, ℓ^ref))  −  β_H · Agg(H(π_θ))

A micro-batch whose loss is not finite, or a mini-batch whose gradient norm is not finite, skips
that optimizer step (gradients are dropped) and is counted in ``train/skipped_updates``.

``loss="drpo"`` (DRPO, :mod:`grouprl.losses.drpo`) is a sequence-level loss over whole questions:
its mini- and micro-batches are cut along groups (:func:`group_batches`), each micro-batch loss is
``−(1/|Q_mini|) Σ_{q∈micro} J_q + β·sg(max(KL_mini − δ, 0))·KL_part`` with ``KL_part`` the
micro-batch's share of the mini-batch token mean, so micro-batch losses again sum to the
mini-batch loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from grouprl.losses import (
    aggregate,
    drpo_loss,
    drpo_options,
    kl_penalty,
    normalizer_counts,
    policy_loss,
)
from grouprl.policy import response_logprobs

__all__ = ["LearnerRows", "update_policy", "batched_logprobs", "micro_slices", "group_batches"]


@dataclass
class LearnerRows:
    """Token tensors and per-row advantages of the rows to learn from."""

    prompt_ids: torch.Tensor     # (N, P) left-padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor   # (N, R) right-padded
    response_mask: torch.Tensor
    advantages: torch.Tensor     # (N,)
    old_logp: torch.Tensor | None = None   # (N, R) behaviour log-probs (recomputed or rollout)
    ref_logp: torch.Tensor | None = None   # (N, R) reference log-probs (KL)
    group: torch.Tensor | None = None      # (N,) int64 question id (DRPO)
    correct: torch.Tensor | None = None    # (N,) bool verifier outcome, True = reward 1 (DRPO)

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def micro_slices(rows: LearnerRows, index: torch.Tensor, size: int,
                 device: torch.device | str = "cpu"
                 ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield ``(row_index, tensors)`` per micro-batch, padding columns trimmed, on ``device``."""
    for start in range(0, index.numel(), size):
        idx = index[start:start + size]
        yield idx, _gather(rows, idx, device)


def _gather(rows: LearnerRows, idx: torch.Tensor, device: torch.device | str
            ) -> dict[str, torch.Tensor]:
    pm, rm = rows.prompt_mask[idx], rows.response_mask[idx]
    p = int(pm.sum(1).max()) if idx.numel() else 0
    r = max(int(rm.sum(1).max()) if idx.numel() else 0, 1)
    width = rows.prompt_ids.shape[1]
    out = {"prompt_ids": rows.prompt_ids[idx, width - p:], "prompt_mask": pm[:, width - p:],
           "response_ids": rows.response_ids[idx, :r], "response_mask": rm[:, :r]}
    if rows.old_logp is not None:
        out["old_logp"] = rows.old_logp[idx, :r]
    if rows.ref_logp is not None:
        out["ref_logp"] = rows.ref_logp[idx, :r]
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


def group_batches(group: torch.Tensor, num_mini_batches: int, micro_batch_size: int, *,
                  shuffle: bool = True, generator: torch.Generator | None = None
                  ) -> list[tuple[int, list[torch.Tensor]]]:
    """Group-aligned mini- and micro-batches: ``[(questions, [micro row index, ...]), ...]``.

    The distinct ids of ``group`` (N,) are shuffled with ``generator`` (when ``shuffle``; else
    taken in sorted order) and split into ``min(num_mini_batches, G)`` mini-batches of whole
    groups (``torch.tensor_split`` sizes); each mini-batch is cut greedily, in order, into
    micro-batches of whole groups holding at most ``micro_batch_size`` rows, except that a
    micro-batch always holds at least one group (a group larger than ``micro_batch_size`` is
    its own micro-batch). Rows of a group keep their original order.
    """
    n = int(group.numel())
    if n == 0:
        return []
    uniq, inv = torch.unique(group, return_inverse=True)
    num = int(uniq.numel())
    order = torch.randperm(num, generator=generator) if shuffle else torch.arange(num)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num)
    rows = torch.sort(rank[inv], stable=True).indices              # rows by shuffled group
    sizes = torch.bincount(inv, minlength=num)[order].tolist()     # group sizes in that order
    out: list[tuple[int, list[torch.Tensor]]] = []
    pos = 0                                                        # first row of the group
    for chunk in torch.tensor_split(torch.arange(num), min(num_mini_batches, num)):
        micro: list[torch.Tensor] = []
        start = pos
        for k in chunk.tolist():
            if pos > start and pos - start + sizes[k] > micro_batch_size:
                micro.append(rows[start:pos])
                start = pos
            pos += sizes[k]
        if pos > start:
            micro.append(rows[start:pos])
        out.append((int(chunk.numel()), micro))
    return out


@torch.no_grad()
def batched_logprobs(model: torch.nn.Module, rows: LearnerRows, *, temperature: float,
                     micro_batch_size: int, context: Callable[[], Any] | None = None
                     ) -> torch.Tensor:
    """(N, R) log-probs of the responses under ``model`` (no gradient), e.g. old or ref."""
    out = torch.zeros(rows.response_ids.shape, dtype=torch.float32)
    was_training = model.training
    model.eval()
    with context() if context is not None else contextlib.nullcontext():
        for idx, mb in micro_slices(rows, torch.arange(len(rows)), micro_batch_size,
                                    _device(model)):
            logp, _ = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                        mb["response_ids"], mb["response_mask"],
                                        temperature=temperature)
            out[idx, :logp.shape[1]] = logp.float().cpu()
    model.train(was_training)
    return out


def _masked_kl_sum(old: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, old.to(logp.dtype) - logp, 0.0).sum()         # Σ m·(ℓ^old − ℓ^θ)


@torch.no_grad()
def _drpo_kl_mini(model: torch.nn.Module, rows: LearnerRows, micro: list[torch.Tensor],
                  beta: float, g_tokens: torch.Tensor, temperature: float,
                  device: torch.device) -> torch.Tensor | None:
    """KL_old of the whole mini-batch, for DRPO's stop-gradient factor, when the mini-batch spans
    several micro-batches (one no-grad forward each); None when not needed."""
    if rows.old_logp is None or beta == 0 or len(micro) < 2:
        return None
    total = torch.zeros((), device=device)
    for idx in micro:
        mb = _gather(rows, idx, device)
        logp, _ = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                    mb["response_ids"], mb["response_mask"],
                                    temperature=temperature)
        total = total + _masked_kl_sum(mb["old_logp"], logp, mb["response_mask"].bool())
    return total / g_tokens.clamp(min=1)


def _drpo_micro_loss(rows: LearnerRows, idx: torch.Tensor, mb: dict[str, torch.Tensor],
                     logp: torch.Tensor, mask: torch.Tensor, o: dict[str, Any], questions: int,
                     g_tokens: torch.Tensor, kl_mini: torch.Tensor | None
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """DRPO loss of one group-aligned micro-batch; its share of the mini-batch loss."""
    lengths = mask.sum(1)                                                    # L_i
    score = torch.where(mask, logp, 0.0).sum(1) / lengths.clamp(min=1)       # s_θ = mean_t ℓ^θ
    kl_part = None
    if "old_logp" in mb:                                                     # share of KL_old
        kl_part = _masked_kl_sum(mb["old_logp"], logp, mask) / g_tokens.clamp(min=1)
    l_max = o["l_max"] if o["l_max"] is not None else rows.response_ids.shape[1]
    dev = logp.device
    pg, m = drpo_loss(score, rows.correct[idx].to(dev), lengths, rows.group[idx].to(dev),
                      lam=o["lam"], tau=o["tau"], l_max=l_max, num_questions=questions,
                      kl_old=kl_part, kl_hinge=kl_mini, beta=o["beta"], delta=o["delta"])
    out: dict[str, Any] = dict(m)
    out["_kl_part"] = kl_part.detach() if kl_part is not None else 0.0
    return pg, out


def _schedule_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def update_policy(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: LearnerRows, *,
                  loss: str = "ppo", loss_options: dict | None = None, loss_agg: str | None = None,
                  kl_coef: float = 0.0, kl_kind: str = "k3", entropy_coef: float = 0.0,
                  ppo_epochs: int = 1, num_mini_batches: int = 1, micro_batch_size: int = 64,
                  grad_clip: float | None = 1.0, temperature: float = 1.0,
                  generator: torch.Generator | None = None, log_entropy: bool = True
                  ) -> dict[str, float]:
    """Run the PPO-style update on ``rows`` and return averaged metrics.

    ``rows.old_logp`` None means on-policy with a single optimizer step (``ppo_epochs == 1`` and
    one mini-batch): the ratio's denominator is then ``ℓ^θ`` itself, detached (exactly verl's
    recomputed ``old_log_prob`` for that case, without the extra forward pass). Otherwise the
    caller must supply ``old_logp`` (see :func:`batched_logprobs`).

    ``loss="drpo"`` needs ``rows.group`` and ``rows.correct``; ``loss_options`` are
    :func:`~grouprl.losses.drpo_options` (``lam``, ``tau``, ``beta``, ``delta``, ``l_max``;
    ``l_max=None`` falls back to the padded response width ``rows.response_ids.shape[1]`` —
    pass the rollout's ``max_new_tokens``). Batches are group-aligned (:func:`group_batches`,
    groups shuffled with ``generator`` when ``num_mini_batches > 1``); ``s_θ`` is the masked token
    mean of the response log-probs; ``|Q_all|`` is the mini-batch's question count. The KL_old
    term (when ``rows.old_logp`` is given) is the token mean of ``ℓ^old − ℓ^θ`` over the
    mini-batch; its stop-gradient factor needs the whole mini-batch's KL, so a mini-batch of more
    than one micro-batch (with ``beta > 0``) first runs one no-grad forward over its micro-batches
    to measure it. Entropy and KL-to-reference terms are aggregated with ``loss_agg`` as for the
    other losses. Metrics: ``drpo/valid_questions`` and ``drpo/kl_old`` (per mini-batch),
    ``drpo/pos_score``, ``drpo/neg_score`` (per micro-batch), averaged.
    """
    n = len(rows)
    drpo = loss == "drpo"
    if drpo:
        if rows.group is None or rows.correct is None:
            raise ValueError("rows.group: DRPO needs the group id and correctness of every row "
                             "(single-turn rollouts)")
        for key in ("group", "correct"):
            value = getattr(rows, key)
            if value.shape != (n,):
                raise ValueError(f"rows.{key}: must have shape ({n},), got {tuple(value.shape)}")
        d_opts = drpo_options(**(loss_options or {}))
    if n == 0:
        return {"train/skipped_updates": 0.0, "actor/updates": 0.0}
    if rows.old_logp is None and (ppo_epochs > 1 or num_mini_batches > 1):
        raise ValueError("rows.old_logp: required when ppo_epochs > 1 or num_mini_batches > 1 "
                         "(compute it with batched_logprobs before the update)")
    if kl_coef > 0 and rows.ref_logp is None:
        raise ValueError("rows.ref_logp: required when kl_coef > 0")
    loss_options = dict(loss_options or {})
    agg_mode = loss_agg or "token-mean"
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1

    skipped = updates = 0
    device = _device(model)
    advantages = rows.advantages.to(device)
    model.train()

    def mini_batches() -> Iterator[tuple[torch.Tensor, int, list[torch.Tensor] | None]]:
        """(mini-batch rows, questions, group-aligned micro-batches) per optimizer step."""
        if drpo:
            for questions, micro in group_batches(rows.group, num_mini_batches, micro_batch_size,
                                                  shuffle=num_mini_batches > 1,
                                                  generator=generator):
                yield torch.cat(micro), questions, micro
            return
        perm = torch.randperm(n, generator=generator) if num_mini_batches > 1 else torch.arange(n)
        for mini in torch.tensor_split(perm, min(num_mini_batches, n)):
            yield mini, 0, None

    for _ in range(ppo_epochs):
        for mini, questions, micro in mini_batches():
            g_tokens, g_seqs = normalizer_counts(rows.response_mask[mini])
            g_tokens, g_seqs = g_tokens.to(device), g_seqs.to(device)
            optimizer.zero_grad(set_to_none=True)
            finite = True
            mb_pg = mb_kl = mb_ent = mb_valid = 0.0
            if drpo:
                kl_mini = _drpo_kl_mini(model, rows, micro, d_opts["beta"], g_tokens, temperature,
                                        device)
                kl_sum = torch.zeros((), device=device)
                batches = ((idx, _gather(rows, idx, device)) for idx in micro)
            else:
                batches = micro_slices(rows, mini, micro_batch_size, device)
            for idx, mb in batches:
                mask = mb["response_mask"].bool()
                logp, entropy = response_logprobs(
                    model, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                    mb["response_mask"], temperature=temperature,
                    with_entropy=entropy_coef != 0 or log_entropy)
                if drpo:
                    pg, m = _drpo_micro_loss(rows, idx, mb, logp, mask, d_opts, questions,
                                             g_tokens, kl_mini)
                    kl_sum = kl_sum + m.pop("_kl_part")
                    mb_valid += m["drpo/valid_questions"]
                else:
                    old = mb["old_logp"] if "old_logp" in mb else logp.detach()
                    pg, m = policy_loss(loss, logp, old, advantages[idx.to(device)], mask,
                                        loss_agg, global_tokens=g_tokens, global_seqs=g_seqs,
                                        **loss_options)
                total = pg
                if kl_coef > 0:
                    kl = aggregate(kl_penalty(logp, mb["ref_logp"], kl_kind, mask=mask), mask,
                                   agg_mode, g_tokens, g_seqs)
                    total = total + kl_coef * kl
                    mb_kl += float(kl.detach())
                if entropy is not None:
                    ent = aggregate(entropy, mask, agg_mode, g_tokens, g_seqs)
                    if entropy_coef != 0:
                        total = total - entropy_coef * ent
                    mb_ent += float(ent.detach())
                if not torch.isfinite(total):
                    finite = False
                    break
                total.backward()
                mb_pg += float(pg.detach())
                if drpo:
                    for key in ("drpo/pos_score", "drpo/neg_score"):
                        if math.isfinite(m[key]):
                            add(key, m[key])
                    continue
                add("actor/clipfrac", m.get("clipfrac", 0.0))
                add("actor/ratio_mean", m.get("ratio_mean", 1.0))
                add("actor/approx_kl", m.get("approx_kl_k3", 0.0))
            grad_norm = float("nan")
            if finite:
                params = [p for p in model.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    params, grad_clip if grad_clip is not None else float("inf")))
                finite = math.isfinite(grad_norm)
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            updates += 1
            if drpo:
                add("drpo/valid_questions", mb_valid)
                add("drpo/kl_old", float(kl_sum))
            add("actor/pg_loss", mb_pg)
            add("actor/grad_norm", grad_norm)
            if kl_coef > 0:
                add("actor/kl", mb_kl)
            if entropy_coef != 0 or log_entropy:
                add("actor/entropy", mb_ent)
    optimizer.zero_grad(set_to_none=True)
    out = {k: sums[k] / counts[k] for k in sums}
    out["train/skipped_updates"] = float(skipped)
    out["actor/updates"] = float(updates)
    out["actor/lr"] = _schedule_lr(optimizer)
    return out
