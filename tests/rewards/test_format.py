"""Reasoning-format checks and format rewards (grouprl.rewards.format, spec §C4)."""

from __future__ import annotations

import random

import pytest

from grouprl.rewards.format import (
    R1_ZERO_PATTERN,
    FormatResult,
    format_check,
    format_reward,
    r1_zero_match,
)

GOOD = "<think>\nI add 2 and 2.\n</think>\n<answer>\n4\n</answer>"


# ---------------------------------------------------------------------------------------------
# R1-Zero
# ---------------------------------------------------------------------------------------------


def test_r1_zero_strict_ok():
    assert format_check(GOOD) == FormatResult(True, "I add 2 and 2.", "4", ())
    assert format_reward(GOOD) == 1.0


@pytest.mark.parametrize("text, errors", [
    ("<think>I add.</think><answer>4</answer>", ("bad_whitespace",)),
    ("<think>\nx\n</think>\n\n<answer>\n4\n</answer>", ("bad_whitespace",)),
    ("I think.\n<answer>\n4\n</answer>", ("missing_think_open", "missing_think_close")),
    ("<think>\nx\n</think>\n4", ("missing_answer",)),
    ("<think>\nx\n<answer>\n4\n</answer>", ("missing_think_close",)),
    ("<answer>\n4\n</answer>\n<think>\nx\n</think>", ("wrong_order",)),
    ("Sure! <think>\nx\n</think>\n<answer>\n4\n</answer>", ("text_outside_tags",)),
])
def test_r1_zero_strict_failures(text, errors):
    result = format_check(text)
    assert not result.ok
    assert result.errors == errors
    assert format_reward(text) == 0.0


def test_r1_zero_strict_duplicate_tag():
    text = "<think>\nx\n</think>\n<think>\ny\n</think>\n<answer>\n4"
    result = format_check(text)
    assert not result.ok and "duplicate_tag" in result.errors and "missing_answer" in result.errors


def test_r1_zero_strict_keeps_open_r1_multiline_semantics():
    # open-r1 uses re.match with MULTILINE: "$" also matches before a newline, so a trailing
    # line after </answer> passes the strict reward (reference behaviour, kept on purpose).
    text = GOOD + "\nP.S. extra"
    assert R1_ZERO_PATTERN.match(text) is not None
    assert format_reward(text) == 1.0
    assert format_check(text, strict=False).errors == ("text_outside_tags",)


def test_r1_zero_lenient():
    loose = "  <think> I add. </think>\n\n<answer> 4 </answer>\n"
    assert format_check(loose, strict=False) == FormatResult(True, "I add.", "4", ())
    assert not format_check(loose, strict=True).ok
    assert format_check("<think>a</think> hi <answer>4</answer>", strict=False).errors == (
        "text_outside_tags",)
    dup = "<think>a</think><answer>1</answer><answer>2</answer>"
    assert format_check(dup, strict=False).errors == ("duplicate_tag",)


def test_r1_zero_match_equals_open_r1_regex():
    rng = random.Random(0)
    parts = ["<think>\n", "\n</think>\n<answer>\n", "\n</answer>", "\n</answer>\n", "\n", "a",
             "</think>", "<answer>", " "]
    matched = 0
    for _ in range(20_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.7:
            text = "<think>\n" + text
        m = R1_ZERO_PATTERN.match(text)
        got = r1_zero_match(text)
        assert (m is None) == (got is None), repr(text)
        if m is not None:
            assert got == (m.group(1), m.group(2)), repr(text)
            matched += 1
    assert matched > 100  # the generator does reach the matching case


def test_r1_zero_match_adversarial_is_linear():
    # the regex itself backtracks quadratically here (seconds); the str.find version does not
    text = "<think>\n" + "\n</think>\n<answer>\n" * 20_000 + "a" * 200_000
    assert r1_zero_match(text) is None
    assert format_reward(text) == 0.0


# ---------------------------------------------------------------------------------------------
# R1-distill
# ---------------------------------------------------------------------------------------------


def test_r1_distill():
    ok = format_check("Let me think.\n</think>\nSo \\boxed{4}.", style="r1_distill")
    assert ok == FormatResult(True, "Let me think.", "So \\boxed{4}.", ())
    assert format_check("<think>x</think>\\boxed{4}", style="r1_distill").ok
    missing = format_check("thinking forever \\boxed{4}", style="r1_distill")
    assert missing == FormatResult(False, None, None, ("missing_think_close",))
    no_box = format_check("x</think> the answer is 4", style="r1_distill")
    assert no_box.errors == ("missing_boxed",) and no_box.answer == "the answer is 4"
    box_in_think = format_check("\\boxed{4}</think> done", style="r1_distill")
    assert box_in_think.errors == ("missing_boxed",)


def test_r1_distill_strict_vs_lenient():
    twice = "a</think>b</think>\\boxed{1}"
    assert format_check(twice, style="r1_distill").errors == ("duplicate_tag",)
    assert format_check(twice, style="r1_distill", strict=False).ok
    late_open = "a</think><think>\\boxed{1}"
    assert format_check(late_open, style="r1_distill").errors == ("wrong_order",)
    assert format_reward(late_open, "r1_distill") == 0.0
    assert format_reward("a</think>\\boxed{1}", "r1_distill") == 1.0


# ---------------------------------------------------------------------------------------------
# tag_count
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, reward", [
    ("plain text", 0.0),
    ("<think>\nx", 0.25),
    ("<think>\nx\n</think>\n", 0.5),
    ("<think>\nx\n</think>\n<answer>\n4", 0.75),
    (GOOD, 1.0),
    ("<think>\n<think>\nx\n</think>\n<answer>\n4\n</answer>", 0.75),  # "<think>\n" twice
    ("<think>x</think><answer>4</answer>", 0.0),                     # no newlines at all
])
def test_tag_count(text, reward):
    assert format_reward(text, "tag_count") == reward


def test_bad_style():
    with pytest.raises(ValueError, match="r1_zero"):
        format_check("x", style="xml")
    with pytest.raises(ValueError, match="tag_count"):
        format_reward("x", style="xml")
