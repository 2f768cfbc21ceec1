"""Data-parallel preference training (``mode: preference`` under torchrun, docs/distributed.md).

1. 2 ranks equal 1 rank on the preference update (float64 tiny policy; DPO with the reference
   log-probs computed sharded, and the reference-free ORPO whose NLL term is normalised by the
   whole batch's chosen tokens): 2 epochs of batches of 7 pairs over 17 (shards 4 | 3 and, for
   the last batch, 2 | 1), micro-batches of 2, AdamW and an active grad clip end with the
   parameters of one process on all pairs, within 1e-10; losses and gradient norms agree step
   by step; the sharded reference log-probs and evaluation equal one process's exactly; a NaN
   loss on rank 1 alone skips the step on both ranks.
2. ``grouprl train configs/preference_dpo.yaml`` (tiny overrides) on 2 ranks finishes with
   identical weights on both ranks at every checkpoint, logs the global batch, and a run stopped
   by a signal reaching rank 1 only, resumed with the same world size, logs exactly the metrics
   of the uninterrupted run (and reuses the reference cache).
3. ``distributed.model_sharding: fsdp2`` is refused for preference under torchrun, before any
   work (the mode itself is admitted).
"""

from __future__ import annotations

import json

import pytest

from grouprl.data import load_pairs
from grouprl.recipes import train
from grouprl.train import ConfigError, load_config
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.metrics import read_metrics

from .torchrun import ROOT, torchrun

WORKER = str(ROOT / "tests/distributed/worker_preference.py")


@pytest.fixture(scope="module")
def update_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pref_update") / "result.json"
    torchrun([WORKER, "update", str(out)])
    return json.loads(out.read_text())


@pytest.mark.parametrize("loss", ["dpo", "orpo"])
def test_two_ranks_equal_one_on_the_preference_update(update_results, loss):
    r = update_results[loss]
    assert r["same_batches"]
    assert r["moved"] > 1e-3                               # the update did move the weights
    assert r["max_param_diff"] <= 1e-10
    assert r["replicas_equal"]
    assert r["skipped"] == [0.0] * 6                       # 2 epochs × ⌈17 / 7⌉ steps
    assert [m["train/pairs"] for m in r["dp"]] == [7.0, 7.0, 3.0] * 2   # the global batch
    assert any(m["actor/grad_norm"] > 0.05 for m in r["dp"])            # the clip was active
    for dp, one in zip(r["dp"], r["one"], strict=True):
        assert dp.keys() == one.keys()
        for key, value in one.items():
            assert dp[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert r["eval_dp"] == r["eval_one"]                   # sharded forwards, gathered
    assert r["nan_skipped"] == [1.0, 1.0] and r["nan_unchanged"] == [True, True]
    if loss == "dpo":
        assert r["ref_equal"] and r["cache_written"]


TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.intermediate_size=64", "logging.progress=false", "threads=1",
        "preference.limit=40", "preference.epochs=1", "preference.batch_size=7",
        "preference.micro_batch_size=2", "preference.sft_epochs=1", "bc.batch_size=16",
        "preference.eval_every=2", "save_every=2"]


def records(run_dir) -> tuple[list[dict], list[dict]]:
    return ([json.loads(line) for line in open(f"{run_dir}.rank0.json")],
            [json.loads(line) for line in open(f"{run_dir}.rank1.json")])


def no_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")}
            for r in read_metrics(run_dir)]


def test_two_ranks_train_stop_and_resume_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    held_out = tmp_path / "held_out.jsonl"      # 25 of the built-in test pairs: a short eval
    held_out.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen,
                                            "rejected": p.rejected}) + "\n"
                                for p in load_pairs("builtin:arithmetic_pairs", split="test")[:25]))
    config = str(ROOT / "configs/preference_dpo.yaml")
    tiny = [*TINY, f"preference.eval_dataset={held_out}"]
    torchrun([WORKER, "train", "train", config, *tiny, f"run_dir={a}"])
    torchrun([WORKER, "train", "--stop-at", "3", "train", config, *tiny, f"run_dir={b}"])
    assert latest_checkpoint(b).name == "iter_000003"      # stopped mid-epoch (step 3 of 6)
    resumed = torchrun([WORKER, "train", "train", "--resume", str(b)])
    assert "reference log-probs: loaded" in resumed.stderr

    (r0,), (r1,) = records(a)
    assert r0["rc"] == r1["rc"] == 0
    assert len(r0["digests"]) == 3 and r0["digests"] == r1["digests"]   # steps 2, 4, 6
    assert r0["digests"][0] != r0["digests"][-1]                         # and they trained
    steps = [r for r in read_metrics(a) if "pref/loss" in r]
    assert [r["train/pairs"] for r in steps] == [7.0] * 5 + [5.0]        # 40 pairs, global
    assert all(r["train/skipped_updates"] == 0 for r in steps)
    evals = [r["iteration"] for r in read_metrics(a) if "eval/reward_accuracy" in r]
    assert evals == [0, 2, 4, 6]
    assert (a / "checkpoints/iter_000006/rank_rng.pt").is_file()

    (b0, b0_resumed), (b1, b1_resumed) = records(b)
    assert b0["rc"] == b1["rc"] == 130                     # the signal reached rank 1 only
    assert no_timing(b) == no_timing(a)                    # exact resume
    assert b0_resumed["digests"][-1] == r0["digests"][-1] == b1_resumed["digests"][-1]


def test_fsdp2_is_refused_for_preference_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")        # as torchrun sets them: the mode is admitted,
    monkeypatch.setenv("RANK", "0")              # the sharding refused before any collective
    cfg = load_config(ROOT / "configs/preference_dpo.yaml",
                      [f"run_dir={tmp_path / 'run'}", "distributed.model_sharding=fsdp2"])
    with pytest.raises(ConfigError, match=r"^distributed\.model_sharding: fsdp2 is not supported "
                                          r"by mode: preference"):
        train(cfg, echo=lambda s: None)
    assert not (tmp_path / "run").exists()
