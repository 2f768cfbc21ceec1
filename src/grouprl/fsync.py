"""Durable writes: flush a file or a directory entry to disk (shared by every atomic writer:
checkpoints, saved models, metrics, the dataset store)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_path"]


def fsync_path(path: str | Path) -> None:
    """``fsync`` ``path`` (a file, or a directory so a rename in it is durable); a no-op where
    that is unsupported (e.g. directories cannot be opened on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
