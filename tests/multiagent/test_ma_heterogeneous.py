"""Spec-seed-systems §1.10 item 6: a team on two tiny models with different tokenizers and vocab
sizes runs one full iteration (orchestra → rows → advantages → per-group updates); each group
tokenises its rows with its own tokenizer, and the wrong tokenizer fails the consistency check."""

from __future__ import annotations

import pytest
import torch

from grouprl.multiagent import (
    MathRefine,
    MathTeamEnv,
    build_model_groups,
    check_round_trip,
    collect_team_rollouts,
    encode_rows,
    encode_text,
    math_agents,
    team_advantages,
    tokenizer_fingerprint,
    update_model_groups,
)
from grouprl.policy.tiny import build_tiny_model, train_tokenizer

SMALL = dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)


@pytest.fixture(scope="module")
def policies():
    env = MathTeamEnv(difficulty=[1, 2], size=4)
    prompts = [env.reset(i)[0] for i in range(4)]
    agents = math_agents()
    corpus_a = [a.prompt(p, "", 1) for p in prompts for a in agents] * 3
    corpus_b = [t.upper() + " zebra quartz" for t in corpus_a]
    tok_a = train_tokenizer(corpus_a, 300)
    tok_b = train_tokenizer(corpus_b, 360)
    return {"Solver": (build_tiny_model(tok_a, seed=1, **SMALL), tok_a),
            "Verifier": (build_tiny_model(tok_b, seed=2, **SMALL), tok_b)}


def test_one_full_iteration_with_two_tokenizers(policies):
    assert len(policies["Solver"][1]) != len(policies["Verifier"][1])
    groups = build_model_groups(math_agents(), share_models=False, defaults={"lr": 1e-2})
    generated = []               # (group, ids, text) as the generating group produced them
    suffix = {"Solver": [" \\boxed{7}", " \\boxed{3}"],
              "Verifier": [" <verify>approve</verify>", " <verify>reject</verify>"]}

    def generate(agent, prompts):
        model, tok = policies[groups.group_of[agent.name]]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(len(generated))
        out = model.generate(**enc, max_new_tokens=4, do_sample=True, top_k=0,
                             pad_token_id=tok.pad_token_id)
        texts = []
        for k, ids in enumerate(out[:, enc["input_ids"].shape[1]:].tolist()):
            ids = [i for i in ids if i not in (tok.pad_token_id, tok.eos_token_id)]
            text = tok.decode(ids, skip_special_tokens=True)
            generated.append((agent.name, ids, text))
            texts.append(text + suffix[agent.name][k % 2])
        return texts

    roll = collect_team_rollouts(lambda: MathTeamEnv(difficulty=[1, 2], size=4), MathRefine(),
                                 generate, [0], 4, 1, group_of=groups.group_of)
    assert {r.model_group for r in roll.rows} == {"Solver", "Verifier"}
    adv = team_advantages(roll.rows, roll.episodes).advantages
    assert bool((adv != 0).any())

    models = {name: policies[name][0] for name in groups.names()}
    opts = {name: torch.optim.SGD(m.parameters(), lr=groups[name].settings["lr"])
            for name, m in models.items()}
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in models.items()}

    def step(group, idx):
        model, tok = policies[group.name]
        losses = []
        for i, (p_ids, r_ids) in zip(idx, encode_rows([roll.rows[i] for i in idx], tok)):
            check_round_trip(r_ids, roll.rows[i].response, tok)
            ids = torch.tensor([p_ids + r_ids])
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
            token_logp = logp.gather(1, ids[0, 1:, None])[-len(r_ids):, 0]
            losses.append(-adv[i] * token_logp.mean())
        opts[group.name].zero_grad()
        loss = torch.stack(losses).mean()
        loss.backward()
        opts[group.name].step()
        return {"loss": float(loss.detach())}

    metrics = update_model_groups(roll.rows, groups, 1, step)
    assert {k: len(v) for k, v in metrics.items()} == {"Solver": 1, "Verifier": 1}
    for name, model in models.items():
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before[name]))

    # consistency: the generating group's ids round-trip; the other group's tokenizer fails
    for agent, ids, text in generated:
        check_round_trip(ids, text, policies[agent][1])
    prompt = roll.rows[0].prompt
    ids_a = encode_text(prompt, policies["Solver"][1])
    check_round_trip(ids_a, prompt, policies["Solver"][1])
    with pytest.raises(ValueError, match="another model group's tokenizer"):
        check_round_trip(ids_a, prompt, policies["Verifier"][1])
    assert encode_text(prompt, policies["Verifier"][1]) != ids_a
    assert tokenizer_fingerprint(policies["Solver"][1]) != tokenizer_fingerprint(
        policies["Verifier"][1])
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        check_round_trip([len(policies["Solver"][1]) + 5], "x", policies["Solver"][1])
