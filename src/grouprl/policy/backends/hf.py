"""``HFBackend``: grouprl's own KV-cached sampling loop (:func:`grouprl.policy.generate.generate`)
behind the :class:`~grouprl.policy.backends.base.GenerationBackend` protocol.

It records the learner's log-prob convention (``logprob_kind = "pre_truncation"``) and, when it
serves the training module itself (the default), has no weights to update. ``unshard`` is a
context-manager factory entered once per ``generate`` call, so a sharded (FSDP2) policy gathers
its parameters once per rollout instead of once per decoding step; the default does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from ..generate import Generation, generate
from .base import LEARNER_LOGPROB_KIND, repeat_prompts

__all__ = ["HFBackend"]


class HFBackend:
    """The HF loop on ``model`` (module docstring).

    Args:
        model: the policy (a Hugging Face causal LM or a PEFT model wrapping one).
        tokenizer: its tokenizer (pad / EOS ids, stop-string decoding, response texts).
        generator: the sampling RNG used when ``generate`` gets no ``seed`` (the recipe passes
            its checkpointed sampling generator); None = the global torch RNG.
        batch_size: prompts per decoding chunk (``generate``'s ``batch_size``).
        max_prompt_tokens: longer prompts keep their last tokens (``generate``'s option).
        unshard: ``() -> context manager`` entered around each generate call (FSDP2 unshard).
        shares_weights: False when ``model`` is a separate generation copy: ``update_weights``
            then copies the named tensors into it.
    """

    logprob_kind = LEARNER_LOGPROB_KIND

    def __init__(self, model: torch.nn.Module, tokenizer, *,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 max_prompt_tokens: int | None = None,
                 unshard: Callable[[], AbstractContextManager] = nullcontext,
                 shares_weights: bool = True) -> None:
        self.model, self.tokenizer, self.generator = model, tokenizer, generator
        self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens
        self.unshard, self.shares_weights = unshard, shares_weights
        self.version = 0

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 stop_strings: Sequence[str] = (), seed: int | None = None) -> Generation:
        """``len(prompt_ids) * n`` samples, prompt-major; ``temperature == 0`` is greedy
        (log-probs at temperature 1). ``seed`` seeds a fresh generator for this call; None
        uses the backend's ``generator``."""
        greedy = temperature == 0
        gen = self.generator
        if seed is not None:
            device = next(self.model.parameters()).device
            gen = torch.Generator(device=device).manual_seed(seed)
        with self.unshard():
            return generate(self.model, self.tokenizer, repeat_prompts(prompt_ids, n),
                            max_new_tokens=max_new_tokens,
                            temperature=1.0 if greedy else temperature, top_p=top_p,
                            top_k=top_k, do_sample=not greedy, stop_strings=tuple(stop_strings),
                            generator=gen, batch_size=self.batch_size,
                            max_prompt_tokens=self.max_prompt_tokens)

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                       version: int) -> None:
        """No-op when the backend generates with the training module; otherwise copy each
        tensor into the parameter of that name (unknown names and shape mismatches raise)."""
        if self.shares_weights:
            self.version = version
            return
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            if name not in params:
                raise ValueError(f"update_weights: the generation model has no parameter "
                                 f"{name!r}")
            target = params[name]
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"update_weights: {name!r} has shape {tuple(target.shape)}, "
                                 f"got {tuple(tensor.shape)}")
            target.copy_(tensor)
        self.version = version
