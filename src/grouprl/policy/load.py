"""Load a Hugging Face causal LM + tokenizer from a local directory; LoRA; reference models.

grouprl never downloads at run time: :func:`load_policy` passes ``local_files_only=True`` and
first checks the directory with :func:`check_model_dir` (a :class:`ModelPathError` for each of:
no such directory, a file, an empty directory, no ``config.json`` or an unreadable one, no
weights, shards missing from a sharded checkpoint, no tokenizer files). The tokenizer is put
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
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

from ..validation import UserError

__all__ = ["DTYPES", "LoraOptions", "ModelPathError", "apply_lora", "check_model_dir",
           "disable_adapter", "frozen_copy", "is_lora_model", "load_policy", "prepare_tokenizer",
           "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}
_BIAS = ("none", "all", "lora_only")
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "*.model", "*.tiktoken", "vocab.json", "vocab.txt")
_DOWNLOAD_HINT = "download it beforehand (e.g. `hf download <repo> --local-dir DIR`) and pass DIR"


class ModelPathError(UserError, FileNotFoundError):
    """A model directory is missing or incomplete; the message names the directory, what is
    missing and the fix (a :class:`grouprl.validation.UserError` and a ``FileNotFoundError``)."""


def check_model_dir(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it looks like a loadable local Hugging Face model directory.

    Checked without loading anything: the directory exists and is not empty; ``config.json``
    is a JSON object; weights exist (``*.safetensors`` or ``pytorch_model*.bin``) and every
    shard a ``*.index.json`` names is present; a tokenizer file exists (``tokenizer.json``,
    a sentencepiece ``*.model``, ``*.tiktoken``, ``vocab.json`` or ``vocab.txt``).  Each failure
    raises :class:`ModelPathError` with its own message.
    """
    if not isinstance(path, (str, Path)):
        raise ModelPathError(f"path: expected a directory path, got {type(path).__name__}")
    directory = Path(path).expanduser()
    shown = repr(str(path))
    if not directory.exists():
        raise ModelPathError(f"{shown} is not an existing local directory; grouprl never "
                             f"downloads models at run time: {_DOWNLOAD_HINT}")
    if not directory.is_dir():
        raise ModelPathError(f"{shown} is a file, not a model directory; pass the directory "
                             "that holds config.json, the weights and the tokenizer files")
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    if not any(directory.iterdir()):
        raise ModelPathError(f"{shown} is an empty directory; {_DOWNLOAD_HINT}")
    config = directory / "config.json"
    if not config.is_file():
        hint = ("it looks like a Hugging Face cache folder: pass its snapshots/<revision> "
                "directory" if (directory / "snapshots").is_dir() else _DOWNLOAD_HINT)
        raise ModelPathError(f"{shown} has no config.json, so it is not a Hugging Face model "
                             f"directory (it holds: {_listing(names)}); {hint}")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelPathError(f"{shown}: config.json is not readable JSON ({err}); the download "
                             "may be incomplete: download it again") from None
    if not isinstance(parsed, dict):
        raise ModelPathError(f"{shown}: config.json must hold a JSON object, got "
                             f"{type(parsed).__name__}")
    weights = [n for n in names if any(fnmatch(n, g) for g in _WEIGHTS)]
    if not weights:
        raise ModelPathError(f"{shown} has no weights (model.safetensors, model-*.safetensors "
                             f"or pytorch_model*.bin; it holds: {_listing(names)}); the download "
                             "may be incomplete: download it again")
    for index in _SHARD_INDEXES:
        if index in names:
            missing = _missing_shards(directory / index)
            if missing:
                raise ModelPathError(f"{shown}: {index} names {len(missing)} shard(s) that are "
                                     f"missing ({_listing(missing)}); the download is "
                                     "incomplete: download it again")
    if not any(fnmatch(n, g) for n in names for g in _TOKENIZER_FILES):
        raise ModelPathError(f"{shown} has no tokenizer files (tokenizer.json, tokenizer.model, "
                             f"*.tiktoken or vocab.json + merges.txt; it holds: "
                             f"{_listing(names)}); download them too, or save the tokenizer "
                             "with tokenizer.save_pretrained(DIR)")
    return directory


def _listing(names: list[str], limit: int = 8) -> str:
    if not names:
        return "no files"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} files)" if len(names) > limit else "")


def _missing_shards(index: Path) -> list[str]:
    """Shard files named by a sharded checkpoint's index that are not next to it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, AttributeError) as err:
        raise ModelPathError(f"{str(index)!r} is not a readable shard index ({err}); download "
                             "the model again") from None
    return [s for s in shards if not (index.parent / s).is_file()]


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
                device: str | torch.device = "cpu"
                ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a local Hugging Face directory (never downloads).

    Args:
        path: a directory holding ``config.json``, the weights and the tokenizer files.
        dtype: ``"float32" | "bfloat16" | "float16"``.
        trust_remote_code: forwarded to ``from_pretrained`` (off by default).
        lora: wrap the model with LoRA adapters (:func:`apply_lora`).
        device: where the model is placed.

    The model uses ``attn_implementation="sdpa"`` when the architecture supports it and
    ``"eager"`` otherwise. The tokenizer is prepared with :func:`prepare_tokenizer`.
    """
    torch_dtype = resolve_dtype(dtype)
    directory = check_model_dir(path)
    if trust_remote_code not in (True, False):
        raise ValueError(f"trust_remote_code: expected True or False, got {trust_remote_code!r}")
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
