"""vLLM ``RequestOutput`` s → a :class:`~grouprl.policy.generate.Generation` (the conversion
:class:`~grouprl.policy.backends.vllm_colocated.VLLMColocated` applies; pure, no vLLM import).

Rows are prompt-major (prompt ``i``'s ``n`` completions are rows ``i*n …``, sorted by their
``index``); prompts left-padded as sent; responses right-padded with the pad id, the EOS /
stop-completing token kept in the mask (vLLM's ``token_ids`` keep it, as the HF loop does);
log-probs of the sampled tokens from vLLM's per-position ``{token id: Logprob}``; texts decoded
by the policy's tokenizer (special tokens skipped) and cut right after the first stop string;
``truncated = finish_reason != "stop"`` (``length``: max_tokens or max_model_len reached).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..generate import Generation, left_pad
from .base import cut_after_stop, repeat_prompts

__all__ = ["outputs_to_generation"]


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
    return pad if isinstance(pad, int) else 0


def _sampled_logprobs(entries: Sequence[Any] | None, ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position ``{token id: Logprob}``
    (``logprobs=0`` returns just the sampled token); zeros when the engine returned none."""
    if entries is None:
        return [0.0] * len(ids)
    out = []
    for entry, tok in zip(entries, ids):
        value = entry[tok] if isinstance(entry, Mapping) else entry
        out.append(float(getattr(value, "logprob", value)))
    return out


def outputs_to_generation(outputs: Sequence[Any], id_lists: Sequence[Sequence[int]],
                          prompt_cut: Sequence[bool], n: int, tokenizer, *,
                          stop_strings: Sequence[str] = (),
                          max_new_tokens: int | None = None) -> Generation:
    """vLLM ``RequestOutput`` s (one per prompt, ``n`` completions each) → a
    :class:`Generation` of ``len(id_lists) * n`` rows, prompt-major (module docstring).

    ``id_lists`` are the prompts as sent (after left truncation), ``prompt_cut`` their
    truncation flags; tensors are on the CPU, log-probs float32 (0 on padding)."""
    if len(outputs) != len(id_lists):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(id_lists)} prompts")
    pad = _pad_id(tokenizer)
    ids_rows: list[list[int]] = []
    lp_rows: list[list[float]] = []
    truncated: list[bool] = []
    for out in outputs:
        comps = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(comps) != n:
            raise RuntimeError(f"vLLM returned {len(comps)} completions for a prompt, "
                               f"expected n={n}")
        for c in comps:
            ids = list(c.token_ids)[:max_new_tokens]
            ids_rows.append(ids)
            lp_rows.append(_sampled_logprobs(c.logprobs, ids))
            truncated.append(c.finish_reason != "stop")
    bsz = len(ids_rows)
    width = max((len(r) for r in ids_rows), default=0)
    response_ids = torch.full((bsz, width), pad, dtype=torch.long)
    response_mask = torch.zeros((bsz, width), dtype=torch.long)
    logprobs = torch.zeros((bsz, width), dtype=torch.float32)
    for row, (ids, lps) in enumerate(zip(ids_rows, lp_rows)):
        if ids:
            response_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[row, :len(ids)] = 1
            logprobs[row, :len(ids)] = torch.tensor(lps, dtype=torch.float32)
    texts = tokenizer.batch_decode(ids_rows, skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False) if bsz else []
    if stop_strings:
        texts = [cut_after_stop(t, stop_strings) for t in texts]
    prompt_ids, prompt_mask = left_pad(repeat_prompts(id_lists, n), pad)
    return Generation(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                      response_mask=response_mask, logprobs=logprobs, texts=list(texts),
                      truncated=torch.tensor(truncated, dtype=torch.bool).reshape(bsz),
                      prompt_truncated=torch.tensor([c for c in prompt_cut for _ in range(n)],
                                                    dtype=torch.bool).reshape(bsz))
