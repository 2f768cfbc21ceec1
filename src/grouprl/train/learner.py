"""The policy update: mini-batches → micro-batches → loss → clip → optimizer step.

One call of :func:`update_policy` is verl's ``update_policy`` for one iteration (spec-agentic-
credit §1.4): for each of ``ppo_epochs`` passes the rows are cut into ``num_mini_batches``
mini-batches (shuffled when there are several); each mini-batch is one optimizer step,
accumulated over micro-batches of at most ``micro_batch_size`` rows. Per-micro-batch losses are
normalised by the *mini-batch* token and sequence counts, so splitting a mini-batch into
micro-batches gives the same gradient as one big batch (spec-losses §2.2)::

    L = objective(ℓ^θ, ℓ^old, rows)  +  β_KL · Agg(k(ℓ^θ, ℓ^ref))  −  β_H · Agg(H(π_θ))

The objective (:mod:`grouprl.losses.objective`) declares how it is batched (``rows``, or whole
``groups`` per micro-batch), which per-row columns it reads and whether it needs the mini-batch's
``KL_old``; this module provides them and knows no loss by name. A micro-batch whose loss is not
finite, or a mini-batch whose gradient norm is not finite, skips that optimizer step (gradients
dropped) and is counted in ``train/skipped_updates``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from grouprl.batch import Rollout
from grouprl.losses import aggregate, kl_penalty, normalizer_counts
from grouprl.losses.objective import masked_kl_sum
from grouprl.policy import response_logprobs

__all__ = ["update_policy", "batched_logprobs", "micro_slices", "row_batches", "group_batches",
           "mean_token_entropy"]


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def gather(rows: Rollout, idx: torch.Tensor, device: torch.device | str,
           columns: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Token tensors of rows ``idx`` with padding columns trimmed, behaviour/reference
    log-probs when set, and the per-row ``columns``, on ``device``."""
    pm, rm = rows.prompt_mask[idx], rows.response_mask[idx]
    p = int(pm.sum(1).max()) if idx.numel() else 0
    r = max(int(rm.sum(1).max()) if idx.numel() else 0, 1)
    width = rows.prompt_ids.shape[1]
    out = {"prompt_ids": rows.prompt_ids[idx, width - p:], "prompt_mask": pm[:, width - p:],
           "response_ids": rows.response_ids[idx, :r], "response_mask": rm[:, :r]}
    for name in ("old_logp", "ref_logp"):
        if getattr(rows, name) is not None:
            out[name] = getattr(rows, name)[idx, :r]
    for name in columns:
        out[name] = rows.column(name)[idx]
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


def micro_slices(rows: Rollout, index: torch.Tensor, size: int,
                 device: torch.device | str = "cpu"
                 ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield ``(row_index, tensors)`` per micro-batch of ``size`` rows of ``index``."""
    for start in range(0, index.numel(), size):
        idx = index[start:start + size]
        yield idx, gather(rows, idx, device)


def row_batches(n: int, num_mini_batches: int, micro_batch_size: int, *,
                generator: torch.Generator | None = None
                ) -> list[tuple[int, list[torch.Tensor]]]:
    """``[(0, [micro row index, ...]), ...]``: rows shuffled with ``generator`` when there are
    several mini-batches, split into ``min(num_mini_batches, n)`` mini-batches
    (``torch.tensor_split`` sizes), each cut into micro-batches of ``micro_batch_size`` rows."""
    if n == 0:
        return []
    perm = torch.randperm(n, generator=generator) if num_mini_batches > 1 else torch.arange(n)
    return [(0, list(torch.split(mini, micro_batch_size)))
            for mini in torch.tensor_split(perm, min(num_mini_batches, n))]


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
def batched_logprobs(model: torch.nn.Module, rows: Rollout, *, temperature: float,
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


@torch.no_grad()
def mean_token_entropy(model: torch.nn.Module, rows: Rollout, *, temperature: float,
                       micro_batch_size: int) -> torch.Tensor:
    """(N,) mean per-token entropy of each response under ``model`` (no gradient)."""
    out = torch.zeros(len(rows), dtype=torch.float64)
    was_training = model.training
    model.eval()
    for idx, mb in micro_slices(rows, torch.arange(len(rows)), micro_batch_size, _device(model)):
        _, ent = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                   mb["response_ids"], mb["response_mask"],
                                   temperature=temperature, with_entropy=True)
        mask = mb["response_mask"].to(ent.dtype)
        out[idx] = ((ent * mask).sum(1) / mask.sum(1).clamp_min(1)).double().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def _mini_batch_kl(model: torch.nn.Module, rows: Rollout, micro: list[torch.Tensor],
                   g_tokens: torch.Tensor, temperature: float, device: torch.device,
                   autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``KL_old`` of a whole mini-batch: token mean of ``ℓ^old − ℓ^θ`` (one no-grad forward per
    micro-batch)."""
    total = torch.zeros((), device=device)
    for idx in micro:
        mb = gather(rows, idx, device)
        logp, _ = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                    mb["response_ids"], mb["response_mask"],
                                    temperature=temperature, autocast_dtype=autocast_dtype)
        total = total + masked_kl_sum(mb["old_logp"], logp, mb["response_mask"].bool())
    return total / g_tokens.clamp(min=1)


class _Averages:
    """Per-key means of logged values (non-finite values are left out)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: float) -> None:
        if math.isfinite(value):
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def update_policy(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: Rollout,
                  objective: Any, *, loss_agg: str | None = None, kl_coef: float = 0.0,
                  kl_kind: str = "k3",
                  entropy_coef: float = 0.0, ppo_epochs: int = 1, num_mini_batches: int = 1,
                  micro_batch_size: int = 64, grad_clip: float | None = 1.0,
                  temperature: float = 1.0, generator: torch.Generator | None = None,
                  log_entropy: bool = True, autocast_dtype: torch.dtype | None = None,
                  on_micro_batch: Callable[[int, int], None] | None = None
                  ) -> dict[str, float]:
    """Run the PPO-style update on ``rows`` and return averaged metrics.

    ``objective`` (:func:`grouprl.losses.objective.make_objective`) is the loss term and its
    declarations (batching, per-row columns, mini-batch KL); ``loss_agg`` aggregates the KL and
    entropy terms. ``rows.old_logp`` None means on-policy with a single optimizer step
    (``ppo_epochs == 1`` and one mini-batch): the ratio's denominator is then ``ℓ^θ`` itself,
    detached (verl's recomputed ``old_log_prob`` for that case, without the extra forward).
    ``autocast_dtype`` runs each micro-batch forward under ``torch.autocast``
    (:mod:`grouprl.policy.precision`; ``model.compute_dtype``). ``on_micro_batch(done, total)``
    is called before the first micro-batch and after each one (live progress).

    ``actor/sampler_logp_gap`` (first epoch) is the token mean of ``|ℓ^sampler − ℓ^θ|`` before
    any step of this update: 0 up to rounding when the sampler ran the same weights at the same
    precision; it grows with a stale or lower-precision rollout engine (verl's
    ``rollout_probs_diff``).
    """
    n = len(rows)
    for name in objective.row_inputs:
        value = rows.column(name) if n else None
        if value is not None and value.shape[0] != n:
            raise ValueError(f"rows.{name}: must have {n} rows, got {tuple(value.shape)}")
    if n == 0:                      # nothing left to learn from (every trajectory dropped)
        return {"train/skipped_updates": 0.0, "train/empty_batches": 1.0, "actor/updates": 0.0,
                "actor/lr": float(optimizer.param_groups[0]["lr"])}
    if rows.old_logp is None and (ppo_epochs > 1 or num_mini_batches > 1):
        raise ValueError("rows.old_logp: required when ppo_epochs > 1 or num_mini_batches > 1 "
                         "(compute it with batched_logprobs before the update)")
    if kl_coef > 0 and rows.ref_logp is None:
        raise ValueError("rows.ref_logp: required when kl_coef > 0")
    agg_mode = loss_agg or "token-mean"
    with_entropy = entropy_coef != 0 or log_entropy
    logged = _Averages()
    skipped = updates = 0
    gap = [0.0, 0]                  # Σ|ℓ^sampler − ℓ^θ| and tokens, before the first step
    device = _device(model)
    model.train()
    done = 0
    for epoch in range(ppo_epochs):
        if objective.batching == "groups":
            batches = group_batches(rows.column("group_id"), num_mini_batches, micro_batch_size,
                                    shuffle=num_mini_batches > 1, generator=generator)
        else:
            batches = row_batches(n, num_mini_batches, micro_batch_size, generator=generator)
        n_micro = ppo_epochs * sum(len(micro) for _, micro in batches)
        if on_micro_batch is not None and epoch == 0:
            on_micro_batch(0, n_micro)
        for groups, micro in batches:
            g_tokens, g_seqs = normalizer_counts(rows.response_mask[torch.cat(micro)])
            g_tokens, g_seqs = g_tokens.to(device), g_seqs.to(device)
            optimizer.zero_grad(set_to_none=True)
            kl_mini = None
            if objective.needs_mini_batch_kl and rows.old_logp is not None and len(micro) > 1:
                kl_mini = _mini_batch_kl(model, rows, micro, g_tokens, temperature, device,
                                         autocast_dtype)
            finite = True
            sums = dict.fromkeys(("actor/pg_loss", "actor/kl", "actor/entropy",
                                  *objective.summed_metrics), 0.0)
            for idx in micro:
                mb = gather(rows, idx, device, objective.row_inputs)
                mask = mb["response_mask"].bool()
                logp, entropy = response_logprobs(
                    model, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                    mb["response_mask"], temperature=temperature, with_entropy=with_entropy,
                    autocast_dtype=autocast_dtype)
                if updates + skipped == 0 and rows.logprobs is not None:
                    sampled = rows.logprobs[idx][:, :logp.shape[1]].to(device)
                    gap[0] += float(((sampled - logp.detach()).abs() * mask).sum())
                    gap[1] += int(mask.sum())
                pg, m = objective(logp, mb.get("old_logp"), mask, mb, global_tokens=g_tokens,
                                  global_seqs=g_seqs, groups=groups, kl_mini=kl_mini)
                total = pg
                if kl_coef > 0:
                    kl = aggregate(kl_penalty(logp, mb["ref_logp"], kl_kind, mask=mask), mask,
                                   agg_mode, g_tokens, g_seqs)
                    total = total + kl_coef * kl
                    sums["actor/kl"] += float(kl.detach())
                if entropy is not None:
                    ent = aggregate(entropy, mask, agg_mode, g_tokens, g_seqs)
                    if entropy_coef != 0:
                        total = total - entropy_coef * ent
                    sums["actor/entropy"] += float(ent.detach())
                if not torch.isfinite(total):
                    finite = False
                    break
                total.backward()
                done += 1
                if on_micro_batch is not None:
                    on_micro_batch(done, n_micro)
                sums["actor/pg_loss"] += float(pg.detach())
                for key, value in m.items():
                    if key in sums:
                        sums[key] += float(value)
                    else:
                        logged.add(key, float(value))
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
            logged.add("actor/grad_norm", grad_norm)
            for key, value in sums.items():
                if (key != "actor/kl" or kl_coef > 0) and (key != "actor/entropy" or with_entropy):
                    logged.add(key, value)
    optimizer.zero_grad(set_to_none=True)
    out = logged.result()
    out["train/skipped_updates"] = float(skipped)
    out["actor/updates"] = float(updates)
    if gap[1]:
        out["actor/sampler_logp_gap"] = gap[0] / gap[1]
    out["actor/lr"] = float(optimizer.param_groups[0]["lr"])
    return out
