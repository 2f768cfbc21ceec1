"""model.compute_dtype (grouprl.policy.precision): autocast regions in generate, response_logprobs
and the learner; the CPU-flag probe; greedy decoding equal to ``model.generate`` on a
real-architecture (Llama) model; sampler log-probs equal to the learner's recomputed ones."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grouprl.policy import generate, response_logprobs
from grouprl.policy.precision import autocast, compute_dtype, cpu_has_native_bf16


class _Tok:
    """The smallest tokenizer generate() needs: ids in, ids out."""

    pad_token_id, eos_token_id = 0, 1

    def batch_decode(self, rows, **_):
        return [" ".join(map(str, r)) for r in rows]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


PROMPTS = [[5, 9, 13, 22], [7, 3], [5, 9, 13, 22], [40, 41, 42, 43, 44, 45]]


def test_compute_dtype_names():
    assert compute_dtype(None) is None and compute_dtype("float32") is None
    assert compute_dtype("bfloat16") is torch.bfloat16
    assert compute_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="compute_dtype"):
        compute_dtype("int8")


def test_autocast_none_is_a_no_op_and_bf16_runs_matmuls_in_bf16():
    a = torch.randn(4, 4)
    with autocast("cpu", None):
        assert (a @ a).dtype is torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16


def test_cpu_flag_probe_reads_the_flags_line(tmp_path):
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_has_native_bf16(str(native)) is True
    assert cpu_has_native_bf16(str(plain)) is False
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_greedy_decoding_equals_model_generate_on_a_llama(llama):
    tok = _Tok()
    gen = generate(llama, tok, PROMPTS, max_new_tokens=12, do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        ref = llama.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long), max_new_tokens=12, do_sample=False,
                             pad_token_id=0, eos_token_id=1)[0, len(prompt):].tolist()
        if 1 in ref:
            ref = ref[:ref.index(1) + 1]
        n = int(gen.response_mask[row].sum())
        assert gen.response_ids[row, :n].tolist() == ref


def test_sampler_logprobs_equal_recomputed_ones(llama):
    # on-policy reuse is sound: what the decoding loop records (KV cache, left padding, shared
    # prefill of repeated prompts) is what a teacher-forced forward gives
    g = torch.Generator().manual_seed(3)
    gen = generate(llama, _Tok(), PROMPTS, max_new_tokens=10, temperature=0.8, generator=g)
    logp, _ = response_logprobs(llama, gen.prompt_ids, gen.prompt_mask, gen.response_ids,
                                gen.response_mask, temperature=0.8)
    mask = gen.response_mask.bool()
    assert mask.sum() > 10
    torch.testing.assert_close(logp[mask], gen.logprobs[mask], rtol=0, atol=1e-5)


def test_bf16_autocast_generation_and_logprobs_stay_close_to_fp32(llama):
    tok = _Tok()
    gen = generate(llama, tok, PROMPTS, max_new_tokens=8, do_sample=False,
                   autocast_dtype=torch.bfloat16)
    assert gen.logprobs.dtype is torch.float32
    fp32, _ = response_logprobs(llama, gen.prompt_ids, gen.prompt_mask, gen.response_ids,
                                gen.response_mask)
    bf16, _ = response_logprobs(llama, gen.prompt_ids, gen.prompt_mask, gen.response_ids,
                                gen.response_mask, autocast_dtype=torch.bfloat16)
    mask = gen.response_mask.bool()
    assert bf16.dtype is torch.float32          # log-softmax stays float32
    assert not torch.equal(bf16[mask], fp32[mask])          # bf16 really ran
    torch.testing.assert_close(bf16[mask], fp32[mask], rtol=0, atol=0.1)
    torch.testing.assert_close(gen.logprobs[mask], bf16[mask], rtol=0, atol=0.1)


def test_bf16_autocast_gradients_reach_float32_parameters(llama):
    model = LlamaForCausalLM(llama.config)
    model.load_state_dict(llama.state_dict())
    ids = torch.tensor([[5, 9, 13, 22]])
    mask = torch.ones_like(ids)
    resp = torch.tensor([[30, 31]])
    grads = {}
    for dtype in (None, torch.bfloat16):
        model.zero_grad()
        logp, _ = response_logprobs(model, ids, mask, resp, torch.ones_like(resp),
                                    autocast_dtype=dtype)
        logp.sum().backward()
        w = model.model.layers[0].self_attn.q_proj.weight
        assert w.dtype is torch.float32 and w.grad.dtype is torch.float32
        grads[dtype] = w.grad.clone()
    cos = torch.nn.functional.cosine_similarity(grads[None].flatten(),
                                                grads[torch.bfloat16].flatten(), dim=0)
    assert cos > 0.99
