"""grouprl.rewards.length: spec-rewards test vectors (§A0, A1, A5, A7), §C7 properties, and
slow per-group Python references written from the formulas, compared on random batches."""

from __future__ import annotations

import math
import re
import statistics
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grouprl.rewards.length import (
    HapoHistory,
    da_dler_reward,
    dler_reward,
    dot_truncation_lengths,
    grpo_lambda_reward,
    hapo_reward,
    kimi_length_reward,
    laser_buckets,
    laser_candidates,
    laser_d_targets,
    laser_de_reward,
    laser_reward,
    laser_row_targets,
    ngram_repetition,
    overlong_penalty,
    predictive_oversampling_factor,
    top_lambda_groups,
)

ATOL = 1e-4  # the spec prints 4 decimals


def close(got, expected, atol=ATOL):
    assert torch.as_tensor(got).tolist() == pytest.approx(list(expected), abs=atol)


def random_batch(seed, groups=6, size=(1, 9), max_len=400):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(size[0], size[1], groups)
    group = np.repeat(rng.permutation(groups) * 7 - 3, sizes)   # arbitrary ints, negatives too
    n = len(group)
    perm = rng.permutation(n)
    group = group[perm]
    acc = rng.random(groups)[np.unique(group, return_inverse=True)[1]]
    correct = rng.random(n) < acc
    length = rng.integers(0, max_len, n)
    if seed % 2:  # ties in length
        length = (length // 100) * 100
    return (torch.from_numpy(correct), torch.from_numpy(length), torch.from_numpy(group))


def by_group(group):
    out: dict[int, list[int]] = {}
    for i, g in enumerate(group.tolist()):
        out.setdefault(g, []).append(i)
    return out


# --------------------------------------------------------------------------- §A0 Kimi
def test_kimi_spec_vector():
    r = kimi_length_reward([1, 1, 0, 0], [100, 300, 200, 400], [0, 0, 0, 0], weight=0.4,
                           correct_reward=1.0, wrong_reward=-0.5)
    close(r, [1.2, 0.9333, -0.5, -0.7])
    len_term = kimi_length_reward([1, 1, 0, 0], [100, 300, 200, 400], [5] * 4, weight=1.0)
    close(len_term - torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64),
          [0.5, -0.1667, 0.0, -0.5])


def kimi_ref(c, L, g, w, cr, wr):
    out = [0.0] * len(c)
    for rows in by_group(g).values():
        lo, hi = min(L[i] for i in rows), max(L[i] for i in rows)
        for i in rows:
            lam = 0.0 if hi == lo else 0.5 - (L[i] - lo) / (hi - lo)
            out[i] = (cr if c[i] else wr) + w * (lam if c[i] else min(0.0, lam))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_kimi_matches_reference(seed):
    c, L, g = random_batch(seed)
    got = kimi_length_reward(c, L, g, weight=0.3, correct_reward=1.0, wrong_reward=-0.5)
    ref = kimi_ref(c.tolist(), L.tolist(), g, 0.3, 1.0, -0.5)
    assert got.tolist() == pytest.approx(ref, abs=1e-12)


def test_kimi_equal_lengths_give_no_term():
    close(kimi_length_reward([1, 0], [50, 50], [0, 0], weight=0.4), [1.0, 0.0], atol=0)


# --------------------------------------------------------------------------- §A1 GRPO-λ
SPEC_A1 = dict(correct=[1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0],
               length=[100, 200, 300, 400, 10, 20, 30, 40, 150, 250, 100, 500],
               group=[1] * 4 + [2] * 4 + [3] * 4)


def test_grpo_lambda_spec_vector():
    r = grpo_lambda_reward(**SPEC_A1, alpha=0.2, top_fraction=0.5)   # ⌈0.5·3⌉ = 2 groups
    close(r, [0.9546, 0.9000, 0.8454, 0, 1, 0, 0, 0, 0.9462, 0.8538, 0, 0])
    sel = top_lambda_groups(SPEC_A1["correct"], SPEC_A1["group"], 0.5)
    assert sel.tolist() == [True] * 4 + [False] * 4 + [True] * 4


def test_top_lambda_rounding_and_ties():
    # 10 groups of equal accuracy: ⌈0.3·10⌉ = 3 (not 4 from 3.0000000000000004), first three
    # by appearance win the tie.
    group = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]).repeat_interleave(2)
    sel = top_lambda_groups(torch.ones(20, dtype=torch.bool), group, 0.3)
    assert sel.tolist() == [True] * 6 + [False] * 14
    assert not bool(top_lambda_groups([1, 0], [0, 1], 0.0).any())


def test_grpo_lambda_zero_accuracy_selected_group_is_accuracy_prioritised():
    r = grpo_lambda_reward([0, 0, 1, 0], [10, 20, 30, 40], [0, 0, 1, 1], alpha=0.5,
                           top_fraction=1.0)
    close(r, [0, 0, 1 - 0.5 * 0.5, 0], atol=1e-12)   # lone correct: z = 0 → 1 − α/2


def grpo_lambda_ref(c, L, g, alpha, lam):
    groups = by_group(g)        # insertion order = first appearance
    p = {k: sum(c[i] for i in rows) / len(rows) for k, rows in groups.items()}
    ranked = sorted(groups, key=lambda k: -p[k])
    top = set(ranked[:math.ceil(Fraction(str(lam)) * len(groups))])
    out = [float(x) for x in c]
    for k in top:
        rows = groups[k]
        ok = [L[i] for i in rows if c[i]]
        if not ok:
            continue
        mean, std = statistics.fmean(ok), statistics.pstdev(ok)
        for i in rows:
            z = 0.0 if std == 0 else (L[i] - mean) / std
            out[i] = 1 - alpha / (1 + math.exp(-z)) if c[i] else 0.0
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam", [0.2, 0.3, 0.5, 1.0])
def test_grpo_lambda_matches_reference(seed, lam):
    c, L, g = random_batch(seed)
    got = grpo_lambda_reward(c, L, g, alpha=0.4, top_fraction=lam)
    ref = grpo_lambda_ref(c.tolist(), L.tolist(), g, 0.4, lam)
    assert got.tolist() == pytest.approx(ref, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 1000)), min_size=1,
                max_size=40),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_grpo_lambda_wrong_answers_in_top_groups_get_zero(rows, alpha, lam):
    g, c, L = (list(x) for x in zip(*rows))
    r = grpo_lambda_reward(c, L, g, alpha=alpha, top_fraction=lam)
    top = top_lambda_groups(c, g, lam)
    c_t = torch.tensor(c)
    assert bool((r[top & ~c_t] == 0).all())
    assert bool((r[~c_t] == 0).all())
    assert bool((r[c_t] >= 1 - alpha - 1e-12).all()) and bool((r[c_t] <= 1).all())


# --------------------------------------------------------------------------- §A3 DLER
def test_dler_and_da_dler():
    assert dler_reward([1, 1, 0], [False, True, False]).tolist() == [1.0, 0.0, 0.0]
    c = [1, 1, 1, 0, 1, 0, 0, 0]
    L = [1500, 2500, 1000, 3000, 2500, 3900, 100, 100]
    t = [False] * 8
    g = [0] * 4 + [1] * 4
    # group 0: p = 0.75 ≥ 0.5 → cap 2000: the 2500-token correct answer is re-scored 0.
    # group 1: p = 0.25 → no tier: plain DLER.
    assert da_dler_reward(c, L, t, g).tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    tiers = [[0.25, 3000], [0.75, 1200]]
    assert da_dler_reward(c, L, t, g, tiers=tiers).tolist() == [0, 0, 1, 0, 1, 0, 0, 0]
    msg = "tiers: p_min: must be a number in [0.0, 1.0], got 1.5"
    with pytest.raises(ValueError, match=re.escape(msg)):
        da_dler_reward(c, L, t, g, tiers=[[1.5, 2000]])


# --------------------------------------------------------------------------- §A5 HAPO
def test_hapo_spec_vector_and_history():
    L, c = [100, 300, 200, 400], [1, 1, 0, 0]
    r = hapo_reward(c, L, torch.full((4,), 250.0))
    close(r, [1.809, 0.691, 0.0, -0.809], atol=5e-4)
    h = HapoHistory()
    h.update(["q"] * 4, c, [250, 250, 250, 250])
    assert h.lookup(["q"]).tolist() == [250.0]
    assert hapo_reward(c, L, h.lookup(["q"] * 4)).tolist() == pytest.approx(r.tolist())
    h.update(["q"] * 4, c, L)
    assert h.lookup(["q", "other"])[0].item() == 100.0
    assert math.isnan(h.lookup(["q", "other"])[1].item())
    assert len(h) == 1


def test_hapo_null_history_gives_no_length_term():
    r = hapo_reward([1, 0], [10, 10], torch.tensor([math.nan, 0.0]))
    assert r.tolist() == [1.0, 0.0]


def hapo_ref_run(batches, mode, w, floor):
    hist: dict[str, float] = {}
    count: dict[str, int] = {}
    rewards = []
    for keys, c, L in batches:
        out = []
        for k, ci, li in zip(keys, c, L):
            h = hist.get(str(k))
            if h is None or h <= 0:
                f = 0.0
            else:
                u = math.cos(li / h * math.pi / 2) if li < 2 * h else -1.0
                f = max(floor, u) if ci else min(0.0, u)
            out.append(ci + w * f)
        rewards.append(out)
        for k in dict.fromkeys(keys):
            ok = [li for kk, ci, li in zip(keys, c, L) if kk == k and ci]
            if not ok:
                continue
            key = str(k)
            if mode == "min":
                hist[key] = min(ok) if key not in hist else min(hist[key], min(ok))
            else:
                n0 = count.get(key, 0)
                hist[key] = (hist.get(key, 0.0) * n0 + sum(ok)) / (n0 + len(ok))
            count[key] = count.get(key, 0) + len(ok)
    return rewards, hist


@pytest.mark.parametrize("mode", ["min", "mean"])
def test_hapo_history_matches_reference_over_batches(mode):
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(5):
        keys = [int(k) for k in rng.integers(0, 6, 24)]
        batches.append((keys, [bool(x) for x in rng.random(24) < 0.5],
                        [int(x) for x in rng.integers(1, 500, 24)]))
    ref_rewards, ref_hist = hapo_ref_run(batches, mode, 0.8, -0.6)
    hist = HapoHistory(mode)
    for (keys, c, L), expected in zip(batches, ref_rewards):
        got = hapo_reward(c, L, hist.lookup(keys), weight=0.8, floor=-0.6)
        assert got.tolist() == pytest.approx(expected, abs=1e-12)
        hist.update(keys, c, L)
    assert hist.state_dict()["value"] == pytest.approx(ref_hist, abs=1e-9)


def test_hapo_history_state_dict_round_trip_is_json():
    import json

    h = HapoHistory("mean")
    h.update([("task", 1), "b", 3], [1, 1, 0], [10, 20, 30])
    state = json.loads(json.dumps(h.state_dict()))
    h2 = HapoHistory("mean")
    h2.load_state_dict(state)
    keys = [("task", 1), "b", 3]
    assert h2.lookup(keys).tolist()[:2] == h.lookup(keys).tolist()[:2] == [10.0, 20.0]
    with pytest.raises(ValueError, match="^mode: the saved history uses 'mean'"):
        HapoHistory("min").load_state_dict(state)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5000),
                          st.one_of(st.just(math.nan), st.floats(1.0, 3000.0))),
                min_size=2, max_size=30),
       st.floats(0.0, 1.0))
def test_hapo_every_correct_beats_every_incorrect(rows, w):
    c, L, h = (list(x) for x in zip(*rows))
    r = hapo_reward(c, L, torch.tensor(h, dtype=torch.float64), weight=w, floor=-0.7)
    c_t = torch.tensor(c)
    if bool(c_t.any()) and bool((~c_t).any()):
        assert float(r[c_t].min()) > float(r[~c_t].max())


# --------------------------------------------------------------------------- §A4 LASER
def test_laser_modes_and_base():
    c, L = [1, 1, 0, 0, 1], [100, 300, 100, 300, 100]
    wf = [True, True, True, True, False]
    close(laser_reward(c, L, 200, well_formed=wf), [1.5, 1.0, -0.5, -0.5, -1.0], atol=0)
    close(laser_reward(c, L, 200, well_formed=wf, mode="penalty"), [1.0, 0.5, -0.5, -0.5, -1.0],
          atol=0)
    close(laser_reward(c, L, 200, well_formed=wf, mode="hybrid", alpha=0.3),
          [1.3, 0.7, -0.5, -0.5, -1.0], atol=1e-15)
    with pytest.raises(ValueError, match="^mode: got 'x'"):
        laser_reward(c, L, 200, mode="x")


def test_laser_buckets_and_candidates():
    assert laser_buckets(torch.tensor([1.0, 2 / 3, 0.5, 1 / 3, 0.2, 0.0])).tolist() == [
        0, 0, 1, 1, 2, 2]
    assert laser_candidates(512, 4096) == [512, 1024, 2048, 3072, 4096]
    assert laser_candidates(4096, 16384) == list(range(4096, 16385, 1024))
    grid = laser_candidates(3000, 8192)
    assert grid[:2] == [3000, 4024] and grid[-1] == 8192 and max(grid) == 8192
    msg = "low: must be an integer in [1, 4096] (at most cap), got 5000"
    with pytest.raises(ValueError, match="^" + re.escape(msg)):
        laser_candidates(5000, 4096)


def laser_d_ref(L, g, c, n, candidates, fallback):
    buckets: list[list[float]] = [[], [], []]
    for rows in by_group(g).values():
        p = Fraction(sum(c[i] for i in rows), len(rows))
        b = 0 if p >= Fraction(2, 3) else (1 if p >= Fraction(1, 3) else 2)
        buckets[b].extend(L[i] for i in rows)
    ks = [2 * n // 3, n // 3, 1]
    out = []
    for b in range(3):
        best = fallback
        for cand in sorted(candidates):
            if buckets[b] and math.floor(
                    Fraction(sum(x <= cand for x in buckets[b]), len(buckets[b])) * ks[b]) >= 1:
                best = cand
                break
        out.append(best)
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [2, 3, 8])
def test_laser_d_targets_match_reference(seed, n):
    rng = np.random.default_rng(seed)
    groups = 12
    g = torch.arange(groups).repeat_interleave(n)
    acc = torch.from_numpy(rng.random(groups)).repeat_interleave(n)
    c = torch.rand(groups * n, generator=torch.Generator().manual_seed(seed)) < acc
    L = torch.from_numpy(rng.integers(100, 9000, groups * n) * (1 + seed % 3))
    cands = laser_candidates(512, 8192, 1024)
    got = laser_d_targets(L, g, c, n=n, candidates=cands, fallback=-1.0)
    assert got.tolist() == laser_d_ref(L.tolist(), g, c.tolist(), n, cands, -1.0)


def test_laser_d_reference_compat_bands():
    # Two groups of 3 with p = 2/3: "easy" for training bands, "medium" for the released monitor.
    L, g, c = [100, 200, 300, 100, 200, 300], [0, 0, 0, 1, 1, 1], [1, 1, 0, 1, 1, 0]
    native = laser_d_targets(L, g, c, n=3, candidates=[150, 250, 350], fallback=-1.0)
    ref = laser_d_targets(L, g, c, n=3, candidates=[150, 250, 350], fallback=-1.0,
                          compat="reference")
    # easy k = ⌊2n/3⌋ = 2: ⌊cov·2⌋ ≥ 1 needs cov ≥ 1/2 → 250;
    # medium k = ⌊n/3⌋ = 1: needs cov = 1 → 350.
    assert native.tolist() == [250.0, -1.0, -1.0]
    assert ref.tolist() == [-1.0, 350.0, -1.0]
    rows = laser_row_targets(c, g, native)
    assert rows.tolist() == [250.0] * 6


def repetition_ref(ids, mask, n, k):
    out = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        counts: dict[tuple, int] = {}
        hit = False
        for i in range(len(row) - n + 1):
            if all(m[i:i + n]):
                key = tuple(row[i:i + n])
                counts[key] = counts.get(key, 0) + 1
                hit |= counts[key] >= k
        out.append(hit)
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,k", [(1, 3), (3, 2), (4, 3)])
def test_ngram_repetition_matches_reference(seed, n, k):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 4, (16, 24), generator=gen)
    lengths = torch.randint(0, 25, (16,), generator=gen)
    mask = torch.arange(24)[None, :] < lengths[:, None]
    if seed % 2:  # arbitrary, non-prefix masks
        mask &= torch.rand(16, 24, generator=gen) < 0.9
    got = ngram_repetition(ids, mask, n=n, min_count=k, chunk_elements=50)
    assert got.tolist() == repetition_ref(ids, mask, n, k)


def test_ngram_repetition_flags_a_loop():
    ids = torch.randint(1000, 50000, (3, 300), generator=torch.Generator().manual_seed(0))
    ids[1, 40:140] = torch.arange(25).repeat(4)
    assert ngram_repetition(ids).tolist() == [False, True, False]


def test_laser_de_exploration_bonus():
    c, L = [1, 1, 0, 0, 0], [100, 300, 300, 300, 100]
    rep = [False, False, False, True, False]
    r = laser_de_reward(c, L, 200, repetitive=rep)
    close(r, [1.5, 1.0, 0.0, -0.5, -0.5], atol=0)


# --------------------------------------------------------------------------- §C5 overlong
def test_overlong_penalty():
    r = overlong_penalty([0, 80, 90, 100, 101], cap=100, buffer=20)
    close(r, [0.0, 0.0, -0.5, -1.0, -1.0], atol=1e-15)
    msg = "buffer: must be a number in (0.0, 100.0] (at most cap), got 200"
    with pytest.raises(ValueError, match="^" + re.escape(msg)):
        overlong_penalty([1], cap=100, buffer=200)


# --------------------------------------------------------------------------- §A7 DOT
def test_dot_spec_vectors():
    g32 = dot_truncation_lengths([1] * 32, [1000] * 31 + [9000], [0] * 32)
    assert g32.tolist() == [1000.0] * 31 + [5492.0]
    g8 = dot_truncation_lengths([1] * 8, [1000] * 7 + [9000], [0] * 8)
    assert g8.tolist() == [1000.0] * 7 + [9000.0]
    # Not all correct: untouched.
    g32w = dot_truncation_lengths([1] * 31 + [0], [1000] * 31 + [9000], [0] * 32)
    assert g32w.tolist()[-1] == 9000.0


def dot_ref(c, L, g, alpha, margin):
    out = [float(x) for x in L]
    for rows in by_group(g).values():
        if not all(c[i] for i in rows):
            continue
        lens = [L[i] for i in rows]
        std = statistics.stdev(lens) if len(lens) > 1 else 0.0
        cut = int(statistics.fmean(lens) + alpha * std)
        for i in rows:
            eff = max(int(L[i] * margin), 16) if 0 < margin < 1 else int(margin)
            if cut < L[i] and L[i] - cut >= eff:
                out[i] = float(cut)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("margin", [32.0, 0.1, 0.0])
def test_dot_matches_reference(seed, margin):
    rng = np.random.default_rng(seed)
    groups, size = 8, 12
    g = np.repeat(np.arange(groups), size)
    c = np.ones(groups * size, dtype=bool)
    c[rng.integers(0, groups * size, 3)] = False
    L = rng.integers(100, 400, groups * size)
    L[rng.integers(0, groups * size, 10)] = rng.integers(3000, 9000, 10)
    got = dot_truncation_lengths(c, L, g, alpha=1.5, margin=margin)
    assert got.tolist() == dot_ref(c.tolist(), L.tolist(), torch.from_numpy(g), 1.5, margin)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 100_000), min_size=1, max_size=10))
def test_dot_never_truncates_small_groups(lengths):
    n = len(lengths)
    out = dot_truncation_lengths([True] * n, lengths, [0] * n, alpha=3.0, margin=0.0)
    assert out.tolist() == [float(x) for x in lengths]


def test_predictive_oversampling_factor():
    assert predictive_oversampling_factor([]) == 1.5
    assert predictive_oversampling_factor([0.5, 0.5]) == pytest.approx(2.0)
    assert predictive_oversampling_factor([0.4, 0.6]) == pytest.approx(2.0 * 1.1)  # pop. std
    assert predictive_oversampling_factor([0.0, 0.0]) == 5.0
    assert predictive_oversampling_factor([0.1]) == 5.0
    assert predictive_oversampling_factor([1.0]) == 1.2
    assert predictive_oversampling_factor([0.0] * 5 + [0.5] * 20) == pytest.approx(2.0)  # window


def test_input_errors_name_the_field():
    with pytest.raises(ValueError, match="^length: has 3 rows but correct has 2"):
        kimi_length_reward([1, 0], [1, 2, 3], [0, 0], weight=0.1)
    with pytest.raises(ValueError, match="^group: must hold integer group ids"):
        kimi_length_reward([1, 0], [1, 2], [0.5, 1.0], weight=0.1)
    with pytest.raises(ValueError, match="^length: row 1 is negative"):
        grpo_lambda_reward([1, 0], [1, -2], [0, 0], alpha=0.1)
    msg = "alpha: must be a number in [0.0, 1.0], got 1.5"
    with pytest.raises(ValueError, match="^" + re.escape(msg)):
        grpo_lambda_reward([1, 0], [1, 2], [0, 0], alpha=1.5)
