"""Run under ``torchrun`` by benchmarks/scaling.py: ``grouprl train ARGV`` unchanged, with every
collective of :class:`grouprl.distributed.comm.ProcessGroupComm` counted (calls and bytes) and
attributed to the part of the recipe that issued it and to the RL iteration it belongs to.

    python -m torch.distributed.run --standalone --nproc_per_node=W \\
        benchmarks/scaling_worker.py --counts PATH train KEY=VALUE ...

Writes ``PATH.rank{r}.json``: ``{"params": P, "param_bytes": B, "counts": {iteration:
{category: {op: [calls, bytes]}}}}``; iteration 0 is everything before the first rollout.

Bytes are the **payload** each rank hands to a collective (what a ring algorithm moves per rank
at W = 2, where ``2·(W−1)/W = 1``):

* ``all_reduce`` (``sum`` / ``max`` / ``min``): the tensor's ``numel · element_size``;
* ``all_gather_object`` (``gather``): torch pickles every rank's object and pads them to the
  largest, so ``8 + max_r len(pickle(obj_r))`` (the 8 bytes: the size all-gather);
* ``broadcast_object`` (``broadcast``): ``8 + len(pickle(obj))``;
* ``broadcast`` (``broadcast_module``): the bytes of every parameter and buffer;
* ``barrier``: counted, 0 bytes.

Categories name the recipe step that issued the collective (the innermost one wins):
``grad_allreduce`` (:func:`grouprl.distributed.all_reduce_gradients` in the learner),
``learner`` (the rest of ``update_policy``: global token/sequence counts, non-finite flag,
summed losses, row counts, metric means), ``logprobs`` (old/reference log-prob passes),
``rollout`` (the rollout and its failure check), ``advantages``, ``metrics`` (the per-iteration
metric reduction and stop flag), ``eval``, ``checkpoint``, ``setup`` (weights broadcast, rank 0
first) and ``other``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

import grouprl.recipes.rl as rl
import grouprl.train.learner as learner
import grouprl.train.parallel as parallel
from grouprl.cli import main as grouprl_main
from grouprl.distributed.comm import ProcessGroupComm
from grouprl.train.estimate import AdvantageStage
from grouprl.train.sampling import Sampler

STATE: dict[str, Any] = {"iteration": 0, "stack": []}
COUNTS: dict[int, dict[str, dict[str, list[int]]]] = {}
MODEL: dict[str, int] = {"params": 0, "param_bytes": 0}


def record(op: str, nbytes: int) -> None:
    """Add one call of ``op`` moving ``nbytes`` to the current iteration and category."""
    it = STATE["iteration"]
    category = STATE["stack"][-1] if STATE["stack"] else ("setup" if it == 0 else "other")
    cell = COUNTS.setdefault(it, {}).setdefault(category, {}).setdefault(op, [0, 0])
    cell[0] += 1
    cell[1] += int(nbytes)


@contextlib.contextmanager
def category(name: str) -> Iterator[None]:
    STATE["stack"].append(name)
    try:
        yield
    finally:
        STATE["stack"].pop()


def in_category(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose collectives are counted under ``name``."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with category(name):
            return fn(*args, **kwargs)
    return wrapped


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def pickled(obj: Any) -> int:
    return len(pickle.dumps(obj))


def install_counters() -> None:
    """Wrap ``ProcessGroupComm``'s collectives and the recipe steps (module docstring)."""
    pg = ProcessGroupComm

    def reduce(name: str) -> None:
        orig = getattr(pg, name)

        def counted(self, t: torch.Tensor) -> torch.Tensor:
            record("all_reduce", tensor_bytes(t))
            return orig(self, t)
        setattr(pg, name, counted)

    for name in ("sum", "max", "min"):
        reduce(name)
    gather, broadcast = pg.gather, pg.broadcast
    broadcast_module, barrier = pg.broadcast_module, pg.barrier

    def counted_gather(self, obj):
        out = gather(self, obj)
        record("all_gather_object", 8 + max(pickled(o) for o in out))
        return out

    def counted_broadcast(self, obj):
        out = broadcast(self, obj)
        record("broadcast_object", 8 + pickled(out))
        return out

    def counted_broadcast_module(self, module):
        record("broadcast", sum(tensor_bytes(t) for t in [*module.parameters(),
                                                           *module.buffers()]))
        return broadcast_module(self, module)

    def counted_barrier(self):
        record("barrier", 0)
        return barrier(self)

    pg.gather, pg.broadcast = counted_gather, counted_broadcast
    pg.broadcast_module, pg.barrier = counted_broadcast_module, counted_barrier

    learner.all_reduce_gradients = in_category("grad_allreduce", learner.all_reduce_gradients)
    rl.update_policy = in_category("learner", rl.update_policy)
    rl.batched_logprobs = in_category("logprobs", rl.batched_logprobs)
    rl.together = in_category("rollout", rl.together)
    rl.reduce_metrics = in_category("metrics", rl.reduce_metrics)
    rl.any_rank = in_category("metrics", rl.any_rank)
    rl.evaluate_run = in_category("eval", rl.evaluate_run)
    parallel.ParallelModel.save = in_category("checkpoint", parallel.ParallelModel.save)
    AdvantageStage.__call__ = in_category("advantages", AdvantageStage.__call__)

    prepare = parallel.ParallelModel.prepare

    def counted_prepare(self, *models):
        policy = models[0]
        MODEL["params"] = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        MODEL["param_bytes"] = sum(tensor_bytes(p) for p in policy.parameters()
                                   if p.requires_grad)
        with category("setup"):
            return prepare(self, *models)
    parallel.ParallelModel.prepare = counted_prepare

    refresh, rollout = Sampler.refresh_reward_targets, Sampler.rollout

    def start_iteration(self, it):               # the first step of iteration it + 1
        STATE["iteration"] = it + 1
        with category("rollout"):
            return refresh(self, it)

    def counted_rollout(self, it):
        STATE["iteration"] = it + 1
        return rollout(self, it)

    Sampler.refresh_reward_targets, Sampler.rollout = start_iteration, counted_rollout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", required=True, help="write PATH.rank{r}.json")
    args, rest = p.parse_known_args(argv)
    install_counters()
    rank = int(os.environ.get("RANK", "0"))
    try:
        return grouprl_main(rest)
    finally:
        with open(f"{args.counts}.rank{rank}.json", "w") as f:
            json.dump({**MODEL, "counts": {str(k): v for k, v in sorted(COUNTS.items())}}, f)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
