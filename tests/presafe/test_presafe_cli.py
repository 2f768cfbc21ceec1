"""``grouprl eval RUN_DIR --safety``: the safety evaluation of any run (here a preference run),
with ``presafe.*`` overrides choosing the data; without the flag such a run names it."""

from __future__ import annotations

import json
from pathlib import Path

from grouprl.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
        "logging.progress=false", "threads=1", "preference.limit=16", "preference.epochs=1",
        "preference.batch_size=8", "preference.micro_batch_size=4", "preference.sft_epochs=1",
        "preference.eval_every=0"]
SAFETY = ["presafe.harmful_sources=[toy]", "presafe.toy_prompts=20", "presafe.benign_test=6",
          "presafe.eval_max_new_tokens=8"]


def test_safety_eval_of_a_preference_run(tmp_path, capsys):
    run_dir = tmp_path / "dpo"
    assert main(["train", str(ROOT / "configs" / "preference_dpo.yaml"), *TINY,
                 f"run_dir={run_dir}"]) == 0
    capsys.readouterr()
    assert main(["eval", "--safety", str(run_dir), *SAFETY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["iteration"] == 2 and result["eval/benign_prompts"] == 6
    assert result["eval/harmful_prompts"] >= 1
    for key in ("eval/asr_proxy", "eval/over_refusal", "eval/accuracy",
                "eval/refusal_prefix_rate", "eval/think_skip_rate"):
        assert 0.0 <= result[key] <= 1.0, key
    assert main(["eval", str(run_dir)]) == 2
    assert "--safety" in capsys.readouterr().err
