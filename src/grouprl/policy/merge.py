"""Reassemble a batch generated in parts: the rows of each part go back to their places.

A row-routed policy (PA-MoE, :mod:`grouprl.train.pamoe`) generates the rows of each LoRA expert
as one call, so that every forward of that call uses one expert whatever the engine does with
rows (chunking, prefix de-duplication); :func:`merge_generations` puts the parts back in the
order of the prompts, padding token tensors to the widest part (prompts left, responses right).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grouprl.batch import pad_concat
from grouprl.policy.generate import Generation

__all__ = ["merge_generations"]


def merge_generations(parts: Sequence[Generation], rows: Sequence[Sequence[int]],
                      pad_id: int) -> Generation:
    """One :class:`Generation` whose row ``rows[k][j]`` is row ``j`` of ``parts[k]``.

    ``rows`` must cover ``0 .. N−1`` exactly once (N = total rows of the parts)."""
    if len(parts) != len(rows) or any(len(p) != len(r) for p, r in zip(parts, rows)):
        raise ValueError("rows: expected one index list per part, as long as the part")
    where = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    n = where.numel()
    if n == 0 or not torch.equal(torch.sort(where).values, torch.arange(n)):
        raise ValueError(f"rows: must cover 0..{n - 1} exactly once")
    order = torch.empty(n, dtype=torch.long)
    order[where] = torch.arange(n)                    # merged row i = concatenated row order[i]

    def cat(name: str, value: float, left: bool) -> torch.Tensor:
        tensors = [getattr(p, name).cpu() for p in parts]
        width = max(t.shape[1] for t in tensors)
        return pad_concat(tensors, width, value, left=left)[order]

    texts = [t for p in parts for t in p.texts]
    cut = [p.prompt_truncated for p in parts]
    return Generation(
        prompt_ids=cat("prompt_ids", pad_id, True), prompt_mask=cat("prompt_mask", 0, True),
        response_ids=cat("response_ids", pad_id, False),
        response_mask=cat("response_mask", 0, False), logprobs=cat("logprobs", 0.0, False),
        texts=[texts[k] for k in order.tolist()],
        truncated=torch.cat([p.truncated.cpu() for p in parts])[order],
        prompt_truncated=None if any(c is None for c in cut) else
        torch.cat([c.cpu() for c in cut])[order])
