"""End to end under torchrun (spec-scale-out §3; issue 14): ``grouprl train`` with 2 ranks on
the tiny Sokoban default finishes; both ranks hold identical weights at every checkpoint;
``train/rows`` counts both ranks' rows; a run stopped after 2 iterations and resumed with the
same world size logs exactly the metrics of the uninterrupted 3-iteration run."""

from __future__ import annotations

import json

from grouprl.train.metrics import read_metrics

from .torchrun import ROOT, torchrun

WORKER = str(ROOT / "tests/distributed/worker_train.py")
TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.intermediate_size=64", "model.tiny.tokenizer_episodes=10",
        "logging.progress=false", "threads=1", "rollout.groups_per_batch=4",
        "rollout.group_size=3", "rollout.max_new_tokens=6", "eval.episodes=6",
        "env.max_steps=3", "bc.episodes=4", "bc.epochs=10", "eval.every=2",
        "algorithm.num_mini_batches=2", "algorithm.micro_batch_size=8", "save_every=1"]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(f"{run_dir}.rank0.json")], \
        [json.loads(line) for line in open(f"{run_dir}.rank1.json")]


def no_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")}
            for r in read_metrics(run_dir)]


def test_two_ranks_train_resume_and_count_rows(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun([WORKER, "train", *TINY, "iterations=3", f"run_dir={a}"])
    torchrun([WORKER, "train", *TINY, "iterations=2", f"run_dir={b}"])
    torchrun([WORKER, "train", "--resume", str(b), "iterations=3"])

    (r0,), (r1,) = records(a)
    assert len(r0["digests"]) == 3 and r0["digests"] == r1["digests"]   # replicas stay equal
    assert r0["digests"][0] != r0["digests"][2]                          # and they trained
    rows = {r["iteration"]: r["train/rows"] for r in read_metrics(a) if "train/rows" in r}
    assert rows == {i + 1: float(r0["rows"][i] + r1["rows"][i]) for i in range(3)}
    assert all(n > 0 for n in r0["rows"] + r1["rows"])                  # both ranks rolled out
    assert (a / "checkpoints/iter_000003/rank_rng.pt").is_file()

    assert no_timing(b) == no_timing(a)                                  # exact resume
    (b0, b0_resumed), (b1, b1_resumed) = records(b)
    assert b0_resumed["digests"][-1] == r0["digests"][-1] == b1_resumed["digests"][-1]
