"""Resuming a run safely: the config may change only in keys that cannot change what is trained,
the newest *intact* checkpoint is used, and the metrics history is verified against it.

Config (:func:`config_changes`, :func:`check_resume_config`): a resumed run keeps the config it
was started with (``run_dir/config.json``). Only these keys may change, because none of them
changes the model, the data or the algorithm of the iterations still to run:

==========================  ======================================================================
``run_dir``                 where the run lives (a moved run resumes from its new place)
``iterations``              the run's length; finished iterations are unchanged (with a linear or
                            cosine ``optim.schedule`` the decay then spans the new length)
``save_every``,             when checkpoints are written and how many are kept
``keep_last``
``threads``                 torch intra-op threads: speed (float sums may round differently)
``eval.episodes``,          held-out evaluation only: it runs on its own seeds and RNG, never the
``eval.temperature``,       training ones. (``eval.seed_offset`` is *not* here: training draws its
``eval.every``,             task seeds below it.)
``eval.env_kwargs``,
``preference.eval_every``
``logging.*``               sinks and the progress bar
``env.backend``,            how env steps are executed (serial, threads, processes: the same seeds
``env.num_workers``,        give the same episodes) and how their faults are budgeted
``env.step_timeout``,
``env.max_failed_fraction``
==========================  ======================================================================

Anything else (the estimator, the model, the env, ``seed``, ``model.device`` — the sampling
RNG's state is device-specific) is refused with a ``ConfigError`` listing every differing key,
saved → new, unless ``force``: then the change is accepted, reported, and recorded in
``config.json`` (so is any allowed change, so a later plain ``--resume`` keeps it).

Checkpoints (:func:`resume_checkpoint`): the checkpoint ``checkpoints/latest`` names is loaded;
when it is damaged (:class:`~grouprl.train.safe_io.CheckpointError`: a file missing, truncated,
modified or unsafe, or the manifest gone) a warning names the bad file and the previous one is
tried, and so on; None when none is intact. A checkpoint left by an older grouprl (format 1,
without ``manifest.json``) is refused with a ``ConfigError`` instead of being skipped, so a run
never silently starts again from zero.

Metrics (:func:`resume_metrics`): each checkpoint holds the ``metrics.jsonl`` lines up to its
iteration; on resume the file must hold exactly those records up to that iteration, and is
rewritten from the checkpoint's copy when it is missing, truncated or altered (with a warning);
records after the checkpoint are dropped, so no iteration is ever logged twice. Resuming before
the first checkpoint keeps the iteration-0 records (behaviour cloning, the evaluation before
training) and returns them, so the recipe does not log them again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grouprl.train.checkpoint import CheckpointError, load_checkpoint
from grouprl.train.checkpoint_dirs import (
    CHECKPOINTS_DIR,
    COMPLETE_FILE,
    LATEST_FILE,
    NAME_RE,
    latest_checkpoint,
)
from grouprl.train.config import ConfigError, TrainConfig, build_config, config_to_dict
from grouprl.train.config_diff import as_json, differences, flatten, format_change, matches
from grouprl.train.metrics import MetricsLogger
from grouprl.train.rng_state import Generatorish
from grouprl.train.safe_io import MANIFEST_FILE
from grouprl.train.saved_model import ENV_RUNTIME_KEYS

__all__ = ["RESUMABLE_KEYS", "CONFIG_FILE", "read_saved_config", "config_changes",
           "check_resume_config", "refuse_legacy_checkpoints", "resume_checkpoint",
           "resume_metrics", "iteration0_record"]

CONFIG_FILE = "config.json"
RESUMABLE_KEYS = ("run_dir", "iterations", "save_every", "keep_last", "threads",
                  "eval.episodes", "eval.temperature", "eval.every", "eval.env_kwargs",
                  "preference.eval_every", "logging", *ENV_RUNTIME_KEYS)
"""Keys a resumed run may change (module docstring: why each one is safe)."""

Change = tuple[str, Any, Any]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _echo(echo: Callable[[str], None] | None) -> Callable[[str], None]:
    return echo if echo is not None else _stderr


# --------------------------------------------------------------------------- config


def read_saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The config a run saved in ``run_dir/config.json`` (plain data); ``ConfigError`` naming
    the file when it is missing, unreadable or not a valid config."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"run_dir: {str(run_dir)!r} holds no {CONFIG_FILE} (not a grouprl "
                          "run)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({type(err).__name__}: {err}); each checkpoint "
                          f"keeps a copy (checkpoints/iter_*/{CONFIG_FILE}): copy the latest "
                          "one here to resume") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys")
    return data


def _flat(config: Mapping[str, Any] | TrainConfig) -> dict[str, Any]:
    data = config if isinstance(config, Mapping) else config_to_dict(config)
    return flatten(as_json(data))


def config_changes(saved: Mapping[str, Any], cfg: TrainConfig
                   ) -> tuple[list[Change], list[Change]]:
    """``(allowed, refused)``: the keys where ``cfg`` differs from the ``saved`` config (a run's
    ``config.json``, completed with the current defaults), as ``(key, saved, new)``, split by
    :data:`RESUMABLE_KEYS`."""
    try:
        normalised = build_config(saved)
    except ConfigError as err:
        raise ConfigError(f"the run's saved {CONFIG_FILE}: {err}") from None
    changed = differences(_flat(normalised), _flat(cfg))
    allowed = [c for c in changed if matches(c[0], RESUMABLE_KEYS)]
    return allowed, [c for c in changed if not matches(c[0], RESUMABLE_KEYS)]


def check_resume_config(saved: Mapping[str, Any], cfg: TrainConfig, run_dir: str | Path,
                        force: bool = False) -> list[tuple[str, Any, Any, bool]]:
    """Every change ``cfg`` makes to the run's ``saved`` config, as ``(key, saved, new,
    allowed)``; ``ConfigError`` listing the refused ones (saved → new) unless ``force``."""
    allowed, refused = config_changes(saved, cfg)
    if refused and not force:
        shown = "; ".join(format_change(*c) for c in refused)
        raise ConfigError(
            f"--resume {run_dir}: the config differs from the run's {CONFIG_FILE} in keys that "
            f"change training: {shown} (saved → new); resume without these overrides, start a "
            "new run (another run_dir), or pass --force to continue with the change (recorded "
            f"in {CONFIG_FILE}); keys a resume may change: {', '.join(RESUMABLE_KEYS)}")
    return [(*c, True) for c in allowed] + [(*c, False) for c in refused]


# --------------------------------------------------------------------------- checkpoints


def _complete_dirs(run_dir: Path) -> dict[int, Path]:
    """``{iteration: dir}`` of every ``iter_*`` directory with its ``COMPLETE`` marker."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return {}
    found = {}
    for child in root.iterdir():
        m = NAME_RE.match(child.name)
        if m and child.is_dir() and (child / COMPLETE_FILE).is_file():
            found[int(m.group(1))] = child
    return found


def _legacy(path: Path) -> bool:
    return not (path / MANIFEST_FILE).is_file() and (path / "state.json").is_file()


def refuse_legacy_checkpoints(run_dir: str | Path) -> None:
    """``ConfigError`` when the newest checkpoint of ``run_dir`` was written by an older grouprl
    (format 1: ``state.json``, no ``manifest.json``): skipping it would restart the run."""
    dirs = _complete_dirs(Path(run_dir))
    legacy = [it for it, p in dirs.items() if _legacy(p)]
    current = [it for it, p in dirs.items() if (p / MANIFEST_FILE).is_file()]
    if legacy and max(legacy) >= max(current, default=-1):
        path = dirs[max(legacy)]
        raise ConfigError(f"run_dir: checkpoint {path} was written by an older grouprl "
                          f"(checkpoint format 1, without {MANIFEST_FILE}) and this version "
                          "cannot resume it; finish the run with the grouprl version that wrote "
                          "it, or start a new run (another run_dir)")


def _candidates(run_dir: Path) -> list[Path]:
    """The checkpoint ``latest`` names (else the newest), then every older one, newest first.
    Checkpoints newer than ``latest`` belong to an abandoned branch and are never used."""
    dirs = _complete_dirs(run_dir)
    if not dirs:
        return []
    try:
        name = (run_dir / CHECKPOINTS_DIR / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    m = NAME_RE.match(name)
    if m and int(m.group(1)) in dirs:
        first = int(m.group(1))
    else:
        latest = latest_checkpoint(run_dir)
        first = int(NAME_RE.match(latest.name).group(1)) if latest is not None else max(dirs)
    return [dirs[it] for it in sorted(dirs, reverse=True) if it <= first]


def resume_checkpoint(run_dir: str | Path, *, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer | None = None,
                      scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                      generators: Mapping[str, Generatorish] | None = None,
                      echo: Callable[[str], None] | None = None,
                      load_state: Any = None) -> dict[str, Any] | None:
    """Load the newest intact checkpoint of ``run_dir`` into the objects passed in
    (:func:`~grouprl.train.checkpoint.load_checkpoint`) and return its info
    (``iteration``, ``state``, ``config``, ``path``, ``metrics``); None when there is none.

    A damaged checkpoint is reported through ``echo`` (naming the bad file) and the previous
    one is tried; nothing passed in is modified by a damaged one. ``ConfigError`` when the
    newest checkpoint is in the old format (:func:`refuse_legacy_checkpoints`).
    """
    say = _echo(echo)
    run_dir = Path(run_dir)
    refuse_legacy_checkpoints(run_dir)
    candidates = _candidates(run_dir)
    for i, path in enumerate(candidates):
        following = (f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates)
                     else "no older checkpoint is left")
        if not (path / MANIFEST_FILE).is_file():
            say(f"warning: checkpoint {path} is damaged ({path / MANIFEST_FILE} is missing); "
                f"{following}")
            continue
        try:
            return load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                                   generators=generators, load_state=load_state)
        except CheckpointError as err:
            say(f"warning: checkpoint {path.name} is damaged: {err}; {following}")
    if candidates:
        say(f"warning: no intact checkpoint in {run_dir / CHECKPOINTS_DIR}: the run restarts "
            "from iteration 0")
    return None


# --------------------------------------------------------------------------- metrics


def resume_metrics(logger: MetricsLogger, info: Mapping[str, Any] | None,
                   echo: Callable[[str], None] | None = None) -> list[dict]:
    """Make ``metrics.jsonl`` the history of the checkpoint ``info`` resumes from (None: of the
    records before the first iteration) and return its records.

    With a checkpoint that holds the history (``info["metrics"]``), the file is rewritten from
    it when it differs (missing, truncated, torn or edited), with a warning; with an older
    checkpoint without it, records after its iteration are dropped and a warning says when the
    file has no record of that iteration (the history before it is then incomplete).
    """
    say = _echo(echo)
    if info is None:
        return logger.truncate_after(0)
    iteration = int(info["iteration"])
    saved: Sequence[str] | None = info.get("metrics")
    name = Path(info.get("path") or "the checkpoint").name
    if saved is None:
        kept = logger.truncate_after(iteration)
        if not any(r.get("iteration") == iteration for r in kept):
            say(f"warning: {logger.path} has no record of iteration {iteration} and checkpoint "
                f"{name} holds no copy of the history (saved by an earlier grouprl): the "
                f"history before iteration {iteration} is incomplete")
        return kept
    problem = logger.restore(iteration, saved)
    if problem is not None:
        say(f"warning: {problem}; recreated it from checkpoint {name} ({len(saved)} records up "
            f"to iteration {iteration})")
    return [json.loads(line) for line in saved]


def iteration0_record(records: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    """The first iteration-0 record holding ``key`` (e.g. the evaluation before training), so a
    run resumed before its first checkpoint does not log it twice; None when there is none."""
    return next((r for r in records if r.get("iteration") == 0 and key in r), None)


@dataclass
class ResumePoint:
    """Where a resumed run continues: the checkpoint's ``iteration`` and saved ``state`` (0 and
    {} when none is intact), and ``before`` — the record of the evaluation before training when
    the run stopped before its first checkpoint (so it is not evaluated and logged twice)."""

    iteration: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    before: Mapping[str, Any] | None = None
    rank_rng: list[Any] | None = None
    """Data parallel: the RNG states of ranks 1 … W−1 saved with the checkpoint."""


def resume_run(run_dir: str | Path, logger: MetricsLogger, score_key: str, *,
               model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               generators: Mapping[str, Any], echo: Callable[[str], None] | None = None,
               load_state: Any = None) -> ResumePoint:
    """Restore the newest intact checkpoint (:func:`resume_checkpoint`) and make the metrics
    history match it (:func:`resume_metrics`); ``score_key`` names the pre-training evaluation's
    score (``eval/success_rate``, ``eval/reward_accuracy``)."""
    info = resume_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                             generators=generators, echo=echo, load_state=load_state)
    kept = resume_metrics(logger, info, echo)
    if info is None:
        return ResumePoint(before=iteration0_record(kept, score_key))
    _echo(echo)(f"resumed from {info['path']} at iteration {int(info['iteration'])}")
    return ResumePoint(int(info["iteration"]), dict(info["state"]),
                       rank_rng=info.get("rank_rng"))
