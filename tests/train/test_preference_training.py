"""Offline preference training (grouprl.recipes.preference, grouprl.train.pairs) on tiny models:
seconds per run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from grouprl.data import PreferencePair
from grouprl.losses.preference import preference_loss
from grouprl.recipes.preference import train_preference
from grouprl.train import ConfigError, load_config
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.metrics import read_metrics
from grouprl.train.pair_data import tokenize_preference_pairs
from grouprl.train.pairs import (
    REFERENCE_FILE,
    accumulate_preference_gradients,
    cached_reference_logps,
    pair_logps,
)

TINY = [
    "mode=preference", "model.tiny.vocab_size=300", "model.tiny.hidden_size=32",
    "model.tiny.num_layers=1", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
    "model.tiny.intermediate_size=64", "logging.progress=false", "threads=1",
]


def make_pairs(n: int, seed: int) -> list[dict]:
    """Sum questions; the chosen reply is tagged Y, the rejected one N (same length)."""
    rng = random.Random(seed)
    out = []
    for a, b in rng.sample([(a, b) for a in range(10) for b in range(10)], n):
        out.append({"prompt": f"What is {a} + {b}?", "chosen": f"<answer>Y{a + b}</answer>",
                    "rejected": f"<answer>N{a + b}</answer>"})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", make_pairs(80, 0))


def config(tmp_path: Path, pairs: Path, *extra: str):
    base = [*TINY, f"preference.dataset={pairs}", "preference.eval_fraction=0.25",
            "preference.sft_epochs=0", "preference.batch_size=8",
            "preference.micro_batch_size=4", "preference.epochs=2",
            "preference.eval_every=5", "optim.lr=3e-3", "save_every=0"]
    return load_config(None, [*base, f"run_dir={tmp_path / 'run'}", *extra])


def no_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


@pytest.mark.parametrize("loss", ["dpo", "hypo"])
def test_reward_accuracy_rises(tmp_path, pairs_file, loss):
    messages: list[str] = []
    cfg = config(tmp_path, pairs_file, f"preference.loss={loss}",
                 "preference.loss_options={beta: 0.5}")
    result = train_preference(cfg, echo=messages.append)
    # the policy starts as the reference: every implicit reward is exactly 0
    assert result.success_before == 0.0
    assert result.success_after >= 0.9, result.success_after
    rows = read_metrics(cfg.run_dir)
    evals = [r for r in rows if "eval/reward_accuracy" in r]
    assert [r["iteration"] for r in evals] == [0, 5, 10, 15, 16]
    # the policy itself now ranks the chosen response first (it started at 40%)
    assert evals[-1]["eval/logp_accuracy"] >= max(0.9, evals[0]["eval/logp_accuracy"] + 0.2)
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.2
    assert 0.0 <= evals[-1]["eval/pessimistic_frac"] <= 1.0
    steps = [r for r in rows if "pref/loss" in r]
    assert len(steps) == result.iterations == 16  # 60 training pairs, batches of 8, 2 epochs
    for key in ("pref/reward_accuracy", "pref/reward_margin", "pref/chosen_reward",
                "pref/rejected_reward", "pref/logp_chosen", "pref/logp_rejected",
                "pref/pessimistic_frac", "actor/grad_norm", "actor/lr", "timing/step_s"):
        assert all(key in r for r in steps), key
    assert all(r["train/skipped_updates"] == 0 for r in steps)
    assert any("reward accuracy: before 0.0% → after" in m for m in messages)
    assert (Path(cfg.run_dir) / REFERENCE_FILE).is_file()


def _tiny_model_and_data(n: int = 6):
    from grouprl.policy import build_tiny_policy

    pairs = [PreferencePair(**r) for r in make_pairs(n, 1)]
    texts = [x for p in pairs for x in (p.prompt, p.chosen, p.rejected)]
    model, tok = build_tiny_policy(texts, vocab_size=300, seed=0, hidden_size=32, num_layers=1,
                                   num_heads=2, num_kv_heads=1, intermediate_size=64)
    pairs[1] = PreferencePair("Longer prompt: what is 12 + 30?", "<answer>Y42</answer>",
                              "N")  # ragged prompts and responses
    return model, tok, tokenize_preference_pairs(tok, pairs)


@pytest.mark.parametrize("loss, options", [
    ("dpo", {}), ("ipo", {}), ("hypo", {"beta": 1.0}), ("simpo", {}), ("orpo", {}),
])
def test_micro_batching_gives_the_same_gradient(loss, options):
    model, _, data = _tiny_model_and_data()
    with torch.no_grad():
        cw, cl = pair_logps(model, data, torch.arange(len(data)))
    g = torch.Generator().manual_seed(0)
    ref = None if loss in ("simpo", "orpo") else (cw + torch.randn(6, generator=g),
                                                  cl + torch.randn(6, generator=g))
    idx = torch.tensor([4, 1, 0, 5, 2, 3])
    with torch.no_grad():  # the batch loss is preference_loss on the pairs idx, in that order
        kw = {"chosen_length": data.chosen_length[idx].float(),
              "rejected_length": data.rejected_length[idx].float()} \
            if loss in ("ipo", "simpo", "orpo") else {}
        expected, _ = preference_loss(loss, cw[idx], cl[idx],
                                      *((ref[0][idx], ref[1][idx]) if ref else (None, None)),
                                      **options, **kw)
    grads, metrics = [], []
    for micro in (6, 4, 1):
        model.zero_grad(set_to_none=True)
        m, finite = accumulate_preference_gradients(model, data, idx, ref, loss=loss,
                                                    loss_options=options,
                                                    micro_batch_size=micro)
        assert finite
        grads.append([p.grad.clone() for p in model.parameters()])
        assert m["pref/loss"] == pytest.approx(float(expected), rel=1e-5)
        metrics.append(m)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    for m in metrics[1:]:
        assert m.keys() == metrics[0].keys()
        for k in m:
            assert m[k] == pytest.approx(metrics[0][k], rel=1e-4, abs=1e-6), k


def test_reference_cache_is_reused_and_invalidated(tmp_path):
    model, tok, data = _tiny_model_and_data()
    path = tmp_path / REFERENCE_FILE
    said: list[str] = []
    first = cached_reference_logps(model, {"train": data}, path, micro_batch_size=4,
                                   echo=said.append)
    assert said[-1].startswith("reference log-probs: computed")
    stamp = path.stat().st_mtime_ns
    again = cached_reference_logps(model, {"train": data}, path, micro_batch_size=2,
                                   echo=said.append)
    assert said[-1].startswith("reference log-probs: loaded") and path.stat().st_mtime_ns == stamp
    assert torch.equal(first["train"][0], again["train"][0])
    torch.testing.assert_close(first["train"][1], pair_logps(model, data, torch.arange(6))[1])
    # other data → recomputed
    other = tokenize_preference_pairs(tok, [PreferencePair(**r) for r in make_pairs(6, 9)])
    cached_reference_logps(model, {"train": other}, path, micro_batch_size=4, echo=said.append)
    assert "does not match" in said[-2] and said[-1].startswith("reference log-probs: computed")
    # another reference model → recomputed
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    cached_reference_logps(model, {"train": other}, path, micro_batch_size=4, echo=said.append)
    assert "does not match" in said[-2]
    assert json.loads(path.with_suffix(".json").read_text())["pairs"] == {"train": 6}


def _interrupt_at(monkeypatch, step: int):
    """Send ourselves SIGINT during optimizer step ``step`` (0-based)."""
    import os
    import signal

    import grouprl.recipes.preference as pref

    real, calls = pref.preference_step, []

    def wrapped(*args, **kwargs):
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pref, "preference_step", wrapped)


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, pairs_file,
                                                                  monkeypatch):
    # 60 pairs, batches of 8: 8 steps per epoch; stopped in epoch 1 (mid-epoch), resumed
    common = ["preference.loss=dpo", "preference.eval_every=3", "preference.epochs=2"]
    full = config(tmp_path / "a", pairs_file, *common)
    train_preference(full, echo=lambda s: None)
    cut = config(tmp_path / "b", pairs_file, *common)
    with monkeypatch.context() as m:
        _interrupt_at(m, 9)
        with pytest.raises(KeyboardInterrupt):
            train_preference(cut, echo=lambda s: None)
    assert latest_checkpoint(cut.run_dir).name == "iter_000010"
    stamp = (Path(cut.run_dir) / REFERENCE_FILE).stat().st_mtime_ns
    said: list[str] = []
    result = train_preference(cut, resume=True, echo=said.append)
    assert any(s.startswith("reference log-probs: loaded") for s in said)
    assert (Path(cut.run_dir) / REFERENCE_FILE).stat().st_mtime_ns == stamp
    assert no_timing(result.metrics) == no_timing(read_metrics(full.run_dir))
    from safetensors.torch import load_file

    wa = load_file(str(latest_checkpoint(full.run_dir) / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(cut.run_dir) / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train_preference(cut, echo=lambda s: None)


def test_simpo_is_reference_free(tmp_path, pairs_file):
    cfg = config(tmp_path, pairs_file, "preference.loss=simpo", "preference.epochs=1",
                 "preference.eval_every=0")
    said: list[str] = []
    result = train_preference(cfg, echo=said.append)
    assert not (Path(cfg.run_dir) / REFERENCE_FILE).exists()
    assert not any("reference log-probs" in s for s in said)
    rows = read_metrics(cfg.run_dir)
    assert all("pref/pessimistic_frac" not in r and "eval/pessimistic_frac" not in r
               for r in rows)
    assert result.iterations == 8 and result.success_after is not None


def test_sft_warm_start_is_the_reference_and_is_reused(tmp_path, pairs_file):
    cfg = config(tmp_path, pairs_file, "preference.sft_epochs=2", "bc.batch_size=16",
                 "preference.epochs=1", "preference.eval_every=0")
    said: list[str] = []
    train_preference(cfg, echo=said.append)
    run = Path(cfg.run_dir)
    assert (run / "warm_start" / "config.json").is_file()
    assert (run / "base_model" / "config.json").is_file()
    rows = read_metrics(run)
    assert rows[0]["sft/loss_last"] < rows[0]["sft/loss_first"]
    assert rows[1]["eval/reward_accuracy"] == 0.0  # policy = the warm start = the reference
    said.clear()
    train_preference(cfg, resume=True, echo=said.append)  # a finished run: nothing to do
    assert not any(s.startswith(("SFT", "building")) for s in said)  # loaded, not rebuilt
    assert any(s.startswith("reference log-probs: loaded") for s in said)


@pytest.mark.parametrize("override, message", [
    ("preference.loss_options={betta: 0.1}", "preference.loss_options.betta: not an option of "
                                             "the 'dpo' loss; accepted: beta, label_smoothing"),
    ("preference.loss_options={beta: -1.0}", "preference.loss_options.beta: must be a number > 0"),
    ("preference.loss_options={gamma: 1.0}", "preference.loss_options.gamma"),
    ("preference.loss=dpoo", "preference.loss: unknown preference loss 'dpoo'; accepted: "),
    ("preference.micro_batch_size=16", "preference.micro_batch_size: 16 must be <= "),
    ("preference.dataset=/no/such/pairs.jsonl", "preference.dataset: "),
])
def test_config_errors_fail_before_any_work(tmp_path, pairs_file, override, message):
    cfg = config(tmp_path, pairs_file, override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train_preference(cfg, echo=lambda s: None)
    assert not (Path(cfg.run_dir) / "metrics.jsonl").exists()


def test_truncation_keeps_the_prompt_end_and_the_response_start(pairs_file):
    _, tok, _ = _tiny_model_and_data()
    pair = PreferencePair("a b c d e f g h i j k l m n o p", "<answer>Y12345</answer>",
                          "<answer>N1</answer>")
    full = tokenize_preference_pairs(tok, [pair])
    cut = tokenize_preference_pairs(tok, [pair], max_length=12)
    p, c, r = (int(x.sum()) for x in (cut.prompt_mask, cut.chosen_mask, cut.rejected_mask))
    assert p + max(c, r) == 12 and p >= 6
    assert torch.equal(cut.prompt_ids[0], full.prompt_ids[0, -p:])  # the prompt's right end
    assert torch.equal(cut.chosen_ids[0, :c], full.chosen_ids[0, :c])  # the response's start
    assert int(full.chosen_ids[0, int(full.chosen_mask.sum()) - 1]) == tok.eos_token_id


def test_lora_trains_the_adapter_against_the_base_model(tmp_path, pairs_file):
    cfg = config(tmp_path, pairs_file, "model.lora.enabled=true", "model.lora.rank=4",
                 "model.lora.alpha=8", "preference.epochs=1", "preference.eval_every=0",
                 "preference.loss_options={beta: 0.5}", "optim.lr=1e-2")
    result = train_preference(cfg, echo=lambda s: None)
    assert result.success_before == 0.0  # zero-initialised adapters: policy = reference
    assert result.success_after >= 0.8, result.success_after
    ckpt = latest_checkpoint(cfg.run_dir)
    assert (ckpt / "adapter_config.json").is_file()  # only the adapter is checkpointed
    result = train_preference(cfg, resume=True, echo=lambda s: None)  # reloads base + adapter
    assert result.iterations == 8


def test_resume_before_the_first_checkpoint_restarts_cleanly(tmp_path, pairs_file):
    import shutil

    cfg = config(tmp_path, pairs_file, "preference.epochs=1")
    first = no_timing(train_preference(cfg, echo=lambda s: None).metrics)
    shutil.rmtree(Path(cfg.run_dir) / "checkpoints")  # as if it died before saving
    again = train_preference(cfg, resume=True, echo=lambda s: None)
    assert no_timing(again.metrics) == first  # one step-0 evaluation, same steps


def test_non_finite_loss_skips_the_step_and_is_counted(tmp_path, pairs_file, monkeypatch):
    import grouprl.train.pairs as pref

    real = pref.preference_loss

    def nan_loss(*args, **kwargs):
        value, m = real(*args, **kwargs)
        return value * float("nan") if torch.is_grad_enabled() else value, m

    monkeypatch.setattr(pref, "preference_loss", nan_loss)
    cfg = config(tmp_path, pairs_file, "preference.epochs=1", "preference.eval_every=0")
    result = train_preference(cfg, echo=lambda s: None)
    steps = [r for r in result.metrics if "train/skipped_updates" in r]
    assert [r["train/skipped_updates"] for r in steps] == [1.0] * 8
    assert steps[-1]["train/skipped_updates_total"] == 8
    assert result.success_after == 0.0  # nothing was applied: the policy is the reference


def test_a_local_model_with_a_chat_template(tmp_path, pairs_file):
    _, tok, _ = _tiny_model_and_data()
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                         "{% endfor %}[assistant] ")
    pair = PreferencePair("What is 1 + 2?", "<answer>Y3</answer>", "<answer>N3</answer>")
    data = tokenize_preference_pairs(tok, [pair])
    assert tok.decode(data.prompt_ids[0]) == "[user] What is 1 + 2?\n[assistant] "
    plain = tokenize_preference_pairs(tok, [pair], use_chat_template=False)
    assert tok.decode(plain.prompt_ids[0]) == "What is 1 + 2?"
    assert torch.equal(plain.chosen_ids, data.chosen_ids)

    from grouprl.policy import build_tiny_policy

    texts = [x for r in make_pairs(40, 3) for x in r.values()]
    model_dir = tmp_path / "local_model"
    build_tiny_policy(texts, vocab_size=300, seed=0, save_dir=model_dir, hidden_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    said: list[str] = []
    cfg = config(tmp_path, pairs_file, f"model.path={model_dir}", "preference.sft_epochs=1",
                 "preference.epochs=1", "preference.eval_every=0",
                 "preference.loss_options={beta: 0.5}")
    result = train_preference(cfg, echo=said.append)
    assert any(s.startswith("model.path is set: no SFT warm start") for s in said)
    assert not (Path(cfg.run_dir) / "warm_start").exists()
    assert result.success_before == 0.0 and result.success_after >= 0.8
