"""Tool-head policy of PhGPO: a causal LM (optionally with LoRA) and a linear classifier over the
original tools on the last real token's final hidden state (spec §2.2).

Released code: the v12 policy (Qwen2.5-7B, LoRA r = 64, α = 128, dropout 0.05 on all seven
projections, ``nn.Linear(hidden, |tools|)``). It is a classifier, not text generation:

    ``ℓ = W · h_L[last non-pad token] + b``,   π(a | s) = softmax(ℓ)(a)

Positions follow grouprl's generation convention, ``position_ids = cumsum(mask) − 1`` (clipped at
0), so a left- or right-padded row gives the same logits as the row alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from grouprl.policy import LoraOptions, apply_lora
from grouprl.validation import check_int

__all__ = ["PHGPO_LORA", "ToolHeadPolicy", "last_token_index"]

#: The released code's adapter: r = 64, α = 128, dropout 0.05, all seven projections.
PHGPO_LORA = LoraOptions(rank=64, alpha=128, dropout=0.05,
                         target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                         "up_proj", "down_proj"))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last 1 in ``attention_mask`` [B, L] (left or right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.long().flip(1).argmax(1)


class ToolHeadPolicy(nn.Module):
    """``lm`` (any Hugging Face causal LM, or a peft model) plus a linear tool head.

    Args:
        lm: the backbone; only its last hidden layer is used (``output_hidden_states``).
        num_tools: |original tools|, the head's output size.
        lora: LoRA options to attach (e.g. :data:`PHGPO_LORA`), or None to train ``lm`` as is.
        seed: initialises the head under ``torch.random.fork_rng`` (global RNG untouched).
    """

    def __init__(self, lm: nn.Module, num_tools: int, *, lora: LoraOptions | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        check_int("num_tools", num_tools, 1)
        check_int("seed", seed, 0)
        hidden = getattr(getattr(lm, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"lm: expected a Hugging Face model with config.hidden_size, got "
                             f"{type(lm).__name__}")
        self.lm = apply_lora(lm, lora) if lora is not None else lm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(hidden, num_tools)
        self.head.to(next(lm.parameters()).dtype)
        self.num_tools = num_tools

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tool logits ℓ [B, num_tools] from the last real token's final hidden state."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=positions, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]                                  # h_L [B, L, d]
        last = last_token_index(attention_mask)
        return self.head(hidden[torch.arange(hidden.shape[0]), last])  # ℓ = W h_L[last] + b

    def tool_logits(self, tokenizer, texts: Sequence[str], max_length: int | None = None
                    ) -> torch.Tensor:
        """Tokenise ``texts`` (padded, truncated from the left to ``max_length``) and score."""
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"            # keep the "Next tool?" end of the state
        try:
            enc = tokenizer(list(texts), return_tensors="pt", padding=True,
                            truncation=max_length is not None, max_length=max_length)
        finally:
            tokenizer.truncation_side = side
        device = next(self.parameters()).device
        return self(enc["input_ids"].to(device), enc["attention_mask"].to(device))
