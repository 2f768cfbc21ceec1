"""Issue 13 finding 8: every user error — config, YAML, data files, model paths, devices, resource
limits, damaged checkpoints — exits 2 with one line naming the file/line/field and the fix, and
no traceback; `--debug` shows the traceback instead."""

from __future__ import annotations

import json

import pytest

from grouprl.cli import main
from grouprl.validation import UserError

TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.intermediate_size=64", "logging.progress=false"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad_utf8.jsonl").write_bytes(b'{"prompt": "1+1", "answer": "2"}\n'
                                              b'{"prompt": "caf\xe9", "answer": "3"}\n')
    (tmp_path / "noanswer.jsonl").write_text('{"prompt": "1+1"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (tmp_path / "bad.yaml").write_text("rollout:\n  group_size: [4\n  temperature: 1\n")
    return tmp_path


CASES = [
    (["train", "configs/reasoning_grpo.yaml", "env.kwargs={dataset: {d}/bad_utf8.jsonl}"],
     "config error: env.kwargs: ", "line 2: not valid UTF-8"),
    (["train", "configs/reasoning_grpo.yaml", "env.kwargs={dataset: {d}/noanswer.jsonl}"],
     "config error: env.kwargs: ", "line 1: missing field 'answer'"),
    (["train", "configs/reasoning_grpo.yaml", "env.kwargs={dataset: {d}/empty.jsonl}"],
     "config error: env.kwargs: ", "no records"),
    (["train", "configs/preference_dpo.yaml", "preference.dataset={d}/empty.jsonl"],
     "config error: preference.dataset: ", "no records"),
    (["train", "configs/reasoning_grpo.yaml", "model.path={d}/empty_dir"],
     "config error: model.path: ", "empty directory"),
    (["train", "configs/reasoning_grpo.yaml", "model.path={d}/config_only"],
     "config error: model.path: ", "has no weights"),
    (["train", "configs/reasoning_grpo.yaml", "model.device=mps"],
     "config error: model.device: 'mps' is not supported", "use cpu, cuda, cuda:N or auto"),
    (["config", "configs/reasoning_grpo.yaml", "env.kwargs={dataset: {d}/noanswer.jsonl}"],
     "config error: env.kwargs: ", "missing field 'answer'"),
    (["train", "{d}/bad.yaml"], "config error: ", "not valid YAML (line"),
    (["train", "rollout.grup_size=4"], "config error: unknown config key 'rollout.grup_size'",
     "group_size"),
    (["train", "configs/reasoning_grpo.yaml", *TINY, "rollout.group_size=1000000000"],
     "config error: rollout memory: ", "rollout.group_size"),
    (["eval", "{d}/empty_dir"], "config error: ", "config.json"),
]


@pytest.mark.parametrize("argv, start, fragment", CASES, ids=lambda v: str(v)[:40])
def test_user_errors_exit_2_with_one_message_and_no_traceback(files, capsys, argv, start,
                                                               fragment):
    argv = [a.replace("{d}", str(files)) for a in argv]
    assert main([*argv, f"run_dir={files / 'run'}"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(start) and fragment in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not (files / "run" / "metrics.jsonl").exists()        # failed before any work


def test_debug_shows_the_traceback_of_an_input_error(files):
    with pytest.raises(UserError, match="model.device"):
        main(["--debug", "train", "model.device=mps", f"run_dir={files / 'run'}"])
    with pytest.raises(UserError):
        main(["train", "--debug", "model.device=mps", f"run_dir={files / 'run'}"])


def test_a_damaged_checkpoint_on_eval_names_the_file(tmp_path, capsys):
    from grouprl.train.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    assert main(["train", *TINY, "model.tiny.tokenizer_episodes=8", "bc.episodes=4",
                 "bc.epochs=1", "iterations=1", "eval.episodes=2", "rollout.groups_per_batch=2",
                 "rollout.group_size=2", f"run_dir={run}"]) == 0
    capsys.readouterr()
    weights = latest_checkpoint(run) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err, err
