"""``grouprl train --nproc N``: relaunch the same command under ``torchrun`` on this machine
(``--standalone``: a free rendezvous port on localhost, N processes). Several machines use
``torchrun`` itself (docs/distributed.md: ``--nnodes``, ``--rdzv-endpoint``, a SLURM example)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["torchrun_command", "relaunch_under_torchrun", "strip_nproc"]


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


def relaunch_under_torchrun(nproc: int, grouprl_argv: Sequence[str]) -> None:
    """Replace this process by torchrun running ``grouprl ARGV`` on ``nproc`` processes (one
    intra-op thread each unless ``OMP_NUM_THREADS`` is set)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cmd = torchrun_command(nproc, strip_nproc(grouprl_argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
