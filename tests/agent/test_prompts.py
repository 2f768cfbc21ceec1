"""Prompt templates: pinned renderings, field validation, config loading and chat templates."""

from __future__ import annotations

from typing import Any

import pytest

from grouprl.agent.memory import HistoryMemory
from grouprl.agent.prompts import (
    NO_HISTORY_FIELDS,
    TEMPLATES,
    WITH_HISTORY_FIELDS,
    PromptTemplate,
    apply_chat_template,
    format_admissible,
    get_template,
    render_from_memory,
    template_from_config,
)

GRID = "####\n#PXO#\n####"
HISTORY = ("[Observation 1: 'g1', Action 1: 'left']\n"
           "[Observation 2: 'g2', Action 2: 'right']")


def render(template: PromptTemplate, **overrides: Any) -> str:
    kwargs: dict[str, Any] = dict(task="find the coin", observation=GRID, history=HISTORY, step=2,
                                  history_length=2, num_history=2, admissible_actions=None)
    kwargs.update(overrides)
    return template.render(**kwargs)


CUSTOM = PromptTemplate(
    name="tiny",
    no_history="Task: {task}\nNow:\n{observation}\nOptions: [{admissible_actions}]\nGo.",
    with_history=("Task: {task}\nTaken {step} step(s), last {num_history} of {history_length}:\n"
                  "{history}\nStep {current_step}:\n{observation}\n"
                  "Options: [{admissible_actions}]\nGo."),
)


def test_custom_template_exact_rendering() -> None:
    assert render(CUSTOM, admissible_actions=["go north", "take coin"]) == (
        "Task: find the coin\nTaken 2 step(s), last 2 of 2:\n"
        "[Observation 1: 'g1', Action 1: 'left']\n[Observation 2: 'g2', Action 2: 'right']\n"
        "Step 3:\n####\n#PXO#\n####\nOptions: [\"go north\", \"take coin\"]\nGo.")
    # Admissible actions None: the whole line goes, no dangling empty line.
    assert render(CUSTOM, history="", num_history=0, step=0) == (
        "Task: find the coin\nNow:\n####\n#PXO#\n####\nGo.")
    assert render(CUSTOM, history="", num_history=0, step=0, admissible_actions=[]) == (
        "Task: find the coin\nNow:\n####\n#PXO#\n####\nOptions: []\nGo.")


@pytest.mark.parametrize("overrides", [
    dict(history_length=0), dict(num_history=0), dict(history=""),
])
def test_no_history_template_when_no_window(overrides: dict[str, Any]) -> None:
    assert render(CUSTOM, **overrides).startswith("Task: find the coin\nNow:\n")


def test_sokoban_compact_exact_rendering() -> None:
    t = get_template("sokoban_compact")
    head = ("Sokoban: push boxes X onto targets O. # wall, _ floor, P you, √ box on target, "
            "S you on target.\n")
    tail = "Moves: up, down, left, right. Answer like <action>up</action>."
    assert render(t, history="", num_history=0, step=0) == f"{head}Grid:\n{GRID}\n{tail}"
    assert render(t) == f"{head}Moves made: 2. Last moves:\n{HISTORY}\nGrid:\n{GRID}\n{tail}"
    fixed = len((head + tail + "Moves made: . Last moves:\nGrid:\n").split())
    assert fixed < 45  # a few dozen words of fixed text


def test_sokoban_verl_agent_style_sections() -> None:
    t = get_template("sokoban")
    text = render(t, admissible_actions=["ignored"])
    assert ("# Current Step\nPrior to this step, you have already taken 2 step(s). Below are the "
            "most recent 2 observations and the corresponding actions you took:\n"
            f"{HISTORY}\nYou are now at step 3 and your current observation is:\n{GRID}\n"
            'Your admissible actions are ["up", "down", "left", "right"].\n') in text
    for symbol in ["`#` wall", "`_` floor", "`O` target", "`X` box", "`√` box on target",
                   "`P` player", "`S` player on target"]:
        assert symbol in text
    assert text.endswith("<action> </action> tags.")
    first = render(t, history="", num_history=0, step=0)
    assert "# Current Step\nYour current observation is:\n" + GRID + "\n" in first
    assert "Prior to this step" not in first


@pytest.mark.parametrize("name", ["textworld_express", "scienceworld", "default"])
def test_text_game_templates(name: str) -> None:
    t = get_template(name)
    with_adm = render(t, observation="You are in a kitchen.",
                      admissible_actions=["look around", "open fridge"])
    assert "Your task is: find the coin\n" in with_adm
    assert f"corresponding actions you took:\n{HISTORY}\nYou are now at step 3" in with_adm
    assert ("current observation is:\nYou are in a kitchen.\n"
            'Your admissible actions are ["look around", "open fridge"].\n\n') in with_adm
    assert "<action> </action>" in with_adm
    without = render(t, observation="You are in a kitchen.", history="", num_history=0, step=0)
    assert "admissible actions are" not in without and "\n\n\n" not in without
    assert "current observation is:\nYou are in a kitchen.\n\nNow it's your turn" in without


def test_every_builtin_renders_every_case() -> None:
    assert set(TEMPLATES) == {"sokoban", "sokoban_compact", "textworld_express", "scienceworld",
                              "default", "reasoning"}
    for name, t in TEMPLATES.items():
        assert t.name == name and get_template(name) is t
        for adm in (None, ["a"]):
            for hist in (dict(), dict(history="", num_history=0, step=0)):
                text = render(t, admissible_actions=adm, **hist)
                assert GRID in text and "{" not in text
                # agent templates ask for a tagged action; the reasoning prompt is the question
                assert ("<action>" in text) == (name != "reasoning")
                if name == "reasoning":
                    assert text == GRID


def test_render_from_memory_uses_window_and_counts() -> None:
    mem = HistoryMemory(2, history_length=2)
    assert render_from_memory(CUSTOM, mem, 0, task="t", observation="o0",
                              admissible_actions=None) == "Task: t\nNow:\no0\nGo."
    for k in range(1, 4):
        mem.store([f"o{k - 1}", "x"], [f"a{k}", "y"])
    assert render_from_memory(CUSTOM, mem, 0, task="t", observation="o3",
                              admissible_actions=["a"]) == (
        "Task: t\nTaken 3 step(s), last 2 of 2:\n"
        "[Observation 2: 'o1', Action 2: 'a2']\n[Observation 3: 'o2', Action 3: 'a3']\n"
        "Step 4:\no3\nOptions: [\"a\"]\nGo.")


def test_get_template_unknown_lists_names() -> None:
    with pytest.raises(ValueError, match="unknown name 'nope'.*default.*sokoban_compact"):
        get_template("nope")


def test_template_from_config() -> None:
    assert template_from_config("sokoban") is TEMPLATES["sokoban"]
    t = template_from_config({"no_history": "{observation}", "with_history": "{history}\n"
                              "{observation}", "system": "Be brief."})
    assert (t.name, t.system) == ("custom", "Be brief.")
    assert render(t) == f"{HISTORY}\n{GRID}"
    assert render(t, num_history=0) == GRID


@pytest.mark.parametrize("spec, pattern", [
    ({"no_history": "{obs}", "with_history": "x"}, r"no_history: unknown field \{obs\}"),
    ({"no_history": "{history}", "with_history": "x"}, r"no_history: unknown field \{history\}"),
    ({"no_history": "x", "with_history": "{histroy}"}, r"with_history: unknown field \{histroy\}"),
    ({"no_history": "{}", "with_history": "x"}, r"positional"),
    ({"no_history": "{0}", "with_history": "x"}, r"unknown field \{0\}"),
    ({"no_history": "{step:{width}}", "with_history": "x"}, r"unknown field \{width\}"),
    ({"no_history": "{observation", "with_history": "x"}, r"no_history: not a valid format"),
    ({"no_history": "x", "with_history": "x", "extra": 1}, r"unknown key\(s\) extra"),
    ({"no_history": "x"}, r"missing key\(s\) with_history"),
    ("nope", r"unknown name"),
])
def test_template_from_config_errors(spec: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        template_from_config(spec)


def test_unknown_field_error_lists_allowed_fields() -> None:
    with pytest.raises(ValueError) as info:
        template_from_config({"no_history": "{obs}", "with_history": "x"})
    assert all("{" + f + "}" in str(info.value) for f in NO_HISTORY_FIELDS)
    with pytest.raises(ValueError) as info:
        template_from_config({"no_history": "x", "with_history": "{obs}"})
    assert all("{" + f + "}" in str(info.value) for f in WITH_HISTORY_FIELDS)


def test_format_spec_and_escaped_braces_are_allowed() -> None:
    t = template_from_config({"no_history": "{{json}} step {step:03d} {task!r}",
                              "with_history": "x"})
    assert render(t, num_history=0, task="t", step=7) == "{json} step 007 't'"


def test_bad_render_arguments() -> None:
    with pytest.raises(ValueError, match="step"):
        render(CUSTOM, step=-1)
    with pytest.raises(ValueError, match="num_history"):
        render(CUSTOM, num_history=None)
    with pytest.raises(TypeError, match="admissible_actions"):
        render(CUSTOM, admissible_actions="up")
    with pytest.raises(TypeError, match="system"):
        PromptTemplate("x", "a", "b", system=3)  # type: ignore[arg-type]
    assert format_admissible(["a b", "c"]) == '"a b", "c"'


class FakeTokenizer:
    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        self.calls.append((messages, kwargs))
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + ("<|assistant|>" if kwargs.get("add_generation_prompt") else "")


def test_chat_template_applied_when_tokenizer_has_one() -> None:
    tok = FakeTokenizer("{{ messages }}")
    assert apply_chat_template(tok, "hi") == "<|user|>hi<|end|><|assistant|>"
    assert tok.calls == [([{"role": "user", "content": "hi"}],
                          {"tokenize": False, "add_generation_prompt": True})]
    assert apply_chat_template(tok, "hi", system="sys") == (
        "<|system|>sys<|end|><|user|>hi<|end|><|assistant|>")


@pytest.mark.parametrize("tokenizer", [FakeTokenizer(None), FakeTokenizer(""), object(), None])
def test_plain_text_without_chat_template(tokenizer: Any) -> None:
    assert apply_chat_template(tokenizer, "hi") == "hi"
    assert apply_chat_template(tokenizer, "hi", system="sys") == "sys\n\nhi"
    if isinstance(tokenizer, FakeTokenizer):
        assert tokenizer.calls == []


def test_chat_template_must_return_text() -> None:
    class IdsTokenizer(FakeTokenizer):
        def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
            return [1, 2, 3]

    with pytest.raises(TypeError, match="tokenizer"):
        apply_chat_template(IdsTokenizer("t"), "hi")
