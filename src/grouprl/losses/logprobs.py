"""Per-token log-probabilities (and entropy) from logits, chunked so that (N, T, V) is never upcast.

``token_logprobs`` is the "gather target log-softmax" of spec-losses §9.3::

    ℓ_{i,t} = z_{i,t,y} − logsumexp_v z_{i,t,v},        z = logits / temperature   (fp32)
    H_{i,t} = logsumexp_v z_{i,t,v} − Σ_v softmax(z_{i,t})_v · z_{i,t,v}            (§5.3)
            = −Σ_v p_v · (z_v − logsumexp z)     (the form evaluated: no cancellation of
                                                  two large numbers when logits are large)

Memory (spec §5.3 "Memory", §9.3): the work is done by a custom autograd function over blocks of
at most ``chunk_size`` token positions. Forward upcasts one block to fp32, takes its logsumexp and
gathers the target; it saves only the caller's logits (no copy), the labels and two fp32 (N, T)
vectors (logsumexp, entropy). Backward recomputes the softmax block by block and writes the
gradient, in the logits' dtype, straight into one preallocated tensor::

    ∂ℓ/∂z_v = 1[v = y] − p_v,           ∂H/∂z_v = −p_v · (z_v − Σ_u p_u z_u),     ∂z/∂logits = 1/τ

So for bf16/fp16 logits the peak extra memory is a couple of fp32 blocks of
``chunk_size × V`` elements, never a fp32 copy of the whole (N, T, V), and autograd keeps no
per-chunk intermediates alive between forward and backward. Positions whose label equals
``ignore_index`` get ℓ = 0 and no gradient through ℓ (their entropy is still computed: masking
is the caller's job, spec §0).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from grouprl.validation import check_bool, check_int, check_number

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "IGNORE_INDEX", "token_logprobs", "resolve_chunk_size"]

IGNORE_INDEX = -100
# Elements of one fp32 block (2**23 floats = 32 MiB) when ``chunk_size`` is None.
DEFAULT_CHUNK_ELEMENTS = 2**23


def resolve_chunk_size(chunk_size: int | None, vocab: int) -> int:
    """Token positions per block: ``chunk_size``, or ``max(1, 2**23 // V)`` when None."""
    check_int("chunk_size", chunk_size, 1, none_ok=True)
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1)) if chunk_size is None else chunk_size


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 logits, fp64 for fp64 logits (reference tests, spec §9.7)."""
    return torch.promote_types(dtype, torch.float32)


def _blocks(n: int, t: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(row, token) slices covering an (n, t) grid with at most ``chunk`` positions each.

    Blocks are basic slices of the caller's tensor, so taking one never copies, whatever the
    strides (e.g. ``logits[:, :-1]``).
    """
    if t == 0 or n == 0:
        return
    if chunk >= t:
        rows = chunk // t
        for n0 in range(0, n, rows):
            yield slice(n0, min(n0 + rows, n)), slice(0, t)
    else:
        for n0 in range(n):
            for t0 in range(0, t, chunk):
                yield slice(n0, n0 + 1), slice(t0, min(t0 + chunk, t))


def _upcast_scaled(block: torch.Tensor, dtype: torch.dtype, temperature: float) -> torch.Tensor:
    """``z = block / τ`` in ``dtype``; a fresh tensor (never the caller's storage)."""
    z = block.to(dtype, copy=True)
    if temperature != 1.0:
        z.div_(temperature)
    return z


class _ChunkedLogSoftmax(torch.autograd.Function):
    """Fused chunked target log-softmax (+ entropy) with recompute-in-backward."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, chunk, want_logp, want_entropy):  # type: ignore[override]
        n, t, _ = logits.shape
        dtype = _compute_dtype(logits.dtype)
        ignore = labels == IGNORE_INDEX
        safe = labels.masked_fill(ignore, 0)
        lse = torch.empty((n, t), dtype=dtype, device=logits.device)
        logp = torch.zeros((n, t), dtype=dtype, device=logits.device) if want_logp else None
        ent = torch.empty((n, t), dtype=dtype, device=logits.device) if want_entropy else None
        for rs, ts in _blocks(n, t, chunk):
            z = _upcast_scaled(logits[rs, ts], dtype, temperature)  # the one fp32 block
            lse_b = torch.logsumexp(z, dim=-1)
            lse[rs, ts] = lse_b
            if want_logp:
                tgt = z.gather(-1, safe[rs, ts].unsqueeze(-1)).squeeze(-1)
                logp[rs, ts] = torch.where(ignore[rs, ts], 0.0, tgt - lse_b)
            if want_entropy:
                # H = lse − Σ p z = −Σ_v p_v (z_v − lse): the shifted form has no cancellation
                # between two large numbers when the logits are large
                z.sub_(lse_b.unsqueeze(-1))  # z ← log p
                p = z.exp()
                ent[rs, ts] = -torch.linalg.vecdot(p, z)
                del p
            del z
        ctx.save_for_backward(logits, safe, ignore, lse, ent if want_entropy else None)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.want_logp, ctx.want_entropy = want_logp, want_entropy
        ctx.set_materialize_grads(False)  # an unused output gets g = None: skip its work
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_ent):  # type: ignore[override]
        logits, safe, ignore, lse, ent = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        n, t, _ = logits.shape
        dtype = lse.dtype
        tau = ctx.temperature
        use_logp = ctx.want_logp and g_logp is not None
        use_ent = ctx.want_entropy and g_ent is not None
        if not (use_logp or use_ent):
            return torch.zeros_like(logits), None, None, None, None, None
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)  # blocks cover it
        if use_logp:
            g_logp = torch.where(ignore, 0.0, g_logp.to(dtype))
        for rs, ts in _blocks(n, t, ctx.chunk):
            w = _upcast_scaled(logits[rs, ts], dtype, tau)  # block 1: z
            lse_b = lse[rs, ts].unsqueeze(-1)
            if use_ent:
                w.sub_(lse_b)  # w = log p = z − lse
                p = w.exp()  # block 2: p
                w.add_(ent[rs, ts].unsqueeze(-1))  # w = z − Σ p z   (since Σ p z = lse − H)
                # ∂/∂z_v = −p_v (g_H (z_v − Σpz) + g_ℓ)
                w.mul_(g_ent[rs, ts].to(dtype).unsqueeze(-1))
                if use_logp:
                    w.add_(g_logp[rs, ts].unsqueeze(-1))
                w.mul_(p).neg_()
                del p
            else:
                # ∂/∂z_v = −g_ℓ p_v, then + g_ℓ at the target (below)
                w.sub_(lse_b).exp_().mul_(-g_logp[rs, ts].unsqueeze(-1))
            if use_logp:
                w.scatter_add_(-1, safe[rs, ts].unsqueeze(-1), g_logp[rs, ts].unsqueeze(-1))
            if tau != 1.0:
                w.div_(tau)
            grad[rs, ts] = w  # cast to the logits' dtype on copy
            del w
        return grad, None, None, None, None, None


def _check_tensors(logits: torch.Tensor, labels: torch.Tensor | None) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor, got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits: expected shape (N, T, V) or (T, V), got {tuple(logits.shape)}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype not in (
                torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"labels: expected an integer tensor, got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)}")
        if tuple(labels.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"labels: shape {tuple(labels.shape)} must equal logits.shape[:-1] = "
                             f"{tuple(logits.shape[:-1])}")
        vocab = logits.shape[-1]
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
        if labels.numel() and bool(bad.any()):
            raise ValueError(f"labels: values must lie in [0, {vocab}) or equal ignore index "
                             f"{IGNORE_INDEX}; got {labels[bad][:5].tolist()}")


def _run(logits: torch.Tensor, labels: torch.Tensor | None, temperature: float,
         chunk_size: int | None, want_logp: bool, want_entropy: bool
         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    _check_tensors(logits, labels)
    check_number("temperature", temperature, 0.0, low_open=True)
    squeeze = logits.dim() == 2
    if squeeze:
        logits = logits.unsqueeze(0)
        labels = labels.unsqueeze(0) if labels is not None else None
    if labels is None:
        labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    chunk = resolve_chunk_size(chunk_size, logits.shape[-1])
    logp, ent = _ChunkedLogSoftmax.apply(logits, labels.long(), float(temperature), chunk,
                                         want_logp, want_entropy)
    if squeeze:
        logp = logp.squeeze(0) if logp is not None else None
        ent = ent.squeeze(0) if ent is not None else None
    return logp, ent


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False, chunk_size: int | None = None
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label under temperature-scaled logits, chunked and differentiable.

    ``ℓ_{i,t} = log softmax(logits_{i,t} / τ)[labels_{i,t}]`` (spec-losses §0 notation: log-probs
    are always computed from logits divided by the sampling temperature, as verl and TRL do), and
    with ``with_entropy`` also ``H_{i,t} = logsumexp(z) − Σ_v softmax(z)_v z_v`` (spec §5.3).

    Equal, in value and gradient, to ``log_softmax(logits.float() / τ, -1).gather(-1, labels)``
    but never materialises an fp32 copy of the full (N, T, V): see the module docstring.

    Args:
        logits: (N, T, V) or (T, V), any float dtype; labels must already be aligned (the usual
            causal shift ``logits[:, :-1]`` / ``ids[:, 1:]`` is the caller's, and a sliced view
            is fine: blocks are taken as views).
        labels: integer (N, T) (or (T,)) in [0, V); ``-100`` (ignore index) gives ℓ = 0.
        temperature: τ > 0, the sampling temperature (default 1.0).
        with_entropy: also return the per-token entropy H (same shape).
        chunk_size: token positions per block (default: ``max(1, 2**23 // V)``, i.e. about
            32 MiB of fp32 per block). Results do not depend on it.

    Returns:
        ``logp`` (N, T) float32 (float64 when logits are float64), or ``(logp, entropy)``.
    """
    check_bool("with_entropy", with_entropy)
    logp, ent = _run(logits, labels, temperature, chunk_size, True, with_entropy)
    return (logp, ent) if with_entropy else logp
