"""Architecture rules of docs/architecture.md that a refactor could silently break: recipes and
the learner name no algorithm, components stay small, a recipe's loop stays one screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from grouprl.advantages import available_estimators
from grouprl.losses import SEQUENCE_LOSSES, available_policy_losses
from grouprl.rewards.shaping import available_shapers

SRC = Path(__file__).resolve().parents[1] / "src" / "grouprl"
ALGORITHM_FREE = [SRC / "recipes" / "rl.py", SRC / "recipes" / "preference.py",
                  SRC / "recipes" / "multiagent.py", SRC / "recipes" / "phgpo.py",
                  SRC / "train" / "learner.py", SRC / "train" / "sampling.py",
                  SRC / "train" / "estimate.py", SRC / "rewards" / "stage.py",
                  SRC / "train" / "team_update.py", SRC / "train" / "team_rollout.py"]


def _names() -> set[str]:
    names = {*available_estimators(), *available_policy_losses(), *SEQUENCE_LOSSES,
             *available_shapers()}
    return {n for n in names if n not in ("none",)}


def algorithm_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of every string constant that is an algorithm's registered name."""
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and n.value in names]


@pytest.mark.parametrize("path", ALGORITHM_FREE, ids=lambda p: p.name)
def test_recipes_and_generic_components_name_no_algorithm(path):
    found = algorithm_literals(path.read_text(), _names())
    assert not found, f"{path.name} names algorithms (branch on a declaration instead): {found}"


def test_the_check_catches_an_algorithm_branch():
    code = 'def f(cfg):\n    """gigpo in a docstring is fine"""\n    if cfg.loss == "drpo":\n' \
           '        return 1\n'
    assert algorithm_literals(code, {"drpo", "gigpo"}) == [(3, "drpo")]


@pytest.mark.parametrize("package", ["train", "recipes"])
def test_components_and_recipes_stay_small(package):
    sizes = {p.name: len(p.read_text().splitlines()) for p in (SRC / package).glob("*.py")}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("module,name", [("rl", "train_rl"), ("multiagent", "train_multiagent"),
                                         ("phgpo", "train_phgpo")])
def test_each_recipe_loop_fits_one_screen(module, name):
    tree = ast.parse((SRC / "recipes" / f"{module}.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    loop = next(n for n in ast.walk(fn) if isinstance(n, ast.For))
    assert fn.end_lineno - fn.lineno <= 140
    assert loop.end_lineno - loop.lineno <= 60
