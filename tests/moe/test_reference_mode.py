"""Spec-seed-systems §3.5 check 9, reference mode: with E = 1 and the router unused, the
multi-LoRA model computes exactly what one peft LoRA computes (what the released code trains):
the same logits, the same policy loss and the same gradients, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from moe_testing import tiny_llama

from grouprl.losses import policy_loss
from grouprl.moe import PAMoEOptions, adapters_disabled, inject_multi_lora, multi_lora_layers, route
from grouprl.policy import response_logprobs
from grouprl.policy.load import LoraOptions, apply_lora

OPTS = PAMoEOptions(mode="reference", rank=4, dropout=0.0)


def _pair(seed: int = 0):
    """(peft model, multi-LoRA model) on the same tiny base with the same adapter weights."""
    base = tiny_llama(seed)
    mine = copy.deepcopy(base)
    peft_model = apply_lora(base, LoraOptions(rank=OPTS.rank, alpha=OPTS.lora_alpha, dropout=0.0,
                                              target_modules=OPTS.targets))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in peft_model.modules():
            if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
                module.lora_B["default"].weight.copy_(
                    0.3 * torch.randn(module.lora_B["default"].weight.shape, generator=gen))
    names = inject_multi_lora(mine, num_experts=OPTS.num_experts, rank=OPTS.rank,
                              alpha=OPTS.lora_alpha, dropout=OPTS.dropout,
                              target_modules=OPTS.targets)
    assert len(names) == 14
    with torch.no_grad():
        for name, layer in multi_lora_layers(mine):
            theirs = peft_model.get_submodule(f"base_model.model.{name}")
            layer.lora_A[0].copy_(theirs.lora_A["default"].weight)
            layer.lora_B[0].copy_(theirs.lora_B["default"].weight)
    return peft_model, mine


def _batch():
    gen = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(2, 64, (4, 5), generator=gen)
    prompt_mask = torch.ones(4, 5, dtype=torch.long)
    prompt_mask[1, :2] = 0                                            # left padding
    response_ids = torch.randint(2, 64, (4, 6), generator=gen)
    response_mask = torch.ones(4, 6, dtype=torch.long)
    response_mask[2, 4:] = 0                                          # right padding
    advantages = torch.tensor([0.5, -1.0, 1.5, 0.25])                 # e.g. GiGPO's A_E + ω A_S
    return prompt_ids, prompt_mask, response_ids, response_mask, advantages


def _loss(model, batch):
    prompt_ids, prompt_mask, response_ids, response_mask, adv = batch
    model.train()
    logp, _ = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    old = logp.detach() - 0.05 * response_mask                        # a ratio ≠ 1, clipped too
    loss, _ = policy_loss("ppo", logp, old, adv, response_mask.bool())
    return logp, loss


def test_options_of_reference_mode():
    assert OPTS.num_experts == 1 and not OPTS.uses_router
    assert OPTS.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj")
    assert OPTS.lora_alpha == 8.0                                     # α = 2r [CODE]
    assert PAMoEOptions(mode="reference", num_experts=4).num_experts == 1


@pytest.mark.parametrize("routing", ["none", "experts", "weights"])
def test_check9_logits_loss_and_gradients_equal_peft_bitwise(routing):
    peft_model, mine = _pair()
    batch = _batch()
    ctx = {"none": None, "experts": {"experts": torch.zeros(4, dtype=torch.long)},
           "weights": {"weights": torch.ones(4, 1)}}[routing]
    logp_ref, loss_ref = _loss(peft_model, batch)
    loss_ref.backward()
    if ctx is None:
        logp, loss = _loss(mine, batch)
        loss.backward()
    else:
        with route(mine, **ctx):
            logp, loss = _loss(mine, batch)
            loss.backward()
    assert torch.equal(logp, logp_ref)
    assert torch.equal(loss, loss_ref)
    for name, layer in multi_lora_layers(mine):
        theirs = peft_model.get_submodule(f"base_model.model.{name}")
        assert torch.equal(layer.lora_A.grad[0], theirs.lora_A["default"].weight.grad), name
        assert torch.equal(layer.lora_B.grad[0], theirs.lora_B["default"].weight.grad), name


def test_reference_mode_adapters_off_equals_peft_disable_adapter():
    peft_model, mine = _pair()
    ids = torch.randint(0, 64, (2, 7))

    with peft_model.disable_adapter():
        ref = peft_model(input_ids=ids).logits
    with adapters_disabled(mine):
        assert torch.equal(mine(input_ids=ids).logits, ref)
