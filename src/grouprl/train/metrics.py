"""Run logging: ``metrics.jsonl`` (always), TensorBoard / Weights & Biases (optional), progress.

``run_dir/metrics.jsonl`` holds one JSON object per :meth:`MetricsLogger.log` call:
``{"iteration": 3, "train/success_rate": 0.25, ...}``. JSON has no NaN or infinity, so
non-finite floats are written as ``null`` (TensorBoard and wandb still receive the raw value).
Tensors with one element and numpy scalars are converted to Python numbers.

Each record is appended with one ``write`` of the whole line to a file opened in append mode, so
a crash leaves whole lines plus at most one torn last line; opening the file again drops that
torn line (with a warning) before anything is appended.

On resume, :meth:`MetricsLogger.truncate_after` drops the lines logged after the checkpoint's
iteration, so a resumed run's file equals an uninterrupted run's; :meth:`MetricsLogger.restore`
also checks the kept lines against the copy a checkpoint holds (:meth:`MetricsLogger.lines`) and
rewrites the file from that copy when it is missing, truncated or altered. TensorBoard events
after that iteration are purged too (``purge_step``); wandb history cannot be rewritten.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm import tqdm

from grouprl.train.safe_io import fsync_dir  # one fsync helper for every atomic writer

__all__ = ["MetricsLogger", "read_metrics", "ProgressBar", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"


def _require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise a one-line ``ImportError`` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install 'grouprl[{extra}]'") from None


def _check_iteration(iteration: object) -> int:
    if isinstance(iteration, bool) or not isinstance(iteration, int | np.integer) or iteration < 0:
        raise ValueError(f"iteration: expected an int >= 0, got {iteration!r}")
    return int(iteration)


def _scalar(key: str, value: object) -> bool | int | float | str | None:
    """A metric value as a Python scalar (non-finite floats kept); TypeError names the key."""
    if isinstance(value, torch.Tensor | np.ndarray):
        size = value.numel() if isinstance(value, torch.Tensor) else value.size
        if size != 1:
            raise TypeError(f"metrics[{key!r}]: expected a scalar, got an array of shape "
                            f"{tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"metrics[{key!r}]: expected a number, got {type(value).__name__}")


def _json_value(value: bool | int | float | str | None) -> bool | int | float | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metrics_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path if path.is_file() else path / METRICS_FILE


def _parse_lines(path: Path | str, lines: Sequence[str] | None = None
                 ) -> list[tuple[str, dict]]:
    """(line, record) pairs of the file ``path`` (or of ``lines``, named ``path``); malformed
    lines (e.g. a write cut short by a crash, a hand edit) are skipped with a warning."""
    out = []
    if lines is None:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines(keepends=True)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            warnings.warn(f"{path}:{lineno}: skipping malformed metrics line", stacklevel=3)
            continue
        out.append((line if line.endswith("\n") else line + "\n", record))
    return out


def _drop_torn_last_line(path: Path) -> None:
    """Cut a last line without its newline (a write cut short by a crash), with a warning."""
    if not path.is_file() or not path.stat().st_size:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: dropped a torn last line ({len(data) - keep} bytes without a "
                  "newline: a write cut short by a crash)", stacklevel=3)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (or of that file itself), in order.

    ``null`` values (non-finite floats) come back as ``None``; malformed lines are skipped with
    a warning.
    """
    path = _metrics_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: no {METRICS_FILE} at {path}")
    return [record for _, record in _parse_lines(path)]


class MetricsLogger:
    """Append metrics to ``run_dir/metrics.jsonl``; optionally mirror them to TensorBoard
    (``run_dir/tensorboard``) and Weights & Biases.

    Args:
        run_dir: run directory (created if missing).
        tensorboard: also write TensorBoard events (needs the ``tensorboard`` package).
        wandb: also log to wandb (needs the ``wandb`` package); ``wandb_project`` and
            ``run_name`` are passed to ``wandb.init``.
        config: the run configuration, recorded by TensorBoard (as text) and wandb.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str | None = None, run_name: str | None = None,
                 config: Mapping | None = None) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._tb_writer_cls = None
        self._tb = None
        self._wandb_run = None
        self._lines: list[str] = []
        self._found = self.path.is_file()  # the file existed before this logger opened it
        if tensorboard:  # check optional packages before creating anything
            _require("tensorboard", "logging")
            self._tb_writer_cls = _require("torch.utils.tensorboard", "logging").SummaryWriter
        if wandb:
            wandb_mod = _require("wandb", "logging")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = self._open_append()
        if self._tb_writer_cls is not None:
            self._tb = self._tb_writer_cls(log_dir=str(self.run_dir / "tensorboard"))
            if config is not None:
                self._tb.add_text("config", json.dumps(dict(config), indent=2, default=str))
        if wandb:
            self._wandb_run = wandb_mod.init(project=wandb_project, name=run_name,
                                             config=dict(config or {}), dir=str(self.run_dir))

    def _open_append(self) -> int:
        """Drop a torn last line, read the kept lines, open for appending (one fd)."""
        _drop_torn_last_line(self.path)
        self._lines = [line for line, _ in _parse_lines(self.path)] if self.path.is_file() \
            else []
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _handle(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"MetricsLogger for {self.run_dir} is closed")
        return self._fd

    def lines(self) -> list[str]:
        """The file's records as written (``metrics.jsonl`` lines, newline included), oldest
        first; what a checkpoint stores (``save_checkpoint(..., metrics=logger.lines())``)."""
        return list(self._lines)

    def log(self, iteration: int, metrics: Mapping[str, float | int]) -> None:
        """Append ``{"iteration": iteration, **metrics}`` as one JSON line (flushed)."""
        iteration = _check_iteration(iteration)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics: expected a mapping, got {type(metrics).__name__}")
        values: dict[str, Any] = {}
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metrics: keys must be strings, got {key!r}")
            if key == "iteration":
                raise ValueError("metrics: 'iteration' is reserved; pass it as the iteration "
                                 "argument")
            values[key] = _scalar(key, value)
        record = {"iteration": iteration, **{k: _json_value(v) for k, v in values.items()}}
        line = json.dumps(record, allow_nan=False) + "\n"
        data = line.encode("utf-8")
        fd = self._handle()
        while data:  # one write for a whole line (O_APPEND); loop only on a short write
            data = data[os.write(fd, data):]
        self._lines.append(line)
        numeric = {k: v for k, v in values.items() if isinstance(v, int | float)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, iteration)
        if self._wandb_run is not None:
            self._wandb_run.log(numeric, step=iteration)

    def truncate_after(self, iteration: int) -> list[dict]:
        """Keep only records with ``iteration <=`` the given one (atomic rewrite); for resuming.
        Returns the kept records."""
        iteration = _check_iteration(iteration)
        kept = [(line, rec) for line, rec in _parse_lines(self.path, self._lines)
                if not isinstance(rec.get("iteration"), int) or rec["iteration"] <= iteration]
        self._rewrite(iteration, [line for line, _ in kept], always=self.path.is_file())
        return [rec for _, rec in kept]

    def restore(self, iteration: int, saved: Sequence[str]) -> str | None:
        """Resume at ``iteration`` whose checkpoint recorded the lines ``saved``: the file becomes
        exactly ``saved`` (an atomic rewrite). Returns None when the file's records up to
        ``iteration`` were those lines, else what was wrong with it (the caller warns)."""
        iteration = _check_iteration(iteration)
        saved = list(saved)
        kept = [rec for _, rec in _parse_lines(self.path, self._lines)
                if not isinstance(rec.get("iteration"), int) or rec["iteration"] <= iteration]
        recorded = [json.loads(line) for line in saved]
        problem = None
        if kept != recorded:
            problem = (f"{self.path} was missing" if not (self._found or self._lines) else
                       f"{self.path} held {len(kept)} records up to iteration {iteration}, the "
                       f"checkpoint's copy {len(recorded)}"
                       + (" (contents differ)" if len(kept) == len(recorded) else ""))
        self._rewrite(iteration, saved, always=True)
        return problem

    def _rewrite(self, iteration: int, lines: list[str], always: bool) -> None:
        os.close(self._handle())
        self._fd = None
        if always:
            tmp = self.path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.run_dir)
        self._fd = self._open_append()
        if self._tb is not None:
            self._tb.close()
            self._tb = self._tb_writer_cls(log_dir=str(self.run_dir / "tensorboard"),
                                           purge_step=iteration + 1)

    def close(self) -> None:
        """Flush, fsync and close every sink (idempotent)."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_seconds(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressBar:
    """Live training progress with the latest metrics (e.g. the success rate) as a postfix.

    A tqdm bar when ``stream`` (default stderr) is a terminal; otherwise a plain line
    ``train 20/100 (20%) | 1.25 it/s, elapsed 0:00:16, eta 0:01:04 | success_rate=0.5`` every
    ``print_every`` iterations and at the last one. ``update`` takes the absolute number
    of completed iterations, so a resumed run starts at ``initial``.
    """

    def __init__(self, total: int, *, desc: str = "train", initial: int = 0,
                 enabled: bool = True, print_every: int = 10, stream: IO[str] | None = None
                 ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total: expected an int >= 0, got {total!r}")
        if isinstance(initial, bool) or not isinstance(initial, int) or initial < 0:
            raise ValueError(f"initial: expected an int >= 0, got {initial!r}")
        if isinstance(print_every, bool) or not isinstance(print_every, int) or print_every < 1:
            raise ValueError(f"print_every: expected an int >= 1, got {print_every!r}")
        self.total, self.desc, self.enabled, self.print_every = total, desc, enabled, print_every
        self.initial = self.n = initial
        self.postfix: dict[str, float] = {}
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._printed = True  # nothing new to print yet
        self._bar = None
        if enabled and _isatty(self._stream):
            self._bar = tqdm(total=total, initial=initial, desc=desc, file=self._stream,
                             dynamic_ncols=True)

    def update(self, iteration: int, **postfix: float) -> None:
        """Move to ``iteration`` completed iterations and show ``postfix`` (e.g. success_rate)."""
        if isinstance(iteration, bool) or not isinstance(iteration, int | np.integer):
            raise ValueError(f"iteration: expected an int, got {iteration!r}")
        self.n, self.postfix = int(iteration), dict(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(self.desc, refresh=False)   # the iteration's status
            self._bar.set_postfix({k: _format_value(v) for k, v in postfix.items()},
                                  refresh=False)
            delta = self.n - self._bar.n
            if delta > 0:
                self._bar.update(delta)
            else:
                self._bar.n = self.n
                self._bar.refresh()
            return
        self._printed = False
        if self.n % self.print_every == 0 or self.n >= self.total:
            self._print()

    def line(self) -> str:
        """The plain progress line for the current state."""
        elapsed = time.monotonic() - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = format_seconds((self.total - self.n) / rate) if rate > 0 else "?"
        text = (f"{self.desc} {self.n}/{self.total}{pct} | {rate:.3g} it/s, "
                f"elapsed {format_seconds(elapsed)}, eta {eta}")
        if self.postfix:
            text += " | " + " ".join(f"{k}={_format_value(v)}" for k, v in self.postfix.items())
        return text

    def _print(self) -> None:
        print(self.line(), file=self._stream, flush=True)
        self._printed = True

    def status(self, text: str) -> None:
        """Show ``text`` (what the running iteration is doing) in the terminal bar's
        description; nothing in plain mode (logs and CI stay one line per print)."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc} {text}", refresh=True)

    def close(self) -> None:
        """Finish the bar (plain mode: print the last state if it was not printed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and not self._printed:
            self._print()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
