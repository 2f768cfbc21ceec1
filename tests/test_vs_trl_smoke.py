"""Smoke test of the speed race vs TRL (``benchmarks/vs_trl.py``): smallest shape, two steps."""

from __future__ import annotations

import pytest
import yaml

from benchmark_module import benchmark_module
from grouprl.envs import make_env
from grouprl.policy import build_tiny_policy, resolve_model_path

pytest.importorskip("trl")
torch = pytest.importorskip("torch")


@pytest.fixture
def vs_trl():
    with benchmark_module("vs_trl") as module:
        yield module


def test_race_runs_both_sides_and_writes_its_section(vs_trl, tmp_path):
    doc = tmp_path / "benchmarks.md"
    out = vs_trl.main(["--shapes", "2x2x16", "--steps", "2", "--warmup", "1",
                       "--curve-steps", "0", "--bc-updates", "1",
                       "--work-dir", str(tmp_path / "work"), "--write", "--output", str(doc)])
    for side in ("trl", "grouprl"):
        r = out["race"][f"{side} B=2 G=2 T=16"]
        assert "error" not in r, f"{side}: {r.get('error')}"
        assert len(r["step_s"]) == 2 and all(s > 0 for s in r["step_s"])
        assert r["median_s"] > 0 and r["tok_s"] > 0
        assert all(0 < t <= 2 * 2 * 16 for t in r["tokens"])  # B·G completions of <= T tokens
        assert all(0.0 <= x <= 1.0 for x in r["reward"])
        assert 0 < r["rollout_mean_s"] and 0 < r["rest_mean_s"]
    # grouprl's reasoning env is there: TRL reads the prompts grouprl draws, in order
    assert out["race"]["trl B=2 G=2 T=16"]["same_prompts_as_grouprl"]
    text = doc.read_text()
    assert "<!-- vs_trl:start -->" in text and "<!-- vs_trl:end -->" in text
    assert "Speed race vs TRL GRPOTrainer" in text and "| B=2 G=2 T=16 |" in text


def test_tables(vs_trl):
    shape = vs_trl.Shape.parse("4x8x32")
    results = {("trl", shape): {"median_s": 2.0, "tok_s": 300.0, "tokens_per_step": 600},
               ("grouprl", shape): {"error": "ConfigError: nope"}}
    race = "\n".join(vs_trl.race_table([shape], results))
    assert "| B=4 G=8 T=32 | 2.000 | — | — | 300 | — | — | 600 / — |" in race
    assert "grouprl at B=4 G=8 T=32: `ConfigError: nope`" in race
    curve = "\n".join(vs_trl.curve_table(
        {"reward": [0.0, 0.5, 1.0], "tokens": [40.0, 40.0, 100.0]},
        {"reward": [0.25] * 7, "tokens": [20.0] * 7}, rows_per_step=4, window=5))
    assert "| 1–5 | 0.500 | 0.250 | 15.0 | 5.0 |" in curve
    assert "| 6–7 | — | 0.250 | — | 5.0 |" in curve


def test_trl_config_gives_one_optimizer_step_per_generation(vs_trl, tmp_path):
    from trl_side import trl_config

    cfg = trl_config(str(tmp_path), num_generations=8, prompts_per_step=4,
                     max_completion_length=32, lr=1e-4, steps=3, micro_batch=16)
    rows = 4 * 8
    assert cfg.generation_batch_size == rows
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == rows
    assert cfg.steps_per_generation == cfg.gradient_accumulation_steps == 2
    assert cfg.loss_type == "dapo" and cfg.beta == 0.0 and cfg.num_iterations == 1
    assert cfg.scale_rewards == "group" and cfg.top_k == 0 and cfg.top_p == 1.0
    assert not cfg.gradient_checkpointing and not cfg.bf16


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def chat_model_dir(tmp_path):
    """A tiny local model directory whose tokenizer has a ChatML-style chat template."""
    model_dir = tmp_path / "tiny_chat"
    texts = [f"What is {a} + {b}? Reply with just the number."
             for a in range(10) for b in range(10)]
    _, tok = build_tiny_policy(texts, special_tokens=("<|im_start|>", "<|im_end|>"),
                               isolate_chars="0123456789", save_dir=model_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model_dir)
    return model_dir


def test_model_race_plumbing(vs_trl, chat_model_dir, tmp_path):
    """--model: both sides get the resolved directory, the recipe's chat-templated prompts and
    verifier, and the same compute dtype (no race is run, no real model is loaded)."""
    from trl_side import check_prompt_tokens, trl_config

    model_dir = resolve_model_path(str(chat_model_dir))
    assert model_dir == chat_model_dir
    real = yaml.safe_load(vs_trl.REAL_MODEL_RECIPE.read_text())
    recipe = vs_trl.real_model_recipe()
    assert recipe["env"]["kwargs"] == real["env"]["kwargs"]
    assert recipe["env"]["kwargs"]["verifier"] == "free"
    assert recipe["agent"]["use_chat_template"] is True and recipe["rollout"]["stop"] == []
    assert recipe["algorithm"]["kl_coef"] == 0.0 and recipe["algorithm"]["ppo_epochs"] == 1
    assert recipe["algorithm"]["num_mini_batches"] == 1
    assert recipe["algorithm"]["loss_agg"] == "token-mean"
    difficulty = real["env"]["kwargs"]["difficulty"]

    # prompts: the env's observation wrapped once in the model's chat template
    tok = vs_trl.model_tokenizer(model_dir)
    taskset = vs_trl.load_tasks(6, difficulty, recipe=recipe, tokenizer=tok)
    env = make_env("reasoning", **real["env"]["kwargs"])
    try:
        observations = [env.reset(i)[0] for i in range(6)]
    finally:
        env.close()
    assert [t.prompt for t in taskset.tasks] == [
        f"<|im_start|>user\n{obs}<|im_end|>\n<|im_start|>assistant\n" for obs in observations]
    assert all(obs.endswith(" Reply with just the number.") for obs in observations)
    check_prompt_tokens(tok, [t.prompt for t in taskset.tasks])  # TRL tokenizes them the same

    # the TRL reward is the recipe's verifier (free: the last number of the reply)
    verify, name = vs_trl.make_verifier(difficulty, recipe)
    assert "free" in name
    assert verify(["I think it is 7", "12", "7 or 8"], [7, 7, 7]) == [True, False, False]

    # grouprl's config and TRL's config name the same model, dtype and shape
    overrides = vs_trl.grouprl_overrides(
        run_dir=tmp_path / "run", model_dir=model_dir, prompts_per_step=4, num_generations=8,
        max_new_tokens=24, micro_batch=16, lr=1e-5, steps=4, threads=2, seed=0,
        difficulty=difficulty, compute_dtype="bfloat16")
    cfg = vs_trl.grouprl_config(recipe, tmp_path / "recipe.yaml", overrides)
    assert cfg.model.path == str(model_dir) and cfg.model.compute_dtype == "bfloat16"
    assert cfg.agent.use_chat_template and cfg.rollout.stop == []
    assert cfg.env.kwargs["verifier"] == "free" and cfg.env.kwargs["difficulty"] == difficulty
    assert (cfg.rollout.groups_per_batch, cfg.rollout.group_size,
            cfg.rollout.max_new_tokens) == (4, 8, 24)
    assert cfg.algorithm.kl_coef == 0.0 and cfg.algorithm.loss_agg == "token-mean"
    bf16 = trl_config(str(tmp_path), num_generations=8, prompts_per_step=4,
                      max_completion_length=24, lr=1e-5, steps=4, micro_batch=16,
                      compute_dtype="bfloat16")
    assert bf16.bf16 and bf16.use_cpu and bf16.beta == 0.0 and bf16.loss_type == "dapo"
    assert not trl_config(str(tmp_path), num_generations=8, prompts_per_step=4,
                          max_completion_length=24, lr=1e-5, steps=4).bf16
    with pytest.raises(ValueError, match="compute_dtype"):
        trl_config(str(tmp_path), num_generations=8, prompts_per_step=4,
                   max_completion_length=24, lr=1e-5, steps=4, compute_dtype="float16")


def test_prompt_token_check_refuses_a_tokenizer_that_adds_bos():
    with benchmark_module("trl_side") as trl_side:
        class AddsBos:
            def __call__(self, text, add_special_tokens=True):
                ids = [[ord(c) for c in t] for t in text]
                return {"input_ids": [[1] + i if add_special_tokens else i for i in ids]}

        with pytest.raises(ValueError, match="prompt 0: TRL tokenizes it to 3 tokens"):
            trl_side.check_prompt_tokens(AddsBos(), ["ab", "c"])


def test_model_section_and_table(vs_trl):
    assert vs_trl.model_section("builtin:smollm2-135m-instruct") == "vs_trl_smollm2"
    assert vs_trl.model_section("/models/My-Model.Q4.gguf") == "vs_trl_my_model_q4"
    shape = vs_trl.Shape.parse("4x8x24")
    results = {("trl", shape): {"median_s": 30.0, "tok_s": 20.0, "tokens_per_step": 600,
                                "reward": [0.25, 0.5]},
               ("grouprl", shape): {"median_s": 20.0, "tok_s": 31.0, "tokens_per_step": 620,
                                    "reward": [0.5, 0.5, 0.75, 0.25]}}
    table = "\n".join(vs_trl.model_race_table([shape], results))
    assert "| B=4 G=8 T=24 | 30.00 | 20.00 | 1.50× | 20.0 | 31.0 | 1.55× | 0.375 | 0.500 | " \
           "600 / 620 |" in table
