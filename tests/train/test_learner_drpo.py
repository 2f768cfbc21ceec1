"""DRPO in the learner (spec-rewards §A9): group-aligned mini/micro-batches, micro-batch
invariance of the update (the |Q_mini| normaliser and the mini-batch KL hinge), validation, and a
few updates separating positives from negatives on a fixed batch."""

from __future__ import annotations

import copy

import pytest
import torch

import grouprl.losses.objective as learner
from grouprl.batch import Rollout, RolloutBatch
from grouprl.losses.objective import make_objective
from grouprl.policy import build_tiny_policy, response_logprobs
from grouprl.train.learner import group_batches
from grouprl.train.learner import update_policy as _update_policy

F64 = torch.float64


def update_policy(model, optimizer, rows, *, loss="drpo", loss_options=None, **kwargs):
    """The learner with DRPO's objective (l_max defaults to the padded response width)."""
    objective = make_objective(loss, loss_options, None,
                               {"max_new_tokens": rows.response_ids.shape[1]})
    return _update_policy(model, optimizer, rows, objective, **kwargs)


@pytest.fixture(scope="module")
def model():
    corpus = [f"question {i} answer {i * 7 % 13} think step {i % 5}" for i in range(60)]
    m, _ = build_tiny_policy(corpus, vocab_size=300, seed=0, hidden_size=32, num_layers=1,
                             num_heads=2, num_kv_heads=1, intermediate_size=64, dtype=F64)
    return m


def make_rows(model, seed=0, sizes=(4, 4, 3, 4, 5, 4), off_policy=True) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    n = sum(sizes)
    P, R = 6, 9
    p_len = torch.randint(2, P + 1, (n,), generator=g)
    r_len = torch.randint(1, R + 1, (n,), generator=g)
    prompt_mask = (torch.arange(P)[None] >= P - p_len[:, None]).long()
    response_mask = (torch.arange(R)[None] < r_len[:, None]).long()
    prompt_ids = torch.randint(3, vocab, (n, P), generator=g) * prompt_mask
    response_ids = torch.randint(3, vocab, (n, R), generator=g) * response_mask
    group = torch.cat([torch.full((k,), 100 + 7 * q) for q, k in enumerate(sizes)])
    perm = torch.randperm(n, generator=g)                              # groups interleaved
    correct = torch.rand(n, generator=g) < 0.5
    correct[group == 100] = True                                       # a skipped group
    batch = RolloutBatch(group_id=group[perm], traj_id=torch.arange(n),
                         step=torch.zeros(n, dtype=torch.long), reward=torch.zeros(n),
                         success=correct[perm])
    rows = Rollout(batch, prompt_ids[perm], prompt_mask[perm], response_ids[perm],
                   response_mask[perm], advantages=torch.zeros(n, dtype=F64))
    if off_policy:
        with torch.no_grad():
            lp, _ = response_logprobs(model, rows.prompt_ids, rows.prompt_mask,
                                      rows.response_ids, rows.response_mask)
        noise = 0.05 * torch.randn(lp.shape, generator=g, dtype=lp.dtype) + 0.02
        rows.old_logp = (lp + noise) * rows.response_mask
        rows.ref_logp = (lp - noise) * rows.response_mask
    return rows


def param_delta(model, rows, **kwargs) -> torch.Tensor:
    m = copy.deepcopy(model)
    before = torch.cat([p.detach().flatten().clone() for p in m.parameters()])
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    update_policy(m, opt, rows, loss="drpo", grad_clip=None,
                  generator=torch.Generator().manual_seed(3), **kwargs)
    return torch.cat([p.detach().flatten() for p in m.parameters()]) - before


OPTS = {"lam": 0.1, "tau": 2.0, "beta": 50.0, "delta": 1e-4, "l_max": 12}


# ----------------------------------------------------------------------------------------------
# Micro-batch invariance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"kl_coef": 0.3, "entropy_coef": 0.01}])
def test_one_vs_three_micro_batches_give_the_same_update(model, extra):
    rows = make_rows(model)
    one = param_delta(model, rows, loss_options=OPTS, micro_batch_size=len(rows), **extra)
    three = param_delta(model, rows, loss_options=OPTS, micro_batch_size=9, **extra)
    assert one.abs().max() > 1e-4                                      # a real update
    torch.testing.assert_close(three, one, rtol=1e-9, atol=1e-12)
    # two mini-batches (groups shuffled by the generator), micro-batches of 1 group vs all
    many = param_delta(model, rows, loss_options=OPTS, micro_batch_size=1, num_mini_batches=2,
                       **extra)
    whole = param_delta(model, rows, loss_options=OPTS, micro_batch_size=100,
                        num_mini_batches=2, **extra)
    torch.testing.assert_close(many, whole, rtol=1e-9, atol=1e-12)


def test_invariance_check_is_sensitive(model, monkeypatch):
    """The comparison above fails if a micro-batch normalises by its own questions or uses its
    own KL in the hinge (what a naive per-micro-batch call would do)."""
    rows = make_rows(model)
    m = copy.deepcopy(model)
    out = update_policy(m, torch.optim.SGD(m.parameters(), lr=0.0), rows, loss="drpo",
                        loss_options=OPTS, micro_batch_size=9)
    assert out["drpo/kl_old"] > 10 * OPTS["delta"]                     # the hinge is active
    one = param_delta(model, rows, loss_options=OPTS, micro_batch_size=len(rows))
    real = learner.drpo_loss

    def own_questions(*args, num_questions=None, **kwargs):
        return real(*args, **kwargs)

    monkeypatch.setattr(learner, "drpo_loss", own_questions)
    assert not torch.allclose(param_delta(model, rows, loss_options=OPTS, micro_batch_size=9),
                              one, rtol=1e-6, atol=1e-9)

    def own_hinge(*args, kl_hinge=None, **kwargs):
        return real(*args, **kwargs)

    monkeypatch.setattr(learner, "drpo_loss", own_hinge)
    assert not torch.allclose(param_delta(model, rows, loss_options=OPTS, micro_batch_size=9),
                              one, rtol=1e-6, atol=1e-9)


def test_on_policy_single_step_without_old_logp(model):
    rows = make_rows(model, off_policy=False)
    one = param_delta(model, rows, loss_options=OPTS, micro_batch_size=len(rows))
    three = param_delta(model, rows, loss_options=OPTS, micro_batch_size=9)
    torch.testing.assert_close(three, one, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Group alignment
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_mini, micro", [(1, 7), (2, 7), (3, 1), (4, 100), (20, 5)])
def test_group_batches_are_group_aligned(num_mini, micro):
    g = torch.Generator().manual_seed(num_mini * 31 + micro)
    sizes = torch.randint(1, 9, (11,), generator=g)
    group = torch.repeat_interleave(torch.arange(11) * 5 - 20, sizes)
    group = group[torch.randperm(group.numel(), generator=g)]
    batches = group_batches(group, num_mini, micro, generator=torch.Generator().manual_seed(0))
    assert len(batches) == min(num_mini, 11)
    seen = []
    for questions, micros in batches:
        ids_in_mini = torch.unique(group[torch.cat(micros)])
        assert questions == ids_in_mini.numel()
        for idx in micros:
            ids = torch.unique(group[idx])
            assert idx.numel() <= micro or ids.numel() == 1             # ≥ 1 whole group
            for gid in ids:                                            # whole groups only
                assert int((group[idx] == gid).sum()) == int((group == gid).sum())
            seen.append(idx)
    allrows = torch.cat(seen)
    assert torch.equal(torch.sort(allrows).values, torch.arange(group.numel()))
    assert sum(q for q, _ in batches) == 11
    # same generator, same split; rows of a group keep their order
    again = group_batches(group, num_mini, micro, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for (_, x), (_, y) in zip(batches, again) for a, b in zip(x, y))
    for idx in seen:
        assert torch.equal(idx, torch.cat([idx[group[idx] == gid] for gid in
                                           dict.fromkeys(group[idx].tolist())]))


def test_update_calls_the_loss_on_whole_groups_with_mini_batch_counts(model, monkeypatch):
    rows = make_rows(model)
    calls = []
    real = learner.drpo_loss

    def spy(seq_score, correct, length, group, **kwargs):
        calls.append((group.clone(), kwargs["num_questions"], kwargs["l_max"]))
        return real(seq_score, correct, length, group, **kwargs)

    monkeypatch.setattr(learner, "drpo_loss", spy)
    m = copy.deepcopy(model)
    update_policy(m, torch.optim.SGD(m.parameters(), lr=0.0), rows, loss="drpo",
                  loss_options={"l_max": None}, micro_batch_size=5, num_mini_batches=2,
                  generator=torch.Generator().manual_seed(1))
    assert len(calls) >= 4
    per_mini: dict[int, set] = {}
    for ids, questions, l_max in calls:
        assert l_max == rows.response_ids.shape[1]                     # default: padded width
        for gid in torch.unique(ids):
            assert int((ids == gid).sum()) == int((rows.batch.group_id == gid).sum())
        per_mini.setdefault(questions, set()).update(ids.tolist())
    assert sum(len(v) for v in per_mini.values()) == 6                 # 3 + 3 questions
    assert sorted(per_mini) == [3] and len(per_mini[3]) == 6


# ----------------------------------------------------------------------------------------------
# Validation and learning
# ----------------------------------------------------------------------------------------------


def test_errors(model):
    rows = make_rows(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    bare = copy.deepcopy(rows)
    bare.batch.group_id = None
    with pytest.raises(ValueError, match=r"^rows\.group_id: not set"):
        update_policy(model, opt, bare, loss="drpo")
    bare = copy.deepcopy(rows)
    bare.batch.success = None
    with pytest.raises(ValueError, match=r"^rows\.success: not set"):
        update_policy(model, opt, bare, loss="drpo")
    bad = copy.deepcopy(rows)
    bad.batch.group_id = rows.batch.group_id[:-1]
    with pytest.raises(ValueError, match=r"^rows\.group_id: must have 24 rows"):
        update_policy(model, opt, bad, loss="drpo")
    with pytest.raises(ValueError, match="^lam:"):
        update_policy(model, opt, rows, loss="drpo", loss_options={"lam": 0})
    with pytest.raises(ValueError, match="^clip_low:"):
        update_policy(model, opt, rows, loss="drpo", loss_options={"clip_low": 0.2})


def _scores(model, rows):
    with torch.no_grad():
        lp, _ = response_logprobs(model, rows.prompt_ids, rows.prompt_mask, rows.response_ids,
                                  rows.response_mask)
    m = rows.response_mask.bool()
    s = (lp * m).sum(1) / m.sum(1)
    valid = _valid_rows(rows)
    ok = rows.batch.success
    return float(s[ok & valid].mean()), float(s[~ok & valid].mean())


def _valid_rows(rows):
    valid = torch.zeros_like(rows.batch.success)
    for gid in torch.unique(rows.batch.group_id):
        g = rows.batch.group_id == gid
        valid |= g & bool(rows.batch.success[g].any()) & bool((~rows.batch.success[g]).any())
    return valid


def test_drpo_separates_positives_from_negatives(model):
    m = copy.deepcopy(model)
    rows = make_rows(m, seed=5, off_policy=False)
    pos0, neg0 = _scores(m, rows)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(8):
        out = update_policy(m, opt, rows, loss="drpo", loss_options={"l_max": 12},
                            micro_batch_size=8)
    pos1, neg1 = _scores(m, rows)
    assert pos1 - neg1 > (pos0 - neg0) + 0.5
    n_valid = len(set(rows.batch.group_id[_valid_rows(rows)].tolist()))
    assert 3 <= n_valid <= 5
    assert out["actor/updates"] == 1.0 and out["drpo/valid_questions"] == n_valid
    assert out["drpo/kl_old"] == 0.0 and out["drpo/pos_score"] > out["drpo/neg_score"]
