"""Checkpoint directories of a run: names, discovery (``latest`` pointer, completeness) and the
atomic moves and pruning of :func:`grouprl.train.checkpoint.save_checkpoint`."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from grouprl.train.safe_io import MANIFEST_FILE
from grouprl.train.safe_io import fsync_dir as _fsync_dir

__all__ = ["CHECKPOINTS_DIR", "LATEST_FILE", "COMPLETE_FILE", "checkpoint_dir_name",
           "list_checkpoints", "latest_checkpoint", "is_complete", "move_into_place",
           "write_pointer", "prune"]

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
COMPLETE_FILE = "COMPLETE"
NAME_RE = re.compile(r"^iter_(\d{6,})$")
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def checkpoint_dir_name(iteration: int) -> str:
    """``iter_000042`` for iteration 42."""
    return f"iter_{iteration:06d}"


def is_complete(path: Path) -> bool:
    return (path.is_dir() and (path / COMPLETE_FILE).is_file()
            and (path / MANIFEST_FILE).is_file())


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of ``run_dir``, oldest iteration first.

    Completeness is the ``COMPLETE`` marker plus ``manifest.json``; file checksums are verified
    when a checkpoint is loaded (or by :func:`verify_checkpoint`).
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = NAME_RE.match(child.name)
        if m and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` points to, else the newest complete one, else None.

    ``.tmp-*`` leftovers of an interrupted save and directories without the ``COMPLETE`` marker
    (or ``manifest.json``) are never returned.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    try:
        name = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        name = ""
    if NAME_RE.match(name) and is_complete(root / name):
        return root / name
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def move_into_place(tmp: Path, final: Path) -> None:
    root = final.parent
    if final.exists():
        old = root / f"{OLD_PREFIX}{final.name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        _fsync_dir(root)


def write_pointer(root: Path, name: str) -> None:
    tmp = root / f".{LATEST_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST_FILE)
    _fsync_dir(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune(root: Path, keep_last: int | None, iteration: int) -> None:
    """Delete leftovers, and complete checkpoints older than the ``keep_last - 1`` newest ones
    before ``iteration``. Newer checkpoints (from an abandoned run) are left alone."""
    for child in root.iterdir():
        if child.name.startswith((TMP_PREFIX, OLD_PREFIX, f".{LATEST_FILE}.tmp-")):
            _remove(child)
    if keep_last is None:
        return
    older = [p for p in list_checkpoints(root.parent)
             if int(NAME_RE.match(p.name).group(1)) < iteration]
    for path in older[: max(0, len(older) - (keep_last - 1))]:
        aside = root / f"{OLD_PREFIX}{path.name}-{os.getpid()}"
        os.replace(path, aside)  # atomic: readers never see a half-deleted checkpoint
        shutil.rmtree(aside, ignore_errors=True)
