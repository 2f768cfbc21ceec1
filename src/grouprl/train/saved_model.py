"""Model directories a run saves once and then reuses: ``warm_start/`` (behaviour cloning or SFT
on the chosen responses) and ``base_model/`` (the tiny model built on the run's own text).

Writing (:func:`save_model_dir_atomically`): the model and tokenizer go into
``.tmp-<name>-<pid>/`` beside the target (``save_pretrained``), then ``manifest.json`` records
the sha256 and size of every file (:mod:`grouprl.train.safe_io`, each file fsynced) and the
config keys that determine the model (its *record*), the directory is fsynced and renamed into
place. A crash at any point leaves no directory at the target, only a ``.tmp-*`` leftover that
the next save or load removes (:func:`remove_leftovers`), so resuming simply builds it again.

Loading (:func:`load_verified_model_dir`): the manifest must be present and every file must
match it, and the record must equal the current config's: otherwise a ``ConfigError`` names the
folder, the bad file or every differing key (old → new), and the fix (delete the folder to
rebuild it, or use the config it was built with). A directory without a manifest (written by an
older grouprl, or half-written by one) is refused the same way: it cannot be verified.

The record (:func:`model_dir_record`): for RL, ``model.*``, ``env.*`` and ``agent.*`` (they make
the tiny model's tokenizer corpus and the expert episodes), plus ``bc.*`` for the warm start; for
preference, ``model.*`` and the pair-data keys (``preference.dataset``, ``eval_dataset``,
``eval_fraction``, ``split``, ``limit``, the three ``*_field`` keys), plus ``bc.*``,
``preference.sft_epochs`` and ``agent.use_chat_template`` for the SFT warm start. Not recorded,
because they do not determine the saved weights: ``model.device`` and
``model.trust_remote_code`` (where and how it is loaded), ``model.lora.*`` (adapters are added
after the warm start), and the env's execution keys (``env.backend``, ``env.num_workers``,
``env.step_timeout``, ``env.max_failed_fraction``). Seeds (``seed``, ``eval.seed_offset``) are not
recorded either: a warm start from another seed is still a warm start for the same model and
task (the fidelity study shares one across seeds); a resumed run cannot change them anyway
(:mod:`grouprl.train.resume`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from grouprl.policy import load_policy, save_policy
from grouprl.train.checkpoint_dirs import OLD_PREFIX, TMP_PREFIX, move_into_place
from grouprl.train.config import ConfigError, TrainConfig, config_to_dict
from grouprl.train.config_diff import as_json, differences, flatten, format_change, select
from grouprl.train.safe_io import (
    MANIFEST_FILE,
    CheckpointError,
    fsync_dir,
    load_manifest,
    verify_files,
    write_manifest,
)

__all__ = ["SAVED_MODEL_FORMAT", "ENV_RUNTIME_KEYS", "model_dir_record", "has_saved_model",
           "save_model_dir_atomically", "load_verified_model_dir", "remove_leftovers"]

SAVED_MODEL_FORMAT = 1
KIND = "grouprl_saved_model"
ENV_RUNTIME_KEYS = ("env.backend", "env.num_workers", "env.step_timeout",
                    "env.max_failed_fraction")
"""How env steps are executed and how their faults are budgeted, not what they return."""
NOT_RECORDED = ("model.device", "model.trust_remote_code", "model.lora", *ENV_RUNTIME_KEYS)
PAIR_DATA_KEYS = tuple(f"preference.{k}" for k in (
    "dataset", "eval_dataset", "eval_fraction", "split", "limit", "prompt_field", "chosen_field",
    "rejected_field"))
PRESAFE_DATA_KEYS = tuple(f"presafe.{k}" for k in (
    "harmful_sources", "toy_prompts", "test_fraction", "split_seed", "harmful_train",
    "benign_train", "benign_difficulty", "refusal_text"))
"""PreSafe: the keys that make the tiny model's tokenizer corpus (its training queries and
reference targets); the run saves no warm start, the record is the base model's."""
RECORD_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("rl", "base_model"): ("model", "env", "agent"),
    ("rl", "warm_start"): ("model", "env", "agent", "bc"),
    ("preference", "base_model"): ("model", *PAIR_DATA_KEYS),
    ("preference", "warm_start"): ("model", *PAIR_DATA_KEYS, "bc", "preference.sft_epochs",
                                   "agent.use_chat_template"),
    ("presafe", "base_model"): ("model", *PRESAFE_DATA_KEYS),
    ("presafe", "warm_start"): ("model", *PRESAFE_DATA_KEYS),
}


def model_dir_record(cfg: TrainConfig, name: str) -> dict[str, Any]:
    """The flat ``{key: value}`` of the config keys that determine the saved model ``name``
    (``"warm_start"`` or ``"base_model"``) of a run in ``cfg.mode`` (module docstring)."""
    keys = RECORD_KEYS.get((cfg.mode, name))
    if keys is None:
        raise ValueError(f"name: expected 'warm_start' or 'base_model', got {name!r}")
    return select(flatten(as_json(config_to_dict(cfg))), keys, NOT_RECORDED)


def has_saved_model(directory: str | Path) -> bool:
    """``directory`` holds a saved model with its manifest (verified when it is loaded)."""
    return (Path(directory) / MANIFEST_FILE).is_file()


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the ``.tmp-<name>-*`` / ``.old-<name>-*`` leftovers of interrupted saves of
    ``directory`` (``<name>`` its folder name); returns what was removed."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return []
    removed = []
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for path in directory.parent.glob(f"{prefix}{directory.name}-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def save_model_dir_atomically(model: torch.nn.Module, tokenizer: Any, directory: str | Path,
                              record: dict[str, Any]) -> Path:
    """Write ``model`` and ``tokenizer`` (``save_pretrained``) to ``directory`` atomically with a
    manifest of sha256 checksums and ``record`` (:func:`model_dir_record`); an existing
    directory is replaced. Returns ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    tmp = directory.parent / f"{TMP_PREFIX}{directory.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        save_policy(model, tokenizer, tmp)
        write_manifest(tmp, {"format_version": SAVED_MODEL_FORMAT, "kind": KIND,
                             "config": as_json(record)})
        fsync_dir(tmp)
        move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _refuse(directory: Path, problem: str) -> ConfigError:
    return ConfigError(f"{directory}: {problem}; delete the folder to rebuild it (it is rebuilt "
                       "from the config on the next run or resume)")


def load_verified_model_dir(directory: str | Path, expected: dict[str, Any], *,
                            dtype: str = "float32") -> tuple[torch.nn.Module, Any] | None:
    """``(model, tokenizer)`` of a saved model directory after checking it, or None when there
    is none (leftovers of interrupted saves are removed first).

    ``ConfigError`` (one line: the folder, what is wrong, the fix) when the manifest is missing
    or unreadable, a file is missing, truncated or modified, or the recorded config differs from
    ``expected`` (every differing key, saved → current).
    """
    directory = Path(directory)
    remove_leftovers(directory)
    if not directory.exists():
        return None
    if not has_saved_model(directory):
        if directory.is_dir() and not any(directory.iterdir()):
            return None  # an empty folder: nothing was saved there
        raise _refuse(directory, f"has no {MANIFEST_FILE}, so it cannot be verified (written "
                      "by an older grouprl, or left half-written by an interrupted save)")
    try:
        manifest = load_manifest(directory, SAVED_MODEL_FORMAT)
        if manifest.get("kind") != KIND or not isinstance(manifest.get("config"), dict):
            raise CheckpointError(f"{directory / MANIFEST_FILE}: not a grouprl saved-model "
                                  "manifest (no 'kind'/'config' record)", directory)
        verify_files(directory, manifest["files"], sorted(manifest["files"]))
    except CheckpointError as err:
        raise _refuse(directory, f"damaged ({err})") from None
    changed = differences(manifest["config"], as_json(expected))
    if changed:
        shown = "; ".join(format_change(*c) for c in changed)
        raise ConfigError(f"{directory}: was built with another config ({shown}; saved → "
                          "current); delete the folder to rebuild it with this config, or run "
                          "with the config it was built with")
    return load_policy(directory, dtype=dtype)
