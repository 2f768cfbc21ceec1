"""Checking a local Hugging Face model directory before loading it (:func:`check_model_dir`).

grouprl never downloads at run time: a directory is checked for each way it can be unusable
(no such directory, a file, an empty directory, no ``config.json`` or an unreadable one, no
weights, shards missing from a sharded checkpoint, no tokenizer files), each with its own
:class:`ModelPathError` message naming the directory and the fix.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

from ..validation import UserError

__all__ = ["ModelPathError", "check_model_dir"]

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
                             "that holds config.json, the weights and the tokenizer files (or a "
                             ".gguf file, or builtin:NAME)")
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


