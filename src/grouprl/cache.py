"""grouprl's per-user cache directory (parsed datasets, converted models).

The root is ``$GROUPRL_CACHE_DIR`` if set, else ``<tempdir>/grouprl-<uid>``; each kind of cached
thing has its own subdirectory (``datasets``, ``models``).  Directories are created with mode
0700, and a root or subdirectory owned by another user is never used (:func:`cache_dir` returns
``None``; the caller then works without a cache or says how to set one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(kind: str) -> Path | None:
    """``<root>/<kind>`` (module docstring), created if needed; ``None`` when it cannot be
    created or it (or the root) is not owned by this user."""
    root = os.environ.get("GROUPRL_CACHE_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else None
    base = Path(root).expanduser() if root else Path(tempfile.gettempdir()) / f"grouprl-{uid}"
    directory = base / kind
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (base, directory):
            if uid is not None and d.stat().st_uid != uid:
                return None
    except OSError:
        return None
    return directory
