"""The PhGPO recipe end to end (``mode: phgpo``, configs/phgpo_synthetic.yaml at a tiny budget):
metrics of every stage, learning over the uniform baseline, exact resume from a checkpoint
(weights, pheromone store, elite buffer, metrics), and config errors naming their key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grouprl.recipes import train
from grouprl.train.checkpoint import read_checkpoint_state
from grouprl.train.config import ConfigError, load_config
from grouprl.train.metrics import read_metrics

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "phgpo_synthetic.yaml"
TINY = ["model.tiny={vocab_size: 320, hidden_size: 32, num_layers: 1, num_heads: 2, "
        "num_kv_heads: 1, intermediate_size: 64}",
        "phgpo.num_tasks=60", "phgpo.supervised_epochs=4", "phgpo.max_length=96",
        "phgpo.supervised_batch_size=16",
        "phgpo.curriculum=[{max_steps: 5, epochs: 2, tf_start: 0.3, tf_end: 0.2}]",
        "phgpo.stage3_epochs=1", "phgpo.tasks_per_epoch=4", "phgpo.group_size=3",
        "phgpo.inject_every=1", "phgpo.evaporate_every=2", "phgpo.eval_rollouts=4",
        "optim.lr=0.003", "eval.episodes=6", "eval.every=0", "save_every=1", "keep_last=10",
        "logging.progress=false"]
EPOCHS = 7                                      # 4 supervised + 2 curriculum + 1 fine-tune


def _cfg(run_dir: Path, *extra: str):
    return load_config(CONFIG, [*TINY, f"run_dir={run_dir}", *extra])


def _untimed(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("phgpo") / "full"
    return train(_cfg(run_dir), echo=lambda _: None)


def test_three_stages_log_their_metrics_and_beat_uniform(reference_run):
    rows = reference_run.metrics
    assert reference_run.iterations == EPOCHS
    assert [r["iteration"] for r in rows] == list(range(EPOCHS + 1))
    assert [r.get("stage") for r in rows[1:]] == [1, 1, 1, 1, 2, 2, 3]
    assert all("train/next_tool_accuracy" in r for r in rows[1:5])
    for r in rows[5:]:
        for key in ("train/match_rate", "train/success_rate", "train/ratio_mean",
                    "schedule/beta", "schedule/lambda", "schedule/epsilon",
                    "schedule/teacher_forcing", "pheromone/tau_mean", "elite/size"):
            assert key in r, key
    assert rows[5]["schedule/teacher_forcing"] == pytest.approx(0.3)     # curriculum tf_start
    assert rows[6]["schedule/teacher_forcing"] == pytest.approx(0.2)     # … tf_end
    assert rows[7]["schedule/sl_weight"] == 0.0 and rows[7]["schedule/beta"] == 0.5
    assert rows[6]["pheromone/tau_max"] > 1.0                           # deposits happened
    last = rows[-1]
    for key in ("eval/match_rate", "eval/match_rate_beta0", "eval/next_tool_accuracy",
                "eval/success_rate"):
        assert key in last and key in rows[0], key
    uniform = last["eval/uniform_match_rate"]
    assert uniform == pytest.approx(1 / 12)
    assert last["eval/match_rate"] > uniform + 0.05, last
    assert last["eval/match_rate"] > rows[0]["eval/match_rate"] + 0.05
    assert reference_run.success_after == last["eval/match_rate"]


def test_resume_from_a_checkpoint_is_exact(reference_run, tmp_path):
    full = reference_run.run_dir
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    ckpts = resumed / "checkpoints"
    for later in ("iter_000006", "iter_000007"):          # as if stopped in stage 2
        shutil.rmtree(ckpts / later)
    (ckpts / "latest").write_text("iter_000005\n")
    result = train(_cfg(resumed), resume=True, echo=lambda _: None)
    assert _untimed(result.metrics) == _untimed(reference_run.metrics)
    assert _untimed(read_metrics(resumed)) == _untimed(read_metrics(full))
    a = load_file(str(full / "checkpoints" / "iter_000007" / "model.safetensors"))
    b = load_file(str(ckpts / "iter_000007" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (read_checkpoint_state(d / "checkpoints" / "iter_000007") for d in (full, resumed))
    assert sa["store"] == sb["store"] and sa["elite"] == sb["elite"]
    assert sa["elite"]["general"], "the elite buffer was filled"


@pytest.mark.parametrize("override,key", [
    ("phgpo.curriculum=[{max_steps: 3, epochs: 1, tf_start: 0.4}]", "phgpo.curriculum[0]"),
    ("phgpo.pheromone={rho_typo: 0.1}", "phgpo.pheromone: rho_typo"),
    ("phgpo.context={capacity: 0}", "phgpo.context: capacity"),
    ("phgpo.beta_stage2=[0.7, 0.8]", "phgpo.beta_stage2"),
    ("phgpo.top_k=0", "phgpo.top_k"),
    ("phgpo.ratio_mode=biased", "phgpo.ratio_mode"),
])
def test_config_errors_name_the_key_before_any_write(tmp_path, override, key):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        train(_cfg(run_dir, override), echo=lambda _: None)
    assert str(info.value).startswith(key), str(info.value)
    assert not run_dir.exists()


def test_recipe_config_file_is_valid_and_documented():
    cfg = load_config(CONFIG)
    assert cfg.mode == "phgpo" and cfg.phgpo.task == "synthetic"
    text = CONFIG.read_text()
    assert "grouprl train configs/phgpo_synthetic.yaml" in text
    assert json.loads(json.dumps(cfg.phgpo.curriculum))[0]["max_steps"] == 3
