"""The data-parallel learner path on ONE rank (benchmarks/gpu_check.sh, spec-scale-out §3 T1/T2
on a one-GPU machine): tests/distributed/worker_learner.py with a communicator over a real
1-rank process group that reports itself as distributed.

    python -m torch.distributed.run --standalone --nproc_per_node=1 \\
        benchmarks/gpu_learner.py --device cuda --mode replicated --loss ppo --out R.json

With one process :func:`grouprl.distributed.init_distributed` returns the one-process
communicator, and ``update_policy`` then skips every data-parallel branch. NCCL needs one GPU
per rank, so on a one-GPU machine the data-parallel code is reached this way instead:
:class:`OneRankDP` is a :class:`~grouprl.distributed.comm.ProcessGroupComm` over a 1-rank
process group (NCCL on ``cuda``, gloo on ``cpu``) whose ``distributed`` is True, so the learner
runs the global token/sequence-count all-reduce, the gathered row counts, the non-finite flag,
the summed losses, the flat gradient all-reduce (``replicated``) or FSDP2's sharded model and
lock-step micro-batches (``fsdp2``) — every collective through the real backend (NCCL moves the
CPU count tensors to the GPU and back, ``ProcessGroupComm._reduce``). Rank 0 (the only one)
then replays the update with the unchanged one-process ``update_policy`` on a copy of the initial
weights; ``max_param_diff`` in the output is the largest parameter difference (float64).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from grouprl.distributed.comm import ProcessGroupComm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
import worker_learner  # noqa: E402


class OneRankDP(ProcessGroupComm):
    """A 1-rank process group's communicator that takes every data-parallel branch; counts its
    collectives (``CALLS``: all_reduce, all_gather_object), so the output proves they ran."""

    @property
    def distributed(self) -> bool:
        return True

    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        CALLS["all_reduce"] += 1
        return super()._reduce(t, op)

    def gather(self, obj):
        CALLS["all_gather_object"] += 1
        return super().gather(obj)


CALLS = {"all_reduce": 0, "all_gather_object": 0}


def one_rank_comm(device: str = "cpu", *, lockstep: bool = False,
                  timeout_s: float = 600.0) -> OneRankDP:
    """Initialise the default process group over this process alone (``torchrun``'s
    environment: RANK, WORLD_SIZE = 1, MASTER_ADDR/PORT) and return :class:`OneRankDP`."""
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(0)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    if dist.get_world_size() != 1:
        raise SystemExit("gpu_learner.py runs on one rank: --nproc_per_node=1")
    return OneRankDP(torch.device("cuda", 0) if cuda else torch.device("cpu"),
                     lockstep=lockstep)


def main(argv: list[str] | None = None) -> int:
    """worker_learner.py's ``main`` with :func:`one_rank_comm`; adds ``collectives`` (the
    calls counted) and ``backend`` to its output file."""
    worker_learner.init_distributed = one_rank_comm
    try:
        code = worker_learner.main(argv)
        out = Path(argv[argv.index("--out") + 1])
        result = json.loads(out.read_text())
        result.update(collectives=CALLS, backend=dist.get_backend())
        out.write_text(json.dumps(result))
        return code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
