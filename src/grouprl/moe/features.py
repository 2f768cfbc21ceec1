"""Router input features from the frozen base (spec-seed-systems §3.3 "Router inputs").

``feature(text) = mean over the text's real tokens of the base's hidden states at layer ℓ``
(last layer by default), computed with every multi-LoRA adapter off and no gradient: g for the goal
(task instruction), o_t for the observation of step t. The sampler computes them once per step
and stores them per row, so the learner recomputes the router without another base pass.

Left padding is handled as in :func:`grouprl.policy.response_logprobs`: the attention mask
masks the pads and ``position_ids = cumsum(mask) − 1`` clipped at 0, so a padded text gets the
features of the same text unpadded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from grouprl.validation import check_int

from .lora import adapters_disabled

__all__ = ["pooled_features", "text_features"]


@torch.no_grad()
def pooled_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    layer: int = -1) -> torch.Tensor:
    """(N, d) fp32 mean-pooled hidden states of layer ``layer`` over the real tokens, base only.

    ``model`` is a Hugging Face causal LM (``output_hidden_states`` supported); adapters of
    :mod:`grouprl.moe.lora` are disabled for the call. A row without real tokens gets zeros.
    """
    check_int("layer", layer)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids, attention_mask: expected two (N, L) tensors of one shape, "
                         f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    was_training = model.training
    model.eval()
    try:
        with adapters_disabled(model):
            out = model(input_ids=input_ids, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                        output_hidden_states=True, use_cache=False)
    finally:
        model.train(was_training)
    hidden = out.hidden_states[layer].float()                               # (N, L, d)
    m = mask.bool()[..., None]
    summed = torch.where(m, hidden, 0.0).sum(1)                              # pads never enter
    return summed / m.sum(1).clamp_min(1).to(hidden.dtype)                   # mean over tokens


def text_features(model: nn.Module, tokenizer, texts: Sequence[str], *, layer: int = -1,
                  max_tokens: int | None = None, batch_size: int | None = None) -> torch.Tensor:
    """:func:`pooled_features` of ``texts`` (tokenised without special tokens, left-padded;
    ``max_tokens`` keeps each text's last tokens), in chunks of ``batch_size``."""
    check_int("max_tokens", max_tokens, 1, none_ok=True)
    check_int("batch_size", batch_size, 1, none_ok=True)
    if isinstance(texts, str):
        raise ValueError("texts: expected a sequence of strings, got one string")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    step = batch_size or max(len(texts), 1)
    parts = []
    for i in range(0, len(texts), step):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + step]]
        ids = [x[-max_tokens:] if max_tokens else x for x in ids]
        width = max((len(x) for x in ids), default=0) or 1
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            if x:
                input_ids[row, width - len(x):] = torch.tensor(x)
                mask[row, width - len(x):] = 1
        parts.append(pooled_features(model, input_ids.to(device), mask.to(device), layer))
    if not parts:
        raise ValueError("texts: expected at least one text")
    return torch.cat(parts)

