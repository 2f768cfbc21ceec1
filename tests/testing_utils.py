"""Helpers shared by tests in several folders."""

from __future__ import annotations

import os
import random


def alive(pid: int) -> bool:
    """The process exists (a zombie, i.e. an unreaped child, counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sokoban_corpus(n: int = 120, *, seed: int = 0, rows: int = 5, cols: int = 6) -> list[str]:
    """``n`` Sokoban-like texts (random grids of the env's symbols and a tagged move): a corpus
    for tiny tokenizers and models."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        grid = "\n".join("".join(rng.choice("#_OX√PS") for _ in range(cols)) for _ in range(rows))
        move = rng.choice(["up", "down", "left", "right"])
        out.append(f"You are playing Sokoban.\n{grid}\nMove: <action>{move}</action>")
    return out
