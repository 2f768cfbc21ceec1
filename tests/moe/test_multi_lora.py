"""Multi-LoRA layers: spec-seed-systems §3.5 check 7 (forward values, one-hot routing, gradient
isolation), hard == dense == a slow per-row reference, injection, routing errors, state."""

from __future__ import annotations

import pytest
import torch
from moe_testing import randomize_experts, tiny_llama
from torch import nn

from grouprl.moe import (
    ALL_PROJECTIONS,
    ATTENTION_PROJECTIONS,
    MultiLoRALinear,
    PhaseRouter,
    adapters_disabled,
    clear_routing,
    inject_multi_lora,
    load_pamoe_state_dict,
    multi_lora_layers,
    pamoe_state_dict,
    route,
    set_routing,
)

W = torch.tensor([[0.5, -0.5], [0.1, 0.2]])
DW = [torch.tensor([[0.2, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.3]])]


def _check7_layer() -> MultiLoRALinear:
    """W and ΔW_e of check 7: rank 2, α = 2 (scaling 1), A_e = I, B_e = ΔW_e."""
    base = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(W)
    layer = MultiLoRALinear(base, num_experts=2, rank=2, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(2).expand(2, 2, 2))
        layer.lora_B.copy_(torch.stack(DW))
    return layer


def test_check7_forward_with_soft_and_one_hot_weights():
    layer = _check7_layer()
    x = torch.tensor([[[1.0, 2.0]]])                                  # one row, one token
    with route(layer, weights=torch.tensor([[0.880797, 0.119203]])):
        y = layer(x)
    assert torch.allclose(y, torch.tensor([[[-0.323841, 0.571522]]]), atol=1e-6)
    with route(layer, weights=torch.tensor([[1.0, 0.0]])):
        assert torch.allclose(layer(x), torch.tensor([[[-0.3, 0.5]]]))
    with route(layer, experts=torch.tensor([0])):
        assert torch.allclose(layer(x), torch.tensor([[[-0.3, 0.5]]]))
    with route(layer, experts=torch.tensor([1])):
        assert torch.allclose(layer(x), torch.tensor([[[-0.5, 1.1]]]))   # 0.5 + 0.3·2


def test_check7_routing_weight_broadcasts_over_the_rows_tokens():
    layer = _check7_layer()
    x = torch.tensor([[[1.0, 2.0], [1.0, 2.0]], [[1.0, 2.0], [0.0, 0.0]]])   # (2 rows, 2 tokens)
    with route(layer, experts=torch.tensor([1, 0])):
        y = layer(x)
    assert torch.allclose(y[0], torch.tensor([[-0.5, 1.1], [-0.5, 1.1]]))
    assert torch.allclose(y[1], torch.tensor([[-0.3, 0.5], [0.0, 0.0]]))


@pytest.mark.parametrize("how", ["experts", "weights"])
def test_check7_gradient_isolation_all_rows_on_expert_0(how):
    layer = _check7_layer()
    x = torch.randn(3, 4, 2)
    routing = {"experts": torch.zeros(3, dtype=torch.long)} if how == "experts" else \
        {"weights": torch.tensor([[1.0, 0.0]] * 3)}
    with route(layer, **routing):
        layer(x).square().sum().backward()
    assert torch.equal(layer.lora_A.grad[1], torch.zeros(2, 2))
    assert torch.equal(layer.lora_B.grad[1], torch.zeros(2, 2))
    assert layer.lora_A.grad[0].abs().sum() > 0 and layer.lora_B.grad[0].abs().sum() > 0
    assert layer.base_layer.weight.grad is None                      # base frozen


def _slow(layer: MultiLoRALinear, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y_n = W x_n + Σ_e w_{n,e} (α/r) B_e A_e x_n, row by row, from the formula."""
    rows = []
    for n in range(x.shape[0]):
        y = x[n] @ layer.base_layer.weight.T + layer.base_layer.bias
        for e in range(layer.num_experts):
            y = y + weights[n, e] * (x[n] @ layer.delta_weight(e).T)
        rows.append(y)
    return torch.stack(rows)


def _mixed_layer(seed: int = 0) -> MultiLoRALinear:
    torch.manual_seed(seed)
    layer = MultiLoRALinear(nn.Linear(5, 3), num_experts=3, rank=2, alpha=4.0).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_hard_dense_and_slow_reference_agree_with_mixed_experts():
    layer = _mixed_layer()
    x = torch.randn(5, 4, 5, dtype=torch.float64)
    experts = torch.tensor([2, 0, 2, 1, 0])
    onehot = nn.functional.one_hot(experts, 3).double()
    soft = torch.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    with route(layer, experts=experts):
        hard = layer(x)
    with route(layer, weights=onehot):
        dense = layer(x)
    with route(layer, weights=soft):
        mixed = layer(x)
    assert torch.allclose(hard, _slow(layer, x, onehot))
    assert torch.allclose(dense, hard)
    assert torch.allclose(mixed, _slow(layer, x, soft))


def test_an_experts_gradient_comes_only_from_its_rows():
    x = torch.randn(5, 4, 5, dtype=torch.float64)
    experts = torch.tensor([2, 0, 2, 1, 0])
    full = _mixed_layer()
    with route(full, experts=experts):
        full(x).sin().sum().backward()
    for e in range(3):
        alone = _mixed_layer()
        rows = experts == e
        with route(alone, experts=experts[rows]):
            alone(x[rows]).sin().sum().backward()
        assert torch.allclose(full.lora_A.grad[e], alone.lora_A.grad[e])
        assert torch.allclose(full.lora_B.grad[e], alone.lora_B.grad[e])
        others = [o for o in range(3) if o != e]
        assert torch.equal(alone.lora_A.grad[others], torch.zeros_like(alone.lora_A.grad[others]))


def test_fresh_layer_computes_the_base_and_disabled_adapters_compute_the_base():
    torch.manual_seed(0)
    base = nn.Linear(4, 3)
    layer = MultiLoRALinear(base, num_experts=2, rank=2, alpha=4.0)
    x = torch.randn(2, 4)
    with route(layer, experts=torch.tensor([0, 1])):
        assert torch.equal(layer(x), base(x))                         # B = 0 at init
        with torch.no_grad():
            layer.lora_B.normal_()
        assert not torch.allclose(layer(x), base(x))
        with adapters_disabled(layer):
            assert torch.equal(layer(x), base(x))
        assert not torch.allclose(layer(x), base(x))


def test_routing_errors_name_the_problem():
    layer = _mixed_layer()
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="routing: no experts set"):
        layer(x)
    with route(layer, experts=torch.tensor([0, 1, 2])), pytest.raises(ValueError, match="3 rows"):
        layer(x)
    for kwargs, name in [({}, "exactly one"), ({"experts": torch.tensor([3])}, "experts"),
                         ({"experts": torch.tensor([[0]])}, "experts"),
                         ({"weights": torch.ones(2, 2)}, "weights"),
                         ({"experts": torch.tensor([0]), "weights": torch.ones(1, 3)},
                          "exactly one")]:
        with pytest.raises(ValueError, match=name):
            set_routing(layer, **kwargs)
    with pytest.raises(ValueError, match="num_experts"):
        MultiLoRALinear(nn.Linear(2, 2), num_experts=0, rank=1, alpha=1.0)
    with pytest.raises(TypeError, match="base_layer"):
        MultiLoRALinear(nn.Conv1d(2, 2, 1), num_experts=1, rank=1, alpha=1.0)


def test_route_restores_the_previous_routing():
    layer = _mixed_layer()
    set_routing(layer, experts=torch.tensor([1]))
    with route(layer, experts=torch.tensor([2, 2])):
        assert layer.routing.experts.tolist() == [2, 2]
    assert layer.routing.experts.tolist() == [1]
    clear_routing(layer)
    assert layer.routing is None


def test_injection_into_a_tiny_llama():
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 6))
    before = model(input_ids=ids).logits
    names = inject_multi_lora(model, num_experts=2, rank=4, alpha=8.0,
                              target_modules=ATTENTION_PROJECTIONS)
    assert len(names) == 8 and all(n.endswith(ATTENTION_PROJECTIONS) for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in names for k in ("lora_A", "lora_B")}
    with route(model, experts=torch.tensor([0, 1, 1])):
        assert torch.equal(model(input_ids=ids).logits, before)       # B = 0: the base
    with pytest.raises(RuntimeError, match="routing"):
        model(input_ids=ids)
    randomize_experts(model)
    with route(model, experts=torch.tensor([0, 1, 1])):
        mixed = model(input_ids=ids).logits
    with route(model, experts=torch.tensor([1, 1, 1])):
        ones = model(input_ids=ids).logits
    assert torch.allclose(mixed[1:], ones[1:], atol=1e-6)             # rows are independent
    assert not torch.allclose(mixed[0], ones[0], atol=1e-3)
    with adapters_disabled(model):
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-6)


def test_injection_targets_and_errors():
    model = tiny_llama()
    assert len(inject_multi_lora(model, num_experts=1, rank=2, alpha=4.0,
                                 target_modules=ALL_PROJECTIONS)) == 14
    with pytest.raises(ValueError, match="already"):
        inject_multi_lora(model, num_experts=1, rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="target_modules: no module"):
        inject_multi_lora(tiny_llama(), num_experts=1, rank=2, alpha=4.0,
                          target_modules=("qkv",))
    with pytest.raises(TypeError, match="mlp"):
        inject_multi_lora(tiny_llama(), num_experts=1, rank=2, alpha=4.0,
                          target_modules=("mlp",))
    with pytest.raises(ValueError, match="holds no multi-LoRA"):
        set_routing(tiny_llama(), experts=torch.tensor([0]))


def test_checkpoint_state_round_trip_is_exact_and_strict():
    model = tiny_llama()
    inject_multi_lora(model, num_experts=2, rank=4, alpha=8.0)
    randomize_experts(model)
    router = PhaseRouter(32, 2, width=8, history_dim=4, history_proj=4, zero_init_output=False)
    state = pamoe_state_dict(model, router)
    assert {k.split(".")[0] for k in state} == {"experts", "router"}
    assert state["experts.model.layers.0.self_attn.q_proj.lora_A"].shape == (2, 4, 32)
    other = tiny_llama()
    inject_multi_lora(other, num_experts=2, rank=4, alpha=8.0)
    other_router = PhaseRouter(32, 2, width=8, history_dim=4, history_proj=4)
    load_pamoe_state_dict(other, other_router, state)
    for (_, a), (_, b) in zip(multi_lora_layers(model), multi_lora_layers(other)):
        assert torch.equal(a.lora_A, b.lora_A) and torch.equal(a.lora_B, b.lora_B)
    assert all(torch.equal(router.state_dict()[k], other_router.state_dict()[k])
               for k in router.state_dict())
    with pytest.raises(ValueError, match="missing"):
        load_pamoe_state_dict(other, other_router,
                              {k: v for k, v in state.items() if "layers.1" not in k})
    with pytest.raises(ValueError, match="no router"):
        load_pamoe_state_dict(other, None, state)
    bad = dict(state)
    bad["experts.model.layers.0.self_attn.q_proj.lora_A"] = torch.zeros(3, 4, 32)
    with pytest.raises(ValueError, match="shape"):
        load_pamoe_state_dict(other, other_router, bad)
