"""Atomic, checksummed training checkpoints in the field's standard formats.

Layout of one checkpoint, ``run_dir/checkpoints/iter_{iteration:06d}/``:

=========================  ===========================================================
``model.safetensors``      full model state dict (tied weights stored once, restored
                           tied); for a peft ``PeftModel`` only the active adapter's
                           weights (``get_peft_model_state_dict``)
``adapter_config.json``    peft models only: the adapter's ``LoraConfig`` (``save_pretrained``)
``optimizer.pt``           ``optimizer.state_dict()`` (``torch.save``)
``scheduler.pt``           ``scheduler.state_dict()`` (``torch.save``; LambdaLR's ``lr_lambdas``
                           entries are ``None`` for plain functions)
``rng.pt``                 python ``random``, global numpy, torch CPU and (when CUDA is
                           initialised) CUDA RNG states, and each named generator's state
``state.pt``               ``{"iteration": ..., "state": <caller's plain-data state>}``
``config.json``            the resolved run configuration (plain JSON, for humans and tools)
``metrics.jsonl``          when given: the run's ``metrics.jsonl`` lines up to this iteration, so
                           a resume can verify the history and recreate it when lost
``manifest.json``          ``{"format_version": 2, "iteration": ..., "files": {name: {"sha256":
                           ..., "size": ...}}}`` for every file above
``COMPLETE``               written last; a directory without it is never used
=========================  ===========================================================

Safety and integrity (:mod:`grouprl.train.safe_io`): ``.pt`` files are read only with
``torch.load(..., weights_only=True, map_location="cpu")``, which since torch 2.6 never unpickles
arbitrary objects (tensors, plain containers and scalars, and numeric numpy arrays only; any other
object in a file is refused with :class:`CheckpointError`); saving refuses data that such a load
could not read back. Every file's sha256 and size go into ``manifest.json``; loading verifies each
file it reads before deserialising anything, and before any object passed in is modified, and
raises :class:`CheckpointError` naming the file when one is missing, truncated or modified, so a
caller can fall back to an older checkpoint (:func:`list_checkpoints`;
:func:`grouprl.train.resume.resume_checkpoint` does, with a warning naming the bad file).

Atomicity: everything is written into ``checkpoints/.tmp-iter_XXXXXX-<pid>/``, each file and the
directory are fsynced, the directory is renamed into place (an existing one is renamed aside
first, then deleted), and only then is ``checkpoints/latest`` (the directory name) replaced via
write-temp + fsync + ``os.replace``. A crash at any point leaves the previous checkpoint as the
latest one; ``.tmp-*`` / ``.old-*`` leftovers are ignored and cleaned up by the next save.
A crash after the rename but before the pointer moves leaves the new checkpoint complete but not
latest. Re-saving the iteration that ``latest`` points to has one small window (between the two
renames) in which a crash makes :func:`latest_checkpoint` fall back to the newest older one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from grouprl.train.checkpoint_dirs import (
    CHECKPOINTS_DIR,
    COMPLETE_FILE,
    TMP_PREFIX,
    checkpoint_dir_name,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    move_into_place,
    prune,
    write_pointer,
)
from grouprl.train.checkpoint_model import (
    ADAPTER_CONFIG_FILE,
    MODEL_FILE,
    load_model_file,
    save_full_state,
    save_model_file,
    with_tied,
)
from grouprl.train.rng_state import (
    Generatorish,
    capture_rng_state,
    check_generators,
    restore_rng_state,
)
from grouprl.train.safe_io import (
    MANIFEST_FILE,
    CheckpointError,
    json_default,
    load_torch,
    plain_data,
    read_manifest,
    require_safe_torch,
    save_torch,
    verify_files,
    write_manifest,
)
from grouprl.train.safe_io import fsync_dir as _fsync_dir
from grouprl.validation import check_range

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "read_checkpoint_state",
           "verify_checkpoint", "checkpoint_dir_name", "list_checkpoints", "CheckpointError"]

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
RANK_RNG_FILE = "rank_rng.pt"
"""Data-parallel runs: the RNG states of ranks 1 … W−1 (rank 0's are in ``rng.pt``)."""
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FORMAT_VERSION = 2  # 1: the earlier tagged-JSON + safetensors layout (no manifest)


def _metrics_lines(lines: Sequence[str]) -> list[str]:
    """``lines`` checked: strings, each one JSON object ending in a newline."""
    if isinstance(lines, str):
        raise TypeError("metrics: expected a sequence of metrics.jsonl lines, got one string")
    for i, line in enumerate(lines):
        if not isinstance(line, str) or not line.endswith("\n") or "\n" in line[:-1] \
                or not line.lstrip().startswith("{"):
            raise ValueError(f"metrics: line {i} is not one JSON object ending in a newline: "
                             f"{line!r:.80}")
    return list(lines)


# --------------------------------------------------------------------------- save


def save_checkpoint(run_dir: str | Path, *, iteration: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    config: Mapping | None = None, state: Mapping | None = None,
                    generators: Mapping[str, Generatorish] | None = None,
                    keep_last: int | None = 2, metrics: Sequence[str] | None = None,
                    model_state: Mapping[str, torch.Tensor] | None = None,
                    optimizer_state: Mapping[str, Any] | None = None,
                    rank_rng: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Atomically write ``run_dir/checkpoints/iter_{iteration:06d}/`` and point ``latest`` at it.

    Args:
        iteration: number of completed training iterations (>= 0).
        model: a ``torch.nn.Module``; for a peft ``PeftModel`` only the active adapter is saved.
        optimizer, scheduler: saved when given (``torch.save`` of their ``state_dict()``).
        config: resolved run configuration (JSON-able; dataclasses, Paths, numpy scalars and
            enums are converted), written to ``config.json``.
        state: the caller's plain-data state (counters, histories, data-loader position): None,
            bool, int, float, str, bytes, lists, tuples, dicts with scalar keys and numeric numpy
            arrays, returned exactly as saved by :func:`load_checkpoint` (numpy scalars come
            back as Python scalars); tensors are not allowed.
        generators: named RNGs to save besides the global ones (``torch.Generator``, numpy
            ``Generator``/``RandomState``, ``random.Random``).
        keep_last: keep this many newest checkpoints up to this one (>= 1); ``None`` keeps all.
        metrics: the run's metrics history, as ``metrics.jsonl`` lines (each one JSON object
            ending in a newline, e.g. :meth:`grouprl.train.metrics.MetricsLogger.lines`);
            returned as ``"metrics"`` by :func:`load_checkpoint`.
        model_state, optimizer_state: full state dicts to write instead of ``model``'s and
            ``optimizer``'s own (an FSDP2 model's, gathered on rank 0 by
            :func:`grouprl.distributed.fsdp.full_state`): the files are a one-process run's.
        rank_rng: data parallel: the RNG states (:func:`~grouprl.train.rng_state.
            capture_rng_state`) of ranks 1 … W−1, returned as ``"rank_rng"``.

    Returns the checkpoint directory. An existing checkpoint of the same iteration is replaced.
    """
    check_range("iteration", iteration, 0, integer=True)
    if keep_last is not None:
        check_range("keep_last", keep_last, 1, integer=True)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if state is not None and not isinstance(state, Mapping):
        raise TypeError(f"state: expected a mapping, got {type(state).__name__}")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config: expected a mapping or a dataclass, got {type(config).__name__}")
    # Check the caller's data first: a bad value fails before anything heavy is written.
    saved_state = {"iteration": iteration, "state": plain_data(dict(state or {}), "", "state")}
    config_text = None
    if config is not None:
        config_text = json.dumps(dict(config), indent=2, default=json_default)
    rng = capture_rng_state(generators)
    metrics_text = None if metrics is None else "".join(_metrics_lines(metrics))

    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_dir_name(iteration)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if model_state is not None:
            save_full_state(tmp / MODEL_FILE, model, model_state)
        else:
            save_model_file(tmp, model)
        if optimizer_state is not None:
            save_torch(tmp / OPTIMIZER_FILE, dict(optimizer_state), "optimizer")
        elif optimizer is not None:
            save_torch(tmp / OPTIMIZER_FILE, optimizer.state_dict(), "optimizer")
        if rank_rng:
            save_torch(tmp / RANK_RNG_FILE, list(rank_rng), "rank_rng")
        if scheduler is not None:
            save_torch(tmp / SCHEDULER_FILE, scheduler.state_dict(), "scheduler")
        save_torch(tmp / RNG_FILE, rng, "generators")
        save_torch(tmp / STATE_FILE, saved_state, "state")
        if config_text is not None:
            (tmp / CONFIG_FILE).write_text(config_text + "\n", encoding="utf-8")
        if metrics_text is not None:
            (tmp / METRICS_FILE).write_text(metrics_text, encoding="utf-8")
        write_manifest(tmp, {"format_version": FORMAT_VERSION, "iteration": iteration})
        with open(tmp / COMPLETE_FILE, "w", encoding="utf-8") as f:
            f.write(f"{iteration}\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        move_into_place(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_pointer(root, name)
    prune(root, keep_last, iteration)
    return root / name


# --------------------------------------------------------------------------- load


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if is_complete(path):
        return path
    if (path / CHECKPOINTS_DIR).is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"path: no complete checkpoint under {path / CHECKPOINTS_DIR}")
        return found
    if path.is_dir():
        if (path / COMPLETE_FILE).is_file() and (path / "state.json").is_file():
            raise CheckpointError(f"path: {path} was written by an older grouprl (format_version "
                                  f"1, without {MANIFEST_FILE}); this version cannot load it",
                                  path)
        raise CheckpointError(f"path: {path} is neither a complete checkpoint (missing "
                              f"{COMPLETE_FILE} or {MANIFEST_FILE}) nor a run directory", path)
    raise FileNotFoundError(f"path: {path} does not exist")


def _model_files(files: Mapping[str, Any]) -> list[str]:
    return [MODEL_FILE] + ([ADAPTER_CONFIG_FILE] if ADAPTER_CONFIG_FILE in files else [])


def verify_checkpoint(path: str | Path) -> Path:
    """Check every file of a checkpoint against its manifest (sha256 and size).

    ``path`` is a checkpoint directory, or a run directory (its latest checkpoint). Returns the
    checkpoint directory; raises :class:`CheckpointError` naming the first bad file.
    """
    directory = _resolve(path)
    files = read_manifest(directory, FORMAT_VERSION)
    verify_files(directory, files, sorted(files))
    return directory


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The ``state`` mapping saved with a checkpoint (checksum verified), without touching any
    model, optimizer or RNG. ``path`` is a checkpoint directory or a run directory."""
    require_safe_torch()
    directory = _resolve(path)
    verify_files(directory, read_manifest(directory, FORMAT_VERSION), [STATE_FILE])
    return load_torch(directory / STATE_FILE)["state"]


def load_checkpoint(path: str | Path, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    generators: Mapping[str, Generatorish] | None = None,
                    restore_rng: bool = True,
                    load_state: Any = None) -> dict[str, Any]:
    """Restore a checkpoint into existing objects.

    ``path`` is a checkpoint directory, or a run directory (its latest checkpoint is used).
    ``restore_rng`` restores the global RNGs (torch CPU/CUDA, ``random``, numpy); generators
    passed in ``generators`` are always restored and must exist in the checkpoint.
    An ``optimizer`` / ``scheduler`` passed in must have been saved.

    Every file read is first checked against ``manifest.json`` and ``.pt`` files are read with
    ``torch.load(weights_only=True)``, which never unpickles arbitrary objects (see the module
    docstring). A missing, truncated, modified or unsafe file raises :class:`CheckpointError`
    naming it, before ``model``, ``optimizer``, ``scheduler`` or any RNG is modified.

    ``load_state(model_state, optimizer_state)``, when given, receives the verified full state
    dicts instead of their being loaded into ``model`` / ``optimizer`` (an FSDP2 model:
    :func:`grouprl.distributed.fsdp.load_full_state`).

    Returns ``{"iteration": int, "state": dict, "config": dict | None, "path": Path,
    "metrics": list of metrics.jsonl lines | None, "rank_rng": list | None}`` (None: saved
    without ``metrics`` / by one process).
    """
    require_safe_torch()
    directory = _resolve(path)
    files = read_manifest(directory, FORMAT_VERSION)
    generators = dict(generators or {})
    for what, obj, name in (("optimizer", optimizer, OPTIMIZER_FILE),
                            ("scheduler", scheduler, SCHEDULER_FILE)):
        if obj is not None and name not in files:
            raise FileNotFoundError(f"{what}: checkpoint {directory} has no {name} "
                                    "(it was saved without one)")
    need_rng = restore_rng or bool(generators)
    names = [*_model_files(files), STATE_FILE]
    names += [OPTIMIZER_FILE] if optimizer is not None else []
    names += [SCHEDULER_FILE] if scheduler is not None else []
    names += [RNG_FILE] if need_rng else []
    names += [name for name in (CONFIG_FILE, METRICS_FILE, RANK_RNG_FILE) if name in files]
    verify_files(directory, files, names)

    # Deserialise everything before modifying anything the caller passed in.
    saved = load_torch(directory / STATE_FILE)
    optimizer_state = load_torch(directory / OPTIMIZER_FILE) if optimizer is not None else None
    scheduler_state = load_torch(directory / SCHEDULER_FILE) if scheduler is not None else None
    rng = load_torch(directory / RNG_FILE) if need_rng else None
    if rng is not None:
        check_generators(directory, rng, generators)
    config = None
    if CONFIG_FILE in files:
        try:
            config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint file {directory / CONFIG_FILE}: unreadable: {err}",
                                  directory / CONFIG_FILE) from err

    rank_rng = load_torch(directory / RANK_RNG_FILE) if RANK_RNG_FILE in files else None
    metrics = None
    if METRICS_FILE in files:
        text = (directory / METRICS_FILE).read_text(encoding="utf-8")
        metrics = text.splitlines(keepends=True)
    if load_state is not None:
        load_state(with_tied(load_file(str(directory / MODEL_FILE)), model), optimizer_state)
    else:
        load_model_file(directory, model)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    if rng is not None:
        restore_rng_state(rng, generators, restore_rng)
    return {"iteration": int(saved["iteration"]), "state": saved["state"], "config": config,
            "path": directory, "metrics": metrics, "rank_rng": rank_rng}
