"""Policies: tiny from-scratch models, local HF loading with LoRA, batched generation.

* ``tiny``: :func:`train_tokenizer` (byte-level BPE on the environment's text),
  :func:`tiny_config`, :func:`build_tiny_model`, :func:`build_tiny_policy`.
* ``builtin``: :func:`resolve_model_path` (``builtin:NAME`` and ``.gguf`` model paths, converted
  once to a cached Hugging Face directory; directories passed through).
* ``load``: :func:`load_policy` (local directories only, never downloads), :class:`LoraOptions`,
  :func:`apply_lora`, :func:`disable_adapter` (LoRA reference model), :func:`frozen_copy`.
* ``generate``: :func:`generate` (own KV-cached sampling loop → :class:`Generation`) and
  :func:`response_logprobs` (teacher-forced, differentiable log-probs for the learner).
* ``save``: :func:`save_policy` (model + tokenizer ``save_pretrained`` without progress bars)
  and the :func:`no_progress_bars` context manager.
"""

from .builtin import resolve_model_path
from .generate import Generation, generate, left_pad, response_logprobs
from .load import (
    DTYPES,
    LoraOptions,
    apply_lora,
    disable_adapter,
    frozen_copy,
    is_lora_model,
    load_policy,
    prepare_tokenizer,
    resolve_dtype,
)
from .save import no_progress_bars, save_policy
from .tiny import (
    EOS_TOKEN,
    PAD_TOKEN,
    build_tiny_model,
    build_tiny_policy,
    tiny_config,
    train_tokenizer,
)

__all__ = ["DTYPES", "EOS_TOKEN", "Generation", "LoraOptions", "PAD_TOKEN", "apply_lora",
           "build_tiny_model", "build_tiny_policy", "disable_adapter", "frozen_copy", "generate",
           "is_lora_model", "left_pad", "load_policy", "no_progress_bars", "prepare_tokenizer",
           "resolve_dtype", "resolve_model_path", "response_logprobs", "save_policy",
           "tiny_config", "train_tokenizer"]
