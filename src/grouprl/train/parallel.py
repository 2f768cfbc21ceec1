"""Data parallel in the recipes (docs/distributed.md; spec-scale-out §2): what a rank does
beyond what one process does, so a recipe stays one loop.

* :func:`setup_parallel`: the communicator (``torchrun``'s environment, else one process) and
  the checks a multi-rank run needs;
* :class:`ParallelModel`: replicated weights (rank 0's broadcast once) or FSDP2
  (``distributed.model_sharding``), generation through one unshard, full-state checkpoints;
* :func:`reduce_metrics`: one record from every rank's metrics (counts summed, times maxed,
  rates averaged);
* :func:`rank_seed`, :func:`rank_rng_states`, :func:`restore_rank_rng`: each rank samples with
  its own stream (rank 0's is the one-process stream), every rank's RNG is saved and resumed;
* :class:`NullLogger`: ranks other than 0 log nothing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from grouprl.distributed import Comm, init_distributed
from grouprl.distributed.fsdp import full_state, gathered, load_full_state, shard_model
from grouprl.train.config import ConfigError, TrainConfig
from grouprl.train.resume import ResumePoint, resume_run
from grouprl.train.rng_state import capture_rng_state, restore_rng_state

__all__ = ["setup_parallel", "ParallelModel", "reduce_metrics", "SUMMED_METRICS", "rank_seed",
           "rank_rng_states", "restore_rank_rng", "NullLogger", "any_rank", "together"]

SUMMED_METRICS = frozenset({
    "train/rows", "train/failed_trajectories", "train/nonfinite_reward_trajectories",
    "train/truncated_generations", "train/truncated_prompts", "train/response_tokens",
    "env/failures"})
"""Per-rank counts: the global value is their sum (the rest are means, times are maxima)."""


def setup_parallel(cfg: TrainConfig) -> Comm:
    """The run's communicator (one process unless started by ``torchrun`` with several), with
    the checks a data-parallel run needs (``ConfigError`` naming the key)."""
    d = cfg.distributed
    comm = init_distributed(cfg.model.device, lockstep=d.model_sharding == "fsdp2",
                            timeout_s=d.timeout_s)
    if not comm.distributed:
        return comm
    if cfg.rollout.groups_per_batch < comm.world_size:
        raise ConfigError(f"rollout.groups_per_batch: {cfg.rollout.groups_per_batch} tasks "
                          f"cannot be shared by {comm.world_size} ranks (whole groups per "
                          f"rank): set it to at least {comm.world_size} (a multiple of it "
                          "balances the ranks)")
    if d.model_sharding == "fsdp2" and cfg.model.lora.enabled:
        raise ConfigError("distributed.model_sharding: fsdp2 trains full parameters; with "
                          "model.lora.enabled use 'replicated' (LoRA gradients are small)")
    return comm


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sampling stream: rank 0 keeps ``seed`` (a one-process run's)."""
    return seed if rank == 0 else seed + 100_003 * rank


class ParallelModel:
    """How the policy (and a frozen reference) live on the ranks: replicated (rank 0's weights
    broadcast once; gradients all-reduced by the learner) or FSDP2 (sharded; full weights only
    inside :meth:`generation`)."""

    def __init__(self, comm: Comm, sharding: str) -> None:
        self.comm = comm
        self.fsdp = comm.distributed and sharding == "fsdp2"

    def prepare(self, *models: torch.nn.Module | None) -> None:
        """Make every rank's copies equal (replicated) or shard them (FSDP2), in place."""
        for model in dict.fromkeys(m for m in models if m is not None):
            if self.fsdp:
                shard_model(model, self.comm)
            else:
                self.comm.broadcast_module(model)

    @contextlib.contextmanager
    def generation(self, model: torch.nn.Module) -> Iterator[None]:
        """Full weights for a rollout: one all-gather, no collective per decoding step."""
        with gathered(model) if self.fsdp else contextlib.nullcontext():
            yield

    def checkpoint_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, Any]:
        """Extra ``save_checkpoint`` arguments: FSDP2's full state dicts (every rank calls)."""
        if not self.fsdp:
            return {}
        msd, osd = full_state(model, optimizer)
        return {"model_state": msd, "optimizer_state": osd}

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generators: Mapping[str, Any], write: Callable[..., Any]) -> None:
        """Checkpoint collectively: gather what rank 0 writes (FSDP2 full state, every rank's
        RNG), ``write(**extra)`` on rank 0 (``save_checkpoint`` with the run's arguments), then
        wait until it is on disk."""
        extra = self.checkpoint_state(model, optimizer)
        if self.comm.distributed:
            extra["rank_rng"] = rank_rng_states(self.comm, generators)
        if self.comm.is_main:
            write(**extra)
        self.comm.barrier()

    def resume(self, run_dir: Any, logger: Any, score_key: str, *, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Any, generators: Mapping[str, Any],
               seed: int, echo: Callable[[str], None]) -> ResumePoint:
        """:func:`~grouprl.train.resume.resume_run` on every rank (rank 0 also repairs the
        metrics history; FSDP2 loads the full state), then each rank's own sampling stream
        (:func:`restore_rank_rng`)."""
        point = resume_run(run_dir, logger, score_key, model=model, optimizer=optimizer,
                           scheduler=scheduler, generators=generators, echo=echo,
                           load_state=self.load_state(model, optimizer))
        if point.state:
            per_rank = {k: g for k, g in generators.items() if k == "sampling"}  # own streams
            restore_rank_rng(self.comm, point.rank_rng, per_rank,
                             seed=seed, iteration=point.iteration, echo=_stderr)
        return point

    def load_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                   ) -> Callable[[dict, dict | None], None] | None:
        """``load_checkpoint(load_state=...)`` for FSDP2 (None: load as one process)."""
        if not self.fsdp:
            return None
        return lambda msd, osd: load_full_state(model, optimizer, msd, osd)


def reduce_metrics(values: Mapping[str, float], comm: Comm) -> dict[str, float]:
    """One record from every rank's ``values``: :data:`SUMMED_METRICS` summed, ``timing/*``
    the slowest rank's, the rest the mean over the ranks reporting the key (ranks hold equal
    numbers of groups, so means of rates are the global rates up to dropped trajectories)."""
    if not comm.distributed:
        return dict(values)
    parts = comm.gather(dict(values))
    keys = dict.fromkeys(k for part in parts for k in part)
    out = {}
    for k in keys:
        vals = [float(part[k]) for part in parts if k in part]
        out[k] = sum(vals) if k in SUMMED_METRICS else max(vals) if k.startswith("timing/") \
            else sum(vals) / len(vals)
    return out


def any_rank(comm: Comm, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request, an env fault)."""
    if not comm.distributed:
        return flag
    return bool(comm.max(torch.tensor([int(flag)]))[0])


def together(comm: Comm, fn: Callable[[], Any], errors: tuple[type[BaseException], ...]
             ) -> Any:
    """``fn()`` on every rank; when it raises one of ``errors`` on any rank, every rank raises
    (its own error, or one naming the rank that failed) instead of waiting in the next
    collective for a rank that left."""
    try:
        result, error = fn(), None
    except errors as exc:
        result, error = None, exc
    if comm.distributed:
        failed = [r for r, bad in enumerate(comm.gather(error is not None)) if bad]
        if failed and error is None:
            raise errors[0](f"rank {failed[0]} failed (see its log); every rank stops")
    if error is not None:
        raise error
    return result


def rank_rng_states(comm: Comm, generators: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every rank's RNG states (global RNGs and ``generators``), gathered (every rank calls);
    the checkpoint keeps ranks 1 … W−1 (rank 0's are its own ``rng.pt``)."""
    states = comm.gather(capture_rng_state(generators))
    return states[1:]


def restore_rank_rng(comm: Comm, saved: Sequence[Mapping[str, Any]] | None,
                     generators: Mapping[str, Any], *, seed: int, iteration: int,
                     echo: Callable[[str], None]) -> None:
    """After ``load_checkpoint`` restored rank 0's states on every rank: rank r > 0 takes its
    own (``generators`` are the per-rank ones, e.g. ``sampling``). A checkpoint saved with
    fewer ranks has none for this rank: its streams restart from ``(seed, rank, iteration)``
    and the run continues, not bit-identical to an uninterrupted one (docs/distributed.md)."""
    if comm.rank == 0:
        return
    saved = list(saved or [])
    if comm.rank - 1 < len(saved):
        restore_rng_state(saved[comm.rank - 1], generators, restore_global=True)
        return
    if comm.rank == len(saved) + 1:
        echo(f"warning: the checkpoint was saved by {len(saved) + 1} ranks, this run has "
             f"{comm.world_size}: the new ranks' sampling streams restart (the run is not "
             "bit-identical to one that kept its world size)")
    torch.manual_seed(rank_seed(seed, comm.rank) + iteration)
    for gen in generators.values():
        if isinstance(gen, torch.Generator):
            gen.manual_seed(rank_seed(seed, comm.rank) + 7 * iteration + 1)


class NullLogger:
    """The metrics logger of ranks other than 0: records nothing."""

    def log(self, iteration: int, metrics: Mapping[str, float | int]) -> None:
        return None

    def lines(self) -> list[str]:
        return []

    def truncate_after(self, iteration: int) -> list[dict]:
        return []

    def restore(self, iteration: int, saved: Sequence[str]) -> str | None:
        return None

    def close(self) -> None:
        return None


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)
