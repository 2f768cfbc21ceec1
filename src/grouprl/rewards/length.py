"""Efficient-reasoning length rewards: Kimi, GRPO-λ, DLER, HAPO, LASER(-D/-DE), DAPO overlong, DOT.

Pure, vectorised functions of flat per-response tensors (one row = one sampled response):

* ``correct``   bool (N,): the verifier's verdict c_i;
* ``length``    (N,): response tokens L_i (everything the policy generated, spec §0.1);
* ``group``     int (N,): group codes, any integers (factorized here); a group = the G rollouts
  of one prompt;
* ``truncated`` bool (N,): generation hit the cap L_cap without EOS.

Group statistics are ``index_add_`` / ``scatter_reduce_`` segment reductions in float64
(:mod:`grouprl.advantages.segments`); no Python loop runs over rows or tokens. Section numbers
(§A0 …) refer to ``specs/spec-rewards.md``; [PROPOSAL] marks a choice where the sources are
silent (each is a documented, configurable default).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from grouprl.advantages.segments import segment_stats, segment_sum
from grouprl.batch import as_boolean
from grouprl.validation import check_choice, check_int, check_number

__all__ = [
    "HapoHistory", "da_dler_reward", "dler_reward", "dot_truncation_lengths",
    "grpo_lambda_reward", "hapo_reward", "kimi_length_reward", "laser_buckets",
    "laser_candidates", "laser_d_targets", "laser_de_reward", "laser_reward",
    "laser_row_targets", "ngram_repetition", "overlong_penalty",
    "predictive_oversampling_factor", "top_lambda_groups",
]

Tensor = torch.Tensor


# --------------------------------------------------------------------------- input helpers
def _vec(name: str, values: object, dtype: torch.dtype, n: int | None = None,
         ref: str = "correct") -> Tensor:
    """``values`` as a 1-D CPU tensor of ``dtype``; ``ValueError`` naming ``name`` otherwise."""
    try:
        t = values if isinstance(values, Tensor) else torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: cannot convert to a tensor ({err})") from None
    t = t.detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"{name}: must be 1-D (one value per response), got shape "
                         f"{tuple(t.shape)}")
    if n is not None and t.numel() != n:
        raise ValueError(f"{name}: has {t.numel()} rows but {ref} has {n}; pass one value per "
                         "response")
    if dtype == torch.bool:
        return as_boolean(t, name)
    if dtype == torch.int64:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name}: must hold integer group ids, got {t.dtype}; cast with "
                             ".long()")
        return t.to(torch.int64)
    t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        row = int(torch.nonzero(~torch.isfinite(t))[0, 0])
        raise ValueError(f"{name}: row {row} is not finite ({t[row].item()})")
    return t


def _lengths(name: str, values: object, n: int | None = None, ref: str = "correct") -> Tensor:
    t = _vec(name, values, torch.float64, n, ref)
    if bool((t < 0).any()):
        row = int(torch.nonzero(t < 0)[0, 0])
        raise ValueError(f"{name}: row {row} is negative ({t[row].item()}); lengths are token "
                         "counts >= 0")
    return t


def _codes(group: object, n: int, name: str = "group", ref: str = "correct"
           ) -> tuple[Tensor, int]:
    """Dense codes 0..B-1 of the group ids (sorted-value order) and B."""
    g = _vec(name, group, torch.int64, n, ref)
    if n == 0:
        return g, 0
    uniq, codes = torch.unique(g, return_inverse=True)
    return codes, int(uniq.numel())


def _inputs(correct: object, length: object, group: object
            ) -> tuple[Tensor, Tensor, Tensor, int]:
    c = _vec("correct", correct, torch.bool)
    n = c.numel()
    return (c, _lengths("length", length, n), *_codes(group, n))


def _seg_max(x: Tensor, seg: Tensor, num: int) -> Tensor:
    return torch.full((num,), -math.inf, dtype=x.dtype).scatter_reduce_(0, seg, x, "amax")


def _seg_min(x: Tensor, seg: Tensor, num: int) -> Tensor:
    return torch.full((num,), math.inf, dtype=x.dtype).scatter_reduce_(0, seg, x, "amin")


def _accuracy(c: Tensor, g: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """Per group: number of correct responses k_q and group size G_q (float64)."""
    k = segment_sum(c.to(torch.float64), g, num)
    size = segment_sum(torch.ones(c.numel(), dtype=torch.float64), g, num)
    return k, size


def _f64(value: float) -> Tensor:
    """A float64 scalar tensor (``torch.where`` with two Python floats would give float32)."""
    return torch.tensor(float(value), dtype=torch.float64)


# --------------------------------------------------------------------------- §A0 Kimi k1.5
def kimi_length_reward(correct: object, length: object, group: object, *, weight: float,
                       correct_reward: float = 1.0, wrong_reward: float = 0.0) -> Tensor:
    """Kimi k1.5 length penalty (spec §A0; LASER ``compute_kimi_penalty``, open-r1 ``len_reward``).

    Over **all** responses of the group (correct or not)::

        λ_i   = 0.5 − (L_i − L_min) / (L_max − L_min)      (λ_i = 0 when L_max = L_min)
        len_i = λ_i if c_i else min(0, λ_i)
        r_i   = r_acc(c_i) + w · len_i,   r_acc = correct_reward / wrong_reward

    The spec's formula has no ε in the denominator (LASER's code adds 1e-6; the difference is
    below 1e-8 for lengths ≥ 1). ``weight`` has no verified paper value (LASER defaults to 0.4
    with r_acc ∈ {+1, −0.5}). Returns float64 (N,).
    """
    w = float(check_number("weight", weight))
    c, L, g, num = _inputs(correct, length, group)
    lo, hi = _seg_min(L, g, num)[g], _seg_max(L, g, num)[g]
    span = hi - lo
    lam = torch.where(span > 0, 0.5 - (L - lo) / torch.where(span > 0, span, 1.0),
                      torch.zeros_like(L))
    len_term = torch.where(c, lam, lam.clamp_max(0.0))
    r_acc = torch.where(c, _f64(correct_reward), _f64(wrong_reward))
    return r_acc + w * len_term


# --------------------------------------------------------------------------- §A1 GRPO-λ
def top_lambda_groups(correct: object, group: object, top_fraction: float) -> Tensor:
    """Per row: whether its group is among the batch's top-⌈λ·B⌉ groups by accuracy (spec §A1).

    Groups are ranked by ``p_q = mean_i c_i``, highest first, with a stable sort: equal p_q keep
    the order of first appearance in the batch [PROPOSAL]. ``⌈λ·B⌉`` is computed as
    ``ceil(λ·B − 1e-9)`` so that float products such as 0.3·10 = 3.0000000000000004 round to 3.
    Returns bool (N,).
    """
    lam = float(check_number("top_fraction", top_fraction, 0.0, 1.0))
    c = _vec("correct", correct, torch.bool)
    n = c.numel()
    g, num = _codes(group, n)
    if num == 0:
        return torch.zeros(0, dtype=torch.bool)
    k, size = _accuracy(c, g, num)
    p = k / size
    first = torch.full((num,), n, dtype=torch.int64).scatter_reduce_(0, g, torch.arange(n), "amin")
    by_appearance = torch.argsort(first)
    ranked = by_appearance[torch.sort(p[by_appearance], descending=True, stable=True).indices]
    top = min(num, max(0, math.ceil(lam * num - 1e-9)))
    chosen = torch.zeros(num, dtype=torch.bool)
    chosen[ranked[:top]] = True
    return chosen[g]


def grpo_lambda_reward(correct: object, length: object, group: object, *, alpha: float,
                       top_fraction: float = 0.2) -> Tensor:
    """GRPO-λ reward (Dai, Liu, Si 2025, arXiv 2505.18086 §3; spec §A1).

    The top-⌈λ·B⌉ groups by accuracy (:func:`top_lambda_groups`) are *efficiency-prioritised*::

        r_i = 1 − α · σ((L_i − mean_c(L)) / std_c(L))   if c_i = 1
        r_i = 0                                          if c_i = 0

    with the mean and **population** std over the group's correct responses only; z = 0 when
    that std is 0 (one correct response, or all of equal length) [PROPOSAL, spec]. Every other
    group is *accuracy-prioritised*: ``r_i = c_i``. A selected group with p_q = 0 is treated as
    accuracy-prioritised (all rewards 0). λ = 20 % is the paper's illustration; α is unknown
    (required). Returns float64 (N,).
    """
    a = float(check_number("alpha", alpha, 0.0, 1.0))
    c, L, g, num = _inputs(correct, length, group)
    if num == 0:
        return torch.zeros(0, dtype=torch.float64)
    selected = top_lambda_groups(c, g, top_fraction)
    k, _ = _accuracy(c, g, num)
    efficient = selected & (k[g] > 0)
    stats = segment_stats(L[c], g[c], num, unbiased=False)
    high = _seg_max(L[c], g[c], num)
    flat = (stats.count <= 1) | (stats.low == high) | (stats.std == 0)
    z = torch.where(flat[g], torch.zeros_like(L),
                    (L - stats.mean[g]) / torch.where(flat, 1.0, stats.std)[g])
    shaped = torch.where(c, 1.0 - a * torch.sigmoid(z), torch.zeros_like(L))
    return torch.where(efficient, shaped, c.to(torch.float64))


# --------------------------------------------------------------------------- §A3 DLER
def dler_reward(correct: object, truncated: object) -> Tensor:
    """DLER truncation reward (Liu et al. 2025, arXiv 2510.15110 §3; spec §A3, §C5).

    ``r_i = 1[c_i ∧ ¬trunc_i]``: a response that hit the cap L_cap scores 0. Float64 (N,).
    """
    c = _vec("correct", correct, torch.bool)
    t = _vec("truncated", truncated, torch.bool, c.numel())
    return (c & ~t).to(torch.float64)


def _tiers(tiers: object) -> tuple[Tensor, Tensor]:
    """Validated DA-DLER tiers sorted by p_min: (p_min float64 [K], cap float64 [K])."""
    if isinstance(tiers, str | bytes) or not isinstance(tiers, Sequence) or len(tiers) == 0:
        raise ValueError(f"tiers: must be a non-empty list of [p_min, cap] pairs, got {tiers!r}")
    pairs = []
    for pair in tiers:
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"tiers: each tier must be a [p_min, cap] pair, got {pair!r}")
        p_min = float(check_number("tiers: p_min", pair[0], 0.0, 1.0))
        cap = float(check_number("tiers: cap", pair[1], 0.0, low_open=True))
        pairs.append((p_min, cap))
    p = [q for q, _ in pairs]
    if len(set(p)) != len(p):
        raise ValueError(f"tiers: p_min values must be distinct, got {p}")
    pairs.sort()
    return (torch.tensor([q for q, _ in pairs], dtype=torch.float64),
            torch.tensor([cap for _, cap in pairs], dtype=torch.float64))


def da_dler_reward(correct: object, length: object, truncated: object, group: object, *,
                   tiers: Sequence[tuple[float, float]] = ((0.5, 2000),)) -> Tensor:
    """Difficulty-aware DLER (spec §A3, "DA-DLER"): per-question truncation lengths.

    ``p_q`` is the group's DLER accuracy (correct and not truncated) over **these** rollouts —
    the within-step reading of the open question spec §E.2 [PROPOSAL]. The tier (p_min, cap)
    with the highest ``p_min ≤ p_q`` applies; a response longer than its tier's cap is
    re-scored 0, as if generation had been truncated there (the spec's re-scoring proposal;
    equivalent to generating at that cap). Questions below every tier keep the plain DLER
    reward. Paper tiers: p ≥ 0.5 → 2000 tokens (the rest are capped by the rollout's 4000).
    Float64 (N,).
    """
    p_min, caps = _tiers(tiers)
    c = _vec("correct", correct, torch.bool)
    n = c.numel()
    L = _lengths("length", length, n)
    base = dler_reward(c, truncated)
    g, num = _codes(group, n)
    if num == 0:
        return base
    k, size = _accuracy(base.to(torch.bool), g, num)
    p = (k / size)[g]
    tier = torch.searchsorted(p_min, p, right=True) - 1
    cap = torch.where(tier >= 0, caps[tier.clamp_min(0)], torch.full_like(p, math.inf))
    return torch.where(L > cap, torch.zeros_like(base), base)


# --------------------------------------------------------------------------- §A5 HAPO
def _key_codes(keys: Sequence[Hashable], n: int | None = None) -> tuple[list[str], Tensor]:
    """Distinct ``str(key)`` values (first-appearance order) and each row's index into them."""
    if isinstance(keys, str | bytes):
        raise ValueError("keys: must be a sequence with one prompt key per response, got a "
                         "string")
    table: dict[str, int] = {}
    codes = [table.setdefault(str(k), len(table)) for k in keys]
    if n is not None and len(codes) != n:
        raise ValueError(f"keys: has {len(codes)} rows but correct has {n}; pass one prompt key "
                         "per response")
    return list(table), torch.tensor(codes, dtype=torch.int64)


class HapoHistory:
    """HAPO's per-prompt history h (Huang, Zhang, Cardie 2025, arXiv 2505.11225 §3; spec §A5).

    ``mode="min"`` (paper default): ``h ← min(h, min{L_j : c_j = 1 in this batch})``.
    ``mode="mean"``: h = running mean of every correct length seen (count-weighted, as the
    released ``mean`` mode). A prompt starts Null (no correct response yet).

    Keys are any hashables, stored as ``str(key)`` so :meth:`state_dict` is JSON-serialisable
    (keys whose ``str`` coincide, e.g. ``1`` and ``"1"``, share an entry).
    """

    def __init__(self, mode: str = "min") -> None:
        check_choice("mode", mode, ("min", "mean"))
        self.mode = mode
        self._value: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._value)

    def lookup(self, keys: Sequence[Hashable]) -> Tensor:
        """h per row (float64 (N,)); NaN where the prompt's history is Null."""
        uniq, codes = _key_codes(keys)
        values = torch.tensor([self._value.get(k, math.nan) for k in uniq], dtype=torch.float64)
        return values[codes] if codes.numel() else torch.zeros(0, dtype=torch.float64)

    def update(self, keys: Sequence[Hashable], correct: object, length: object) -> None:
        """Fold one batch's correct lengths into the history (one dict update per prompt)."""
        c = _vec("correct", correct, torch.bool)
        n = c.numel()
        L = _lengths("length", length, n)
        uniq, codes = _key_codes(keys, n)
        if not uniq:
            return
        num = len(uniq)
        count = segment_sum(c.to(torch.float64), codes, num)
        low = _seg_min(L[c], codes[c], num)
        total = segment_sum(L[c], codes[c], num)
        for j in torch.nonzero(count > 0)[:, 0].tolist():
            key, k = uniq[j], int(count[j])
            old, seen = self._value.get(key), self._count.get(key, 0)
            if self.mode == "min":
                new = float(low[j]) if old is None else min(old, float(low[j]))
            else:
                new = (float(total[j]) / k if old is None else
                       old + (float(total[j]) - k * old) / (seen + k))
            self._value[key], self._count[key] = new, seen + k

    def state_dict(self) -> dict:
        """JSON-serialisable state: mode, h per key, number of correct lengths seen per key."""
        return {"mode": self.mode, "value": dict(self._value), "count": dict(self._count)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"mode", "value", "count"} <= set(state):
            raise ValueError("state: expected a HapoHistory.state_dict() with keys mode, value, "
                             "count")
        if state["mode"] != self.mode:
            raise ValueError(f"mode: the saved history uses {state['mode']!r} but this history "
                             f"uses {self.mode!r}; set the same mode to resume")
        self._value = {str(k): float(v) for k, v in state["value"].items()}
        self._count = {str(k): int(v) for k, v in state["count"].items()}


def hapo_reward(correct: object, length: object, history_length: object, *,
                weight: float = 1.0, floor: float = -0.7) -> Tensor:
    """HAPO cosine length reward (arXiv 2505.11225 §3; released ``compute_len_reward``; §A5).

    With h the prompt's history (NaN, or ≤ 0 as in the released code, means Null)::

        u = cos((π/2) · L/h)   if L < 2h   else  −1
        f = max(u, floor)      if c = 1    else  min(u, 0)        (f = 0 when h is Null)
        r = c + w · f

    Defaults w = 1.0, floor = −0.7 (paper): every correct response then beats every
    incorrect one. Short wrong answers are not penalised (min(u, 0) = 0 for L < h). Float64 (N,).
    """
    w = float(check_number("weight", weight))
    fl = float(check_number("floor", floor, -1.0, 0.0))
    c = _vec("correct", correct, torch.bool)
    n = c.numel()
    L = _lengths("length", length, n)
    try:
        h = torch.as_tensor(history_length).detach().cpu().to(torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"history_length: cannot convert to a tensor ({err})") from None
    if h.numel() != n:
        raise ValueError(f"history_length: has {h.numel()} rows but correct has {n}")
    null = torch.isnan(h) | (h <= 0)
    hs = torch.where(null, 1.0, h)
    u = torch.where(L < 2 * hs, torch.cos((math.pi / 2) * L / hs), torch.full_like(L, -1.0))
    f = torch.where(c, u.clamp_min(fl), u.clamp_max(0.0))
    f = torch.where(null, torch.zeros_like(f), f)
    return c.to(torch.float64) + w * f


# --------------------------------------------------------------------------- §A4 LASER
LASER_MODES = ("reward", "penalty", "hybrid")


def _laser_base(c: Tensor, wf: Tensor, correct_reward: float, wrong_reward: float,
                malformed_reward: float) -> Tensor:
    return torch.where(~wf, _f64(malformed_reward),
                       torch.where(c, _f64(correct_reward), _f64(wrong_reward)))


def _target(target: object, n: int) -> Tensor:
    if isinstance(target, int | float) and not isinstance(target, bool):
        return torch.full((n,), float(check_number("target", target, 0.0)), dtype=torch.float64)
    return _lengths("target", target, n)


def _well_formed(well_formed: object, n: int) -> Tensor:
    if well_formed is None:
        return torch.ones(n, dtype=torch.bool)
    return _vec("well_formed", well_formed, torch.bool, n)


def _laser_inputs(alpha: float, correct: object, length: object, target: object,
                  well_formed: object) -> tuple[float, Tensor, Tensor, Tensor, Tensor]:
    """Validated (α, correct, length, per-row target, well_formed) shared by the LASER rewards."""
    c = _vec("correct", correct, torch.bool)
    n = c.numel()
    return (float(check_number("alpha", alpha, 0.0)), c, _lengths("length", length, n),
            _target(target, n), _well_formed(well_formed, n))


def laser_reward(correct: object, length: object, target: object, *, well_formed: object = None,
                 alpha: float = 0.5, mode: str = "reward", correct_reward: float = 1.0,
                 wrong_reward: float = -0.5, malformed_reward: float = -1.0) -> Tensor:
    """LASER step reward (Liu et al. 2025, arXiv 2505.15612 §3; spec §A4).

    Base reward: +1 correct, −0.5 wrong but well formed, −1 malformed (no boxed answer or
    missing think tags; a correct verdict on a malformed response still scores −1). Then, for
    correct well-formed responses only, with target L_T (a float, or one per row)::

        "reward"  (paper):  + α · 1[L ≤ L_T]
        "penalty":          − α · 1[L > L_T]
        "hybrid":           ± α

    α = 0.5 (released scripts). Float64 (N,).
    """
    check_choice("mode", mode, LASER_MODES)
    a, c, L, T, wf = _laser_inputs(alpha, correct, length, target, well_formed)
    base = _laser_base(c, wf, correct_reward, wrong_reward, malformed_reward)
    ok = c & wf
    short = L <= T
    up, down = {"reward": (a, 0.0), "penalty": (0.0, -a), "hybrid": (a, -a)}[mode]
    bonus = torch.where(short, _f64(up), _f64(down))
    return base + torch.where(ok, bonus, torch.zeros_like(base))


def laser_buckets(p: object) -> Tensor:
    """LASER-D difficulty bucket of an accuracy p (spec §A4): 0 easy p ≥ 2/3, 1 medium
    1/3 ≤ p < 2/3, 2 hard p < 1/3. int64, same shape as ``p``."""
    q = torch.as_tensor(p, dtype=torch.float64)
    return torch.where(q >= 2 / 3, 0, torch.where(q >= 1 / 3, 1, 2)).to(torch.int64)


def _group_buckets(k: Tensor, size: Tensor, compat: str) -> Tensor:
    """Exact integer bucketing of p = k/size: native uses the training bands (p ≥ 2/3, p ≥ 1/3);
    "reference" the released monitor's bands (p > 2/3, p > 1/3)."""
    if compat == "reference":
        return torch.where(3 * k > 2 * size, 0, torch.where(3 * k > size, 1, 2)).to(torch.int64)
    return torch.where(3 * k >= 2 * size, 0, torch.where(3 * k >= size, 1, 2)).to(torch.int64)


def laser_row_targets(correct: object, group: object, targets: object) -> Tensor:
    """Per row, the target of its group's LASER-D bucket (``targets``: [easy, medium, hard])."""
    c = _vec("correct", correct, torch.bool)
    g, num = _codes(group, c.numel())
    t = torch.as_tensor(targets, dtype=torch.float64).reshape(-1)
    if t.numel() != 3:
        raise ValueError(f"targets: expected 3 values (easy, medium, hard), got {t.numel()}")
    if num == 0:
        return torch.zeros(0, dtype=torch.float64)
    k, size = _accuracy(c, g, num)
    return t[_group_buckets(k, size, "native")][g]


def laser_candidates(low: int, cap: int, step: int = 1024) -> list[int]:
    """LASER-D candidate targets T = {L_lo, L_lo + step, …, cap} (``get_length_threshold``).

    A ``low`` below ``step`` is prepended to the grid ``step, 2·step, …`` (e.g. 512 →
    [512, 1024, 2048, …]). Candidates never exceed ``cap``, and ``cap`` itself is always the last
    candidate: where ``cap − low`` is not a multiple of ``step`` the released ``range`` would
    instead end one step *above* the cap [PROPOSAL].
    """
    check_int("cap", cap, 1)
    check_int("low", low, 1, cap, note="at most cap")
    check_int("step", step, 1)
    grid = [low, *range(step, cap + 1, step)] if low < step else list(range(low, cap + 1, step))
    if grid[-1] != cap:
        grid.append(cap)
    return grid


def laser_d_targets(monitor_length: object, monitor_group: object, monitor_correct: object, *,
                    n: int, candidates: Sequence[int], fallback: float,
                    compat: str = "native") -> Tensor:
    """LASER-D per-bucket targets from a monitor evaluation (spec §A4, ``_choose_target_length``).

    Monitor groups are bucketed by accuracy. For bucket b and candidate L::

        cov_b(L) = |{monitor responses of bucket b (correct or not) with length ≤ L}| / |bucket b|
        k_b      = ⌊2n/3⌋ (easy), ⌊n/3⌋ (medium), 1 (hard)          (n: samples per prompt)
        L_T^b    = min{L ∈ candidates : ⌊cov_b(L) · k_b⌋ ≥ 1}

    ``fallback`` (the spec: the longest response of the current batch) where no candidate
    qualifies or the bucket is empty; pass NaN to resolve it later.

    compat="native": training bands (p ≥ 2/3, p ≥ 1/3) and the exact test
    ``count · k_b ≥ |bucket|``. "reference": the released monitor's bands (p > 2/3, p > 1/3;
    the spec notes the inconsistency) and float ``int(cov · k_b)`` (1/49·49 → 0).
    Returns float64 [3] = (easy, medium, hard).
    """
    check_choice("compat", compat, ("native", "reference"))
    check_int("n", n, 1, note="samples per monitor prompt")
    cand = torch.as_tensor(list(candidates), dtype=torch.float64).reshape(-1)
    if cand.numel() == 0:
        raise ValueError("candidates: must hold at least one length")
    cand = torch.sort(cand).values
    c = _vec("monitor_correct", monitor_correct, torch.bool)
    m = c.numel()
    L = _lengths("monitor_length", monitor_length, m, "monitor_correct")
    g, num = _codes(monitor_group, m, "monitor_group", "monitor_correct")
    out = torch.full((3,), float(fallback), dtype=torch.float64)
    if num == 0:
        return out
    k, size = _accuracy(c, g, num)
    bucket = _group_buckets(k, size, compat)[g]
    covered = torch.zeros(3, cand.numel(), dtype=torch.float64).index_add_(
        0, bucket, (L[:, None] <= cand[None, :]).to(torch.float64))
    total = segment_sum(torch.ones(m, dtype=torch.float64), bucket, 3)[:, None]
    k_b = torch.tensor([(2 * n) // 3, n // 3, 1], dtype=torch.float64)[:, None]
    if compat == "reference":
        ok = torch.floor(covered / total.clamp_min(1.0) * k_b) >= 1
    else:
        ok = covered * k_b >= total
    ok &= total > 0
    best = torch.where(ok, cand[None, :], torch.full_like(covered, math.inf)).min(dim=1).values
    return torch.where(torch.isinf(best), out, best)


_P1, _M1 = 1_000_003, 2_147_483_647     # 2^31 − 1
_P2, _M2 = 1_500_007, 2_147_483_629     # 2^31 − 19, the next prime below 2^31 − 1


def ngram_repetition(ids: object, mask: object = None, *, n: int = 20, min_count: int = 4,
                     chunk_elements: int = 1 << 24) -> Tensor:
    """Degenerate-repetition detector for LASER-DE [PROPOSAL] (spec §A4 gives no parameters).

    A response is *repetitive* when some token n-gram occurs at least ``min_count`` times among
    its valid tokens (occurrences may overlap). Defaults n = 20, min_count = 4: a 20-token span
    written four times is the looping failure mode; ordinary reasoning rarely repeats that much
    verbatim. (The released LASER detector is far more sensitive: 2–4-grams seen 2–3 times
    within a third of the response.)

    Vectorised: each window's n-gram gets a 62-bit key from two polynomial hashes modulo
    2^31-sized primes (no int64 overflow; a false match needs a double collision, probability
    ≈ W²·(n/2^31)² per row); keys are sorted per row and a sorted run of ``min_count`` equal
    keys is detected by comparing ``s[:, i]`` with ``s[:, i + min_count − 1]``. Windows that touch
    a masked token get unique sentinel keys. Rows are processed in chunks of about
    ``chunk_elements`` windows. Returns bool (N,).
    """
    check_int("n", n, 1, note="n-gram size")
    check_int("min_count", min_count, 2)
    x = torch.as_tensor(ids).detach().cpu()
    if x.dim() != 2 or x.is_floating_point():
        raise ValueError(f"ids: must be an integer tensor (N, T), got {x.dtype} "
                         f"{tuple(x.shape)}")
    x = x.to(torch.int64)
    rows, T = x.shape
    valid = (torch.ones_like(x, dtype=torch.bool) if mask is None
             else torch.as_tensor(mask).detach().cpu().to(torch.bool))
    if valid.shape != x.shape:
        raise ValueError(f"mask: shape {tuple(valid.shape)} differs from ids {tuple(x.shape)}")
    W = T - n + 1
    out = torch.zeros(rows, dtype=torch.bool)
    if W < min_count or rows == 0:
        return out
    step = max(1, chunk_elements // W)
    sentinel = (1 << 62) + torch.arange(W, dtype=torch.int64)
    for start in range(0, rows, step):       # row chunks bound memory; not a per-row loop
        xs, vs = x[start:start + step], valid[start:start + step]
        bad = torch.nn.functional.pad((~vs).to(torch.int64).cumsum(1), (1, 0))
        window_ok = (bad[:, n:] - bad[:, :-n]) == 0
        t1, t2 = xs.remainder(_M1), xs.remainder(_M2)
        h1 = torch.zeros(xs.shape[0], W, dtype=torch.int64)
        h2 = torch.zeros_like(h1)
        for j in range(n):                   # n passes over (rows, W): one per n-gram offset
            h1 = (h1 * _P1 + t1[:, j:j + W]).remainder_(_M1)
            h2 = (h2 * _P2 + t2[:, j:j + W]).remainder_(_M2)
        key = torch.where(window_ok, h1 * (1 << 31) + h2, sentinel)
        s = torch.sort(key, dim=1).values
        out[start:start + step] = (s[:, min_count - 1:] == s[:, :W - min_count + 1]).any(dim=1)
    return out


def laser_de_reward(correct: object, length: object, target: object, *,
                    repetitive: object = None, well_formed: object = None, alpha: float = 0.5,
                    correct_reward: float = 1.0, wrong_reward: float = -0.5,
                    malformed_reward: float = -1.0) -> Tensor:
    """LASER-DE (spec §A4): LASER-D plus exploration on failed questions.

    ::

        r = r_base + α · 1[c ∧ L ≤ L_T]                          (correct, well formed)
                   + α · 1[¬c ∧ L > L_T ∧ ¬repetitive]           (wrong, well formed)

    ``target`` is per row (:func:`laser_row_targets`); ``repetitive`` is bool (N,) from
    :func:`ngram_repetition` (None: nothing is repetitive). Malformed responses get no term.
    Float64 (N,).
    """
    a, c, L, T, wf = _laser_inputs(alpha, correct, length, target, well_formed)
    n = c.numel()
    rep = (torch.zeros(n, dtype=torch.bool) if repetitive is None
           else _vec("repetitive", repetitive, torch.bool, n))
    base = _laser_base(c, wf, correct_reward, wrong_reward, malformed_reward)
    bonus = (c & wf & (L <= T)) | (~c & wf & (L > T) & ~rep)
    return base + a * bonus.to(torch.float64)


# --------------------------------------------------------------------------- §C5 DAPO overlong
def overlong_penalty(length: object, *, cap: int, buffer: int) -> Tensor:
    """DAPO overlong soft punishment (Yu et al. 2025, arXiv 2503.14476 §3.4; spec §C5).

    With cache length C = ``buffer``::

        0                      if L ≤ L_cap − C
        (L_cap − C − L) / C    if L_cap − C < L ≤ L_cap
        −1                     if L > L_cap

    Float64 (N,); add it to the correctness reward.
    """
    cp = float(check_number("cap", cap, 0.0, low_open=True))
    buf = float(check_number("buffer", buffer, 0.0, cp, low_open=True, note="at most cap"))
    L = _lengths("length", length)
    start = cp - buf
    ramp = (start - L) / buf
    return torch.where(L <= start, torch.zeros_like(L),
                       torch.where(L <= cp, ramp, torch.full_like(L, -1.0)))


# --------------------------------------------------------------------------- §A7 DOT
def dot_truncation_lengths(correct: object, length: object, group: object, *,
                           alpha: float = 3.0, margin: float = 32.0,
                           success_threshold: float = 1.0) -> Tensor:
    """DOT outlier truncation lengths (Wu et al. 2026, arXiv 2601.03969 §3.1; spec §A7).

    For each group whose success rate p_q ≥ ``success_threshold`` (1.0: all G correct)::

        T_q = ⌊mean(L) + α · std(L)⌋        (sample std, ddof = 1; G = 1 gives std 0)
        L_i ← T_q   where L_i − T_q ≥ m_i and T_q < L_i

    with m_i = m for m ≥ 1 (or m = 0), and m_i = max(⌊m·L_i⌋, 16) for 0 < m < 1 (a fraction
    of L_i). Defaults α = 3, m = 32 (released ``run_dot.sh``). One outlier among G has z-score
    at most (G−1)/√G, so at α = 3 nothing is ever truncated when G ≤ 10. The caller re-runs the
    verifier on the truncated responses. Returns the new lengths, float64 (N,).
    """
    a = float(check_number("alpha", alpha, 0.0))
    m = float(check_number("margin", margin, 0.0))
    thr = float(check_number("success_threshold", success_threshold, 0.0, 1.0))
    c, L, g, num = _inputs(correct, length, group)
    if num == 0:
        return L
    k, size = _accuracy(c, g, num)
    stats = segment_stats(L, g, num, unbiased=True)
    cut = torch.floor(stats.mean + a * stats.std)[g]
    eligible = ((k / size >= thr) & (k > 0))[g]
    eff = (torch.clamp(torch.floor(m * L), min=16.0) if 0 < m < 1
           else torch.full_like(L, math.floor(m)))
    fire = eligible & (cut < L) & (L - cut >= eff)
    return torch.where(fire, cut, L)


def predictive_oversampling_factor(pass_rates: Sequence[float], *, init: float = 1.5,
                                   low: float = 1.2, high: float = 5.0,
                                   window: int = 20) -> float:
    """DOT predictive dynamic sampling factor (spec §A7.3; released ``DynamicSamplingStats``).

    Over the last ``window`` pass rates (fraction of sampled prompts whose group survives the
    std > 0 filter)::

        f = clip((1 / mean) · (1 + std), low, high)      (population std, as np.std)

    ``init`` when the history is empty; ``high`` when the mean pass rate is 0. Defaults: init
    1.5, [low, high] = [1.2, 5.0] (run script; the code default for high is 3.0), window 20.
    """
    lo = float(check_number("low", low, 0.0, low_open=True))
    hi = float(check_number("high", high, lo, note="at least low"))
    check_int("window", window, 1)
    rates = [float(r) for r in pass_rates][-window:]
    if not rates:
        return float(check_number("init", init, 0.0, low_open=True))
    mean = sum(rates) / len(rates)
    if mean <= 0:
        return hi
    std = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
    return min(max((1.0 / mean) * (1.0 + std), lo), hi)
