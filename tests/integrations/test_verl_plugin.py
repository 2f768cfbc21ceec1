"""The verl plugin (spec-scale-out §1a, §3 row T7): grouprl.integrations.verl / verl_adapters.

Always run (no verl needed):

* the estimator adapter, fed verl-shaped tensors (outcome on the last valid token, uid strings
  in shuffled order), equals grouprl's estimator on the equivalent per-response RolloutBatch
  built from the scores directly, and GRPO equals its formula written out here;
* the loss adapter equals verl 0.9.1's ``agg_loss`` convention written out below (with
  ``dp_size = 2``: Σ_local / global × dp) on a per-token PPO loss written out below, in every
  aggregation mode; config fields, ``GROUPRL_VERL_OPTIONS``, rollout IS weights (folding into
  Â checked against removing the rows), and the errors;
* ``register()`` without verl raises one line naming the extra; the docs' step-level snippet runs.

With verl installed (the optional job in docs/distributed.md; skipped otherwise): the registered
names (also through ``VERL_USE_EXTERNAL_MODULES`` in a fresh process), ``compute_advantage``
parity with verl's ``grpo`` / ``rloo`` / ``reinforce_plus_plus_baseline``, and loss parity with
verl's ``vanilla`` / ``cispo`` / ``sapo`` / ``gspo`` (values, gradients, metrics).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import grouprl.integrations.verl as plugin  # importable without verl
from grouprl.advantages import RolloutBatch, broadcast_to_tokens, compute_advantages
from grouprl.integrations.verl_adapters import (
    IS_FOLDABLE,
    OPTIONS_ENV,
    VERL_AGG_MODES,
    outcome_advantages,
    outcome_estimators,
    registered_names,
    verl_estimator,
    verl_loss,
    verl_policy_loss,
)
from grouprl.losses import available_policy_losses, policy_loss

ROOT = Path(__file__).resolve().parents[2]
HAS_VERL = importlib.util.find_spec("verl") is not None
needs_verl = pytest.mark.skipif(
    not HAS_VERL, reason="verl is not installed: the optional verl job runs these "
                         "(docs/distributed.md, 'verl plugin')")
F64 = torch.float64


@pytest.fixture(autouse=True)
def _no_options_env(monkeypatch):
    monkeypatch.delenv(OPTIONS_ENV, raising=False)


# ----------------------------------------------------------------------------------------------
# verl-shaped data
# ----------------------------------------------------------------------------------------------


def responses(seed: int = 0, groups: int = 5, n: int = 4, width: int = 7, binary: bool = False,
              singleton: bool = True):
    """``(scores, task, lengths)`` of ``groups × n`` responses (plus one singleton group) in a
    shuffled order, and verl's ``(token_level_rewards, response_mask, uid)`` of them."""
    g = torch.Generator().manual_seed(seed)
    task = [t for t in range(groups) for _ in range(n)] + ([groups] if singleton else [])
    perm = torch.randperm(len(task), generator=g).tolist()
    task = [task[i] for i in perm]
    b = len(task)
    scores = (torch.randint(0, 2, (b,), generator=g) if binary
              else torch.randn(b, generator=g)).float().to(F64)   # exact in verl's float32
    first = [i for i, t in enumerate(task) if t == 0]
    scores[first] = 1.0                                         # a group with equal scores
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).to(torch.float32)
    rewards = torch.zeros(b, width)
    rewards[torch.arange(b), lengths - 1] = scores.float()      # outcome on the last valid token
    uid = np.array([f"uid-{t:03d}" for t in task], dtype=object)
    return scores, task, lengths, rewards, mask, uid


def grouprl_path(name, scores, task, mask, **options):
    """grouprl on the per-response batch built from the scores directly, broadcast to tokens."""
    b = len(task)
    batch = RolloutBatch(group_id=task, traj_id=list(range(b)), step=[0] * b,
                         reward=scores.tolist())
    return broadcast_to_tokens(compute_advantages(name, batch, **options), mask)


# ----------------------------------------------------------------------------------------------
# Estimator adapter
# ----------------------------------------------------------------------------------------------


def test_the_carried_estimators_are_the_outcome_ones():
    carried = set(outcome_estimators())
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp", "canon"} <= carried
    assert not carried & {"gigpo", "hgpo", "graphgpo"}
    names = registered_names()
    assert all(n.startswith("grouprl_") for n in names)
    assert set(names) == {f"grouprl_{n}" for n in (*carried, *available_policy_losses())}
    with pytest.raises(ValueError, match="state.*does not pass"):
        verl_estimator("gigpo")


@pytest.mark.parametrize("name,independent", [
    ("grpo", {}),
    ("dr_grpo", {}),
    ("rloo", {}),
    ("reinforce_pp", {"response_length": "lengths"}),
    ("canon", {"metric": "lengths", "l_max": 7.0}),
])
def test_estimator_adapter_equals_grouprl_on_the_equivalent_batch(name, independent):
    scores, task, lengths, rewards, mask, uid = responses(seed=1)
    options = {k: (lengths.to(F64) if v == "lengths" else v) for k, v in independent.items()}
    expected = grouprl_path(name, scores, task, mask, **options)
    given = {"l_max": 7.0} if name == "canon" else None     # a run setting verl cannot pass
    adv, ret = outcome_advantages(name, rewards, mask, uid, options=given)
    assert adv.dtype == torch.float32 and adv.shape == rewards.shape
    assert torch.equal(adv, expected.to(torch.float32))
    assert ret is adv
    assert not adv[mask == 0].any()                              # zero on padding


def test_grpo_adapter_matches_the_formula():
    scores, task, _, rewards, mask, uid = responses(seed=2, singleton=False)
    adv, _ = verl_estimator("grpo")(token_level_rewards=rewards, response_mask=mask, index=uid,
                                    config=None)
    s = rewards.sum(-1).to(F64)
    for t in set(task):
        rows = [i for i, x in enumerate(task) if x == t]
        group = s[rows]
        if bool((group == group[0]).all()):
            want = torch.zeros(len(rows), dtype=F64)             # native: exactly s − μ = 0
        else:
            want = (group - group.mean()) / (group.std() + 1e-6)  # (s − μ)/(σ + ε), unbiased σ
        torch.testing.assert_close(adv[rows, 0].to(F64), want, atol=1e-6, rtol=0)


def test_norm_adv_by_std_false_selects_mean_norm_and_options_win():
    _, _, _, rewards, mask, uid = responses(seed=3)
    dr, _ = outcome_advantages("dr_grpo", rewards, mask, uid)
    config = SimpleNamespace(norm_adv_by_std_in_grpo=False)
    assert torch.equal(outcome_advantages("grpo", rewards, mask, uid, config)[0], dr)
    std, _ = outcome_advantages("grpo", rewards, mask, uid)
    assert not torch.equal(std, dr)
    explicit = outcome_advantages("grpo", rewards, mask, uid, config,
                                  options={"mode": "mean_std_norm"})[0]
    assert torch.equal(explicit, std)


def test_options_come_from_the_environment_variable(monkeypatch):
    _, task, _, rewards, mask, uid = responses(seed=4)
    alone = task.index(max(task))                                # the singleton group's row
    native, _ = outcome_advantages("rloo", rewards, mask, uid)
    assert float(native[alone].abs().sum()) == 0.0               # native: no baseline → 0
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"grouprl_rloo": {"compat": "reference"}}))
    ref, _ = verl_estimator("rloo")(rewards, mask, index=uid)
    torch.testing.assert_close(ref[alone], rewards[alone].sum() * mask[alone])  # raw score
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"grouprl_rloo": {"compat": "nope"}}))
    with pytest.raises(ValueError, match="compat"):
        outcome_advantages("rloo", rewards, mask, uid)


@pytest.mark.parametrize("raw,match", [
    ("{not json", "not valid JSON"),
    ('["grouprl_rloo"]', "JSON object"),
    ('{"grouprl_rloo": 1}', "JSON object"),
    ('{"grouprl_gigpo": {}}', f"{OPTIONS_ENV} key"),
    ('{"grouprl_rloo": {"gamma": 0.9}}', "gamma: unknown option"),
])
def test_bad_options_variable_raises(monkeypatch, raw, match):
    _, _, _, rewards, mask, uid = responses()
    monkeypatch.setenv(OPTIONS_ENV, raw)
    with pytest.raises(ValueError, match=match):
        outcome_advantages("rloo", rewards, mask, uid)


def test_estimator_adapter_errors():
    _, _, _, rewards, mask, uid = responses()
    with pytest.raises(ValueError, match="l_max.*GROUPRL_VERL_OPTIONS"):
        outcome_advantages("canon", rewards, mask, uid)
    with pytest.raises(ValueError, match="token_entropy"):
        outcome_advantages("canon", rewards, mask, uid,
                           options={"direction": "entropy", "l_max": 7.0})
    with pytest.raises(ValueError, match="uid"):
        outcome_advantages("grpo", rewards, mask, None)
    with pytest.raises(ValueError, match="uid"):
        outcome_advantages("grpo", rewards, mask, uid[:-1])
    with pytest.raises(ValueError, match="response_mask"):
        outcome_advantages("grpo", rewards, mask[:, :-1], uid)
    with pytest.raises(ValueError, match="agent_id"):
        outcome_advantages("grpo", rewards, mask, uid, options={"by_agent": True})


# ----------------------------------------------------------------------------------------------
# Loss adapter: verl 0.9.1 core_algos.agg_loss and a PPO token loss, written out
# ----------------------------------------------------------------------------------------------


def ppo_token_loss(logp, old, adv, clip_low, clip_high, dual=None, weights=None):
    """Per-token ``max(−rÂ, −clip(r)Â)`` [then ``min(·, −cÂ)`` for Â < 0] × IS weight (float64)."""
    out = torch.zeros_like(logp, dtype=F64)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            r = math.exp(max(min(float(logp[i, t] - old[i, t]), 20.0), -20.0))
            a = float(adv[i, t])
            loss = max(-r * a, -min(max(r, 1 - clip_low), 1 + clip_high) * a)
            if dual is not None and a < 0:
                loss = min(loss, -dual * a)
            out[i, t] = loss * (1.0 if weights is None else float(weights[i, t]))
    return out


def verl_agg(loss_mat, mask, mode, dp=1, tokens=None, seqs=None, scale=None):
    """verl 0.9.1 ``agg_loss``: Σ_local / global × dp (module docstring of verl_adapters)."""
    m = mask.to(F64)
    rows = (loss_mat * m).sum(-1)
    lengths = m.sum(-1)
    kept = (lengths > 0).to(F64)
    if mode == "token-mean":
        return (loss_mat * m).sum() / (m.sum() if tokens is None else tokens) * dp
    if mode == "token-sum":
        return (loss_mat * m).sum() * dp
    seqs = kept.sum() if seqs is None else seqs
    if mode == "seq-mean-token-mean":
        return (rows / (lengths + 1e-8) * kept).sum() / seqs * dp
    value = (rows * kept).sum() / seqs * dp
    if mode == "seq-mean-token-sum-norm":
        value = value / (mask.shape[-1] if scale is None else scale)
    return value


def loss_batch(seed: int = 0, rows: int = 6, width: int = 5, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([width, 3, 1, 0, width - 1, 2])[:rows]     # one empty row
    mask = torch.arange(width)[None] < lengths[:, None]
    old = torch.randn(rows, width, generator=g, dtype=F64) - 2.0
    logp = old + spread * torch.randn(rows, width, generator=g, dtype=F64)
    adv = torch.randn(rows, 1, generator=g, dtype=F64).expand(rows, width) * mask
    return logp, old, adv, mask


def actor_config(dp=1, tokens=None, seqs=None, scale=None, **fields):
    """A stand-in for verl's ActorConfig after ``ppo_loss`` filled ``global_batch_info``."""
    base = dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                tau_pos=1.0, tau_neg=1.05,
                policy_loss=SimpleNamespace(kl_cov_ratio=0.0002, ppo_kl_coef=0.1))
    base.update(fields)
    info = {"dp_size": dp, "batch_num_tokens": tokens, "global_batch_size": seqs,
            "loss_scale_factor": scale}
    return SimpleNamespace(**base, global_batch_info=info)


@pytest.mark.parametrize("mode", VERL_AGG_MODES)
@pytest.mark.parametrize("dp", [1, 2])
def test_ppo_adapter_follows_verl_agg_loss(mode, dp):
    logp, old, adv, mask = loss_batch(spread=0.6)
    n_tok, n_seq = int(mask.sum()), int(mask.any(-1).sum())
    # dp = 2: this rank holds part of the mini-batch; the other rank adds 13 tokens, 4 rows
    counts = dict(tokens=n_tok + 13, seqs=n_seq + 4, scale=9) if dp == 2 else {}
    config = actor_config(dp, **counts)
    got, metrics = verl_policy_loss("ppo")(old_log_prob=old, log_prob=logp, advantages=adv,
                                           response_mask=mask, loss_agg_mode=mode, config=config,
                                           rollout_is_weights=None)
    want = verl_agg(ppo_token_loss(logp, old, adv, 0.2, 0.28), mask, mode, dp, **counts)
    # seq-mean-token-mean: verl divides by L_i + 1e-8, grouprl by max(L_i, 1)
    rtol = 1e-7 if mode == "seq-mean-token-mean" else 1e-12
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12)
    if dp == 2 and mode == "token-mean":   # Σ_local / global × dp, by hand once more
        local = (ppo_token_loss(logp, old, adv, 0.2, 0.28) * mask).sum()
        torch.testing.assert_close(got, local / (n_tok + 13) * 2, rtol=1e-12, atol=1e-12)
    assert set(metrics) >= {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
    assert "actor/grouprl/clipfrac_high" in metrics and "actor/grouprl/n_tokens" not in metrics


def test_loss_adapter_equals_grouprl_policy_loss_with_global_counts():
    logp, old, adv, mask = loss_batch(seed=5)
    config = actor_config(2, tokens=40, seqs=11)
    for name in ("kpo", "gspo", "sapo"):
        options = {"compat": "verl"} if name == "gspo" else {}
        got, _ = verl_loss(name, old, logp, adv, mask, "seq-mean-token-mean", config,
                           options=options)
        extra = ({"clip_low": 0.2, "clip_high": 0.28} if name != "sapo"
                 else {"tau_pos": 1.0, "tau_neg": 1.05})
        want, _ = policy_loss(name, logp, old, adv, mask, "seq-mean-token-mean", global_seqs=11,
                              compat=options.get("compat", "native"), **extra)
        torch.testing.assert_close(got, want * 2, rtol=0, atol=0)


def test_config_fields_and_options_variable_set_the_loss_options(monkeypatch):
    logp, old, adv, mask = loss_batch(seed=6, spread=1.5)        # ratios well past 3
    config = actor_config(clip_ratio_low=0.1, clip_ratio_high=0.3, clip_ratio_c=2.0)
    vanilla, _ = verl_loss("vanilla", old, logp, adv, mask, "token-sum", config)
    ppo, _ = verl_loss("ppo", old, logp, adv, mask, "token-sum", config)
    tokens = ppo_token_loss(logp, old, adv, 0.1, 0.3, dual=2.0)
    torch.testing.assert_close(vanilla, (tokens * mask).sum(), rtol=1e-12, atol=0)
    no_dual = (ppo_token_loss(logp, old, adv, 0.1, 0.3) * mask).sum()
    torch.testing.assert_close(ppo, no_dual, rtol=1e-12, atol=0)  # ppo has no dual clip
    assert not torch.isclose(ppo, vanilla)
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"grouprl_ppo": {"clip_high": 0.5, "dual_clip": 2.0,
                                                                "agg": "token-mean"}}))
    over, _ = verl_policy_loss("ppo")(old, logp, adv, mask, "token-sum", config)
    want = (ppo_token_loss(logp, old, adv, 0.1, 0.5, dual=2.0) * mask).sum() / mask.sum()
    torch.testing.assert_close(over, want, rtol=1e-12, atol=0)


def test_cispo_and_sapo_read_their_verl_fields():
    logp, old, adv, mask = loss_batch(seed=7, spread=0.8)
    config = actor_config(clip_ratio_low=0.1, clip_ratio_high=0.3, tau_pos=0.7, tau_neg=1.3)
    cispo, _ = verl_loss("cispo", old, logp, adv, mask, "token-mean", config)
    r = torch.exp(logp - old)
    want = (-(r.clamp(0.9, 1.3)) * adv * logp * mask).sum() / mask.sum()   # relative 1 ± clip
    torch.testing.assert_close(cispo, want, rtol=1e-12, atol=0)
    capped, _ = verl_loss("cispo", old, logp, adv, mask, "token-mean", config,
                          options={"cap": 5.0})                  # an explicit cap replaces 1.3
    want = (-(r.clamp(0.9, 5.0)) * adv * logp * mask).sum() / mask.sum()
    torch.testing.assert_close(capped, want, rtol=1e-12, atol=0)
    sapo, _ = verl_loss("sapo", old, logp, adv, mask, "token-mean", config)
    tau = torch.where(adv > 0, torch.tensor(0.7, dtype=F64), torch.tensor(1.3, dtype=F64))
    want = (-(4 / tau) * torch.sigmoid(tau * (r - 1)) * adv * mask).sum() / mask.sum()
    torch.testing.assert_close(sapo, want, rtol=1e-12, atol=0)


def test_rollout_is_weights_multiply_the_token_loss():
    logp, old, adv, mask = loss_batch(seed=8, spread=0.5)
    g = torch.Generator().manual_seed(8)
    w = torch.rand(mask.shape, generator=g, dtype=F64) * 2
    w[0, :2] = 0.0
    got, _ = verl_loss("ppo", old, logp, adv, mask, "token-mean", actor_config(),
                       rollout_is_weights=w)
    want = (ppo_token_loss(logp, old, adv, 0.2, 0.28, weights=w) * mask).sum() / mask.sum()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(IS_FOLDABLE))
def test_folding_is_weights_into_the_advantage_is_exact(name):
    """Row weights in {0, 1} equal dropping the rows (same global counts); w = 2 doubles."""
    logp, old, adv, mask = loss_batch(seed=9, spread=0.2)
    options = {"compat": "verl"} if name in ("gspo", "gspo_token", "luspo") else {}
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=F64)
    config = actor_config(tokens=int(mask.sum()), seqs=int(mask.any(-1).sum()))
    for mode in ("token-mean", "seq-mean-token-mean"):
        weighted, _ = verl_loss(name, old, logp, adv, mask, mode, config,
                                rollout_is_weights=keep[:, None].expand_as(logp),
                                options=options)
        dropped, _ = verl_loss(name, old, logp, adv, mask & keep[:, None].bool(), mode, config,
                               options=options)
        torch.testing.assert_close(weighted, dropped, rtol=1e-12, atol=1e-15)
        plain, _ = verl_loss(name, old, logp, adv, mask, mode, config, options=options)
        doubled, _ = verl_loss(name, old, logp, adv, mask, mode, config,
                               rollout_is_weights=torch.full_like(logp, 2.0), options=options)
        torch.testing.assert_close(doubled, 2 * plain, rtol=1e-12, atol=1e-15)


def test_loss_adapter_errors():
    logp, old, adv, mask = loss_batch()
    w = torch.ones_like(logp)
    assert "kl_cov" not in IS_FOLDABLE
    with pytest.raises(ValueError, match="rollout_is_weights: grouprl_kl_cov"):
        verl_loss("kl_cov", old, logp, adv, mask, "token-mean", actor_config(),
                  rollout_is_weights=w)
    with pytest.raises(ValueError, match=">= 0"):
        verl_loss("ppo", old, logp, adv, mask, "token-mean", actor_config(),
                  rollout_is_weights=-w)
    with pytest.raises(ValueError, match="batch_num_tokens is required when dp_size > 1"):
        verl_loss("ppo", old, logp, adv, mask, "token-mean", actor_config(dp=2))
    with pytest.raises(ValueError, match="global_batch_size is required"):
        verl_loss("ppo", old, logp, adv, mask, "seq-mean-token-sum", actor_config(dp=2))
    with pytest.raises(ValueError, match="agg"):
        verl_loss("ppo", old, logp, adv, mask, "token-avg", actor_config())
    with pytest.raises(ValueError, match="clip_low.*sequence-level ratio"):
        verl_loss("gspo", old, logp, adv, mask, "token-mean", actor_config())  # ε 0.2
    with pytest.raises(ValueError, match="name"):
        verl_policy_loss("nope")


# ----------------------------------------------------------------------------------------------
# register() without verl; the docs' step-level snippet
# ----------------------------------------------------------------------------------------------


def test_register_without_verl_names_the_extra(monkeypatch):
    for name in ("verl", "verl.trainer", "verl.trainer.ppo", "verl.trainer.ppo.core_algos"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError) as err:
        plugin.register()
    message = str(err.value)
    assert "pip install 'grouprl[verl]'" in message and "\n" not in message


def docs_snippet() -> str:
    text = (ROOT / "docs" / "distributed.md").read_text()
    section = text.split("\n## verl plugin\n", 1)[1].split("\n## ", 1)[0]
    part = section.split("### Step-level estimators from your own trainer", 1)[1]
    return re.search(r"```python\n(.*?)```", part, re.S).group(1)


def test_docs_step_level_snippet_runs():
    scope: dict = {}
    exec(compile(docs_snippet(), "docs/distributed.md", "exec"), scope)
    adv, advantages = scope["adv"], scope["advantages"]
    assert advantages.shape == (9, 4) and torch.equal(advantages, adv[:, None].expand(9, 4))
    # the step from the shared anchor that led to success scores higher than the one that did not
    assert adv[0] > adv[3] and adv[1] > adv[4]        # task0: s0, s1 (trajectory a won, b lost)
    assert adv[5] > adv[7]                            # task1: t0 (c won, d lost)


# ----------------------------------------------------------------------------------------------
# With verl installed
# ----------------------------------------------------------------------------------------------


@needs_verl
def test_register_adds_every_name_once():
    core = importlib.import_module("verl.trainer.ppo.core_algos")
    names = plugin.register()
    assert names == registered_names() == plugin.register()          # idempotent
    for name in outcome_estimators():
        assert core.get_adv_estimator_fn(f"grouprl_{name}") is verl_estimator(name)
    for name in available_policy_losses():
        assert core.get_policy_loss_fn(f"grouprl_{name}") is verl_policy_loss(name)
    assert "grouprl_gigpo" not in core.ADV_ESTIMATOR_REGISTRY
    assert "vanilla" in core.POLICY_LOSS_REGISTRY and "grpo" in core.ADV_ESTIMATOR_REGISTRY


@needs_verl
def test_external_modules_variable_registers_in_a_fresh_process():
    code = ("import verl\nfrom verl.trainer.ppo import core_algos as c\n"
            "print(sorted(k for k in c.ADV_ESTIMATOR_REGISTRY if k.startswith('grouprl_')))\n"
            "print(sorted(k for k in c.POLICY_LOSS_REGISTRY if k.startswith('grouprl_')))\n")
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "grouprl.integrations.verl"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    estimators, losses = (eval(line) for line in out.stdout.strip().splitlines()[-2:])
    assert estimators == sorted(f"grouprl_{n}" for n in outcome_estimators())
    assert losses == sorted(f"grouprl_{n}" for n in available_policy_losses())


def verl_advantages(estimator, rewards, mask, uid, **algo):
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    plugin.register()
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards.clone(),
                                        "response_mask": mask.clone()},
                               non_tensors={"uid": uid.copy()})
    config = AlgoConfig(**algo)
    return compute_advantage(data, adv_estimator=estimator, config=config,
                             norm_adv_by_std_in_grpo=config.norm_adv_by_std_in_grpo
                             ).batch["advantages"]


@needs_verl
def test_compute_advantage_parity_with_verl():
    worst = {}
    for seed in range(20):
        for binary in (True, False):
            _, _, _, rewards, mask, uid = responses(seed, groups=6, binary=binary,
                                                    singleton=False)
            pairs = [("grpo", "grouprl_grpo", {}), ("rloo", "grouprl_rloo", {}),
                     ("reinforce_plus_plus_baseline", "grouprl_reinforce_pp", {}),
                     ("grpo", "grouprl_dr_grpo", {"norm_adv_by_std_in_grpo": False})]
            for theirs, ours, algo in pairs:
                a = verl_advantages(theirs, rewards, mask, uid, **algo)
                b = verl_advantages(ours, rewards, mask, uid, **algo)
                key = (ours, binary)
                worst[key] = max(worst.get(key, 0.0), float((a - b).abs().max()))
    print("max |verl − grouprl| over 20 batches:", worst)
    assert worst[("grouprl_grpo", True)] == 0.0                  # exact on 0/1 rewards
    assert all(v <= 1e-6 for v in worst.values()), worst


def verl_actor_config(dp=1, tokens=None, seqs=None, **fields):
    from verl.workers.config import ActorConfig

    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, **fields)
    config.global_batch_info.update(dp_size=dp, batch_num_tokens=tokens,
                                    global_batch_size=seqs, loss_scale_factor=None)
    return config


@needs_verl
@pytest.mark.parametrize("mode", VERL_AGG_MODES)
@pytest.mark.parametrize("dp", [1, 2])
def test_ppo_loss_parity_with_verl_vanilla(mode, dp):
    core = importlib.import_module("verl.trainer.ppo.core_algos")
    plugin.register()
    logp, old, adv, mask = loss_batch(seed=10, spread=0.4)       # ratios < 3: no dual clip
    logp, old, adv = logp.float(), old.float(), adv.float()
    counts = dict(tokens=int(mask.sum()) + 13, seqs=int(mask.any(-1).sum()) + 4) if dp > 1 \
        else {}
    config = verl_actor_config(dp, clip_ratio_high=0.28, **counts)
    results = {}
    for name in ("vanilla", "grouprl_ppo"):
        x = logp.clone().requires_grad_()
        loss, metrics = core.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=x, advantages=adv, response_mask=mask,
            loss_agg_mode=mode, config=config, rollout_is_weights=None)
        results[name] = (loss, torch.autograd.grad(loss, x)[0], metrics)
    (a, ga, ma), (b, gb, mb) = results["vanilla"], results["grouprl_ppo"]
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gb, ga, rtol=1e-6, atol=1e-7)
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert mb[key] == pytest.approx(ma[key], abs=1e-6)


@needs_verl
@pytest.mark.parametrize("ours,theirs,mode,options,fields", [
    ("grouprl_vanilla", "vanilla", "token-mean", {}, {}),                 # dual clip active
    ("grouprl_cispo", "cispo", "token-mean", {}, {}),
    ("grouprl_sapo", "sapo", "seq-mean-token-mean", {}, {}),
    ("grouprl_gspo_token", "gspo", "seq-mean-token-mean", {"compat": "verl"},  # verl's gspo
     {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4}),
])
def test_other_losses_match_verl(monkeypatch, ours, theirs, mode, options, fields):
    core = importlib.import_module("verl.trainer.ppo.core_algos")
    plugin.register()
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({ours: options}))
    logp, old, adv, mask = loss_batch(seed=11, spread=1.2)
    logp, old, adv = logp.float(), old.float(), adv.float()
    g = torch.Generator().manual_seed(11)
    weights = torch.rand(mask.shape, generator=g) * 2
    config = verl_actor_config(2, tokens=int(mask.sum()) + 5, seqs=9, **fields)
    values = {}
    for name in (theirs, ours):
        x = logp.clone().requires_grad_()
        loss, _ = core.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=x, advantages=adv, response_mask=mask,
            loss_agg_mode=mode, config=config, rollout_is_weights=weights)
        values[name] = (loss, torch.autograd.grad(loss, x)[0])
    torch.testing.assert_close(values[ours][0], values[theirs][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values[ours][1], values[theirs][1], rtol=1e-5, atol=1e-6)
