"""``mode: phgpo`` data parallel (docs/distributed.md, "What each rank does"): 2 ranks equal
1 rank on PhGPO's learner, both ranks hold the identical pheromone store, and ``grouprl train
configs/phgpo_synthetic.yaml`` runs end to end on 2 ranks and resumes exactly.

Learner (worker_phgpo.py; float64 tiny tool-head policy): a supervised epoch with mini-batches
shared 4 | 3, and an RL epoch of 5 tasks in rounds of 2 (the last round with no task on rank 1,
an evaporation due inside a round) end with the parameters of one process replaying the same
rounds (one step on the mean loss over all of a round's rows; deposits in task order) within
1e-10; the store and elite buffer are bit-identical on both ranks and equal to the replay's."""

from __future__ import annotations

import json
import shutil

from grouprl.train.metrics import read_metrics

from .torchrun import ROOT, torchrun

WORKER = str(ROOT / "tests/distributed/worker_phgpo.py")
TRAIN = str(ROOT / "tests/distributed/worker_phgpo_train.py")
TINY = ["model.tiny={vocab_size: 320, hidden_size: 32, num_layers: 1, num_heads: 2, "
        "num_kv_heads: 1, intermediate_size: 64}",
        "phgpo.num_tasks=40", "phgpo.supervised_epochs=1", "phgpo.max_length=96",
        "phgpo.supervised_batch_size=16",
        "phgpo.curriculum=[{max_steps: 5, epochs: 2, tf_start: 0.3, tf_end: 0.2}]",
        "phgpo.stage3_epochs=1", "phgpo.tasks_per_epoch=5", "phgpo.group_size=3",
        "phgpo.inject_every=1", "phgpo.evaporate_every=3", "phgpo.eval_rollouts=2",
        "optim.lr=0.003", "eval.episodes=5", "eval.every=2", "save_every=1", "keep_last=10",
        "logging.progress=false", "threads=1"]


def test_two_ranks_equal_one_and_share_one_pheromone_store(tmp_path):
    out = tmp_path / "result.json"
    torchrun([WORKER, "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["sl"]["moved"] > 1e-3 and r["sl"]["diff"] <= 1e-10        # stage 1
    assert r["rounds"] == [3, 2]                     # tasks 0, 2, 4 on rank 0; 1, 3 on rank 1
    assert r["rl_moved"] > 1e-3 and r["rl_diff"] <= 1e-10             # stages 2 and 3
    assert r["store_same_on_ranks"] and r["elite_same_on_ranks"]
    assert r["store_equal_one"] and r["elite_equal_one"]
    assert r["elite_size"] > 0 and r["context_entries"] > 0            # deposits happened
    assert r["metrics_same_on_ranks"] and r["evals_same_on_ranks"]
    assert r["accuracy"] == r["one_accuracy"]


def _records(run_dir) -> tuple[list[dict], list[dict]]:
    return tuple([json.loads(line) for line in open(f"{run_dir}.rank{r}.json")] for r in (0, 1))


def _no_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")}
            for r in read_metrics(run_dir)]


def test_two_ranks_train_phgpo_and_resume_exactly(tmp_path):
    """4 epochs (1 supervised, 2 curriculum, 1 fine-tune): identical weights on both ranks at
    every checkpoint and an identical store + elite buffer after every RL epoch; a run stopped
    after 2 epochs and resumed logs the uninterrupted run's metrics."""
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun([TRAIN, "train", "configs/phgpo_synthetic.yaml", *TINY, f"run_dir={a}"])
    (r0,), (r1,) = _records(a)
    assert len(r0["digests"]) == 4 and r0["digests"] == r1["digests"]   # replicas stay equal
    assert r0["digests"][0] != r0["digests"][-1]
    assert len(r0["stores"]) == 3 and r0["stores"] == r1["stores"]      # one pheromone store
    assert len(set(r0["stores"])) == 3                                  # and it moved
    assert (a / "checkpoints/iter_000004/rank_rng.pt").is_file()
    rows = read_metrics(a)
    assert [r.get("stage") for r in rows[1:]] == [1, 2, 2, 3]
    assert "eval/match_rate" in rows[0] and "eval/match_rate" in rows[-1]

    shutil.copytree(a, b)                           # as if stopped after epoch 2 (stage 2)
    for later in ("iter_000003", "iter_000004"):
        shutil.rmtree(b / "checkpoints" / later)
    (b / "checkpoints" / "latest").write_text("iter_000002\n")
    torchrun([TRAIN, "train", "--resume", str(b)])
    assert _no_timing(b) == _no_timing(a)                                # exact resume
    (b0,), (b1,) = _records(b)
    assert b0["digests"] == r0["digests"][2:] == b1["digests"]
    assert b0["stores"] == r0["stores"][1:] == b1["stores"]
