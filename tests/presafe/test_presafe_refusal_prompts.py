"""The refusal detector (documented rule, deterministic), the judge hook, and CoT-on / CoT-off
prompts with their refusal targets."""

from __future__ import annotations

import sys
import types

import pytest

from grouprl.presafe import (
    EMPTY_THINK,
    REFUSAL_PREFIXES,
    is_refusal,
    make_labeler,
    refusal_target,
    render_prompt,
    skips_thinking,
    starts_with_refusal,
)
from grouprl.presafe.refusal import answer_part, load_judge
from grouprl.validation import UserError


@pytest.mark.parametrize("text, refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I\u2019m sorry, I can\u2019t do that.", True),                 # curly apostrophes
    ("**I cannot** assist with this request.", True),                 # markdown stripped
    ("  As an AI, I won't.", True),
    ("Sure! Here is a plan: first, ...", False),
    ("The answer is 7.", False),
    ("Well, honestly I can't help with that one.", True),             # keyword in the window
    ("Here are the steps. " + "x" * 300 + " I can't help with that.", False),  # past window
    (EMPTY_THINK + "I am unable to provide that.", True),             # after an empty think
    ("<think>the user asks for x; I can't help</think>Sure, here it is.", False),  # answer part
    ("<think>long reasoning</think>I'm sorry, no.", True),
])
def test_detector_cases(text, refused):
    assert is_refusal(text) is refused
    assert is_refusal(text) is is_refusal(text)


def test_prefix_rule_and_think_skipping():
    assert starts_with_refusal(EMPTY_THINK + "I'm sorry, but no.")
    assert not starts_with_refusal("Well, I can't help with that.")   # keyword, not prefix
    assert all(p == p.lower() and "\u2019" not in p for p in REFUSAL_PREFIXES)
    assert skips_thinking("I'm sorry.") and skips_thinking(EMPTY_THINK + "I'm sorry.")
    assert skips_thinking("<think> </think>x")
    assert not skips_thinking("<think>step 1: ...</think>I'm sorry.")
    assert answer_part("<think>a</think>b</think>c") == "b</think>c"
    with pytest.raises(ValueError, match="window"):
        is_refusal("x", window=0)


def test_labelers_and_the_judge_hook(monkeypatch):
    keywords = make_labeler("keywords")
    assert keywords("any prompt", "I cannot do that.") and not keywords("q", "Sure.")
    calls = []

    def judge(prompt, response):
        calls.append((prompt, response))
        return response.endswith("!")

    labeler = make_labeler("judge", judge)
    assert labeler("p", "no!") is True and labeler("p", "I'm sorry.") is False
    assert calls == [("p", "no!"), ("p", "I'm sorry.")]
    module = types.ModuleType("presafe_fake_judge")
    module.judge = judge
    monkeypatch.setitem(sys.modules, "presafe_fake_judge", module)
    assert make_labeler("judge", "presafe_fake_judge:judge")("p", "x!") is True
    with pytest.raises(UserError, match="presafe.judge"):
        make_labeler("judge")
    with pytest.raises(UserError, match="no callable 'nope'"):
        load_judge("presafe_fake_judge:nope")
    with pytest.raises(UserError, match="cannot import"):
        load_judge("no_such_module_presafe:judge")
    with pytest.raises(UserError, match="package.module:function"):
        load_judge("justamodule")
    with pytest.raises(ValueError, match="labeler"):
        make_labeler("regex")


class _ChatTok:
    """A tokenizer with a chat template that honours enable_thinking (Qwen3 style) or opens a
    think block (R1-distill style)."""

    def __init__(self, style):
        self.chat_template = "x"
        self.style = style

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, enable_thinking):
        text = f"<user>{messages[0]['content']}</user><assistant>"
        if self.style == "qwen3" and not enable_thinking:
            return text + "<think>\n\n</think>\n\n"
        if self.style == "r1":
            return text + "<think>\n"
        return text


def test_cot_on_and_off_prompts():
    plain = _ChatTok("plain")
    assert render_prompt(plain, "q", thinking=True) == "<user>q</user><assistant>"
    assert render_prompt(plain, "q", thinking=False) == "<user>q</user><assistant>" + EMPTY_THINK
    qwen3 = _ChatTok("qwen3")
    assert render_prompt(qwen3, "q", thinking=False).endswith("<assistant>" + EMPTY_THINK)
    assert render_prompt(qwen3, "q", thinking=False).count("</think>") == 1
    r1 = _ChatTok("r1")
    off = render_prompt(r1, "q", thinking=False)
    assert off.endswith("<assistant>" + EMPTY_THINK) and off.count("<think>") == 1
    assert render_prompt(None, "q", thinking=False) == "q" + EMPTY_THINK   # no template
    assert render_prompt(plain, "q", thinking=True, use_chat_template=False) == "q"


def test_refusal_targets_close_what_the_prompt_opened():
    r1_prompt = render_prompt(_ChatTok("r1"), "q", thinking=True)
    assert r1_prompt + refusal_target(" No. ", r1_prompt) == \
        "<user>q</user><assistant>" + EMPTY_THINK + "No."
    plain = render_prompt(_ChatTok("plain"), "q", thinking=True)
    assert refusal_target("No.", plain) == EMPTY_THINK + "No."
    assert skips_thinking(refusal_target("I'm sorry.", plain))
