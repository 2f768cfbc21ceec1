"""The reward stage: a single-turn rollout's outcome → training rewards, computed once.

A reasoning task is a one-step environment (:class:`grouprl.envs.reasoning.ReasoningEnv`): the
prompt is the question, the whole response is the action, and the env reports its *outcome* —
the verifier's verdict (``won``: correct or not, verified inside the fault-isolating env pool).
This stage is the one place where that outcome becomes the training reward of the configured
method (spec-rewards §0.4 hook map); nothing downstream recomputes it::

    correct_i, L_i, trunc_i     from the rollout (env verdict, response tokens, hit max_new_tokens)
    DOT (rollout.dot_truncation): all-correct groups: cut outliers at T_q, re-verify the prefix
    r_i = shaper(correct, L, trunc, group, prompt key, format)          (reward.shaping, §A)
        + format_weight · format_reward(response)                        (reward.format_weight, §C4)

The rewards replace the rollout's step rewards and episode returns, so every estimator, dynamic
sampling and every loss see the shaped values. Everything here runs on the rows of one rollout
try, before dynamic sampling (DOT's order, spec §A7; DLER's rewards are fixed before filtering).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from grouprl.batch import Rollout, select_rows
from grouprl.rewards.format import format_check, format_reward
from grouprl.rewards.length import dot_truncation_lengths
from grouprl.rewards.shaping import RewardShaper, ShapingContext, make_shaper, shaper_class
from grouprl.validation import check_int, check_number, check_options

__all__ = ["RewardStage", "MONITOR_OPTIONS", "DOT_OPTIONS", "split_reward_options",
           "dot_options", "uses_monitor"]

MONITOR_OPTIONS = {"monitor_every": 20, "monitor_prompts": 64}
"""Trainer-level options of the LASER-D/DE monitor (spec §A4: every 20 steps, 500 prompts; the
prompt count is lowered for CPU runs and is an option)."""

DOT_OPTIONS = {"alpha": 3.0, "margin": 32.0}
"""DOT outlier truncation defaults (spec §A7: α = 3, m = 32 tokens)."""

_FAILED_REASONS = ("error", "timeout")


def uses_monitor(shaping: str | None) -> bool:
    """Whether the shaper's targets come from a monitor rollout (it declares ``update_targets``:
    LASER-D/DE, spec §A4)."""
    return shaping is not None and callable(getattr(shaper_class(shaping), "update_targets",
                                                    None))


def split_reward_options(shaping: str | None, options: dict[str, Any]
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shaper options, monitor options): the monitor keys only exist for shapers that use a
    monitor rollout."""
    opts = dict(options)
    monitor = dict(MONITOR_OPTIONS)
    if uses_monitor(shaping):
        for key in MONITOR_OPTIONS:
            if key in opts:
                monitor[key] = check_int(key, opts.pop(key), 1)
    return opts, monitor


def dot_options(spec: dict[str, Any] | None) -> dict[str, float] | None:
    """Validated ``rollout.dot_truncation`` (None = off), defaults filled in."""
    if spec is None:
        return None
    check_options("DOT truncation", spec, tuple(DOT_OPTIONS))
    o = {**DOT_OPTIONS, **spec}
    return {k: float(check_number(k, v, 0.0, low_open=True)) for k, v in o.items()}


def _extra(rollout: Rollout, key: str) -> list[Any]:
    extras = rollout.extras if len(rollout.extras) == len(rollout) else [None] * len(rollout)
    return [e.get(key) if isinstance(e, dict) else None for e in extras]


class RewardStage:
    """Shapes the rewards of single-turn rollouts (see the module docstring).

    Args:
        shaping: a name from :func:`grouprl.rewards.shaping.available_shapers` or None (the
            verifier's 0/1 reward).
        options: the shaper's options (``reward.options``) plus, for laser_d/laser_de, the
            monitor options ``monitor_every`` and ``monitor_prompts``.
        tokenizer: decodes DOT-truncated responses for re-verification.
        verifier: ``(response, gold) -> VerifyResult`` used to re-verify truncated responses
            (the env's own verifier; required when ``dot`` is set).
        max_new_tokens: ``L_cap`` (shapers that default to it, DRPO's ``L_max``).
    """

    def __init__(self, shaping: str | None, options: dict[str, Any], *, tokenizer: Any = None,
                 verifier: Any = None, max_new_tokens: int | None = None,
                 format_weight: float = 0.0, format_style: str = "r1_zero",
                 dot: dict[str, Any] | None = None) -> None:
        shaper_options, self.monitor = split_reward_options(shaping, options)
        self.shaper: RewardShaper = make_shaper(shaping or "none", **shaper_options)
        self.tokenizer = tokenizer
        self.verifier = verifier
        self.max_new_tokens = max_new_tokens
        self.format_weight = float(format_weight)
        self.format_style = format_style
        self.dot = dot_options(dot)
        if self.dot is not None and (verifier is None or tokenizer is None):
            raise ValueError("dot_truncation: needs the env's verifier and the tokenizer to "
                             "re-verify truncated responses")

    @property
    def needs_monitor(self) -> bool:
        """The shaper's targets come from a monitor rollout (LASER-D/DE, spec §A4)."""
        return callable(getattr(self.shaper, "update_targets", None))

    def monitor_due(self, iteration: int) -> int:
        """Prompts of the monitor rollout due before iteration ``iteration`` (0 = none)."""
        if self.needs_monitor and iteration % self.monitor["monitor_every"] == 0:
            return int(self.monitor["monitor_prompts"])
        return 0

    def context(self, rollout: Rollout, iteration: int = 0,
                correct: torch.Tensor | None = None) -> ShapingContext:
        """The shaper's inputs for the rows of a single-turn rollout."""
        b = rollout.batch
        n = len(rollout)
        if rollout.episode_won.numel() != n:
            raise ValueError("reward shaping needs single-turn rollouts (one row per episode); "
                             "set env.max_steps=1 and use a one-step env such as 'reasoning'")
        keys = _extra(rollout, "key")
        keys = [k if k is not None else int(s) for k, s in zip(keys, torch.as_tensor(b.state))]
        well_formed = None
        if self.shaper.needs_well_formed:
            style = "r1_zero" if self.format_style == "tag_count" else self.format_style
            well_formed = torch.tensor([format_check(t, style, strict=False).ok
                                        for t in rollout.responses], dtype=torch.bool)
        truncated = rollout.truncated if rollout.truncated is not None else \
            torch.zeros(n, dtype=torch.bool)
        return ShapingContext(
            correct=torch.as_tensor(b.success).bool() if correct is None else correct,
            length=rollout.response_mask.sum(1).to(torch.float64),
            truncated=truncated.bool(),
            group=torch.as_tensor(b.group_id).long(),
            keys=keys, well_formed=well_formed, response_ids=rollout.response_ids,
            response_mask=rollout.response_mask, max_new_tokens=self.max_new_tokens,
            iteration=iteration)

    def _dot_truncate(self, rollout: Rollout, correct: torch.Tensor
                      ) -> tuple[Rollout, torch.Tensor, int]:
        """DOT §A7: cut all-correct groups' length outliers at T_q, then re-verify the prefix."""
        length = rollout.response_mask.sum(1)
        new_len = dot_truncation_lengths(correct, length.to(torch.float64),
                                         torch.as_tensor(rollout.batch.group_id).long(),
                                         alpha=self.dot["alpha"], margin=self.dot["margin"])
        new_len = new_len.to(length.dtype)
        cut = torch.nonzero(new_len < length).flatten().tolist()
        if not cut:
            return rollout, correct, 0
        width = rollout.response_ids.shape[1]
        keep = torch.arange(width)[None, :] < new_len[:, None]
        mask = rollout.response_mask * keep.to(rollout.response_mask.dtype)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.where(keep, rollout.response_ids, torch.full_like(rollout.response_ids, pad))
        logprobs = rollout.logprobs * keep.to(rollout.logprobs.dtype)
        responses = list(rollout.responses)
        golds = _extra(rollout, "gold")
        correct = correct.clone()
        for i in cut:  # one decode + verify per truncated response (rare by construction)
            text = self.tokenizer.decode(ids[i, :int(new_len[i])].tolist(),
                                         skip_special_tokens=False)
            responses[i] = text
            verdict = self.verifier(text, golds[i]) if golds[i] is not None else None
            correct[i] = bool(verdict is not None and verdict.correct)
        truncated = rollout.truncated.clone() if rollout.truncated is not None else \
            torch.zeros(len(rollout), dtype=torch.bool)
        truncated[cut] = True
        out = dataclasses.replace(rollout, response_ids=ids, response_mask=mask,
                                  logprobs=logprobs, responses=responses, truncated=truncated)
        return out, correct, len(cut)

    def apply(self, rollout: Rollout, iteration: int) -> tuple[Rollout, dict[str, float]]:
        """The rollout with shaped rewards (step rewards and episode returns) and metrics."""
        n = len(rollout)
        if n == 0:
            return rollout, {}
        b = rollout.batch
        correct = torch.as_tensor(b.success).bool()
        metrics: dict[str, float] = {}
        if self.dot is not None:
            rollout, correct, n_cut = self._dot_truncate(rollout, correct)
            metrics["reward/dot_truncated"] = float(n_cut)
        ctx = self.context(rollout, iteration, correct)
        reward = self.shaper(ctx).to(torch.float64)
        if self.format_weight:
            fmt = torch.tensor([format_reward(t, self.format_style) for t in rollout.responses],
                               dtype=torch.float64)
            reward = reward + self.format_weight * fmt
            metrics["reward/format_mean"] = float(fmt.mean())
        reasons = _extra(rollout, "reason")
        metrics.update({
            "train/accuracy": float(correct.float().mean()),
            "train/response_length_mean": float(ctx.length.mean()),
            "train/truncated_rate": float(ctx.truncated.float().mean()),
            "train/reward_mean": float(reward.mean()),
            "train/verifier_failures": float(sum(r in _FAILED_REASONS for r in reasons)),
            "train/unparsable_gold": float(sum(r == "unparsable_gold" for r in reasons)),
        })
        metrics.update({f"reward/{k}": float(v) for k, v in self.shaper.metrics().items()})
        batch = dataclasses.replace(b, reward=reward.to(torch.float32),
                                    success=correct.to(torch.as_tensor(b.success).dtype))
        out = dataclasses.replace(rollout, batch=batch, episode_return=reward.to(torch.float32),
                                  episode_won=correct)
        finite = torch.isfinite(reward)
        if not bool(finite.all()):          # a shaper's NaN/inf: drop those rows, never train on it
            metrics["reward/nonfinite_dropped"] = float((~finite).sum())
            metrics["train/reward_mean"] = float(reward[finite].mean()) if finite.any() else 0.0
            out = select_rows(out, finite, finite)   # single-turn: episode i is row i
        return out, metrics

    def update_targets(self, rollout: Rollout, iteration: int) -> dict[str, float]:
        """LASER-D/DE: recompute the per-bucket targets from a monitor rollout (§A4)."""
        self.shaper.update_targets(self.context(rollout, iteration))
        return {f"reward/{k}": float(v) for k, v in self.shaper.metrics().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"shaper": self.shaper.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shaper" in state:
            self.shaper.load_state_dict(state["shaper"])
