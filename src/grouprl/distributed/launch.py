"""``grouprl train --nproc N``: relaunch the same command under ``torchrun`` on this machine
(``--standalone``: a free rendezvous port on localhost, N processes). Several machines use
``torchrun`` itself (docs/distributed.md: ``--nnodes``, ``--rdzv-endpoint``, a SLURM example)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["torchrun_command", "run_under_torchrun", "strip_nproc"]


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, grouprl_argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m grouprl ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "grouprl", *grouprl_argv]


def run_under_torchrun(nproc: int, grouprl_argv: Sequence[str]) -> int:
    """Run ``grouprl ARGV`` under torchrun on ``nproc`` processes and return its exit code (one
    intra-op thread per process unless ``OMP_NUM_THREADS`` is set). Ctrl-C reaches torchrun
    too (same process group); this process waits for it to stop its workers."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(torchrun_command(nproc, strip_nproc(grouprl_argv)), env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue
