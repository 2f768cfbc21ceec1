"""Every `grouprl ...` command in the README's bash blocks runs as printed (issue 13): each is
executed in order in a scratch directory (with the repository's `configs/` and the small data
files the commands name), with a tiny budget inserted *before* the command's own overrides so
the README's values still win. Exit code 0 and no traceback."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from grouprl.cli import EXAMPLE_ROWS, main

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32",
              "model.tiny.num_layers=1", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
              "model.tiny.intermediate_size=64", "model.tiny.tokenizer_episodes=8",
              "logging.progress=false", "threads=1"]
RL_BUDGET = [*TINY_MODEL, "bc.episodes=4", "bc.epochs=1", "iterations=1", "eval.episodes=2",
             "rollout.groups_per_batch=2", "rollout.group_size=2", "save_every=1"]
TEAM_BUDGET = [*TINY_MODEL, "iterations=1", "rollout.groups_per_batch=2",
               "rollout.group_size=2", "rollout.max_new_tokens=6", "eval.episodes=2",
               "multiagent.eval_k=2", "multiagent.warm_start_samples=8", "save_every=1"]
PHGPO_BUDGET = [*TINY_MODEL, "phgpo.num_tasks=30", "phgpo.supervised_epochs=1",
                "phgpo.max_length=96",
                "phgpo.curriculum=[{max_steps: 3, epochs: 1, tf_start: 0.3, tf_end: 0.2}]",
                "phgpo.stage3_epochs=1", "phgpo.tasks_per_epoch=2", "phgpo.group_size=2",
                "phgpo.eval_rollouts=2", "eval.episodes=2", "eval.every=0", "save_every=1"]
PREFERENCE_BUDGET = [*TINY_MODEL, "preference.limit=16", "preference.epochs=1",
                     "preference.batch_size=8", "preference.micro_batch_size=4",
                     "preference.sft_epochs=1", "preference.eval_every=0"]


def readme_commands() -> list[str]:
    """The `grouprl` lines of the README's bash blocks, comments stripped, in order."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("grouprl ")]


def with_budget(argv: list[str]) -> list[str]:
    """``argv`` with the tiny budget inserted after the subcommand's positional config/run dir."""
    command, rest = argv[0], argv[1:]
    if command == "train" and ("--resume" in rest or "--help" in rest):
        return argv
    if command == "eval":
        return [command, rest[0], "eval.episodes=2", *rest[1:], "eval.episodes=2"]
    if command != "train":
        return argv
    head = rest[:1] if rest and "=" not in rest[0] else []
    recipe = (ROOT / head[0]).read_text() if head else ""
    mode = re.search(r"^mode: (\w+)", recipe, flags=re.M)
    budget = {"preference": PREFERENCE_BUDGET, "multiagent": TEAM_BUDGET,
              "phgpo": PHGPO_BUDGET}.get(mode.group(1) if mode else "rl", RL_BUDGET)
    if re.search(r"^\s*path:\s*['\"]?builtin:", recipe, flags=re.M):   # a real model: the
        # smoke run uses the tiny model (tests/policy/test_builtin_models.py runs the real one)
        budget = [*budget, "model.path=null"]
    return [command, *head, *budget, *rest[len(head):]]


def test_the_readme_lists_the_commands_this_test_expects():
    commands = readme_commands()
    assert len(commands) >= 12
    assert any(c.startswith("grouprl train --resume") for c in commands)
    assert any(c.startswith("grouprl eval") for c in commands)


def test_every_readme_command_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "data.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
        for a in range(3) for b in range(4)))
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"{a} + 1 =", "chosen": str(a + 1), "rejected": str(a + 2)})
        + "\n" for a in range(24)))
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                     for r in EXAMPLE_ROWS))
    for command in readme_commands():
        argv = with_budget(shlex.split(command)[1:])
        try:
            code = main(argv)
        except SystemExit as done:          # argparse's --help
            code = done.code
        captured = capsys.readouterr()
        assert code == 0, (command, captured.err[-2000:])
        assert "Traceback" not in captured.err, command


@pytest.mark.parametrize("argv, expected", [
    (["train", "configs/reasoning_grpo.yaml", "x=1"],
     ["train", "configs/reasoning_grpo.yaml", *RL_BUDGET, "x=1"]),
    (["train", "--resume", "runs/a"], ["train", "--resume", "runs/a"]),
    (["train", "configs/preference_dpo.yaml"],
     ["train", "configs/preference_dpo.yaml", *PREFERENCE_BUDGET]),
])
def test_the_budget_goes_before_the_commands_own_overrides(argv, expected):
    assert with_budget(argv) == expected
