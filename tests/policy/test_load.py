"""grouprl.policy.load: local-only loading, dtype, pad token, LoRA and reference models."""

from __future__ import annotations

import pytest
import torch

from grouprl.policy import (
    LoraOptions,
    apply_lora,
    build_tiny_model,
    build_tiny_policy,
    disable_adapter,
    frozen_copy,
    is_lora_model,
    load_policy,
    train_tokenizer,
)

CORPUS = [f"board {i}\n#_OX√PS\n<action>up</action> <action>left</action>" for i in range(40)]
IDS = torch.tensor([[5, 9, 17, 33, 2, 40, 41]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_policy(CORPUS, vocab_size=300, special_tokens=("<action>", "</action>"),
                      save_dir=path)
    return path


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_missing_path_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model") as info:
        load_policy(missing)
    assert "never downloads" in str(info.value)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_policy("Qwen/Qwen2.5-0.5B-Instruct")  # a hub id is not a local directory


def test_load_dtype_attention_and_errors(saved):
    model, tok = load_policy(saved, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "sdpa"
    assert tok.padding_side == "left"
    with pytest.raises(ValueError, match="dtype"):
        load_policy(saved, dtype="float8")


def test_missing_pad_token_is_set_to_eos(tmp_path):
    tok = train_tokenizer(CORPUS, vocab_size=300)
    model = build_tiny_model(tok)
    tok.pad_token = None
    tok.padding_side = "right"
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = load_policy(tmp_path)
    assert loaded.pad_token == loaded.eos_token and loaded.pad_token_id == tok.eos_token_id
    assert loaded.padding_side == "left"


def test_lora_trains_only_adapters_and_disable_adapter_gives_base_logits(saved):
    model, _ = load_policy(saved)
    base = _logits(model)
    peft_model = apply_lora(model, LoraOptions(rank=4, alpha=8))
    assert is_lora_model(peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 4 * 4 * 2  # 4 layers × (q, k, v, o) × (A, B)
    torch.testing.assert_close(_logits(peft_model), base)  # B = 0 at init
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapted = _logits(peft_model)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with disable_adapter(peft_model):
        torch.testing.assert_close(_logits(peft_model), base)
    torch.testing.assert_close(_logits(peft_model), adapted)  # adapters back on


def test_load_policy_with_lora_options(saved):
    model, _ = load_policy(saved, lora=LoraOptions(rank=2, target_modules=("q_proj", "v_proj")))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 * 2 * 2 and all("lora_" in n for n in trainable)


def test_disable_adapter_rejects_a_plain_model(saved):
    model, _ = load_policy(saved)
    assert not is_lora_model(model)
    with pytest.raises(TypeError, match="frozen_copy"):
        with disable_adapter(model):
            pass


def test_frozen_copy_is_independent_and_frozen(saved):
    model, _ = load_policy(saved)
    model.train()
    ref = frozen_copy(model)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    model.eval()
    torch.testing.assert_close(_logits(ref), _logits(model), rtol=0, atol=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    assert not torch.allclose(_logits(ref), _logits(model))


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"rank": 0}, "rank"), ({"alpha": -1}, "alpha"), ({"dropout": 1.5}, "dropout"),
    ({"target_modules": "q_proj"}, "target_modules"), ({"bias": "some"}, "bias"),
])
def test_lora_options_errors_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LoraOptions(**kwargs)


def test_generation_and_teacher_forcing_agree_through_lora_and_its_base(saved):
    from grouprl.policy import generate, response_logprobs

    model, tok = load_policy(saved, lora=LoraOptions(rank=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    prompts = [tok("board 1\n#_OX")["input_ids"], tok("board 22\n#_OX√PS\n<action>")["input_ids"]]
    gen = generate(model, tok, prompts, max_new_tokens=4, generator=torch.Generator())
    args = (gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    logp, _ = response_logprobs(model, *args)
    torch.testing.assert_close(logp * gen.response_mask, gen.logprobs, rtol=0, atol=1e-4)
    with torch.no_grad(), disable_adapter(model):
        ref_logp, _ = response_logprobs(model, *args)
    plain, _ = load_policy(saved)
    with torch.no_grad():
        torch.testing.assert_close(ref_logp, response_logprobs(plain, *args)[0])
    assert not torch.allclose(ref_logp, logp.detach(), atol=1e-3)


def test_saved_tiny_tokenizer_reloads_with_identical_ids(tmp_path):
    # transformers maps a qwen2 directory to Qwen2Tokenizer, whose own pre-tokenizer changes the
    # ids of grouprl's tiny BPE; load_policy must load the saved tokenizer as it was saved
    from grouprl.policy import build_tiny_policy, load_policy

    texts = ["<think>47+38: 7+8=15, write 5 carry 1. So 85. Check: 85-38=47. Yes.</think>"
             "<answer>85</answer>", "What is 47 + 38?",
             "Tom has 12 apples and gives 5 to Ann. How many apples does Tom have now?"] * 20
    _, tok = build_tiny_policy(texts, vocab_size=300, special_tokens=("<think>", "</think>"),
                               isolate_chars="0123456789", save_dir=tmp_path, hidden_size=32,
                               num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    _, loaded = load_policy(tmp_path)
    for text in texts[:3]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.padding_side == "left" and loaded.pad_token_id == tok.pad_token_id
