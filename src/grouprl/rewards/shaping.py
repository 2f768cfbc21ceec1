"""Config-facing reward shapers: ``make_shaper(name, **options)(ctx) -> rewards``.

The trainer builds one shaper from ``reward.shaping`` / ``reward.options`` and calls it once per
batch, after the verifier, on a :class:`ShapingContext` (flat per-response tensors). Each
shaper returns float64 rewards (N,); the formulas live in :mod:`grouprl.rewards.length`.

==============  ====================================================  =========================
name            reward                                                 state
==============  ====================================================  =========================
``none``        c ∈ {0, 1}                                             —
``kimi``        r_acc + w·len (§A0); plain r_acc before warm-up        —
``grpo_lambda`` top-⌈λB⌉ groups: 1 − α·σ(z) if correct (§A1)            —
``dler``        1[c ∧ ¬trunc]; DA-DLER tiers re-score long answers     —
``hapo``        c + w·f(L, h) (§A5)                                    per-prompt history h
``laser``       LASER base ± α around a fixed target (§A4)             —
``laser_d``     LASER with per-bucket targets from a monitor eval      3 targets
``laser_de``    LASER-D + α for long, non-repetitive wrong answers     3 targets
``overlong``    c + DAPO soft overlong penalty (§C5)                   —
==============  ====================================================  =========================

Every shaper's base reward is correctness (1/0) except LASER's (+1 / −0.5 / −1).
Options are validated on construction: an unknown option, a missing required option (a value
the papers do not give) or an out-of-range value raises ``ValueError`` naming the option.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from grouprl.validation import check_choice, check_int, check_number, check_options

from .length import (
    LASER_MODES,
    HapoHistory,
    _codes,
    _f64,
    _lengths,
    _tiers,
    _vec,
    da_dler_reward,
    dler_reward,
    grpo_lambda_reward,
    hapo_reward,
    kimi_length_reward,
    laser_candidates,
    laser_d_targets,
    laser_de_reward,
    laser_reward,
    laser_row_targets,
    ngram_repetition,
    overlong_penalty,
    top_lambda_groups,
)

__all__ = ["RewardShaper", "ShapingContext", "available_shapers", "make_shaper",
           "shaper_options", "shaper_class"]

Tensor = torch.Tensor


@dataclass
class ShapingContext:
    """One batch of verified responses (one row per response).

    Attributes:
        correct: bool (N,), the verifier's verdict.
        length: (N,) response tokens (thinking + answer, training tokenizer; spec §0.1).
        truncated: bool (N,), generation hit ``max_new_tokens`` without EOS.
        group: int64 (N,), group ids (the G rollouts of one prompt share one).
        keys: per row, the prompt key (HAPO's history is per prompt, across batches).
        well_formed: bool (N,), the format check passed (LASER); None = not truncated.
        response_ids: (N, T) response tokens (LASER-DE's repetition detector).
        response_mask: (N, T) valid-token mask of ``response_ids``.
        max_new_tokens: the rollout cap L_cap (``overlong`` and LASER-D default cap).
        iteration: the RL iteration (Kimi warm-up).
    """

    correct: Tensor
    length: Tensor
    truncated: Tensor
    group: Tensor
    keys: Sequence[Hashable]
    well_formed: Tensor | None = None
    response_ids: Tensor | None = None
    response_mask: Tensor | None = None
    max_new_tokens: int | None = None
    iteration: int = 0

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Validated (correct bool, length float64, truncated bool, group int64)."""
        c = _vec("correct", self.correct, torch.bool)
        n = c.numel()
        length = _lengths("length", self.length, n)
        truncated = _vec("truncated", self.truncated, torch.bool, n)
        group = _vec("group", self.group, torch.int64, n)
        if len(self.keys) != n:
            raise ValueError(f"keys: has {len(self.keys)} rows but correct has {n}; pass one "
                             "prompt key per response")
        return c, length, truncated, group

    def format_ok(self, n: int) -> Tensor:
        """``well_formed`` if given, else ``not truncated`` (a cut-off response has no answer)."""
        if self.well_formed is None:
            return ~_vec("truncated", self.truncated, torch.bool, n)
        return _vec("well_formed", self.well_formed, torch.bool, n)


# --------------------------------------------------------------------------- option checks
def _require(shaper: str, name: str, value: Any, why: str) -> None:
    if value is None:
        raise ValueError(f"{name}: required for reward shaping {shaper!r} ({why})")


@dataclass(frozen=True)
class NoneOptions:
    """``none``: the verifier's correctness reward, 1.0 / 0.0. No options."""


@dataclass(frozen=True)
class KimiOptions:
    """``kimi`` (Kimi k1.5 length penalty, spec §A0).

    Attributes:
        weight: w, required (no verified value; LASER's re-implementation uses 0.4).
        correct_reward / wrong_reward: r_acc (1.0 / 0.0; LASER uses +1 / −0.5).
        warmup_iterations: iterations of plain r_acc before the length term is added (Kimi's
            warm-up, unverified; default 0).
    """

    weight: float | None = None
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    warmup_iterations: int = 0

    def __post_init__(self) -> None:
        _require("kimi", "weight", self.weight,
                 "Kimi k1.5's weight is unverified; LASER's re-implementation uses 0.4 with "
                 "correct_reward 1.0 and wrong_reward -0.5")
        check_number("weight", self.weight, 0.0)
        check_number("correct_reward", self.correct_reward)
        check_number("wrong_reward", self.wrong_reward)
        check_int("warmup_iterations", self.warmup_iterations, 0)


@dataclass(frozen=True)
class GrpoLambdaOptions:
    """``grpo_lambda`` (GRPO-λ, spec §A1).

    Attributes:
        alpha: α in 1 − α·σ(z), required, in [0, 1] (so a correct answer never scores below a
            wrong one's 0).
        top_fraction: λ, the fraction of groups (by accuracy) that are efficiency-prioritised
            (0.2, the paper's illustration).
    """

    alpha: float | None = None
    top_fraction: float = 0.2

    def __post_init__(self) -> None:
        _require("grpo_lambda", "alpha", self.alpha,
                 "the paper's value is unknown; the note's example uses 0.6, Arora & Zanette "
                 "use 0.1–0.4")
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_number("top_fraction", self.top_fraction, 0.0, 1.0)


@dataclass(frozen=True)
class DlerOptions:
    """``dler`` (DLER truncation reward, spec §A3).

    Attributes:
        tiers: None = DLER (1 iff correct and not truncated). A list of [p_min, cap] pairs =
            DA-DLER: a question with accuracy p ≥ p_min (highest matching tier) re-scores
            responses longer than cap as 0; the paper uses [[0.5, 2000]] with a 4000 rollout cap.
    """

    tiers: Any = None

    def __post_init__(self) -> None:
        if self.tiers is not None:
            _tiers(self.tiers)


@dataclass(frozen=True)
class HapoOptions:
    """``hapo`` (HAPO cosine length reward, spec §A5).

    Attributes:
        weight: w (1.0, paper). floor: the correct-answer floor (−0.7, paper).
        mode: history update, "min" (paper) or "mean".
    """

    weight: float = 1.0
    floor: float = -0.7
    mode: str = "min"

    def __post_init__(self) -> None:
        check_number("weight", self.weight, 0.0)
        check_number("floor", self.floor, -1.0, 0.0)
        check_choice("mode", self.mode, ("min", "mean"))


@dataclass(frozen=True)
class LaserOptions:
    """``laser`` (LASER with a fixed target, spec §A4).

    Attributes:
        target: L_T in tokens, required (released runs: 2048, 4096, 8192).
        alpha: α (0.5). mode: "reward" (paper), "penalty" or "hybrid".
        correct_reward / wrong_reward / malformed_reward: base reward (+1 / −0.5 / −1).
    """

    target: float | None = None
    alpha: float = 0.5
    mode: str = "reward"
    correct_reward: float = 1.0
    wrong_reward: float = -0.5
    malformed_reward: float = -1.0

    def __post_init__(self) -> None:
        _require("laser", "target", self.target,
                 "the target length L_T in tokens; the released runs use 2048, 4096 or 8192")
        check_number("target", self.target, 0.0, low_open=True)
        check_number("alpha", self.alpha, 0.0)
        check_choice("mode", self.mode, LASER_MODES)
        for name in ("correct_reward", "wrong_reward", "malformed_reward"):
            check_number(name, getattr(self, name))


@dataclass(frozen=True)
class LaserDOptions:
    """``laser_d`` (LASER-D: per-difficulty targets from a monitor evaluation, spec §A4).

    Attributes:
        alpha: α (0.5). mode: "reward" (paper), "penalty" or "hybrid".
        low / step / cap: candidate targets {low, low + step, …, cap}
            (:func:`~grouprl.rewards.length.laser_candidates`); low 2048 (the released default
            grid), step 1024; cap None = the monitor context's ``max_new_tokens``.
        n: samples per monitor prompt for k_b; None = the monitor's largest group.
        initial_target: target of every bucket before the first monitor update; None = the
            longest response of the current batch (the spec's fallback).
        compat: "native" or "reference" monitor bands (see ``laser_d_targets``).
        correct_reward / wrong_reward / malformed_reward: base reward (+1 / −0.5 / −1).
    """

    alpha: float = 0.5
    mode: str = "reward"
    low: int = 2048
    step: int = 1024
    cap: int | None = None
    n: int | None = None
    initial_target: float | None = None
    compat: str = "native"
    correct_reward: float = 1.0
    wrong_reward: float = -0.5
    malformed_reward: float = -1.0

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0.0)
        check_choice("mode", self.mode, LASER_MODES)
        check_int("low", self.low, 1)
        check_int("step", self.step, 1)
        check_int("cap", self.cap, self.low, none_ok=True, note="at least low")
        check_int("n", self.n, 1, none_ok=True)
        check_number("initial_target", self.initial_target, 0.0, low_open=True, none_ok=True)
        check_choice("compat", self.compat, ("native", "reference"))
        for name in ("correct_reward", "wrong_reward", "malformed_reward"):
            check_number(name, getattr(self, name))


@dataclass(frozen=True)
class LaserDEOptions(LaserDOptions):
    """``laser_de`` (LASER-DE): LASER-D options (``mode`` must stay "reward", the released
    LASER-DE always rewards) plus the repetition detector's ``ngram`` (20) and ``min_count``
    (4) [PROPOSAL; see ``ngram_repetition``]."""

    ngram: int = 20
    min_count: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, ("reward",))
        check_int("ngram", self.ngram, 1)
        check_int("min_count", self.min_count, 2)


@dataclass(frozen=True)
class OverlongOptions:
    """``overlong`` (DAPO soft overlong punishment added to correctness, spec §C5).

    Attributes:
        buffer: the cache length C, required (DAPO: 4096 with a 20480 cap).
        cap: L_cap; None = the context's ``max_new_tokens``.
    """

    buffer: int | None = None
    cap: int | None = None

    def __post_init__(self) -> None:
        _require("overlong", "buffer", self.buffer,
                 "the cache length C of the soft penalty; DAPO uses 4096 with a 20480-token cap")
        check_int("cap", self.cap, 1, none_ok=True)
        check_int("buffer", self.buffer, 1, self.cap,
                  note="at most cap" if self.cap is not None else "")


# --------------------------------------------------------------------------- shapers
class RewardShaper:
    """Base shaper: the verifier's correctness reward (name ``"none"``).

    ``shaper(ctx)`` returns float64 rewards (N,). ``state_dict()`` is JSON-serialisable and
    restored with ``load_state_dict``; ``metrics()`` reports floats about the last call.
    """

    name: ClassVar[str] = "none"
    options_type: ClassVar[type] = NoneOptions
    needs_well_formed: ClassVar[bool] = False
    """The shaper reads ``ShapingContext.well_formed`` (the format check; LASER family)."""

    def __init__(self, options: Any = None) -> None:
        self.options = self.options_type() if options is None else options
        self._metrics: dict[str, float] = {}

    def __call__(self, ctx: ShapingContext) -> Tensor:
        c, _, _, _ = ctx.tensors()
        return self._done(c.to(torch.float64))

    def _done(self, rewards: Tensor, **metrics: float) -> Tensor:
        mean = float(rewards.mean()) if rewards.numel() else 0.0
        self._metrics = {f"{self.name}/reward_mean": mean,
                         **{f"{self.name}/{k}": float(v) for k, v in metrics.items()}}
        return rewards

    def metrics(self) -> dict[str, float]:
        """Floats describing the last call (e.g. ``hapo/history_size``)."""
        return dict(self._metrics)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"state: reward shaping {self.name!r} keeps no state, got keys "
                             f"{sorted(state)}")


class KimiShaper(RewardShaper):
    name = "kimi"
    options_type = KimiOptions

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, g = ctx.tensors()
        if ctx.iteration < o.warmup_iterations:
            plain = torch.where(c, _f64(o.correct_reward), _f64(o.wrong_reward))
            return self._done(plain, active=0.0)
        r = kimi_length_reward(c, L, g, weight=o.weight, correct_reward=o.correct_reward,
                               wrong_reward=o.wrong_reward)
        return self._done(r, active=1.0)


class GrpoLambdaShaper(RewardShaper):
    name = "grpo_lambda"
    options_type = GrpoLambdaOptions

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, g = ctx.tensors()
        r = grpo_lambda_reward(c, L, g, alpha=o.alpha, top_fraction=o.top_fraction)
        codes, num = _codes(g, c.numel())
        selected = torch.zeros(num, dtype=torch.bool)
        has_correct = torch.zeros(num, dtype=torch.bool)
        if num:
            selected[codes] = top_lambda_groups(c, g, o.top_fraction)
            has_correct[codes[c]] = True
        return self._done(r, selected_groups=int(selected.sum()),
                          efficiency_groups=int((selected & has_correct).sum()))


class DlerShaper(RewardShaper):
    name = "dler"
    options_type = DlerOptions

    def __call__(self, ctx: ShapingContext) -> Tensor:
        c, L, trunc, g = ctx.tensors()
        plain = dler_reward(c, trunc)
        if self.options.tiers is None:
            return self._done(plain, truncated_fraction=_frac(trunc))
        r = da_dler_reward(c, L, trunc, g, tiers=self.options.tiers)
        return self._done(r, truncated_fraction=_frac(trunc),
                          rescored_fraction=_frac((plain > 0) & (r == 0)))


class HapoShaper(RewardShaper):
    """HAPO: rewards use the history *before* this batch; the history is then updated with the
    batch's correct lengths. Call once per batch (the "mean" mode would count a batch twice)."""

    name = "hapo"
    options_type = HapoOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.history = HapoHistory(self.options.mode)

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, _ = ctx.tensors()
        h = self.history.lookup(ctx.keys)
        r = hapo_reward(c, L, h, weight=o.weight, floor=o.floor)
        self.history.update(ctx.keys, c, L)
        return self._done(r, history_size=len(self.history), null_fraction=_frac(torch.isnan(h)))

    def state_dict(self) -> dict:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"history"}:
            raise ValueError("state: expected {'history': ...} from a 'hapo' shaper's "
                             f"state_dict, got keys {sorted(state)}")
        self.history.load_state_dict(state["history"])


class LaserShaper(RewardShaper):
    needs_well_formed = True
    name = "laser"
    options_type = LaserOptions

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, _ = ctx.tensors()
        wf = ctx.format_ok(c.numel())
        r = laser_reward(c, L, float(o.target), well_formed=wf, alpha=o.alpha, mode=o.mode,
                         correct_reward=o.correct_reward, wrong_reward=o.wrong_reward,
                         malformed_reward=o.malformed_reward)
        return self._done(r, short_correct_fraction=_frac(c & wf & (L <= o.target)))


class LaserDShaper(RewardShaper):
    """LASER-D: targets per difficulty bucket (easy, medium, hard).

    ``update_targets(monitor_ctx)`` recomputes them from a monitor rollout (the paper: 500
    training prompts every 20 iterations, same n as training). A bucket with no qualifying
    candidate — and every bucket before the first update unless ``initial_target`` is set —
    uses the longest response of the batch being shaped.
    """

    needs_well_formed = True
    name = "laser_d"
    options_type = LaserDOptions
    BUCKETS: ClassVar[tuple[str, ...]] = ("easy", "medium", "hard")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        start = math.nan if self.options.initial_target is None else self.options.initial_target
        self.targets = torch.full((3,), float(start), dtype=torch.float64)
        self.updated = False

    def update_targets(self, monitor_ctx: ShapingContext) -> Tensor:
        """Recompute the three targets from a monitor rollout; returns them (NaN = fallback)."""
        o = self.options
        c, L, _, g = monitor_ctx.tensors()
        ok = c & monitor_ctx.format_ok(c.numel())
        cap = o.cap if o.cap is not None else monitor_ctx.max_new_tokens
        if cap is None:
            raise ValueError(f"cap: reward shaping {self.name!r} needs the largest candidate "
                             "target; set the option cap or pass max_new_tokens in the "
                             "monitor ShapingContext")
        n = o.n
        if n is None:
            codes, num = _codes(g, c.numel())
            n = int(torch.bincount(codes, minlength=num).max()) if num else 1
        candidates = laser_candidates(min(o.low, int(cap)), int(cap), o.step)
        self.targets = laser_d_targets(L, g, ok, n=n, candidates=candidates,
                                       fallback=math.nan, compat=o.compat)
        self.updated = True
        return self.targets.clone()

    def _row_targets(self, ok: Tensor, L: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        longest = float(L.max()) if L.numel() else 0.0
        resolved = torch.where(torch.isnan(self.targets), longest, self.targets)
        return resolved, laser_row_targets(ok, g, resolved)

    def _target_metrics(self, resolved: Tensor) -> dict[str, float]:
        return {f"target_{b}": float(t) for b, t in zip(self.BUCKETS, resolved.tolist())}

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, g = ctx.tensors()
        wf = ctx.format_ok(c.numel())
        resolved, target = self._row_targets(c & wf, L, g)
        r = laser_reward(c, L, target, well_formed=wf, alpha=o.alpha, mode=o.mode,
                         correct_reward=o.correct_reward, wrong_reward=o.wrong_reward,
                         malformed_reward=o.malformed_reward)
        return self._done(r, short_correct_fraction=_frac(c & wf & (L <= target)),
                          **self._target_metrics(resolved))

    def state_dict(self) -> dict:
        return {"targets": [None if math.isnan(t) else t for t in self.targets.tolist()],
                "updated": self.updated}

    def load_state_dict(self, state: dict) -> None:
        targets = state.get("targets") if isinstance(state, dict) else None
        if not isinstance(targets, list) or len(targets) != 3:
            raise ValueError(f"state: expected {{'targets': [easy, medium, hard], 'updated': "
                             f"bool}} from a {self.name!r} shaper's state_dict, got {state!r}")
        self.targets = torch.tensor([math.nan if t is None else float(t) for t in targets],
                                    dtype=torch.float64)
        self.updated = bool(state.get("updated", True))


class LaserDEShaper(LaserDShaper):
    """LASER-DE: LASER-D plus +α for wrong, well-formed, non-repetitive answers longer than
    their bucket's target. Needs ``response_ids`` (and ``response_mask``) in the context."""

    name = "laser_de"
    options_type = LaserDEOptions

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, g = ctx.tensors()
        n = c.numel()
        if ctx.response_ids is None:
            raise ValueError("response_ids: required by reward shaping 'laser_de' (its "
                             "repetition detector reads the response tokens); pass "
                             "response_ids=... and response_mask=... to ShapingContext")
        wf = ctx.format_ok(n)
        resolved, target = self._row_targets(c & wf, L, g)
        check = ~c & wf & (L > target)
        repetitive = torch.zeros(n, dtype=torch.bool)
        rows = torch.nonzero(check)[:, 0]
        if rows.numel():
            ids = torch.as_tensor(ctx.response_ids).detach().cpu()
            if ids.dim() != 2 or ids.shape[0] != n:
                raise ValueError(f"response_ids: must be (N, T) with N = {n}, got shape "
                                 f"{tuple(ids.shape)}")
            mask = None if ctx.response_mask is None else torch.as_tensor(
                ctx.response_mask).detach().cpu()[rows]
            repetitive[rows] = ngram_repetition(ids[rows], mask, n=o.ngram,
                                                min_count=o.min_count)
        r = laser_de_reward(c, L, target, repetitive=repetitive, well_formed=wf, alpha=o.alpha,
                            correct_reward=o.correct_reward, wrong_reward=o.wrong_reward,
                            malformed_reward=o.malformed_reward)
        return self._done(r, short_correct_fraction=_frac(c & wf & (L <= target)),
                          explore_fraction=_frac(check & ~repetitive),
                          repetitive_fraction=_frac(repetitive),
                          **self._target_metrics(resolved))


class OverlongShaper(RewardShaper):
    name = "overlong"
    options_type = OverlongOptions

    def __call__(self, ctx: ShapingContext) -> Tensor:
        o = self.options
        c, L, _, _ = ctx.tensors()
        cap = o.cap if o.cap is not None else ctx.max_new_tokens
        if cap is None:
            raise ValueError("cap: reward shaping 'overlong' needs L_cap; set the option cap or "
                             "pass max_new_tokens in the ShapingContext")
        check_int("buffer", o.buffer, 1, cap, note="at most L_cap, the context's max_new_tokens")
        penalty = overlong_penalty(L, cap=int(cap), buffer=o.buffer)
        return self._done(c.to(torch.float64) + penalty, penalized_fraction=_frac(penalty < 0),
                          penalty_mean=float(penalty.mean()) if penalty.numel() else 0.0)


def _frac(mask: Tensor) -> float:
    return float(mask.to(torch.float64).mean()) if mask.numel() else 0.0


_SHAPERS: dict[str, type[RewardShaper]] = {
    cls.name: cls for cls in (RewardShaper, KimiShaper, GrpoLambdaShaper, DlerShaper,
                              HapoShaper, LaserShaper, LaserDShaper, LaserDEShaper,
                              OverlongShaper)
}


def available_shapers() -> tuple[str, ...]:
    """Registered shaper names."""
    return tuple(_SHAPERS)


def shaper_class(name: str) -> type[RewardShaper]:
    """The shaper class registered as ``name`` (its declarations: ``update_targets`` = needs a
    monitor rollout)."""
    if name not in _SHAPERS:
        raise ValueError(f"shaping: unknown reward shaping {name!r}; available: "
                         + ", ".join(_SHAPERS))
    return _SHAPERS[name]


def shaper_options(name: str, **options: Any) -> Any:
    """Validate the options of shaper ``name`` and return them (defaults filled in)."""
    if name not in _SHAPERS:
        raise ValueError(f"shaping: unknown reward shaping {name!r}; available: "
                         + ", ".join(_SHAPERS))
    cls = _SHAPERS[name].options_type
    check_options(f"reward shaping {name!r}", options, [f.name for f in dataclasses.fields(cls)])
    return cls(**options)


def make_shaper(name: str, **options: Any) -> RewardShaper:
    """Build shaper ``name`` with validated ``options``.

    Example::

        shaper = make_shaper("grpo_lambda", alpha=0.2)
        rewards = shaper(ShapingContext(correct, length, truncated, group, keys))
    """
    opts = shaper_options(name, **options)
    return _SHAPERS[name](opts)
