"""Helpers of the PA-MoE tests: tiny Llama models (hidden 32, 2 layers), random experts."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grouprl.moe import multi_lora_layers


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A fresh 2-layer Llama with hidden size 32 (the same seed gives the same weights)."""
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, attention_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def randomize_experts(model: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Give every expert's B (zero at init) random values so the experts differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in multi_lora_layers(model):
            layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=gen))
