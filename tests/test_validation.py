"""Every validation error names the column (or option) and the first row or the accepted values:
the advantages' batch checks, grouprl.validation itself, and the option checks of every package
that uses it (losses, rewards, envs), including the validate-once hot paths of the losses."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch

from grouprl.advantages import (
    RolloutBatch,
    available_estimators,
    compute_advantages,
    discounted_returns,
    grouping_stats,
)
from grouprl.envs.sokoban import SokobanEnv
from grouprl.losses import (
    aggregate,
    drpo_loss,
    drpo_options,
    kl_penalty,
    policy_loss,
    policy_loss_options,
    preference_loss,
)
from grouprl.rewards.length import laser_d_targets, overlong_penalty
from grouprl.rewards.shaping import make_shaper
from grouprl.validation import (
    canonical_name,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_options,
    check_range,
    memoize,
)


def batch(**overrides):
    cols = dict(group_id=[0, 0, 0, 1], traj_id=[0, 0, 1, 2], step=[0, 1, 0, 0],
                reward=[0.0, 1.0, 0.0, 2.0], state=[0, 1, 0, 2], next_state=[1, 3, 3, 4])
    cols.update(overrides)
    return RolloutBatch(**cols)


def test_valid_batch_runs_with_every_estimator():
    for name in available_estimators():
        opts = {"by_agent": False} if name in ("grpo", "dr_grpo") else {}
        if name == "canon":  # CANON needs its per-row metric (response length or entropy)
            opts = {"metric": torch.tensor([3.0, 1.0, 2.0, 4.0])}
        out = compute_advantages(name, batch(), **opts)
        assert out.dtype == torch.float32 and out.shape == (4,)
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("column", ["traj_id", "step", "reward", "state", "invalid"])
def test_unequal_lengths_name_the_column(column):
    bad = {"invalid": [False, True, False]} if column == "invalid" else {
        column: getattr(batch(), column)[:3]}
    with pytest.raises(ValueError, match=rf"^{column}: has 3 rows but group_id has 4"):
        compute_advantages("gigpo", batch(**bad))


def test_two_dimensional_column():
    with pytest.raises(ValueError, match=r"^reward: columns must be 1-D, got shape \(4, 1\)"):
        compute_advantages("grpo", batch(reward=torch.zeros(4, 1)))


def test_duplicate_step_names_first_offending_row():
    # trajectory 0 has steps 0, 0 (rows 0 and 1): row 1 is the repeat.
    with pytest.raises(ValueError, match=r"^step: row 1 repeats step 0 of trajectory 0"):
        compute_advantages("grpo", batch(step=[0, 0, 0, 0]))


def test_non_contiguous_steps():
    with pytest.raises(ValueError, match=r"^step: row 1 has step 2 but trajectory 0 has 2 rows"):
        compute_advantages("grpo", batch(step=[0, 2, 0, 0]))
    with pytest.raises(ValueError, match=r"^step: row 2 has step 1 but trajectory 1 has 1 rows"):
        compute_advantages("grpo", batch(step=[0, 1, 1, 0]))


def test_negative_or_fractional_step():
    with pytest.raises(ValueError, match=r"^step: row 3 has step -1"):
        compute_advantages("grpo", batch(step=[0, 1, 0, -1]))
    with pytest.raises(ValueError, match=r"^step: must hold integers; row 1 holds 0.5"):
        compute_advantages("grpo", batch(step=[0.0, 0.5, 0.0, 0.0]))


def test_trajectory_in_two_groups():
    with pytest.raises(ValueError, match=r"^group_id: row 1 puts trajectory 0 in a second group"):
        compute_advantages("grpo", batch(group_id=[0, 1, 0, 1]))


def test_string_ids_are_named_in_errors():
    with pytest.raises(ValueError, match=r"group_id: row 1 puts trajectory 'a' in a second group "
                                         r"\('g2'\)"):
        compute_advantages("grpo", batch(group_id=["g1", "g2", "g1", "g3"],
                                         traj_id=["a", "a", "b", "c"]))


def test_non_finite_reward():
    with pytest.raises(ValueError, match=r"^reward: row 2 is not finite \(nan\)"):
        compute_advantages("grpo", batch(reward=[0.0, 1.0, float("nan"), 0.0]))


@pytest.mark.parametrize(("name", "column"), [("gigpo", "state"), ("hgpo", "state"),
                                               ("graphgpo", "state"),
                                               ("graphgpo", "next_state")])
def test_missing_column_for_estimator(name, column):
    with pytest.raises(ValueError, match=rf"^{column}: column is missing \(needed by '{name}'\)"):
        compute_advantages(name, batch(**{column: None}))


def test_by_agent_needs_agent_id():
    with pytest.raises(ValueError, match=r"^agent_id: column is missing \(needed by 'grpo' with "
                                         r"by_agent=True\)"):
        compute_advantages("grpo", batch(), by_agent=True)


def test_success_must_be_constant_per_trajectory():
    with pytest.raises(ValueError, match=r"^success: row 1 disagrees with the rest of trajectory"):
        compute_advantages("graphgpo", batch(success=[True, False, False, True]))


def test_float_identifiers_rejected():
    with pytest.raises(ValueError, match=r"^traj_id: identifiers must be integers"):
        compute_advantages("grpo", batch(traj_id=np.array([0.0, 0.0, 1.0, 2.0])))


def test_invalid_must_be_boolean():
    with pytest.raises(ValueError, match=r"^invalid: must be boolean \(0/1\); row 2 holds 0.5"):
        compute_advantages("grpo", batch(invalid=[0.0, 1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"^success: must be boolean \(0/1\); row 3 holds 2"):
        compute_advantages("graphgpo", batch(success=[1, 1, 0, 2]))


def test_unknown_estimator_and_options():
    with pytest.raises(ValueError, match=r"^estimator: unknown name 'ppo'; available: grpo"):
        compute_advantages("ppo", batch())
    with pytest.raises(ValueError, match=r"^history_lenght: unknown option for estimator 'hgpo'; "
                                         r"accepted options: invalid_penalty, epsilon, compat, "
                                         r"gamma, history_length"):
        compute_advantages("hgpo", batch(), history_lenght=2)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("grpo", {"mode": "std"}, "mode: got 'std'; accepted values are 'mean_norm', 'mean_std_norm'"),
    ("gigpo", {"compat": "verl"}, "compat: got 'verl'; accepted values are 'native', 'reference'"),
    ("gigpo", {"gamma": 1.5}, "gamma: must be a number in [0.0, 1.0], got 1.5"),
    ("hgpo", {"history_length": -1}, "history_length: must be an integer >= 0, got -1"),
    ("hgpo", {"history_length": 1.5}, "history_length: must be an integer >= 0, got 1.5"),
    ("hgpo", {"level_offset": 2}, "level_offset: got 2; accepted values are 0, 1"),
    ("graphgpo", {"omega": 1.0}, "omega: must be a number in (0.0, 1.0), got 1.0"),
    ("graphgpo", {"omega": 0.0}, "omega: must be a number in (0.0, 1.0), got 0.0"),
    ("gigpo", {"epsilon": -1e-6}, "epsilon: must be a number >= 0.0, got -1e-06"),
    ("gigpo", {"invalid_penalty": float("nan")},
     "invalid_penalty: must be a finite number, got nan"),
    ("grpo", {"by_agent": "yes"}, "by_agent: got 'yes'; accepted values are False, True"),
])
def test_bad_option_values(name, options, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        compute_advantages(name, batch(), **options)


def test_not_a_batch():
    with pytest.raises(ValueError, match=r"^batch: expected a RolloutBatch, got dict"):
        compute_advantages("grpo", {"reward": [1.0]})


def test_empty_batch_gives_empty_result():
    empty = RolloutBatch(group_id=[], traj_id=[], step=[], reward=[], state=[], next_state=[])
    for name in available_estimators():
        opts = {"by_agent": False} if name in ("grpo", "dr_grpo") else {}
        if name == "canon":
            opts = {"metric": torch.zeros(0)}
        assert compute_advantages(name, empty, **opts).shape == (0,)


# ----------------------------------------------------------------------------------------------
# grouprl.validation: the one place where range / choice / integer / bool / option checks live
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    (lambda: check_number("gamma", 1.5, 0.0, 1.0),
     "gamma: must be a number in [0.0, 1.0], got 1.5"),
    (lambda: check_number("omega", 1.0, 0.0, 1.0, low_open=True, high_open=True),
     "omega: must be a number in (0.0, 1.0), got 1.0"),
    (lambda: check_number("tau", 0, 0.0, low_open=True), "tau: must be a number > 0.0, got 0"),
    (lambda: check_number("floor", -2, -1.0), "floor: must be a number >= -1.0, got -2"),
    (lambda: check_number("p", 2, high=1), "p: must be a number <= 1, got 2"),
    (lambda: check_number("p", 1, high=1, high_open=True), "p: must be a number < 1, got 1"),
    (lambda: check_number("alpha", "oops"), "alpha: must be a number, got 'oops'"),
    (lambda: check_number("alpha", True), "alpha: must be a number, got True"),
    (lambda: check_number("x", float("nan"), 0.0), "x: must be a finite number >= 0.0, got nan"),
    (lambda: check_number("x", float("inf")), "x: must be a finite number, got inf"),
    (lambda: check_number("clamp", -1.0, 0.0, low_open=True, none_ok=True),
     "clamp: must be None or a number > 0.0, got -1.0"),
    (lambda: check_number("ratio", 2, 0.0, 1.0, note="a fraction"),
     "ratio: must be a number in [0.0, 1.0] (a fraction), got 2"),
    (lambda: check_range("gamma", -0.5, 0.0, 1.0),
     "gamma: must be a number in [0.0, 1.0], got -0.5"),
    (lambda: check_int("n", 0, 1), "n: must be an integer >= 1, got 0"),
    (lambda: check_int("n", 2.0, 1), "n: must be an integer >= 1, got 2.0"),
    (lambda: check_int("n", False, 0), "n: must be an integer >= 0, got False"),
    (lambda: check_int("low", 5, 1, 4, note="at most cap"),
     "low: must be an integer in [1, 4] (at most cap), got 5"),
    (lambda: check_int("cap", "8", 1, none_ok=True),
     "cap: must be None or an integer >= 1, got '8'"),
    (lambda: check_choice("mode", "std", ("a", "b")),
     "mode: got 'std'; accepted values are 'a', 'b'"),
    (lambda: check_choice("level", 1.0, (0, 1)), "level: got 1.0; accepted values are 0, 1"),
    (lambda: check_bool("clip", 1), "clip: got 1; accepted values are False, True"),
    (lambda: check_options("policy loss 'ppo'", {"clip_ratio": 0.2, "zeta": 1},
                           ["clip_low", "clip_high"]),
     "clip_ratio: unknown option for policy loss 'ppo'; accepted options: clip_low, clip_high"),
    (lambda: check_options("reward shaping 'none'", ["weight"], []),
     "weight: unknown option for reward shaping 'none'; accepted options: none"),
    (lambda: canonical_name("kind", "KL estimator", "k9", ("k1", "k3"), {"kl": "k1"}),
     "kind: unknown KL estimator 'k9'; accepted: 'k1', 'k3', 'kl'"),
])
def test_validation_messages_are_exact(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_validators_return_the_value_unchanged():
    assert check_number("x", 2) == 2 and type(check_number("x", 2)) is int
    assert check_number("x", None, 0.0, none_ok=True) is None
    assert check_number("x", np.float32(0.5), 0.0, 1.0) == np.float32(0.5)
    assert check_int("n", np.int64(3), 1) == 3 and check_int("n", None, none_ok=True) is None
    assert check_choice("m", "a", ("a", "b")) == "a" and check_bool("b", False) is False
    assert check_number("x", 0.0, 0.0, 1.0) == 0.0 and check_number("x", 1.0, 0.0, 1.0) == 1.0
    check_options("loss", {}, [])
    assert canonical_name("kind", "KL estimator", " KL ", ("k1",), {"kl": "k1"}) == "k1"


def test_memoize_caches_per_exact_argument_values():
    calls = []

    @memoize
    def build(x, *, flag=False):
        calls.append((x, flag))
        return ("built", x, flag)

    assert build(1) is build(1) and len(calls) == 1
    build(1.0), build(True)                            # equal under == but a different type
    build(0.0), build(-0.0)                            # equal under == but a different sign
    build((1, 2)), build((1.0, 2))                     # tuples element by element
    assert len(calls) == 7
    assert build(1, flag=True) is build(1, flag=True) and len(calls) == 8
    assert build([1, 2]) == ("built", [1, 2], False)   # unhashable: not cached, still computed
    build([1, 2])
    assert len(calls) == 10


def test_memoize_never_caches_a_failure():
    calls = []

    @memoize
    def positive(x):
        calls.append(x)
        return check_number("x", x, 0.0, low_open=True)

    for _ in range(2):
        with pytest.raises(ValueError, match=r"^x: must be a number > 0.0, got -1$"):
            positive(-1)
    assert calls == [-1, -1]


def test_memoize_bounded():
    calls = []
    double = memoize(lambda x: calls.append(x) or 2 * x, maxsize=3)
    for x in (1, 2, 3, 4, 1):
        double(x)
    assert calls == [1, 2, 3, 4, 1]                     # the cache was emptied at 3 entries


# ----------------------------------------------------------------------------------------------
# Hot paths: a repeated call with the same options does no option checking and gives the same
# result, bit for bit
# ----------------------------------------------------------------------------------------------

_VALIDATORS = ("check_choice", "check_bool", "check_number", "check_range", "check_int",
               "check_options", "canonical_name")


def _forbid_validation(monkeypatch, *modules):
    """Make every validator a module imported fail, so any option check raises."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"option checked on a repeated call: {args[:2]}")
    for module in modules:
        for name in _VALIDATORS:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)


def _loss_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(3, 5, generator=g, dtype=torch.float64) - 2.0
    old = logp + 0.1 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.float64)
    mask[1, 3:] = 0
    return logp, old, torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64), mask


@pytest.mark.parametrize(("name", "options"), [
    ("ppo", {"clip_high": 0.2731, "dual_clip": 3.0}),
    ("cispo", {"cap": 4.321, "clip_low": 0.1}),
    ("cispo", {"compat": "verl", "clip_high": 0.2}),
    ("kpo", {"Q": 0.00123, "method": "scan", "chunk_size": 2}),
    ("gspo", {"agg": "seq-mean-token-sum-norm", "clip_low": 2.5e-4}),
    ("kl_cov", {"kl_cov_ratio": 0.4321, "rollout_is": "sequence"}),
])
def test_policy_loss_checks_options_once(monkeypatch, name, options):
    # import_module: the package attribute grouprl.losses.aggregate is the function, not the module
    agg_module = importlib.import_module("grouprl.losses.aggregate")
    kpo_module = importlib.import_module("grouprl.losses.kpo")
    policy_module = importlib.import_module("grouprl.losses.policy")

    logp, old, adv, mask = _loss_batch()
    options = dict(options)
    compat = options.pop("compat", "native")
    agg = options.pop("agg", None)
    kw = dict(rollout_logp=old - 0.05, global_tokens=torch.tensor(14.0),
              global_seqs=torch.tensor(3.0), compat=compat, **options)
    first, m1 = policy_loss(name, logp, old, adv, mask, agg, **kw)
    _forbid_validation(monkeypatch, policy_module, agg_module, kpo_module)
    second, m2 = policy_loss(name, logp, old, adv, mask, agg, **kw)
    assert torch.equal(first, second) and m1 == m2
    with pytest.raises(AssertionError, match="option checked"):   # new values are checked
        policy_loss(name, logp, old, adv, mask, agg, **{**kw, "rollout_is_threshold": 2.75})


def test_aggregate_and_kl_check_options_once(monkeypatch):
    agg_module = importlib.import_module("grouprl.losses.aggregate")
    kl_module = importlib.import_module("grouprl.losses.kl")

    logp, old, _, mask = _loss_batch(1)
    kl1 = kl_penalty(logp, old, "low_var_kl+", mask=mask, compat="verl")
    a1 = aggregate(kl1, mask, "seq-mean-token-sum-norm", None, torch.tensor(2.0), 7,
                   compat="trl")
    _forbid_validation(monkeypatch, agg_module, kl_module)
    kl2 = kl_penalty(logp, old, "low_var_kl+", mask=mask, compat="verl")
    a2 = aggregate(kl2, mask, "seq-mean-token-sum-norm", None, torch.tensor(2.0), 7,
                   compat="trl")
    assert torch.equal(kl1, kl2) and torch.equal(a1, a2)
    with pytest.raises(AssertionError, match="option checked"):
        aggregate(kl2, mask, "seq-mean-token-sum-norm", None, None, 8, compat="trl")


def test_preference_and_drpo_losses_check_options_once(monkeypatch):
    drpo_module = importlib.import_module("grouprl.losses.drpo")
    pref_module = importlib.import_module("grouprl.losses.preference")

    g = torch.Generator().manual_seed(2)
    pw, pl, rw, rl = (torch.randn(4, generator=g, dtype=torch.float64) - 5 for _ in range(4))
    lengths = dict(chosen_length=torch.tensor([3.0, 4, 5, 6]), rejected_length=2.0)
    p1 = preference_loss("robust", pw, pl, rw, rl, beta=0.3141, label_smoothing=0.2,
                         length_normalize=True, **lengths)
    s = torch.randn(6, generator=g, dtype=torch.float64)
    drpo_args = (s, torch.tensor([1, 0, 1, 1, 0, 0]), torch.tensor([5.0, 7, 9, 2, 3, 4]),
                 torch.tensor([0, 0, 0, 1, 1, 1]))
    d1 = drpo_loss(*drpo_args, lam=0.2718, tau=3.0, l_max=16, beta=10.0, delta=1e-3)
    _forbid_validation(monkeypatch, pref_module, drpo_module)
    p2 = preference_loss("robust", pw, pl, rw, rl, beta=0.3141, label_smoothing=0.2,
                         length_normalize=True, **lengths)
    d2 = drpo_loss(*drpo_args, lam=0.2718, tau=3.0, l_max=16, beta=10.0, delta=1e-3)
    assert torch.equal(p1[0], p2[0]) and p1[1] == p2[1]
    assert torch.equal(d1[0], d2[0]) and repr(d1[1]) == repr(d2[1])
    with pytest.raises(AssertionError, match="option checked"):
        preference_loss("robust", pw, pl, rw, rl, beta=0.5, label_smoothing=0.2,
                        length_normalize=True, **lengths)


def test_cached_options_cannot_be_mutated_through_the_public_dict():
    opts = policy_loss_options("ppo", clip_high=0.2468)
    opts["clip_high"] = 99.0
    assert policy_loss_options("ppo", clip_high=0.2468)["clip_high"] == 0.2468


# ----------------------------------------------------------------------------------------------
# Every package's option errors come from grouprl.validation (exact messages)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    (lambda: policy_loss_options("ppo", clip_low=-0.1),
     "clip_low: must be a number >= 0.0, got -0.1"),
    (lambda: policy_loss_options("ppo", dual_clip=1.0),
     "dual_clip: must be None or a number > 1.0, got 1.0"),
    (lambda: policy_loss_options("ppo", rollout_is_threshold_lower=3.0),
     "rollout_is_threshold_lower: must be None or a number in (0.0, 2.0), got 3.0"),
    (lambda: policy_loss_options("kl_cov", kl_cov_ratio=2),
     "kl_cov_ratio: must be a number in [0.0, 1.0] (fraction of the valid tokens; 0.002 = 0.2 %), "
     "got 2"),
    (lambda: policy_loss_options("kpo", method="fast"),
     "method: got 'fast'; accepted values are 'auto', 'operator', 'scan'"),
    (lambda: policy_loss_options("kpo", chunk_size=0),
     "chunk_size: must be an integer >= 1, got 0"),
    (lambda: policy_loss_options("sapo", clip_low=0.2),
     "clip_low: unknown option for policy loss 'sapo'; accepted options: log_ratio_clamp, "
     "rollout_is, rollout_is_batch_normalize, rollout_is_mode, rollout_is_threshold, "
     "rollout_is_threshold_lower, tau_neg, tau_pos"),
    (lambda: policy_loss_options("nope"),
     "name: got 'nope'; accepted values are 'ppo', 'dual_clip'"),
    (lambda: drpo_options(tau=0), "tau: must be a number > 0.0, got 0"),
    (lambda: drpo_options(lamda=0.1),
     "lamda: unknown option for policy loss 'drpo'; accepted options: beta, delta, l_max, lam, "
     "tau"),
    (lambda: aggregate(torch.zeros(1, 2), torch.ones(1, 2), "token-mean", max_len=0),
     "max_len: must be None or an integer >= 1, got 0"),
    (lambda: aggregate(torch.zeros(1, 2), torch.ones(1, 2), "token-mean", -1),
     "global_tokens: must be None or a number >= 0 (a tensor is accepted too), got -1"),
    (lambda: kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k3", compat="reference"),
     "compat: got 'reference'; accepted values are 'native', 'verl', 'trl'"),
    (lambda: preference_loss("dpo", torch.zeros(2), torch.zeros(2), torch.zeros(2),
                             torch.zeros(2), beta=-1.0),
     "beta: must be a number > 0.0, got -1.0"),
    (lambda: preference_loss("robust", torch.zeros(2), torch.zeros(2), torch.zeros(2),
                             torch.zeros(2), label_smoothing=0.5),
     "label_smoothing: must be a number in [0.0, 0.5) (for 'robust'), got 0.5"),
    (lambda: preference_loss("hypo", torch.zeros(2), torch.zeros(2), torch.zeros(2),
                             torch.zeros(2), length_normalize=1),
     "length_normalize: got 1; accepted values are False, True"),
    (lambda: overlong_penalty([1.0], cap=100, buffer=200),
     "buffer: must be a number in (0.0, 100.0] (at most cap), got 200"),
    (lambda: laser_d_targets([1.0], [0], [True], n=0, candidates=[1], fallback=1.0),
     "n: must be an integer >= 1 (samples per monitor prompt), got 0"),
    (lambda: make_shaper("hapo", mode="max"), "mode: got 'max'; accepted values are 'min', 'mean'"),
    (lambda: SokobanEnv(num_boxes=0), "num_boxes: must be an integer >= 1, got 0"),
    (lambda: SokobanEnv(min_solution_length=5, max_solution_length=4),
     "max_solution_length: must be None or an integer >= 5 (at least min_solution_length), "
     "got 4"),
    (lambda: SokobanEnv().reset(-1), "seed: must be None or an integer >= 0, got -1"),
    (lambda: grouping_stats(batch(), history_length=-1),
     "history_length: must be an integer >= 0, got -1"),
    (lambda: discounted_returns([0], [0], [1.0], 1.5),
     "gamma: must be a number in [0.0, 1.0], got 1.5"),
])
def test_package_option_errors(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        call()
