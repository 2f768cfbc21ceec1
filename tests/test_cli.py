"""The `grouprl advantages` command: built-in example, rollout files, option errors."""

from __future__ import annotations

import json
import re

import pytest

from grouprl.cli import EXAMPLE_ROWS, main


def test_builtin_example_matches_spec_values(capsys):
    assert main(["advantages", "-e", "gigpo", "-o", "compat=reference", "-o",
                 "mode=mean_std_norm", "--json"]) == 0
    values = json.loads(capsys.readouterr().out)["gigpo"]
    expected = [1.2570, 1.4317, 0.7246, -2.3547, -1.9275, -1.2012, 1.3457, 0.7246]
    assert values == pytest.approx(expected, abs=1e-4)


def test_rollout_file_with_text_observations(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in EXAMPLE_ROWS))
    assert main(["advantages", str(path), "-e", "graphgpo", "-o", "compat=reference",
                 "--json"]) == 0
    values = json.loads(capsys.readouterr().out)["graphgpo"]
    expected = [0.1472, 1.4317, 0.7246, -1.7785, -1.9275, -1.2012, 1.8793, 0.7246]
    assert values == pytest.approx(expected, abs=1e-4)


def test_bad_option_exits_2_with_message(capsys):
    assert main(["advantages", "-e", "hgpo", "-o", "alpha=oops"]) == 2
    assert "alpha: must be a number, got 'oops'" in capsys.readouterr().err


def test_column_missing_in_some_rows(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    rows = [dict(r) for r in EXAMPLE_ROWS]
    del rows[3]["state"]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["advantages", str(path)]) == 2
    assert "state: missing in row 3" in capsys.readouterr().err


def test_eval_refuses_a_preference_run(tmp_path, capsys):
    from grouprl.train.config import config_to_dict, load_config

    cfg = load_config(None, ["mode=preference", f"run_dir={tmp_path}"])
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    assert main(["eval", str(tmp_path)]) == 2
    assert "eval/reward_accuracy" in capsys.readouterr().err


def test_default_advantages_table_skips_estimators_needing_row_tensors(capsys):
    assert main(["advantages"]) == 0
    out = capsys.readouterr().out
    assert "gigpo" in out and "canon" not in out


def test_config_prints_the_resolved_config_and_checks_algorithm_options(capsys):
    import yaml

    assert main(["config", "configs/sokoban_hgpo.yaml", "rollout.group_size=4",
                 "env.kwargs={dim_room: [6, 6]}"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["rollout"]["group_size"] == 4 and data["algorithm"]["estimator"] == "hgpo"
    assert data["env"]["kwargs"] == {"dim_room": [6, 6]}
    assert main(["config", "algorithm.estimator_options.gama=0.9"]) == 2
    err = capsys.readouterr().err
    assert "algorithm.estimator_options: gama: unknown option" in err and "gamma" in err
    assert "Traceback" not in err


def test_train_help_lists_every_key_with_default_and_help(capsys):
    from grouprl.train.config import config_keys

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key, _, text in config_keys():
        assert f"  {key} " in out and text.split()[0] in out
    assert main(["config", "--keys"]) == 0 and "rollout.group_size" in capsys.readouterr().out


def test_advantages_options_use_the_config_grammar(capsys):
    # YAML values, as in config overrides: a bare word is a string, [..] a list, null is None
    assert main(["advantages", "-e", "hgpo", "-o", "history_length=2", "-o",
                 "compat=reference", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hgpo"]) == len(EXAMPLE_ROWS)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "no rows"),
    ('{"group_id": 1, "traj_id": 1, "step": 0, "reward": 1.0}\n{oops}\n',
     r"rows.jsonl line 2: invalid JSON"),
    ("[1, 2]\n", "rows.jsonl line 1: expected an object with named fields"),
    ('{"traj_id": 1, "step": 0, "reward": 1.0}\n', "group_id: required in every row"),
    ('{"group_id": 1, "step": 0, "reward": 1.0}\n', "traj_id: required in every row"),
    (b'{"group_id": 1, "traj_id": 1, "step": 0, "reward": 1.0}\n{"x": "\xff"}\n',
     "rows.jsonl line 2: not valid UTF-8"),
])
def test_bad_rollout_files_exit_2_naming_file_line_and_field(tmp_path, capsys, content,
                                                             message):
    path = tmp_path / "rows.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["advantages", str(path), "-e", "grpo"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.mark.parametrize("setting, shown", [
    ({"env": {"name": "evil.module:Env"}}, "env.name='evil.module:Env'"),
    ({"model": {"trust_remote_code": True}}, "model.trust_remote_code=true"),
])
def test_a_run_directory_that_runs_outside_code_needs_trust_run(tmp_path, capsys, setting,
                                                                 shown):
    """Issue 13 finding 11: `grouprl eval` and `--resume` read a run's config.json; an env
    import string or trust_remote_code there runs code only with --trust-run."""
    from grouprl.train.config import config_to_dict, load_config
    from grouprl.train.run import check_trusted, untrusted_settings

    data = config_to_dict(load_config(None, []))
    for section, values in setting.items():
        data[section].update(values)
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert shown in err and "--trust-run" in err and "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "--trust-run" in capsys.readouterr().err
    assert untrusted_settings(data) and untrusted_settings(config_to_dict(load_config())) == []
    check_trusted(data, tmp_path, trusted=True)                       # the flag lets it through
