"""Import a script from ``benchmarks/`` for a test, restoring sys.path and torch's thread count."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@contextmanager
def benchmark_module(name: str) -> Iterator[ModuleType]:
    import torch

    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module(name)
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH))
