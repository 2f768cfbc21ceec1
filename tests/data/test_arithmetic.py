"""The built-in generated reasoning data: determinism, splits, exact answers, solutions."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from grouprl.data import ReasoningExample, arithmetic_dataset, arithmetic_pairs
from grouprl.data import arithmetic as ar

SMALL = 400  # examples per call in most tests (the full default set has ~4.6k)

# Independent answer formulas by kind, from the operands in prompt order.
FORMULAS = {
    "add1": lambda a, b: a + b, "sub1": lambda a, b: a - b,
    "add2": lambda a, b: a + b, "sub2": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "word_give": lambda a, b: a - b, "word_buy": lambda a, b: a + b,
    "word_share": lambda n, k: n // k, "word_rows": lambda r, c: r * c,
    "word_price": lambda p, n: p * n,
    "sum_times": lambda a, b, c: (a + b) * c, "times_minus": lambda a, b, c: a * b - c,
    "plus_times": lambda a, b, c: a + b * c, "diff_times": lambda a, b, c: (a - b) * c,
}
LEVEL = {"add1": 1, "sub1": 1, "add2": 2, "sub2": 2, "mul": 3, "word_give": 3, "word_buy": 3,
         "word_share": 3, "word_rows": 3, "word_price": 3, "sum_times": 4, "times_minus": 4,
         "plus_times": 4, "diff_times": 4}
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>")
EQUATION = re.compile(r"(?<![\d.])((?:\d+[-+*/])+\d+)=(\d+)")


@pytest.fixture(scope="module")
def train() -> list[ReasoningExample]:
    return arithmetic_dataset("train", size=SMALL, seed=0)


def test_deterministic_and_seed_dependent(train):
    assert arithmetic_dataset("train", size=SMALL, seed=0) == train
    other = arithmetic_dataset("train", size=SMALL, seed=1)
    assert [e.prompt for e in other] != [e.prompt for e in train]


def test_train_and_test_are_disjoint_for_every_seed():
    test_prompts = set()
    for seed in (0, 1):
        test_prompts |= {e.prompt for e in arithmetic_dataset("test", seed=seed)}
    for seed in (0, 1):
        train_prompts = {e.prompt for e in arithmetic_dataset("train", size=2000, seed=seed)}
        assert not train_prompts & test_prompts
    # test ≈ 10 % of every problem space (the split is a hash of the canonical problem)
    keys = [ar._key(k.name, tuple(o)) for k in ar._KINDS for o in k.space()]
    share = sum(ar._split_of(k) == "test" for k in keys) / len(keys)
    assert 0.09 < share < 0.11
    assert len(set(keys)) == len(keys)


def test_default_sizes_and_prompts_unique():
    test = arithmetic_dataset("test")
    counts = Counter(e.difficulty for e in test)
    assert counts[2] == counts[3] == counts[4] == ar.DEFAULT_PER_DIFFICULTY["test"]
    assert 5 <= counts[1] <= 30  # level 1 has 155 problems in all
    assert len({e.prompt for e in test}) == len(test)


def test_answers_are_exact_integers(train):
    assert {e.difficulty for e in train} == {1, 2, 3, 4}
    for e in train:
        kind, ops = e.metadata["kind"], e.metadata["operands"]
        assert [int(n) for n in re.findall(r"\d+", e.prompt)] == ops, e.prompt
        assert e.answer == str(FORMULAS[kind](*ops)), e
        assert int(e.answer) >= 0
        assert e.difficulty == LEVEL[kind]
        if kind == "word_share":
            assert ops[0] % ops[1] == 0


def test_solution_format_and_every_step_is_true(train):
    for e in train:
        s = e.solution
        assert s is not None and "\n" not in s
        assert s.startswith("<think>") and s.count("</think>") == 1
        assert s.endswith(f"</think><answer>{e.answer}</answer>")
        assert ANSWER_TAG.findall(s) == [e.answer]
        think = s[len("<think>"):s.index("</think>")]
        equations = EQUATION.findall(think)
        assert equations, s
        for lhs, rhs in equations:
            assert eval(lhs) == int(rhs), (lhs, rhs, s)  # noqa: S307 (digits and + - * / only)
        assert think.count("Check") == e.metadata["num_checks"]


def test_solutions_verify_with_the_builtin_verifier(train):
    from grouprl.rewards.verifier import Verifier

    verifier = Verifier(mode="answer_tag", backend="builtin", require_think_close=True)
    for e in train:
        result = verifier(e.solution, e.answer)
        assert (result.correct, result.pred) == (True, e.answer), (e, result)
    for p in arithmetic_pairs("test", size=100):
        assert verifier(p.chosen, p.metadata["answer"]).correct is True
        verdict = verifier(p.rejected, p.metadata["answer"]).correct
        assert verdict is (p.metadata["rejected_kind"] == "verbose")
    verifier.close()


def test_brief_example_steps():
    assert ar._add_steps(47, 38) == ("47+38: 7+8=15, write 5 carry 1. 4+3+1=8. So 85.", 85)
    assert ar._sub_steps(82, 47)[0] == "82-47: 12-7=5, borrow 1. 8-1-4=3. So 35."
    assert ar._sub_steps(102, 35) == ("102-35: 12-5=7, borrow 1. 10-1-3=6, borrow 1. 1-1=0. "
                                      "So 67.", 67)
    assert ar._mul_steps(7, 46) == ("7*46: 7*6=42, write 2 carry 4. 7*4+4=32. So 322.", 322)
    assert ar._add_steps(3, 4) == ("3+4=7.", 7)


def test_column_steps_compute_correctly_and_slips_are_wrong_only_with_carries():
    rng = random.Random(0)
    for _ in range(2000):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        assert ar._add_steps(a, b)[1] == a + b
        hi, lo = max(a, b), min(a, b)
        assert ar._sub_steps(hi, lo)[1] == hi - lo
        d = rng.randint(2, 9)
        assert ar._mul_steps(d, a)[1] == d * a
        assert ar._mul_steps(a, d)[1] == a * d
        has_carry = any(x + y >= 10 for x, y in zip(ar._digits(a), ar._digits(b))
                        ) or len(str(a + b)) > max(len(str(a)), len(str(b)))
        if not has_carry:
            assert ar._add_steps(a, b, slip=True)[1] == a + b


def test_difficulty_filter():
    for level in (1, 2, 3, 4):
        data = arithmetic_dataset("train", difficulty=[level], size=50)
        assert data and {e.difficulty for e in data} == {level}
    assert {e.difficulty for e in arithmetic_dataset("train", difficulty=3, size=20)} == {3}
    mixed = arithmetic_dataset("train", difficulty=(2, 4), size=40)
    assert {e.difficulty for e in mixed} == {2, 4}
    word = [e for e in arithmetic_dataset("train", difficulty=[3], size=60)
            if e.metadata["kind"].startswith("word_")]
    assert {e.metadata["kind"] for e in word} == {"word_give", "word_buy", "word_share",
                                                  "word_rows", "word_price"}
    with pytest.raises(ValueError, match="difficulty: unknown level 5; accepted: 1, 2, 3, 4"):
        arithmetic_dataset(difficulty=[5])
    with pytest.raises(ValueError, match="split: unknown 'dev'"):
        arithmetic_dataset("dev")


def test_size_and_round_robin_order(train):
    assert len(train) == SMALL
    assert [e.difficulty for e in train[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert arithmetic_dataset("train", size=10) == train[:10]
    assert arithmetic_dataset("train", size=0) == []


def test_solution_lengths_vary(train):
    checks = Counter(e.metadata["num_checks"] for e in train)
    assert set(checks) == {0, 1, 2, 3}
    lengths = [len(e.solution) for e in train]
    assert max(lengths) > 2 * min(lengths)
    none = arithmetic_dataset("train", size=50, verbose_checks=(0, 0))
    assert all("Check" not in e.solution for e in none)
    two = arithmetic_dataset("train", size=50, verbose_checks=(2, 2))
    assert all(e.solution.count("Check") == 2 for e in two)
    # the checks only add text: the worked steps and answer are the same
    for a, b in zip(none, two):
        assert b.solution.startswith(a.solution[:a.solution.index("</think>")])
    with pytest.raises(ValueError, match="verbose_checks"):
        arithmetic_dataset(verbose_checks=(3, 1))


def test_pairs():
    pairs = arithmetic_pairs("train", size=300, seed=0)
    data = arithmetic_dataset("train", size=300, seed=0)
    assert [p.prompt for p in pairs] == [e.prompt for e in data]
    kinds = Counter(p.metadata["rejected_kind"] for p in pairs)
    assert set(kinds) == {"carry_slip", "off_by_one", "wrong_operation", "verbose"}
    assert 0.1 < kinds["verbose"] / len(pairs) < 0.3
    for p, e in zip(pairs, data):
        assert ANSWER_TAG.findall(p.chosen) == [e.answer] and "Check" not in p.chosen
        (rejected,) = ANSWER_TAG.findall(p.rejected)
        assert rejected == p.metadata["rejected_answer"]
        if p.metadata["rejected_kind"] == "verbose":
            assert rejected == e.answer and len(p.rejected) > len(p.chosen)
        else:
            assert rejected != e.answer
            assert p.rejected.startswith("<think>") and "\n" not in p.rejected
    assert arithmetic_pairs("train", size=300, seed=0) == pairs
    wrong_only = arithmetic_pairs("test", size=100, verbose_fraction=0.0)
    assert all(p.metadata["rejected_kind"] != "verbose" for p in wrong_only)
    test_prompts = {p.prompt for p in wrong_only}
    assert not test_prompts & {p.prompt for p in arithmetic_pairs("train", size=2000)}
