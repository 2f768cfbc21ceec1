"""Answer extraction and normalisation (grouprl.rewards.extract, spec §C2–§C4)."""

from __future__ import annotations

import pytest

from grouprl.rewards.extract import (
    extract_answer_tag,
    extract_gsm8k,
    extract_prediction,
    gsm8k_gold,
    last_boxed,
    normalize_answer,
    split_think,
)

# ---------------------------------------------------------------------------------------------
# last_boxed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (r"The answer is \boxed{42}.", "42"),
    (r"\boxed{1} then \boxed{2}", "2"),                              # last one wins
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),          # nested braces
    (r"\boxed{1{,}000}", "1{,}000"),
    (r"\fbox{7}", "7"),
    (r"so $\boxed 5$ done", "5"),                                   # space form, stops at $
    (r"\boxed 12 apples", "12"),                                    # space form, stops at space
    (r"\boxed {3}", "3"),                                           # space before the brace
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),                               # escaped braces
    (r"\boxed{a \} b}", r"a \} b"),                                 # escaped: does not close
    (r"\boxed{1} and \boxed{2", None),                              # truncated last box (verl)
    (r"\boxed{", None),
    (r"\boxed", None),
    (r"no box here {}", None),
    (r"\boxedfoo{3}", None),                                        # not the \boxed command
    ("", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text", [
    "{" * 200_000,
    "\\boxed{" * 50_000,
    "\\boxed{" + "{" * 200_000,
    "}" * 100_000 + "\\boxed{" + "{" * 100_000,
])
def test_last_boxed_adversarial_unbalanced_is_none(text):
    # a catastrophic (super-linear) scanner would hang here rather than return
    assert last_boxed(text) is None


def test_last_boxed_adversarial_deep_but_balanced():
    depth = 100_000
    text = "\\boxed{" + "{" * depth + "x" + "}" * depth + "}"
    assert last_boxed(text) == "{" * depth + "x" + "}" * depth


# ---------------------------------------------------------------------------------------------
# split_think / answer tag
# ---------------------------------------------------------------------------------------------


def test_split_think():
    assert split_think("<think>\nreason\n</think>\nanswer") == ("reason", "\nanswer")
    assert split_think("reason</think>ans") == ("reason", "ans")           # R1-distill response
    assert split_think("a</think>b</think>c") == ("a", "b</think>c")       # first close tag
    assert split_think("no close tag") == (None, "no close tag")
    assert split_think("x<|end|>y", close_tag="<|end|>") == ("x", "y")


def test_extract_answer_tag():
    assert extract_answer_tag("<answer>\n 42 \n</answer>") == "42"
    assert extract_answer_tag("<answer>1</answer><answer>2</answer>") == "1"
    assert extract_answer_tag("<answer>open only") is None
    assert extract_answer_tag("nothing") is None
    assert extract_answer_tag("<sol>7</sol>", tag="sol") == "7"


# ---------------------------------------------------------------------------------------------
# GSM8K (verl scorer semantics)
# ---------------------------------------------------------------------------------------------

GSM8K_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


def test_gsm8k_gold_from_rationale():
    assert gsm8k_gold(GSM8K_ANSWER) == "72"
    assert gsm8k_gold("so $1,234.\n#### $1,234") == "1234"
    assert gsm8k_gold("#### 1 #### -5") == "-5"                       # the last ####
    assert gsm8k_gold("  18 ") == "18"


@pytest.mark.parametrize("text, strict, flexible", [
    ("48+24 = 72.\n#### 72", "72", "72"),
    ("#### 1,000", "1000", "1000"),
    ("#### -3", "-3", "-3"),
    ("#### 5 and later #### 6", "6", "6"),                           # last #### wins
    ("The answer is 42.", None, "42."),                             # flexible keeps verl's "42."
    ("Total: $1,234", None, "1234"),
    ("costs 5 - 3 = 2 dollars...", None, "2"),                      # "..." is not a number
    ("no digits at all.", None, None),
    ("####72", None, "72"),                                         # strict needs "#### "
])
def test_extract_gsm8k(text, strict, flexible):
    assert extract_gsm8k(text, "strict") == strict
    assert extract_gsm8k(text, "flexible") == flexible


def test_extract_gsm8k_strict_only_scans_last_300_chars():
    assert extract_gsm8k("#### 7" + " padding" * 50, "strict") is None
    assert extract_gsm8k("#### 7" + " padding" * 50, "flexible") == "7"
    assert extract_gsm8k("x" * 1000 + "#### 7", "strict") == "7"


def test_extract_gsm8k_bad_mode():
    with pytest.raises(ValueError, match="strict"):
        extract_gsm8k("#### 1", "lenient")


# ---------------------------------------------------------------------------------------------
# normalize_answer (Hendrycks MATH)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, normal", [
    (r"\left( 1, 2 \right)", "(1,2)"),
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\tfrac12", r"\frac{1}{2}"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\frac1{72}", r"\frac{1}{72}"),
    (r"\frac{\frac12}{3}", r"\frac{\frac{1}{2}}{3}"),
    (r"\sqrt2", r"\sqrt{2}"),
    ("3/4", r"\frac{3}{4}"),
    ("x/4", "x/4"),                                                 # only integer a/b
    ("0.5", r"\frac{1}{2}"),
    (".5", r"\frac{1}{2}"),
    (".25", "0.25"),
    ("5.0", "5"),
    ("5.00", "5"),
    ("5.", "5"),
    (r"18 \text{ dollars}", "18"),
    (r"5\text{ cm}^2", "5"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    ("90°", "90"),
    (r"10\%", "10"),
    (r"\$18.90", "18.90"),
    (r"$\frac{1}{2}$", r"\frac{1}{2}"),
    (r"\(3\)", "3"),
    (r"1{,}000", "1000"),
    ("1,000,000", "1000000"),
    ("1,2", "1,2"),                                                 # a pair, not a thousands
    ("x = 4", "4"),
    (r"\alpha=3", "3"),
    ("x=1,y=2", "x=1,y=2"),                                         # two equations stay
    (r"\!3\,000", "3000"),
    (r"\text{(A)}", "A"),
    ("(B)", "B"),
    ("\u22123", "-3"),                                              # unicode minus
    ("", ""),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_normalize_answer_adversarial_is_linear():
    for text in ("\\frac{" * 100_000, "\\frac" * 100_000, "$" * 200_000, "{" * 200_000):
        assert isinstance(normalize_answer(text), str)


# ---------------------------------------------------------------------------------------------
# extract_prediction by mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response, mode, expected", [
    (r"<think>\boxed{5}</think> so \boxed{3}", "boxed", "3"),        # last box after </think>
    (r"<think>the answer is \boxed{5}</think> I am done.", "boxed", None),  # only inside think
    (r"no think, \boxed{7}", "boxed", "7"),
    (r"\boxed{}", "boxed", None),                                   # empty box: no answer
    ("<think>a</think><answer> 12 </answer>", "answer_tag", "12"),
    (r"<answer>so \boxed{\frac{1}{2}}</answer>", "answer_tag", r"\frac{1}{2}"),
    ("<think><answer>9</answer></think><answer>4</answer>", "answer_tag", "4"),
    ("<think>#### 9</think> 48+24=72\n#### 72", "gsm8k", "72"),
    ("the answer is 72", "gsm8k", None),                            # strict only, no fallback
    (r"\boxed{3} <answer>4</answer> 5", "free", "3"),
    ("<answer>4</answer> then 5", "free", "4"),
    ("it is 5 or maybe 6", "free", "6"),
])
def test_extract_prediction(response, mode, expected):
    assert extract_prediction(response, mode) == expected


def test_extract_prediction_echoed_gold_format_in_prompt_is_not_used():
    # a model that copies the few-shot format from the prompt into its reasoning, then answers
    response = ("<think>Example: Q: 1+1? A: \\boxed{2}. #### 2\nNow the real one.</think>"
                "The result is \\boxed{5}.")
    assert extract_prediction(response, "boxed") == "5"
    assert extract_prediction(response, "gsm8k") is None


def test_extract_prediction_bad_mode():
    with pytest.raises(ValueError, match="boxed"):
        extract_prediction("x", "latex")
