"""The token-level routing baseline (``mode: token``): every token mixes the E experts with its
own soft weights ``softmax(G x)`` from a per-layer gate — checked against a slow per-token
reference, its gradient, checkpoint state, and a trainer run."""

from __future__ import annotations

import pytest
import torch
from moe_testing import randomize_experts, tiny_llama

from grouprl.moe import (
    MultiLoRALinear,
    add_token_gates,
    inject_multi_lora,
    load_multi_lora_state_dict,
    multi_lora_state_dict,
)


def _layer(seed: int = 0) -> MultiLoRALinear:
    torch.manual_seed(seed)
    layer = MultiLoRALinear(torch.nn.Linear(6, 5), num_experts=3, rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    gate = layer.add_token_gate()
    with torch.no_grad():
        gate.weight.normal_()
    return layer


def test_each_token_mixes_the_experts_with_its_own_gate_weights():
    layer = _layer()
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
    out = layer(x)
    expected = torch.empty_like(out)
    for n in range(2):
        for t in range(4):
            xt = x[n, t]
            w = torch.softmax(layer.token_gate.weight @ xt, dim=-1)
            y = layer.base_layer(xt)
            for e in range(3):
                y = y + w[e] * layer.delta_weight(e) @ xt
            expected[n, t] = y
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_fresh_gate_weighs_every_expert_equally_and_learns():
    layer = MultiLoRALinear(torch.nn.Linear(6, 5), num_experts=4, rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.add_token_gate()
    x = torch.randn(3, 6)
    mean_delta = sum(layer.delta_weight(e) for e in range(4)) / 4
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ mean_delta.T, atol=1e-5)
    layer(x).pow(2).sum().backward()
    assert layer.token_gate.weight.grad is not None
    assert layer.token_gate.weight.grad.abs().sum() > 0


def test_token_gates_travel_with_the_expert_state():
    model = tiny_llama()
    inject_multi_lora(model, num_experts=2, rank=2, alpha=4.0)
    gates = add_token_gates(model)
    assert len(gates) == 8 and all(g.weight.requires_grad for g in gates)
    randomize_experts(model)
    with torch.no_grad():
        for g in gates:
            g.weight.normal_()
    state = multi_lora_state_dict(model)
    assert sum(k.endswith("token_gate.weight") for k in state) == 8
    other = tiny_llama()
    inject_multi_lora(other, num_experts=2, rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_multi_lora_state_dict(other, state)
    add_token_gates(other)
    load_multi_lora_state_dict(other, state)
    ids = torch.randint(2, 64, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, other(ids).logits)
