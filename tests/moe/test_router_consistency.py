"""The phase router and spec-seed-systems §3.5 check 8 (rollout/training consistency): the
experts and router log-probs stored at rollout, fed back when log-probs are recomputed, give the
rollout's token and expert log-probs again (|Δ| < 1e-5 in float32), so the joint ratio is 1 at
θ_old. Also the router features from the frozen base."""

from __future__ import annotations

import pytest
import torch
from moe_testing import randomize_experts

from grouprl.losses.ratios import token_log_ratio
from grouprl.moe import (
    PhaseRouter,
    expert_log_prob,
    inject_multi_lora,
    joint_token_logprobs,
    pooled_features,
    route,
    route_step,
    routing_probs,
    text_features,
)
from grouprl.policy import build_tiny_policy, generate, response_logprobs

E = 2
TEXTS = ["go north", "take key", "open door", "you see a key", "nothing happens",
         "the door is locked", "goal: open the door"] * 4


@pytest.fixture(scope="module")
def policy():
    model, tok = build_tiny_policy(TEXTS, vocab_size=280, seed=0, hidden_size=32, num_layers=2,
                                   num_heads=4, num_kv_heads=2, intermediate_size=64)
    inject_multi_lora(model, num_experts=E, rank=4, alpha=8.0)
    randomize_experts(model, scale=1.0)
    return model.eval(), tok


def _router(seed: int = 0) -> PhaseRouter:
    torch.manual_seed(seed)
    return PhaseRouter(32, E, width=16, history_dim=8, history_proj=8, zero_init_output=False)


def test_router_forward_equals_the_step_by_step_recursion():
    router = _router()
    obs, goal = torch.randn(3, 4, 32), torch.randn(3, 32)
    experts = torch.randint(0, E, (3, 4))
    logits = router(obs, goal, experts)
    state = router.initial_state(3)
    for t in range(4):
        assert torch.allclose(logits[:, t], router.logits(obs[:, t], goal, state), atol=1e-6)
        state = router.next_state(state, obs[:, t], experts[:, t])
    # step t sees only e_<t: changing e_3 leaves every logit unchanged
    changed = experts.clone()
    changed[:, 3] = 1 - changed[:, 3]
    assert torch.equal(router(obs, goal, changed), logits)
    changed[:, 0] = 1 - changed[:, 0]
    assert not torch.allclose(router(obs, goal, changed)[:, 1:], logits[:, 1:])


def test_zero_initialised_router_is_uniform_and_small():
    router = PhaseRouter(1536, 4)
    q = routing_probs(router(torch.randn(2, 3, 1536), torch.randn(2, 1536),
                             torch.zeros(2, 3, dtype=torch.long)), 1.0)
    assert torch.allclose(q, torch.full_like(q, 0.25))
    params = sum(p.numel() for p in router.parameters())
    assert params < 0.01 * 1.5e9                                      # "well under 1%"
    with pytest.raises(ValueError, match="feature_dim"):
        PhaseRouter(0, 2)


def test_features_are_the_base_hidden_mean_and_ignore_left_padding(policy):
    model, tok = policy
    ids = torch.tensor(tok("take key", add_special_tokens=False)["input_ids"])[None]
    feat = pooled_features(model, ids, torch.ones_like(ids))
    padded = torch.cat([torch.full((1, 3), tok.pad_token_id), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    assert torch.allclose(pooled_features(model, padded, mask), feat, atol=1e-5)
    # the base, not the experts: equal to a plain forward of the model with B = 0
    with route(model, experts=torch.zeros(1, dtype=torch.long)):
        adapted = model(input_ids=ids, output_hidden_states=True).hidden_states[-1].mean(1)
    assert not torch.allclose(adapted, feat, atol=1e-4)
    both = text_features(model, tok, ["take key", "go north"], batch_size=1)
    assert torch.allclose(both[0], feat[0], atol=1e-5)
    assert both.shape == (2, 32)


@pytest.mark.parametrize("kind", ["q", "hysteresis"])
def test_check8_stored_experts_reproduce_rollout_logprobs(policy, kind):
    model, tok = policy
    router = _router()
    goals = ["goal: open the door", "goal: take key"]
    observations = [["you see a key", "nothing happens", "the door is locked"],
                    ["the door is locked", "you see a key", "nothing happens"]]
    goal_feat = text_features(model, tok, goals)
    gen = torch.Generator().manual_seed(0)
    state, previous = None, torch.full((2,), -1)
    stored = {"obs": [], "experts": [], "prev": [], "expert_logp": [], "gen": []}
    for t in range(3):
        obs_feat = text_features(model, tok, [o[t] for o in observations])
        step = route_step(router, obs_feat, goal_feat, state, previous, temperature=1.0,
                          margin=0.2, logprob_kind=kind, generator=gen)
        with route(model, experts=step.experts):
            out = generate(model, tok, [f"{g} {o[t]}" for g, o in zip(goals, observations)],
                           max_new_tokens=5, generator=gen)
        stored["obs"].append(obs_feat)
        stored["experts"].append(step.experts)
        stored["prev"].append(previous)
        stored["expert_logp"].append(step.log_prob)
        stored["gen"].append(out)
        state, previous = step.state, step.experts
    experts = torch.stack(stored["experts"], 1)                       # (B, S)
    assert len(set(experts.flatten().tolist())) == E                  # both experts used
    # learner: router recomputed teacher-forced from the stored features and experts
    q = routing_probs(router(torch.stack(stored["obs"], 1), goal_feat, experts), 1.0)
    for t in range(3):
        recomputed = expert_log_prob(q[:, t], experts[:, t], kind=kind,
                                     previous=stored["prev"][t], margin=0.2)
        assert torch.allclose(recomputed, stored["expert_logp"][t], atol=1e-6)
        g = stored["gen"][t]
        with route(model, experts=experts[:, t]):
            logp, _ = response_logprobs(model, g.prompt_ids, g.prompt_mask, g.response_ids,
                                        g.response_mask)
        mask = g.response_mask.bool()
        assert (logp - g.logprobs).abs().max() < 1e-5
        new = joint_token_logprobs(logp, mask, recomputed)
        old = joint_token_logprobs(g.logprobs, mask, stored["expert_logp"][t])
        ratio = torch.exp(token_log_ratio(new, old, mask))
        assert torch.allclose(ratio[mask], torch.ones(int(mask.sum())), atol=1e-5)
        # the wrong experts do not reproduce them (the check can fail)
        with route(model, experts=1 - experts[:, t]):
            wrong, _ = response_logprobs(model, g.prompt_ids, g.prompt_mask, g.response_ids,
                                         g.response_mask)
        assert (wrong - g.logprobs).abs().max() > 1e-3
