"""Integrity-checked files for checkpoint-like directories: fsync, sha256 manifests, and
``torch.save`` / ``torch.load(weights_only=True)`` with a numpy allow-list.

Safety: :func:`load_torch` reads with ``torch.load(..., weights_only=True, map_location="cpu")``.
Since torch 2.6 this unpickler never imports or calls arbitrary objects: it rebuilds tensors,
containers (dict, list, tuple, set, OrderedDict), Python scalars, strings, bytes and torch
dtypes/devices, plus the numpy pieces allow-listed here, scoped to the call, for numeric numpy
arrays (``ndarray``, ``dtype``, ``multiarray._reconstruct`` and the numeric dtype classes; numpy's
RNG states hold arrays). Any other global in a file (a pickled class or function) makes the load
fail with :class:`CheckpointError` naming the file and the refused globals. Loading refuses to run
on torch < 2.6, whose ``weights_only`` could be bypassed (CVE-2025-32434). :func:`save_torch`
checks what it wrote with ``torch.serialization.get_unsafe_globals_in_checkpoint``, so a file
that could not be loaded back safely is never kept.

Integrity: :func:`write_manifest` records the sha256 and size of every file of a directory (and
of its subdirectories, as ``sub/name``) in ``manifest.json``; :func:`verify_files` re-hashes files
against it and raises :class:`CheckpointError` naming the first missing, truncated or modified
one. :func:`write_text_atomically` replaces a small file (a run's ``config.json``) via
write-temp + fsync + ``os.replace``, so a crash leaves the old or the new text, never a mix.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouprl.fsync import fsync_path
from grouprl.validation import UserError

__all__ = ["CheckpointError", "MANIFEST_FILE", "fsync_dir", "sha256_file", "write_manifest",
           "load_manifest", "read_manifest", "verify_files", "save_torch", "load_torch",
           "require_safe_torch", "write_text_atomically", "plain_data", "json_default"]

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


class CheckpointError(UserError):
    """A checkpoint directory or one of its files is incomplete, corrupted or unsafe to load.

    ``path`` is the offending file (or directory) and the message names it. Callers resuming a
    run can catch this and fall back to an older checkpoint.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _bad_file(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {path}: {problem}", path)


# --------------------------------------------------------------------------- fsync and hashing


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (:func:`grouprl.fsync.fsync_path`)."""
    fsync_path(path)


def sha256_file(path: Path, fsync: bool = False) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file; ``fsync`` also flushes it to disk."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest(), size


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8): written to a temp file beside it, fsynced, then
    ``os.replace``-d and the directory fsynced; a crash leaves the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# --------------------------------------------------------------------------- manifest


def write_manifest(directory: Path, header: Mapping[str, Any]) -> None:
    """Hash (and fsync) every file of ``directory`` into ``directory/manifest.json``:
    ``{**header, "files": {name: {"sha256": hex, "size": bytes}}}``, itself fsynced. Files in
    subdirectories are listed as ``sub/name`` (each subdirectory fsynced too)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_dir():
            fsync_dir(path)
            continue
        name = path.relative_to(directory).as_posix()
        if name == MANIFEST_FILE:
            continue
        sha, size = sha256_file(path, fsync=True)
        files[name] = {"sha256": sha, "size": size}
    with open(directory / MANIFEST_FILE, "w", encoding="utf-8") as f:
        f.write(json.dumps({**header, "files": files}, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_manifest(directory: Path, format_version: int) -> dict[str, dict[str, Any]]:
    """The ``files`` table of ``directory/manifest.json``; ``CheckpointError`` if it is
    unreadable, malformed or of another ``format_version``."""
    return load_manifest(directory, format_version)["files"]


def load_manifest(directory: Path, format_version: int) -> dict[str, Any]:
    """The whole ``directory/manifest.json`` (header keys and the checked ``files`` table);
    ``CheckpointError`` naming it if it is unreadable, malformed or of another
    ``format_version``."""
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad_file(path, f"unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != format_version:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise _bad_file(path, f"expected format_version {format_version}, got {version!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str)
            and isinstance(e.get("size"), int) for e in files.values()):
        raise _bad_file(path, "malformed: expected {'files': {name: {'sha256': str, "
                        "'size': int}}}")
    return manifest
    return files


def verify_files(directory: Path, files: Mapping[str, Mapping[str, Any]],
                 names: list[str]) -> None:
    """Check ``names`` against the manifest table ``files``; ``CheckpointError`` naming the first
    file that is unlisted, missing, of another size (truncated) or another sha256."""
    for name in names:
        path = directory / name
        entry = files.get(name)
        if entry is None:
            raise _bad_file(path, f"not listed in {directory / MANIFEST_FILE}")
        if not path.is_file():
            raise _bad_file(path, "missing")
        sha, size = sha256_file(path)
        if size != entry["size"]:
            raise _bad_file(path, f"truncated or modified: {size} bytes, the manifest "
                            f"records {entry['size']}")
        if sha != entry["sha256"]:
            raise _bad_file(path, f"corrupted or modified: sha256 {sha} does not match the "
                            f"manifest's {entry['sha256']}")


# --------------------------------------------------------------------------- torch files


def _numpy_globals() -> list[Any]:
    """numpy objects needed to rebuild numeric numpy arrays (numpy RNG states hold them)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *sorted(dtypes, key=str)]


def _allow_numpy() -> AbstractContextManager:
    """Scoped allow-list (not global) for ``weights_only`` loads of numeric numpy arrays."""
    return torch.serialization.safe_globals(_numpy_globals())


def require_safe_torch() -> None:
    """``RuntimeError`` on torch < 2.6, whose ``weights_only`` unpickler is not safe."""
    if torch.torch_version.TorchVersion(torch.__version__) < (2, 6):
        raise RuntimeError(f"torch: loading checkpoints needs torch >= 2.6 (weights_only "
                           f"loading is not safe before 2.6, CVE-2025-32434); installed "
                           f"{torch.__version__}")


def save_torch(path: Path, obj: Any, what: str) -> None:
    """``torch.save`` ``obj``; refuse (``TypeError`` naming ``what``) anything that a
    ``weights_only`` load would reject, so every written file can be read back safely."""
    torch.save(obj, path)
    with _allow_numpy():
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    if unsafe:
        raise TypeError(f"{what}: holds objects that cannot be loaded safely (weights_only): "
                        f"{sorted(unsafe)}; only tensors, numeric numpy arrays and plain Python "
                        "data are allowed")


def load_torch(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: no arbitrary object is ever
    unpickled; a refused or unreadable file raises ``CheckpointError`` naming it."""
    try:
        with _allow_numpy():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (refused global), RuntimeError (bad zip), ...
        try:
            with _allow_numpy():
                unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # not even a readable torch.save archive
            unsafe = []
        reason = (f"it holds objects outside the allow-list: {unsafe}" if unsafe else
                  f"{type(err).__name__}: {str(err).strip().splitlines()[0]}")
        raise _bad_file(path, f"cannot be loaded with torch.load(weights_only=True); "
                        f"{reason}") from err


# --------------------------------------------------------------------------- plain data


def plain_data(obj: Any, path: str, what: str) -> Any:
    """A copy of ``obj`` as plain Python data (numpy scalars become Python scalars), which a
    ``weights_only`` load reads back exactly; ``TypeError`` naming ``what`` and the field.

    Allowed: None, bool, int, float, str, bytes, list, tuple, dict (keys: None/bool/int/float/
    str), numeric numpy arrays. Tensors are refused: a checkpoint's ``state`` is the loop's
    bookkeeping, the model and optimizer carry the tensors.
    """
    where = f"field {path!r}" if path else "value"
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"{what}: {where} is a numpy array of dtype {obj.dtype}; only "
                            "numeric arrays are allowed (convert with .tolist())")
        return obj.copy()
    if isinstance(obj, torch.Tensor):
        raise TypeError(f"{what}: {where} is a tensor; tensors are not allowed here (convert "
                        "with .tolist() or .item())")
    if isinstance(obj, list | tuple):
        items = [plain_data(v, f"{path}.{i}" if path else str(i), what)
                 for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not (k is None or isinstance(k, bool | int | float | str)):
                raise TypeError(f"{what}: {where} has a key of unsupported type "
                                f"{type(k).__name__} ({k!r})")
            out[k] = plain_data(v, f"{path}.{k}" if path else str(k), what)
        return out
    raise TypeError(f"{what}: {where} has unsupported type {type(obj).__name__}; allowed: None, "
                    "bool, int, float, str, bytes, list, tuple, dict, numpy arrays/scalars")


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for configs: readable, lossy (tuples become lists)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"config: value of unsupported type {type(obj).__name__} ({obj!r})")
