"""Helpers the paper-study scripts share (``phgpo.py``, ``presafe.py``, ``pamoe.py``): table
cells and the hand-written section of a results page that survives a rewrite."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path

__all__ = ["KEPT", "cell", "kept_section"]

KEPT = "\n## What did and did not reproduce"
"""A results page's hand-written section starts at this heading; rewrites keep it."""


def cell(values: Iterable[float | None]) -> str:
    """``mean ± sd`` (sample sd; 0 for one value) of the values that are not None, or ``—``."""
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    sd = statistics.stdev(present) if len(present) > 1 else 0.0
    return f"{statistics.mean(present):.3f} ± {sd:.3f}"


def kept_section(path: Path) -> str:
    """The page's text from :data:`KEPT` on ('' when the page or the heading is missing)."""
    old = path.read_text() if path.is_file() else ""
    return old[old.index(KEPT):] if KEPT in old else ""
