"""Load a Hugging Face causal LM + tokenizer from a local directory; LoRA; reference models.

grouprl never downloads at run time: :func:`load_policy` passes ``local_files_only=True`` and
first checks the directory with :func:`check_model_dir` (a :class:`ModelPathError` for each of:
no such directory, a file, an empty directory, no ``config.json`` or an unreadable one, no
weights, shards missing from a sharded checkpoint, no tokenizer files: :mod:`.model_dir`).
``builtin:NAME`` and ``.gguf`` paths are converted once to a cached directory first
(:mod:`grouprl.policy.builtin`). The tokenizer is put
in generation form (``padding_side="left"``; when it has no pad token its EOS token is used as
pad: grouprl always carries explicit masks, so a pad id equal to EOS is never read as "padding"
by the library).

KL reference model:

* with LoRA, the reference is the base model: run it under ``with disable_adapter(model):``
  (one set of weights in memory);
* without LoRA, keep a separate frozen copy: ``ref = frozen_copy(model)``.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .builtin import resolve_model_path
from .model_dir import ModelPathError, check_model_dir

__all__ = ["DTYPES", "LoraOptions", "ModelPathError", "apply_lora", "check_model_dir",
           "disable_adapter", "frozen_copy", "is_lora_model", "load_policy", "load_tokenizer",
           "prepare_tokenizer",
           "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}
_BIAS = ("none", "all", "lora_only")
def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or the torch dtype itself) → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower() in DTYPES:
        return DTYPES[dtype.strip().lower()]
    raise ValueError(f"dtype: got {dtype!r}; accepted values are "
                     + ", ".join(repr(k) for k in DTYPES))


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapter settings (forwarded to ``peft.LoraConfig``, task type ``CAUSAL_LM``).

    Attributes:
        rank: adapter rank ``r``.
        alpha: ``lora_alpha`` (the update is scaled by ``alpha / rank``).
        dropout: ``lora_dropout``.
        target_modules: names of the linear layers that get adapters.
        bias: ``"none" | "all" | "lora_only"``.
        modules_to_save: extra modules trained in full (e.g. ``("lm_head",)``).
    """

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bias: str = "none"
    modules_to_save: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank: expected a positive int, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or \
                self.alpha <= 0:
            raise ValueError(f"alpha: expected a number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or \
                not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name}: expected a sequence of module names, got {value!r}")
        if not self.target_modules:
            raise ValueError("target_modules: expected at least one module name, got ()")
        if self.bias not in _BIAS:
            raise ValueError(f"bias: got {self.bias!r}; accepted values are "
                             + ", ".join(repr(b) for b in _BIAS))


def apply_lora(model: PreTrainedModel, options: LoraOptions | None = None):
    """Wrap ``model`` with LoRA adapters; only adapter (and ``modules_to_save``) params train.

    Returns a ``peft.PeftModel``.
    """
    if options is None:
        options = LoraOptions()
    if not isinstance(options, LoraOptions):
        raise ValueError(f"options: expected a LoraOptions, got {type(options).__name__}")
    config = LoraConfig(
        r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
        target_modules=list(options.target_modules), bias=options.bias,
        modules_to_save=list(options.modules_to_save) or None, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft probes a deprecated transformers attribute; the warning is not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        return get_peft_model(model, config)


def is_lora_model(model: torch.nn.Module) -> bool:
    """True for a peft model or a transformers model with a loaded peft adapter."""
    return isinstance(model, PeftModel) or bool(getattr(model, "_hf_peft_config_loaded", False))


@contextmanager
def disable_adapter(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Context manager: inside it ``model`` computes the *base* model (adapters off).

    This is the KL reference for LoRA training. Raises ``TypeError`` for a model without
    adapters (a silent no-op would make the KL term identically zero): use
    :func:`frozen_copy` for full fine-tuning instead.
    """
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
        return
    if getattr(model, "_hf_peft_config_loaded", False):
        model.disable_adapters()
        try:
            yield model
        finally:
            model.enable_adapters()
        return
    raise TypeError(f"model: disable_adapter needs a LoRA/peft model, got "
                    f"{type(model).__name__}; for full fine-tuning use frozen_copy(model) as "
                    f"the reference model")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter ``requires_grad=False``."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding; pad token = EOS token when the tokenizer has none (in place, returned)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer: has neither a pad token nor an eos token; set one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a local model directory (or ``builtin:`` / ``.gguf`` path) exactly as
    :func:`load_policy` loads and prepares it (pad token set), without loading the model."""
    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    return prepare_tokenizer(_load_tokenizer(resolve_model_path(path), AutoTokenizer, common))


def _load_tokenizer(directory: Path, auto: Any, common: dict) -> Any:
    """The directory's tokenizer exactly as saved.

    A tokenizer saved as a plain ``tokenizers`` backend (grouprl's tiny BPE) must be loaded as
    such: ``AutoTokenizer`` maps a ``qwen2`` model directory to ``Qwen2Tokenizer`` (transformers
    ≥ 5), which swaps in Qwen2's own pre-tokenizer and silently changes the token ids of a
    reloaded warm start or checkpoint.
    """
    config = directory / "tokenizer_config.json"
    if config.is_file() and (directory / "tokenizer.json").is_file():
        try:
            cls = json.loads(config.read_text()).get("tokenizer_class")
        except (OSError, ValueError):
            cls = None
        if cls in _GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(directory, **common)
    return auto.from_pretrained(directory, **common)


def load_policy(path: str | Path, *, dtype: str | torch.dtype = "float32",
                trust_remote_code: bool = False, lora: LoraOptions | None = None,
                device: str | torch.device = "cpu",
                echo: Callable[[str], None] | None = None
                ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a local Hugging Face directory (never downloads).

    Args:
        path: a directory holding ``config.json``, the weights and the tokenizer files; or
            ``builtin:NAME`` or a ``.gguf`` file, converted once to a cached directory
            (:func:`grouprl.policy.builtin.resolve_model_path`).
        dtype: ``"float32" | "bfloat16" | "float16"``.
        trust_remote_code: forwarded to ``from_pretrained`` (off by default).
        lora: wrap the model with LoRA adapters (:func:`apply_lora`).
        device: where the model is placed.
        echo: where the one-line conversion notice goes (default: stderr).

    The model uses ``attn_implementation="sdpa"`` when the architecture supports it and
    ``"eager"`` otherwise. The tokenizer is prepared with :func:`prepare_tokenizer`.
    """
    torch_dtype = resolve_dtype(dtype)
    if trust_remote_code not in (True, False):
        raise ValueError(f"trust_remote_code: expected True or False, got {trust_remote_code!r}")
    directory = resolve_model_path(path, echo=echo)
    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    tokenizer = prepare_tokenizer(_load_tokenizer(directory, AutoTokenizer, common))
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype,
                                                     attn_implementation="sdpa", **common)
    except (ValueError, ImportError, NotImplementedError):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype,
                                                     attn_implementation="eager", **common)
    if getattr(model, "generation_config", None) is not None and \
            model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    if lora is not None:
        model = apply_lora(model, lora)
    return model, tokenizer
