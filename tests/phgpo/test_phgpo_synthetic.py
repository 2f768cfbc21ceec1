"""PhGPO synthetic tool task, state text and the tool-head policy (spec §2.2, §2.11)."""

from __future__ import annotations

import pytest
import torch

from grouprl.phgpo.state import state_text
from grouprl.phgpo.synthetic import (
    GENERIC_OUTPUT,
    TOOLS,
    TRANSITIONS,
    ToolSimulator,
    split_tasks,
    synthetic_tasks,
    tool_index,
    variant_ids,
)
from grouprl.phgpo.tool_head import ToolHeadPolicy, last_token_index
from grouprl.policy import LoraOptions, build_tiny_model, train_tokenizer


def test_tool_set_and_graph_is_a_dag_over_three_categories():
    assert len(TOOLS) == 12 and {t.name.split("-")[0] for t in TOOLS} == {"fs", "mail", "web"}
    assert set(TRANSITIONS) == {t.name for t in TOOLS}
    state: dict[str, int] = {}

    def visit(node: str) -> None:          # depth-first search; 1 = on the stack
        assert state.get(node) != 1, f"cycle through {node}"
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt, weight in TRANSITIONS[node]:
            assert weight > 0
            visit(nxt)
        state[node] = 2

    for name in TRANSITIONS:
        visit(name)
    flat = [v for ids in variant_ids() for v in ids]
    assert flat == list(range(sum(len(t.variants) for t in TOOLS)))


def test_tasks_are_deterministic_and_follow_the_graph():
    tasks = synthetic_tasks(seed=3)
    assert tasks == synthetic_tasks(seed=3) and tasks != synthetic_tasks(seed=4)
    assert len(tasks) == 60
    variants = variant_ids()
    for task in tasks:
        names = task.reference_names
        assert 2 <= len(names) <= 5 and task.success
        for a, b in zip(names, names[1:]):
            assert b in dict(TRANSITIONS[a])
        assert all(v in variants[t] for t, v in zip(task.reference, task.reference_variants))
        assert len(task.outputs) == len(task.reference)
    train, test = split_tasks(tasks)
    assert len(train) == 48 and len(test) == 12
    assert {t.task_id for t in train}.isdisjoint({t.task_id for t in test})


def test_simulator_replays_on_match_else_generic():
    task = synthetic_tasks(seed=0)[0]
    sim = ToolSimulator()
    assert sim.execute(task, 0, task.reference[0]) == task.outputs[0]
    wrong = (task.reference[1] + 1) % len(TOOLS)
    assert sim.execute(task, 1, wrong) == GENERIC_OUTPUT.format(tool=TOOLS[wrong].name)
    assert sim.execute(task, 99, task.reference[0]).endswith("executed successfully.")
    with pytest.raises(ValueError, match="^tool:"):
        sim.execute(task, 0, 12)
    with pytest.raises(ValueError, match="^name:"):
        tool_index("fs-move")


def test_state_text_layout_and_truncation():
    assert state_text("t", "q", []) == "Task: t\nQuery: q\nHistory:\n(none)\nNext tool?"
    history = [(f"tool{i}", "x" * 200) for i in range(12)]
    text = state_text("n" * 100, "q" * 400, history)
    lines = text.split("\n")
    assert lines[0] == "Task: " + "n" * 80 and lines[1] == "Query: " + "q" * 300
    assert lines[3] == "3. tool2: " + "x" * 150 and len(lines) == 3 + 10 + 1
    with pytest.raises(ValueError, match="^history_steps:"):
        state_text("t", "q", [], history_steps=0)


@pytest.fixture(scope="module")
def tiny_lm():
    tasks = synthetic_tasks(seed=0, num_tasks=10)
    texts = [state_text(t.name, t.query, []) for t in tasks]
    tok = train_tokenizer(texts, 300)
    return build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64), tok, texts


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [3, 2, 3]


def test_tool_head_padding_invariance_and_gradients(tiny_lm):
    lm, tok, texts = tiny_lm
    policy = ToolHeadPolicy(lm, num_tools=12, seed=1)
    batch = policy.tool_logits(tok, texts[:3])
    assert batch.shape == (3, 12)
    for i in range(3):
        alone = policy.tool_logits(tok, [texts[i]])
        assert torch.allclose(batch[i], alone[0], atol=1e-5)
    enc = tok(texts[:3], return_tensors="pt", padding=True)                # left padding
    pads = (enc["attention_mask"] == 0).sum(1).tolist()
    ids = torch.stack([r.roll(-n) for r, n in zip(enc["input_ids"], pads)])
    mask = torch.stack([r.roll(-n) for r, n in zip(enc["attention_mask"], pads)])
    assert mask[:, 0].all() and not mask.all()                             # right padding
    assert torch.allclose(policy(ids, mask), batch, atol=1e-5)
    loss = torch.nn.functional.cross_entropy(batch, torch.tensor([0, 1, 2]))
    loss.backward()
    assert policy.head.weight.grad is not None and policy.head.weight.grad.abs().sum() > 0
    same = ToolHeadPolicy(lm, num_tools=12, seed=1)
    assert torch.equal(same.head.weight, policy.head.weight)


def test_tool_head_with_lora_trains_only_adapters_and_head(tiny_lm):
    lm, tok, texts = tiny_lm
    base = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64)
    policy = ToolHeadPolicy(base, num_tools=12,
                            lora=LoraOptions(rank=2, alpha=4, target_modules=("q_proj",
                                                                              "v_proj")))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert policy.tool_logits(tok, texts[:2]).shape == (2, 12)


def test_tool_head_rejects_bad_arguments(tiny_lm):
    lm, _, _ = tiny_lm
    with pytest.raises(ValueError, match="^num_tools:"):
        ToolHeadPolicy(lm, num_tools=0)
    with pytest.raises(ValueError, match="^lm:"):
        ToolHeadPolicy(torch.nn.Linear(2, 2), num_tools=3)
