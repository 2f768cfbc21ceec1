"""Live status inside an iteration: rollout responses and tokens/s, update micro-batches, ETA.

A real model's iteration takes minutes on a CPU; the per-iteration bar
(:class:`grouprl.train.metrics.ProgressBar`) would sit still meanwhile. :class:`IterationStatus`
writes a status into the bar's description while the iteration runs::

    RL it 3/30 · rollout 64 responses, 1,286 tok (183 tok/s)
    RL it 3/30 · update 2/4 micro-batches, eta 0:11

Only on a terminal (the tqdm bar): in CI and log files (no TTY) nothing is printed, the
per-iteration line stays the only output. The recipe wraps its generate function
(:meth:`IterationStatus.wrap_generate`) and passes :meth:`IterationStatus.micro_batch` to
``update_policy(on_micro_batch=...)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from grouprl.train.metrics import ProgressBar, format_seconds

__all__ = ["IterationStatus"]


class IterationStatus:
    """Counts of the running iteration, shown on ``bar`` (a no-op without a terminal bar)."""

    def __init__(self, bar: ProgressBar | None = None) -> None:
        self.bar = bar                  # set when the bar exists (after resume: its start)
        self.iteration = 0
        self.responses = self.tokens = 0
        self._t_rollout = self._t_update = time.monotonic()
        self._gen_s = 0.0

    def start(self, iteration: int) -> None:
        """A new iteration (0-based): reset the counts."""
        self.iteration, self.responses, self.tokens, self._gen_s = iteration, 0, 0, 0.0
        self._t_rollout = time.monotonic()

    def _show(self, text: str) -> None:
        if self.bar is not None:
                self.bar.status(f"it {self.iteration + 1}/{self.bar.total} · {text}")

    def wrap_generate(self, fn: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
        """``fn`` that also counts responses and generated tokens (``Generation`` results)."""

        def counted(prompts: list[str]) -> Any:
            t0 = time.monotonic()
            gen = fn(prompts)
            self._gen_s += time.monotonic() - t0
            self.responses += len(prompts)
            self.tokens += int(gen.response_mask.sum())
            rate = self.tokens / self._gen_s if self._gen_s > 0 else 0.0
            self._show(f"rollout {self.responses} responses, {self.tokens:,} tok "
                       f"({rate:,.0f} tok/s)")
            return gen

        return counted

    def micro_batch(self, done: int, total: int) -> None:
        """``done`` of ``total`` update micro-batches finished."""
        if done == 0:
            self._t_update = time.monotonic()
        elapsed = time.monotonic() - self._t_update
        eta = format_seconds(elapsed / done * (total - done)) if done else "?"
        self._show(f"update {done}/{total} micro-batches, eta {eta}")
