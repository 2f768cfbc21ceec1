"""``mode: multiagent`` data parallel (Dr. MAS teams; docs/distributed.md): 2 ranks equal 1 rank
on a team iteration and ``grouprl train configs/drmas_math.yaml`` runs end to end on 2 ranks.

Update (worker_multiagent.py; float64 tiny models, 5 tasks shared 3 | 2, scripted replies):
group and trajectory ids stay global; the advantages on the shards are exactly the one-process
advantages (native agent-wise, and the reference padding's duplicates and statistics); every
model group's parameters after ``update_num`` × 2 PPO epochs equal the one-process update on
the same rows within 1e-10, each rank taking the same number of optimizer steps — a rank whose
share of a group is empty included; summed and weighted metrics equal the one-process ones;
the sharded evaluation reduces to the one-process pass@k / avg@k."""

from __future__ import annotations

import json
import shutil

import pytest

from grouprl.train.metrics import read_metrics

from .torchrun import ROOT, torchrun

WORKER = str(ROOT / "tests/distributed/worker_multiagent.py")
EXACT = ("episode/reward", "train/success_rate", "train/rows", "train/duplicate_rows",
         "agent/Solver/rows", "agent/Verifier/rows")
CLOSE = ("math/approve_rate", "agent/Solver/invalid_rate", "agent/Solver/reward_mean",
         "agent/Solver/adv_abs_mean", "agent/Verifier/invalid_rate",
         "agent/Verifier/reward_mean", "agent/Verifier/adv_abs_mean", "agent/Solver/loss",
         "agent/Solver/grad_norm", "agent/Verifier/grad_norm")


@pytest.fixture(scope="module")
def team_iterations(tmp_path_factory):
    """The worker's three cases in one torchrun: native agent-wise advantages; rank 1 without
    a Verifier row (an empty share of that group); one shared group with reference padding."""
    out = tmp_path_factory.mktemp("team_dp") / "result.json"
    torchrun([WORKER, "--out", str(out)])
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["native", "empty_share", "reference_padding"])
def test_two_ranks_equal_one_on_a_team_iteration(team_iterations, case):
    r = team_iterations[case]
    assert r["group_ids"] == [3, 4] and r["traj_ids"] == list(range(9, 15))   # global ids
    assert r["same_rows"] and r["same_advantages"] and r["adv_nonzero"] > 10
    groups = ["m"] if case == "reference_padding" else ["Solver", "Verifier"]
    steps = 3 * 2 if case == "reference_padding" else 2 * 2             # update_num × epochs
    assert r["updates"] == [dict.fromkeys(groups, float(steps))] * 2
    assert r["ref_updates"] == dict.fromkeys(groups, float(steps))
    for g in groups:
        assert r["moved"][g] > 1e-3                                     # the update moved it
        assert r["max_param_diff"][g] <= 1e-10, g
    if case == "empty_share":
        assert r["verifier_rows"] == [r["verifier_rows"][0], 0] and r["verifier_rows"][0] > 0
    if case == "reference_padding":                                    # global padding:
        n = r["metrics"]["train/rows"]
        assert r["duplicates"] == r["ref_duplicates"] == (-n) % 5 > 0   # (−n_w) mod d copies
        assert not r["same_order"]          # duplicates stay with their task group's rank
    else:
        assert r["same_order"] and r["duplicates"] == 0
    m, ref = r["metrics"], r["ref_metrics"]
    assert r["rank1_metrics_equal"]                                    # one record, all ranks
    for key in EXACT:
        assert m[key] == ref[key], key
    for key in CLOSE:
        assert m[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    for g in groups:                                                   # the learner's own
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
            assert r["dp"][g][key] == pytest.approx(r["one"][g][key], rel=1e-9), (g, key)
    assert 0 < r["ref_eval"]["val/avg@k"] < 1 and r["eval"] == r["ref_eval"]


TRAIN = str(ROOT / "tests/distributed/worker_multiagent_train.py")
TINY = ["model.tiny.vocab_size=272", "model.tiny.hidden_size=16", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=32",
        "rollout.groups_per_batch=3", "rollout.group_size=2", "rollout.max_new_tokens=6",
        "eval.episodes=3", "eval.every=2", "save_every=1", "multiagent.eval_k=2",
        "logging.progress=false", "threads=1", "multiagent.warm_start_samples=8", "bc.epochs=1",
        "bc.batch_size=8", "algorithm.entropy_coef=0.01", "multiagent.update_num=2",
        "multiagent.task_kwargs={difficulty: [1], size: 20}"]


def _records(run_dir) -> tuple[list[dict], list[dict]]:
    return tuple([json.loads(line) for line in open(f"{run_dir}.rank{r}.json")] for r in (0, 1))


def _no_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")}
            for r in read_metrics(run_dir)]


def test_two_ranks_train_the_team_and_resume_exactly(tmp_path):
    """configs/drmas_math.yaml on 2 ranks (3 tasks shared 2 | 1): identical weights of every
    model group on both ranks at every checkpoint, rows counted over both ranks, a run resumed
    from its iteration-2 checkpoint (every rank's RNG) logs the uninterrupted run's metrics."""
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun([TRAIN, "train", "configs/drmas_math.yaml", *TINY, "iterations=3",
              f"run_dir={a}"])
    shutil.copytree(a, b)                           # as if stopped after iteration 2
    shutil.rmtree(b / "checkpoints" / "iter_000003")
    (b / "checkpoints" / "latest").write_text("iter_000002\n")
    torchrun([TRAIN, "train", "--resume", str(b)])

    (r0,), (r1,) = _records(a)
    assert len(r0["digests"]) == 3 and r0["digests"] == r1["digests"]   # replicas stay equal
    assert r0["digests"][0] != r0["digests"][2]                          # and they trained
    logged = {r["iteration"]: r for r in read_metrics(a) if "train/rows" in r}
    assert sorted(logged) == [1, 2, 3] and len(r0["rows"]) == len(r1["rows"]) == 3
    assert all(n > 0 for n in r0["rows"] + r1["rows"])                  # both ranks rolled out
    for i, r in logged.items():
        assert r["train/rows"] == r0["rows"][i - 1] + r1["rows"][i - 1]  # both ranks' rows
        assert r["train/rows"] == r["agent/Solver/rows"] + r["agent/Verifier/rows"]
        assert r["agent/Solver/optimizer_steps"] == r["agent/Verifier/optimizer_steps"] == 2.0
    assert (a / "checkpoints/iter_000003/rank_rng.pt").is_file()
    assert {"val/pass@k", "val/avg@k"} <= set(read_metrics(a)[0])

    assert _no_timing(b) == _no_timing(a)                                # exact resume
    (b0,), (b1,) = _records(b)
    assert b0["digests"] == r0["digests"][2:] == b1["digests"]
