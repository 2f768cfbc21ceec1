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

Data parallel (``comm``, :mod:`grouprl.distributed`; spec-scale-out §2): each rank holds its own
rows (whole groups); mini-batch membership is a permutation of the GLOBAL row (or group) ids
drawn from the shuffling generator every rank holds in the same state, each rank keeping the
members it owns; the token and sequence counts of a mini-batch are all-reduced, so each rank's
loss is ``Σ_local / global`` and the sum of the ranks' gradients is the one-process gradient.
Replicated models all-reduce (SUM) their gradients once per mini-batch; FSDP2 models
(``comm.lockstep``) scale the loss by the world size (FSDP averages) and run the same number of
micro-batches on every rank (short ranks run empty ones). A non-finite micro-batch still joins
the collectives; the step is skipped on every rank when any rank saw one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from grouprl.batch import Rollout
from grouprl.distributed import LOCAL, Comm, all_reduce_gradients
from grouprl.losses import aggregate, kl_penalty, normalizer_counts
from grouprl.losses.objective import masked_kl_sum
from grouprl.policy import response_logprobs
from grouprl.train.batching import (
    filler_batch,
    gather,
    group_batches,
    lockstep_count,
    micro_slices,
    row_batches,
)
from grouprl.train.row_policy import PLAIN, RowPolicy

__all__ = ["update_policy", "batched_logprobs", "micro_slices", "row_batches", "group_batches",
           "mean_token_entropy"]


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _routed(row_policy: RowPolicy, rows: Rollout, idx: torch.Tensor | None,
            grad: bool = False) -> contextlib.AbstractContextManager:
    """The context of one micro-batch's forward (a filler row of a lock-step rank: none)."""
    return (row_policy if idx is not None else PLAIN).micro_batch(rows, idx, grad=grad).context()


@torch.no_grad()
def batched_logprobs(model: torch.nn.Module, rows: Rollout, *, temperature: float,
                     micro_batch_size: int, context: Callable[[], Any] | None = None,
                     comm: Comm = LOCAL, row_policy: RowPolicy = PLAIN) -> torch.Tensor:
    """(N, R) token log-probs of the responses under ``model`` (no gradient), e.g. old or ref;
    each micro-batch runs in ``row_policy``'s context (routed rows)."""
    out = torch.zeros(rows.response_ids.shape, dtype=torch.float32)
    was_training = model.training
    model.eval()
    with context() if context is not None else contextlib.nullcontext():
        for idx, mb in micro_slices(rows, torch.arange(len(rows)), micro_batch_size,
                                    _device(model), comm):
            with _routed(row_policy, rows, idx):
                logp, _ = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                            mb["response_ids"], mb["response_mask"],
                                            temperature=temperature)
            if idx is not None:
                out[idx, :logp.shape[1]] = logp.float().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def mean_token_entropy(model: torch.nn.Module, rows: Rollout, *, temperature: float,
                       micro_batch_size: int, comm: Comm = LOCAL,
                       row_policy: RowPolicy = PLAIN) -> torch.Tensor:
    """(N,) mean per-token entropy of each response under ``model`` (no gradient)."""
    out = torch.zeros(len(rows), dtype=torch.float64)
    was_training = model.training
    model.eval()
    for idx, mb in micro_slices(rows, torch.arange(len(rows)), micro_batch_size, _device(model),
                                comm):
        with _routed(row_policy, rows, idx):
            _, ent = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                       mb["response_ids"], mb["response_mask"],
                                       temperature=temperature, with_entropy=True)
        if idx is None:
            continue
        mask = mb["response_mask"].to(ent.dtype)
        out[idx] = ((ent * mask).sum(1) / mask.sum(1).clamp_min(1)).double().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def _mini_batch_kl(model: torch.nn.Module, rows: Rollout, micro: list[torch.Tensor | None],
                   g_tokens: torch.Tensor, temperature: float, device: torch.device,
                   autocast_dtype: torch.dtype | None = None, comm: Comm = LOCAL,
                   row_policy: RowPolicy = PLAIN) -> torch.Tensor:
    """``KL_old`` of a whole (global) mini-batch: token mean of ``ℓ^old − ℓ^θ`` (one no-grad
    forward per micro-batch; the sum all-reduced over ranks; routed rows: joint log-probs)."""
    total = torch.zeros((), device=device)
    for idx in micro:
        mb = gather(rows, idx, device) if idx is not None else filler_batch(device)
        fwd = (row_policy if idx is not None else PLAIN).micro_batch(rows, idx, grad=False)
        with fwd.context():
            logp, _ = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"],
                                        mb["response_ids"], mb["response_mask"],
                                        temperature=temperature, autocast_dtype=autocast_dtype)
        if idx is not None:
            mask = mb["response_mask"].bool()
            logp, old = fwd.joint(logp, mask, mb["old_logp"])
            total = total + masked_kl_sum(old, logp, mask)
    if comm.distributed:              # dtype fixed: a rank without micro-batches adds 0
        total = comm.sum(total.double().reshape(1))[0]
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


def _global_counts(rows: Rollout, micro: list[torch.Tensor], comm: Comm
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N_tok, B')`` of a mini-batch (:func:`grouprl.losses.normalizer_counts`), summed over
    the ranks' shares."""
    if micro:
        g_tokens, g_seqs = normalizer_counts(rows.response_mask[torch.cat(micro)])
    else:
        g_tokens = g_seqs = torch.zeros((), dtype=torch.long)
    if comm.distributed:
        both = comm.sum(torch.stack([g_tokens.double(), g_seqs.double()]))
        g_tokens, g_seqs = both[0].round().long(), both[1].round().long()
    return g_tokens, g_seqs


def _join_collectives(model: torch.nn.Module, device: torch.device, temperature: float,
                      autocast_dtype: torch.dtype | None) -> None:
    """An empty micro-batch of a lock-step (FSDP2) rank: forward a filler row and backward
    ``0 ×`` its log-prob, so the rank joins the all-gathers and reduce-scatters of the others
    and adds nothing to the gradient."""
    mb = filler_batch(device)
    logp, _ = response_logprobs(model, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                                mb["response_mask"], temperature=temperature,
                                autocast_dtype=autocast_dtype)
    (logp.sum() * 0.0).backward()


def _rank_mean(values: dict[str, float], comm: Comm) -> dict[str, float]:
    """Per-key mean over the ranks that report the key (identity in one process)."""
    if not comm.distributed:
        return values
    out: dict[str, list[float]] = {}
    for part in comm.gather(values):
        for k, v in part.items():
            out.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def update_policy(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: Rollout,
                  objective: Any, *, loss_agg: str | None = None, kl_coef: float = 0.0,
                  kl_kind: str = "k3",
                  entropy_coef: float = 0.0, ppo_epochs: int = 1, num_mini_batches: int = 1,
                  micro_batch_size: int = 64, grad_clip: float | None = 1.0,
                  temperature: float = 1.0, generator: torch.Generator | None = None,
                  log_entropy: bool = True, autocast_dtype: torch.dtype | None = None,
                  on_micro_batch: Callable[[int, int], None] | None = None,
                  comm: Comm = LOCAL, row_policy: RowPolicy = PLAIN) -> dict[str, float]:
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

    ``comm``: data parallel over ranks (module docstring); every rank must call this with its
    own rows and a shuffling ``generator`` in the same state. Metrics are global: summed
    losses all-reduced, other per-micro-batch means averaged over ranks.

    ``row_policy`` (:mod:`grouprl.train.row_policy`): routed rows (PA-MoE) — each micro-batch's
    forward runs in its context and the loss sees its joint log-probs (new and old); its
    mini-batch loss (the router's auxiliary terms) is added to each optimizer step.
    """
    n = len(rows)
    for name in objective.row_inputs:
        value = rows.column(name) if n else None
        if value is not None and value.shape[0] != n:
            raise ValueError(f"rows.{name}: must have {n} rows, got {tuple(value.shape)}")
    sizes = comm.gather(n)
    offset, total_rows = sum(sizes[:comm.rank]), sum(sizes)
    if total_rows == 0:             # nothing left to learn from (every trajectory dropped)
        return {"train/skipped_updates": 0.0, "train/empty_batches": 1.0, "actor/updates": 0.0,
                "actor/lr": float(optimizer.param_groups[0]["lr"])}
    if n and rows.old_logp is None and (ppo_epochs > 1 or num_mini_batches > 1):
        raise ValueError("rows.old_logp: required when ppo_epochs > 1 or num_mini_batches > 1 "
                         "(compute it with batched_logprobs before the update)")
    if n and kl_coef > 0 and rows.ref_logp is None:
        raise ValueError("rows.ref_logp: required when kl_coef > 0")
    agg_mode = loss_agg or "token-mean"
    with_entropy = entropy_coef != 0 or log_entropy
    logged = _Averages()
    skipped = updates = 0
    gap = [0.0, 0]                  # Σ|ℓ^sampler − ℓ^θ| and tokens, before the first step
    device = _device(model)
    model.train()
    done = 0
    routing_metrics = row_policy.begin(rows) if n else {}
    all_groups = None
    if objective.batching == "groups" and comm.distributed:
        local = rows.column("group_id").unique().tolist() if n else []
        all_groups = torch.tensor(sorted({g for ids in comm.gather(local) for g in ids}),
                                  dtype=torch.long)
    for epoch in range(ppo_epochs):
        if objective.batching == "groups":
            group_ids = rows.column("group_id") if n else torch.zeros(0, dtype=torch.long)
            batches = group_batches(group_ids, num_mini_batches, micro_batch_size,
                                    shuffle=num_mini_batches > 1, generator=generator,
                                    all_groups=all_groups)
        else:
            batches = row_batches(n, num_mini_batches, micro_batch_size, generator=generator,
                                  offset=offset, total=total_rows)
        n_micro = ppo_epochs * sum(len(micro) for _, micro in batches)
        if on_micro_batch is not None and epoch == 0:
            on_micro_batch(0, n_micro)
        for groups, micro in batches:
            g_tokens, g_seqs = _global_counts(rows, micro, comm)
            g_tokens, g_seqs = g_tokens.to(device), g_seqs.to(device)
            steps: list[torch.Tensor | None] = list(micro)
            steps += [None] * (lockstep_count(comm, len(micro)) - len(micro))
            optimizer.zero_grad(set_to_none=True)
            kl_mini = None
            if objective.needs_mini_batch_kl and (rows.old_logp is not None or not n) and \
                    (len(micro) > 1 or comm.distributed):
                kl_mini = _mini_batch_kl(model, rows, steps, g_tokens, temperature, device,
                                         autocast_dtype, comm, row_policy)
            finite = True
            sums = dict.fromkeys(("actor/pg_loss", "actor/kl", "actor/entropy",
                                  *objective.summed_metrics), 0.0)
            extra, extra_m = row_policy.mini_batch_loss(rows, torch.cat(micro)) if micro \
                else (None, {})
            if extra is not None:                 # e.g. the router's auxiliary terms
                finite = bool(torch.isfinite(extra))
                if finite:
                    extra.backward()
            for key, value in extra_m.items():
                logged.add(key, float(value))
            for idx in steps:
                if idx is None:                       # FSDP2 filler: join the collectives
                    _join_collectives(model, device, temperature, autocast_dtype)
                    continue
                mb = gather(rows, idx, device, objective.row_inputs)
                mask = mb["response_mask"].bool()
                fwd = row_policy.micro_batch(rows, idx, grad=True)
                with fwd.context():
                    logp, entropy = response_logprobs(
                        model, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                        mb["response_mask"], temperature=temperature, with_entropy=with_entropy,
                        autocast_dtype=autocast_dtype)
                if updates + skipped == 0 and rows.logprobs is not None:
                    sampled = rows.logprobs[idx][:, :logp.shape[1]].to(device)
                    gap[0] += float(((sampled - logp.detach()).abs() * mask).sum())
                    gap[1] += int(mask.sum())
                joint, old = fwd.joint(logp, mask, mb.get("old_logp"))   # routed: + log q(e)
                pg, m = objective(joint, old, mask, mb, global_tokens=g_tokens,
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
                    if not comm.distributed:
                        break
                    if comm.lockstep:                 # FSDP2: the backward is a collective
                        (total * comm.world_size).backward()
                    continue                          # the step is skipped on every rank
                (total * comm.world_size if comm.lockstep else total).backward()
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
            if comm.distributed:
                finite = bool(comm.min(torch.tensor([float(finite)]))[0] > 0)
                sums = dict(zip(sums, comm.sum_floats(list(sums.values())), strict=True))
            if finite:
                if not comm.lockstep:
                    all_reduce_gradients(model.parameters(), comm)
                params = [p for p in model.parameters()
                          if p.requires_grad and p.grad is not None]
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
    out = {**routing_metrics, **_rank_mean(logged.result(), comm)}
    out["train/skipped_updates"] = float(skipped)
    out["actor/updates"] = float(updates)
    gap = comm.sum_floats(gap) if comm.distributed else gap
    if gap[1]:
        out["actor/sampler_logp_gap"] = gap[0] / gap[1]
    out["actor/lr"] = float(optimizer.param_groups[0]["lr"])
    return out
