"""Run a script under ``torchrun --standalone --nproc_per_node=N`` in a subprocess with a hard
timeout (a mismatched collective hangs instead of failing), one thread per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def torchrun(args: list[str], *, nproc: int = 2, timeout: float = 240.0,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=nproc *args``; fails the
    test with both output streams when it exits non-zero or runs past ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
           "TORCHELASTIC_ERROR_FILE": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd or ROOT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun timed out after {timeout}s (a collective hangs?)\n"
                    f"{(err.stdout or '')[-3000:]}\n{(err.stderr or '')[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-5000:]}")
    return proc
