"""Config loading: YAML + overrides, validation errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from grouprl.train.config import (
    ConfigError,
    TrainConfig,
    config_keys,
    config_reference,
    config_to_dict,
    load_config,
    parse_overrides,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_is_the_builtin_job():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert cfg.env.name == "sokoban" and cfg.model.path is None
    assert cfg.algorithm.estimator == "gigpo" and cfg.bc.enabled


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(None, ["rollout.group_size=4", "optim.lr=3e-5", "rollout.stop=[a, b]",
                             "model.path=null", "algorithm.estimator_options={gamma: 0.9}"])
    assert cfg.rollout.group_size == 4
    assert cfg.optim.lr == pytest.approx(3e-5)
    assert cfg.rollout.stop == ["a", "b"]
    assert cfg.algorithm.estimator_options == {"gamma": 0.9}


def test_mapping_overrides_assign_and_dotted_keys_set_one_entry(tmp_path):
    cfg = load_config(None, ["env.kwargs.num_boxes=2"])
    assert cfg.env.kwargs["num_boxes"] == 2 and cfg.env.kwargs["dim_room"] == [5, 5]
    # key=value assigns: a mapping replaces a dict-valued key whole (nothing of the old is kept)
    cfg = load_config(None, ["env.kwargs={dim_room: [6, 6]}"])
    assert cfg.env.kwargs == {"dim_room": [6, 6]}
    # ... and later items apply in order
    cfg = load_config(None, ["env.kwargs={dim_room: [6, 6]}", "env.kwargs.num_boxes=2"])
    assert cfg.env.kwargs == {"dim_room": [6, 6], "num_boxes": 2}
    # a mapping given to a section sets those keys of the section only
    cfg = load_config(None, ["rollout={group_size: 3}"])
    assert cfg.rollout.group_size == 3 and cfg.rollout.groups_per_batch == 8
    # programmatic nested overrides are deep-merged (dict-valued keys too)
    cfg = load_config(None, {"env": {"kwargs": {"num_boxes": 2}}})
    assert cfg.env.kwargs == {"dim_room": [5, 5], "num_boxes": 2, "max_solution_length": 2}
    # ... but a recipe file's env.kwargs replaces the default's (switching env never inherits)
    p = tmp_path / "r.yaml"
    p.write_text("env:\n  name: sokoban\n  kwargs: {num_boxes: 2}\n")
    assert load_config(p).env.kwargs == {"num_boxes": 2}


def test_int_widens_to_float_but_not_bool():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match="rollout.group_size: expected int"):
        load_config(None, ["rollout.group_size=true"])


@pytest.mark.parametrize("override, message", [
    ("rollout.grup_size=4", "unknown config key 'rollout.grup_size'.*group_size"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("rollout.group_size=0", r"rollout.group_size: must be >= 1, got 0"),
    ("rollout.temperature=0", r"rollout.temperature: must be > 0"),
    ("rollout.top_p=1.5", r"rollout.top_p: must be <= 1"),
    ("env.backend=gpu", "env.backend: 'gpu' is not accepted; choose one of: serial, thread"),
    ("model.dtype=int8", "model.dtype: 'int8' is not accepted"),
    ("optim.lr=nan", "optim.lr: must be finite"),
    ("optim.lr=abc", "optim.lr: expected float"),
    ("rollout=3", "rollout: expected a mapping"),
    ("oops", "expected key=value"),
    ("rollout.temperature=true", "rollout.temperature: expected float, got True"),
    ("rollout.group_size=4.5", "rollout.group_size: expected int, got 4.5"),
    ("algorithm.loss_agg=foo", "algorithm.loss_agg: 'foo' is not accepted; choose one of: "
                               "token-mean"),
    ("optim.betas=[0.9, x]", r"optim.betas.1: expected float, got 'x'"),
    ("rollout.group_size=4=5", "rollout.group_size: expected int"),
    ("rollout.stop.x=1", "rollout.stop' holds a value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_key_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("algorithm:\n  estimatr: gigpo\n")
    with pytest.raises(ConfigError, match="unknown config key 'algorithm.estimatr'"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_recipe_loads():
    recipes = sorted(CONFIGS.glob("*.yaml"))
    assert recipes, "configs/ holds no recipes"
    from grouprl.train.checks import check_rl_config as validate_config

    for path in recipes:
        cfg = load_config(path, ["model.path=null", "model.device=cpu"])  # the GPU recipe's model
        validate_config(cfg)  # estimator/loss options, env name, template: all checked


def test_config_keys_cover_every_leaf():
    keys = {k for k, _, _ in config_keys()}
    assert {"rollout.group_size", "algorithm.estimator", "env.kwargs", "optim.lr",
            "bc.episodes", "eval.every", "model.lora.rank"} <= keys
    flat = config_to_dict(TrainConfig())
    assert flat["model"]["tiny"]["hidden_size"] == 128


def test_parse_overrides_rejects_conflicts():
    with pytest.raises(ConfigError, match="set to a value and a mapping"):
        parse_overrides(["a=1", "a.b=2"])


def test_malformed_yaml_file_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("rollout:\n  group_size: [4\n  temperature: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+\)"):
        load_config(p)


def test_every_key_has_help_and_the_reference_doc_is_current():
    keys = config_keys()
    assert len(keys) >= 90 and all(text for _, _, text in keys), \
        [k for k, _, t in keys if not t]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert doc == config_reference(), "docs/config.md is stale: grouprl config --reference"
    for key, _, _ in keys:
        assert f"| `{key}` |" in doc


def test_algorithm_options_are_checked_against_their_typed_options():
    from grouprl.train.checks import check_rl_config

    for override, message in [
            ("algorithm.estimator_options.gama=1", "algorithm.estimator_options: gama: unknown "
             "option for estimator 'gigpo'; accepted options: .*gamma"),
            ("algorithm.loss_options.clip_lo=0.2", "algorithm.loss_options: clip_lo"),
            ("rollout.oversampling={windw: 3}", "rollout.oversampling: windw"),
            ("algorithm.estimator=canon", "algorithm.estimator=canon: needs single-turn")]:
        with pytest.raises(ConfigError, match=message):
            check_rl_config(load_config(None, [override]))
