"""Preference training components: summed response log-probs of pairs, the cached reference
log-probs, gradient accumulation of a preference loss and held-out pair evaluation.

With summed response log-probs ``Λ(y) = Σ_t m_t ℓ_t`` (fp32 sums), ``Δ_θ = Λ^θ(y_w) − Λ^θ(y_l)``,
``Δ_ref = Λ^ref(y_w) − Λ^ref(y_l)`` and ``h = Δ_θ − Δ_ref``, the losses of
:func:`grouprl.losses.preference.preference_loss` (spec-losses §6) are DPO ``−logσ(βh)``,
cDPO/rDPO, IPO, HyPO and the reference-free SimPO and ORPO. The logged rewards are the loss's
implicit rewards ``β·(Λ^θ − Λ^ref)`` (``β·Λ̄^θ`` for SimPO/ORPO), as in TRL; a pair is
*pessimistic* when ``Δ_ref < 0`` (HyPO; length-normalised when the loss is).

The reference cache ``run_dir/reference_logprobs.safetensors`` (+ ``.json`` sidecar) is keyed
by a SHA-256 fingerprint of (a) every tokenised tensor of every split (ids and masks, so any
change of data, template, truncation or tokenizer shows) and (b) the reference model's identity:
for every state-dict entry its name, dtype, shape, 4,096 strided values (exact bytes) and its
float64 sum of squares (rounded to 10 significant digits, so the same weights match across
devices). A run that is resumed, or re-run on the same data and warm start, reuses the cache;
any other fingerprint recomputes it (and says so). Both files are written atomically.

Data parallel (``comm``, :mod:`grouprl.distributed`; docs/distributed.md): every rank holds
every pair's tensors and the same batch ``idx`` (one shuffled order, from the shuffling
generator every rank holds in the same state). A training step shards the batch — rank ``r``
takes the contiguous block ``idx[lo_r:hi_r]`` (:func:`~grouprl.distributed.shard_bounds`) —
while the normalisers stay those of the whole batch (its pair count, ORPO's chosen-token
count: computed from ``idx``, which every rank holds, so no collective is needed): each rank's
loss is ``Σ_local ℓ_i / N``, the gradients are all-reduced (SUM) before clipping, and a
non-finite loss on any rank skips the step on every rank. Log-probs without gradient
(:func:`batched_pair_logps`: the reference cache, evaluation) are sharded by whole
micro-batches of the one-process order and gathered, so every rank ends with the values one
process computes, bit for bit on CPU. The reference cache is computed that way once and shared:
rank 0 reads the cache (or writes the gathered values), the others receive it by broadcast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from grouprl.distributed import LOCAL, Comm, all_reduce_gradients, shard_bounds
from grouprl.losses.preference import canonical_preference_loss, preference_loss
from grouprl.policy import response_logprobs
from grouprl.train.pair_data import PairTensors, loss_normalizes
from grouprl.train.parallel import together

__all__ = ["pair_logps", "batched_pair_logps", "reference_fingerprint", "cached_reference_logps",
           "accumulate_preference_gradients", "evaluate_pairs", "pessimistic_pairs",
           "preference_step", "slowest", "check_same_pairs", "REFERENCE_FILE"]

REFERENCE_FILE = "reference_logprobs.safetensors"
_REFERENCE_VERSION = "grouprl-preference-reference-v1"
_SAMPLED_VALUES = 4096

# preference_loss metric → logged name (the "pref/" or "eval/" prefix is added)
_METRIC_NAMES = {"loss": "loss", "rewards/accuracies": "reward_accuracy",
                 "rewards/margins": "reward_margin", "rewards/chosen": "chosen_reward",
                 "rewards/rejected": "rejected_reward", "logps/chosen": "logp_chosen",
                 "logps/rejected": "logp_rejected", "nll_loss": "nll_loss",
                 "log_odds_ratio": "log_odds_ratio", "log_odds_chosen": "log_odds_chosen"}


# --------------------------------------------------------------------------- log-probs

def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pair_logps(model: torch.nn.Module, data: PairTensors, idx: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``(Λ(y_w), Λ(y_l))`` of pairs ``idx`` (fp32, differentiable).

    Chosen and rejected rows go through ONE forward (concatenated along the batch), trimmed to
    the longest prompt and response of these pairs.
    """
    dev = _model_device(model)
    pm = data.prompt_mask[idx]
    p = int(pm.sum(1).max())
    width = pm.shape[1]
    pm = pm[:, width - p:]
    prompt = data.prompt_ids[idx, width - p:]
    cm, rm = data.chosen_mask[idx], data.rejected_mask[idx]
    r = max(int(cm.sum(1).max()), int(rm.sum(1).max()), 1)
    ids = torch.cat([data.chosen_ids[idx, :r], data.rejected_ids[idx, :r]])
    mask = torch.cat([cm[:, :r], rm[:, :r]])
    logp, _ = response_logprobs(model, prompt.repeat(2, 1).to(dev), pm.repeat(2, 1).to(dev),
                                ids.to(dev), mask.to(dev))
    seq = (logp.float() * mask.to(dev, torch.float32)).sum(1)  # Λ(y) = Σ_t m_t ℓ_t, fp32
    m = int(idx.numel())
    return seq[:m], seq[m:]


def batched_pair_logps(model: torch.nn.Module, data: PairTensors, micro_batch_size: int,
                       comm: Comm = LOCAL) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Λ(y_w), Λ(y_l))`` of every pair, no grad, eval mode, in order; on the CPU.

    ``comm``: rank ``r`` computes a contiguous block of the one-process micro-batches
    (``arange(N).split(micro_batch_size)``), and every rank receives all of them (gathered), so
    each micro-batch has the composition (hence the padding trim) it has in one process."""
    was_training = model.training
    model.eval()
    chunks = torch.arange(len(data)).split(micro_batch_size)
    lo, hi = shard_bounds(len(chunks), comm.world_size, comm.rank)
    chosen, rejected = [], []
    try:
        with torch.no_grad():
            for idx in chunks[lo:hi]:
                cw, cl = pair_logps(model, data, idx)
                chosen.append(cw.cpu())
                rejected.append(cl.cpu())
    finally:
        model.train(was_training)
    if comm.distributed:
        parts = comm.gather((chosen, rejected))
        chosen = [t for part in parts for t in part[0]]
        rejected = [t for part in parts for t in part[1]]
    return torch.cat(chosen), torch.cat(rejected)


def check_same_pairs(datasets: Mapping[str, PairTensors], comm: Comm = LOCAL) -> None:
    """Raise ``RuntimeError`` unless every rank tokenised exactly the same pairs (the sharding
    assumes it: each rank reads its block of the batch from its own copy)."""
    if not comm.distributed:
        return
    h = hashlib.sha256()
    for split in sorted(datasets):
        for key, t in datasets[split].tensors().items():
            h.update(f"{split}|{key}|{tuple(t.shape)}".encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    digests = comm.gather(h.hexdigest())
    if len(set(digests)) > 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"rank {differ[0]} tokenised other preference pairs than rank 0 (a "
                           "different dataset file or tokenizer on that node?); every rank must "
                           "hold the same pairs")


# --------------------------------------------------------------------------- reference cache

def reference_fingerprint(model: torch.nn.Module, datasets: Mapping[str, PairTensors]) -> str:
    """SHA-256 of the tokenised data and the reference model's identity (module docstring)."""
    h = hashlib.sha256(_REFERENCE_VERSION.encode())
    for split in sorted(datasets):
        for key, t in datasets[split].tensors().items():
            t = t.detach().contiguous().cpu()
            h.update(f"data|{split}|{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach()
            h.update(f"model|{name}|{t.dtype}|{tuple(t.shape)}".encode())
            flat = t.reshape(-1)
            if flat.numel() == 0:
                continue
            k = min(flat.numel(), _SAMPLED_VALUES)
            stride = flat.numel() // k
            sample = flat[torch.arange(k, device=flat.device) * stride]
            h.update(sample.float().cpu().numpy().tobytes())
            if flat.is_floating_point():
                sq = sum(float(c.double().square().sum()) for c in flat.split(1 << 24))
                h.update(f"{sq:.9e}".encode())
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_reference_cache(path: Path, fp: str, datasets: Mapping[str, PairTensors],
                          echo: Callable[[str], None]
                          ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """The cached log-probs when the cache at ``path`` has fingerprint ``fp``, else None."""
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with safe_open(str(path), "pt") as f:
                file_fp = (f.metadata() or {}).get("fingerprint")
            if meta.get("fingerprint") == fp == file_fp:
                tensors = load_file(str(path))
                out = {s: (tensors[f"{s}.chosen"], tensors[f"{s}.rejected"]) for s in datasets}
                if all(out[s][0].shape == (len(d),) == out[s][1].shape
                       for s, d in datasets.items()):
                    echo(f"reference log-probs: loaded from {path} (fingerprint "
                         f"{fp[:12]}, {', '.join(f'{len(d)} {s}' for s, d in datasets.items())} "
                         "pairs)")
                    return out
            echo(f"reference log-probs: the cache at {path} does not match this run's data and "
                 "reference model (fingerprint differs); recomputing")
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            echo(f"reference log-probs: cannot read the cache at {path} ({err}); recomputing")
    return None


def _write_reference_cache(path: Path, fp: str,
                           out: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                           datasets: Mapping[str, PairTensors]) -> None:
    tensors = {f"{s}.{side}": t.contiguous() for s, (c, r) in out.items()
               for side, t in (("chosen", c), ("rejected", r))}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"fingerprint": fp}))
    meta = {"fingerprint": fp, "version": _REFERENCE_VERSION,
            "pairs": {s: len(d) for s, d in datasets.items()}}
    _atomic_write(path.with_suffix(".json"),
                  lambda p: p.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8"))


def cached_reference_logps(model: torch.nn.Module, datasets: Mapping[str, PairTensors],
                           path: str | Path, *, micro_batch_size: int,
                           echo: Callable[[str], None] | None = None, comm: Comm = LOCAL
                           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (Λ^ref(y_w), Λ^ref(y_l))}`` of ``model`` (the reference), from the cache at
    ``path`` when its fingerprint matches, else computed (no grad, eval mode) and cached.

    ``comm``: every rank holds the same reference weights; rank 0 fingerprints them and reads
    (or writes) the cache, the others receive its log-probs by broadcast; a recomputation is
    sharded over the ranks (:func:`batched_pair_logps`). An error on rank 0 (say, an unwritable
    ``run_dir``) stops every rank instead of leaving them waiting in a collective."""

    echo = echo or (lambda s: None)
    path = Path(path)

    def read() -> tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]] | None]:
        fp = reference_fingerprint(model, datasets)
        return fp, _read_reference_cache(path, fp, datasets, echo)

    fp, cached = together(comm, lambda: read() if comm.is_main else ("", None), (Exception,))
    if comm.distributed:
        cached = comm.broadcast(cached)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    out = {s: batched_pair_logps(model, d, micro_batch_size, comm) for s, d in datasets.items()}
    together(comm, lambda: _write_reference_cache(path, fp, out, datasets) if comm.is_main
             else None, (Exception,))
    echo(f"reference log-probs: computed for "
         f"{', '.join(f'{len(d)} {s}' for s, d in datasets.items())} pairs in "
         f"{time.perf_counter() - t0:.1f}s, cached at {path}")
    return out


# --------------------------------------------------------------------------- loss plumbing

def _loss_kwargs(loss: str, options: Mapping[str, Any], data: PairTensors, idx: torch.Tensor,
                 device: torch.device) -> dict[str, Any]:
    kwargs = dict(options)
    if loss_normalizes(loss, options):
        kwargs["chosen_length"] = data.chosen_length[idx].to(device, torch.float32)
        kwargs["rejected_length"] = data.rejected_length[idx].to(device, torch.float32)
    return kwargs


def pessimistic_pairs(loss: str, options: Mapping[str, Any], data: PairTensors,
                 ref: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per pair: Δ_ref < 0 (the reference prefers the rejected response; HyPO)."""
    rw, rl = ref
    if loss_normalizes(loss, options):
        rw = rw / data.chosen_length.clamp(min=1).float()
        rl = rl / data.rejected_length.clamp(min=1).float()
    return rw - rl < 0


def accumulate_preference_gradients(
        model: torch.nn.Module, data: PairTensors, idx: torch.Tensor,
        ref: tuple[torch.Tensor, torch.Tensor] | None, *, loss: str,
        loss_options: Mapping[str, Any], micro_batch_size: int, comm: Comm = LOCAL
) -> tuple[dict[str, float], bool]:
    """Backward of the batch loss on pairs ``idx``, over micro-batches of ``micro_batch_size``
    pairs, each micro-batch's mean loss weighted by its share ``n_mb / n`` (so the accumulated
    gradient is that of the batch mean for any micro-batching; ORPO's token-mean NLL uses the
    whole batch's chosen-token count). Gradients add to ``.grad`` (zero them first).

    Returns the batch metrics (share-weighted means of :func:`preference_loss`'s metrics, with
    their ``pref/`` names) and whether every micro-batch loss was finite (on a non-finite one
    it stops at once; the caller should discard the gradient).

    ``comm``: ``idx`` is the whole (global) batch; this rank back-propagates its block
    ``idx[lo_r:hi_r]`` with the whole batch's ``n`` and chosen-token count, so the sum of the
    ranks' gradients is the one-process gradient (the caller all-reduces it). The metrics are
    summed over the ranks and ``finite`` is true only when it is on every rank (every rank
    reaches both collectives, also after a non-finite micro-batch).
    """
    loss = canonical_preference_loss(loss)
    dev = _model_device(model)
    n = int(idx.numel())
    chosen_tokens = float(data.chosen_length[idx].clamp(min=1).sum())
    lo, hi = shard_bounds(n, comm.world_size, comm.rank)
    sums: dict[str, float] = {}
    finite = True
    for mb in idx[lo:hi].split(micro_batch_size) if hi > lo else ():
        share = mb.numel() / n
        pw, pl = pair_logps(model, data, mb)
        kwargs = _loss_kwargs(loss, loss_options, data, mb, dev)
        if loss == "orpo":  # batch token mean of the chosen NLL, pre-divided by the share
            kwargs["nll_loss"] = -pw.sum() / chosen_tokens / share
        rw, rl = (ref[0][mb].to(dev), ref[1][mb].to(dev)) if ref is not None else (None, None)
        value, metrics = preference_loss(loss, pw, pl, rw, rl, **kwargs)
        if not torch.isfinite(value.detach()):
            finite = False
            break
        (value * share).backward()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + share * v
    if comm.distributed:
        finite = bool(comm.min(torch.tensor([float(finite)]))[0] > 0)
        parts = comm.gather(sums)
        sums = {k: sum(part.get(k, 0.0) for part in parts)
                for k in dict.fromkeys(k for part in parts for k in part)}
    return {"pref/" + _METRIC_NAMES[k]: v for k, v in sums.items() if k in _METRIC_NAMES}, \
        finite


def evaluate_pairs(model: torch.nn.Module, data: PairTensors,
                   ref: tuple[torch.Tensor, torch.Tensor] | None, *, loss: str,
                   loss_options: Mapping[str, Any], micro_batch_size: int,
                   prefix: str = "eval/", comm: Comm = LOCAL) -> dict[str, float]:
    """Held-out metrics (no grad, eval mode): the loss, reward accuracy / margin, mean rewards,
    ``chosen_logp_mean`` / ``rejected_logp_mean``, ``logp_accuracy`` (fraction of pairs whose
    summed log-prob is higher for the chosen response: the policy's own ranking, reference-free)
    and, for reference-based losses, ``pessimistic_frac``.

    ``comm``: the forwards are sharded over the ranks and every pair's log-probs gathered
    (:func:`batched_pair_logps`); the metrics are then computed over all pairs on every rank,
    i.e. each rank's share weighted by its number of pairs, equal to one process's."""
    loss = canonical_preference_loss(loss)
    pw, pl = batched_pair_logps(model, data, micro_batch_size, comm)
    idx = torch.arange(len(data))
    kwargs = _loss_kwargs(loss, loss_options, data, idx, pw.device)
    with torch.no_grad():
        _, m = preference_loss(loss, pw, pl, *(ref if ref is not None else (None, None)),
                               **kwargs)
    out = {prefix + _METRIC_NAMES[k]: v for k, v in m.items()
           if k in _METRIC_NAMES and not k.startswith("logps/")}
    out[prefix + "chosen_logp_mean"] = float(pw.mean())
    out[prefix + "rejected_logp_mean"] = float(pl.mean())
    out[prefix + "logp_accuracy"] = float((pw > pl).float().mean())
    if ref is not None:
        out[prefix + "pessimistic_frac"] = float(
            pessimistic_pairs(loss, loss_options, data, ref).float().mean())
    return out


def slowest(seconds: float, comm: Comm = LOCAL) -> float:
    """The largest of the ranks' ``seconds`` (a wall-clock time of the whole job)."""
    if not comm.distributed:
        return seconds
    return float(comm.max(torch.tensor([seconds], dtype=torch.float64))[0])


def preference_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    params: list[torch.nn.Parameter], data: PairTensors, idx: torch.Tensor,
                    ref: tuple[torch.Tensor, torch.Tensor] | None, loss: str,
                    options: Mapping[str, Any], micro_batch_size: int,
                    grad_clip: float | None, comm: Comm = LOCAL) -> dict[str, float]:
    """One optimizer step on pairs ``idx``; a non-finite loss or gradient skips it.

    ``comm``: every rank passes the same ``idx`` and back-propagates its block of it
    (:func:`accumulate_preference_gradients`); the gradients are all-reduced (SUM) before
    clipping, so every rank clips and steps with the one-process gradient; a non-finite loss
    on any rank skips the step on all. The metrics are global (``timing/step_s``: the slowest
    rank's)."""
    t0 = time.perf_counter()
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.zero_grad(set_to_none=True)
    metrics, finite = accumulate_preference_gradients(
        model, data, idx, ref, loss=loss, loss_options=options,
        micro_batch_size=micro_batch_size, comm=comm)
    grad_norm = float("nan")
    if finite:
        all_reduce_gradients(params, comm)
        grads = [p for p in params if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            grads, grad_clip if grad_clip is not None else float("inf")))
        finite = math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics.update({"actor/grad_norm": grad_norm, "actor/lr": lr,
                    "train/skipped_updates": 0.0 if finite else 1.0,
                    "train/pairs": float(idx.numel()),
                    "timing/step_s": slowest(time.perf_counter() - t0, comm)})
    return metrics

