"""Spec-seed-systems §1.10 items 1–2: orchestration structure and search routing with scripted
agents; parsers' validity rules (§1.4); bad orchestra and agent configs."""

from __future__ import annotations

import pytest

from grouprl.multiagent import (
    AgentSpec,
    MathRefine,
    MathTeamEnv,
    SearchKBEnv,
    SearchRoute,
    collect_team_rollouts,
    run_step,
)
from grouprl.multiagent.parsers import (
    boxed_parser,
    has_cjk,
    read_verdict,
    tagged_think_parser,
    verdict_parser,
)

APPROVE, REJECT = "<verify>approve</verify>", "<verify>reject</verify>"


def test_math_refine_rows_context_and_action(scripted):
    gen = scripted({"Solver": [["s0 \\boxed{1}", "s1 \\boxed{2}", "s2 \\boxed{3}"],
                               ["s1 again \\boxed{4}"]],
                    "Verifier": [[APPROVE, REJECT, "I am not sure"]]})
    result = run_step(MathRefine(max_loops=2), ["P0", "P1", "P2"], [True] * 3, 1, gen)
    per_item = {i: [c.agent[0] for c in result.calls if i in c.items] for i in range(3)}
    assert per_item == {0: ["S", "V"], 1: ["S", "V", "S"], 2: ["S", "V"]}
    assert [c.items for c in result.calls] == [(0, 1, 2), (0, 1, 2), (1,)]
    # the env receives the last Solver text of every item
    assert result.actions == ["s0 \\boxed{1}", "s1 again \\boxed{4}", "s2 \\boxed{3}"]
    # loop 1: the Solver line, then the Verifier line, in that order
    assert result.context[0] == ('The output of "Solver": s0 \\boxed{1}\n'
                                 f'The output of "Verifier": {APPROVE}')
    assert result.context[1].splitlines()[2] == 'The output of "Solver": s1 again \\boxed{4}'
    # the second Solver prompt of item 1 shows the team context of loop 1
    second_prompt = gen.log[2][1][0]
    assert 'The output of "Verifier": <verify>reject</verify>' in second_prompt
    # garbage verdict is invalid (no tags) but counts as approve
    assert result.calls[1].valid == (True, True, False)


def test_math_refine_reject_policy_and_loop_limit(scripted):
    gen = scripted({"Solver": [["a"], ["b"], ["c"]], "Verifier": [["??"], [REJECT]]})
    result = run_step(MathRefine(max_loops=3, unparsed_verdict="reject"), ["P"], [True], 1, gen)
    assert [c.agent for c in result.calls] == ["Solver", "Verifier", "Solver", "Verifier",
                                               "Solver"]
    assert result.actions == ["c"]
    gen = scripted({"Solver": [["a"]], "Verifier": []})
    assert len(run_step(MathRefine(max_loops=1), ["P"], [True], 1, gen).calls) == 1


def test_inactive_items_are_never_generated_for(scripted):
    gen = scripted({"Solver": [["x \\boxed{1}"]], "Verifier": [[APPROVE]]})
    result = run_step(MathRefine(), ["P0", "P1"], [False, True], 1, gen)
    assert [c.items for c in result.calls] == [(1,), (1,)]
    assert result.actions == ["", "x \\boxed{1}"]


def _search_reply(tag, content):
    return f"<think>plan</think><{tag}>{content}</{tag}>"


def test_search_route_rows_v_s_v_s_v_a(scripted):
    gen = scripted({"Verifier": [["<verify>no</verify>"], ["<verify>no</verify>"],
                                 ["<verify>yes</verify>"]],
                    "Search": [[_search_reply("search", "q1")], [_search_reply("search", "q2")]],
                    "Answer": [[_search_reply("answer", "Paris")]]})
    roll = collect_team_rollouts(lambda: SearchKBEnv(max_steps=4), SearchRoute(max_steps=4), gen,
                                 [5], 1, 4)
    assert [r.agent[0] for r in roll.rows] == list("VSVSVA")
    assert [r.env_step for r in roll.rows] == [1, 1, 2, 2, 3, 3]
    assert [r.turn for r in roll.rows] == [0, 1, 2, 3, 4, 5]
    assert roll.episodes[0].length == 3
    # the Search agent sees this step's Verifier output; the Answer agent does not
    search_prompt, answer_prompt = gen.log[1][1][0], gen.log[5][1][0]
    assert 'The output of "Verifier": <verify>no</verify>' in search_prompt
    assert "The output of" not in answer_prompt
    assert "Step 2" in gen.log[2][1][0]


def test_search_route_last_step_no_search_and_empty_action(scripted):
    gen = scripted({"Verifier": [["<verify>no</verify>"], ["<verify>no</verify>"]],
                    "Search": [[_search_reply("search", "q1")]], "Answer": []})
    roll = collect_team_rollouts(lambda: SearchKBEnv(max_steps=2), SearchRoute(max_steps=2), gen,
                                 [0], 1, 2)
    assert [(r.agent, r.env_step) for r in roll.rows] == [("Verifier", 1), ("Search", 1),
                                                         ("Verifier", 2)]
    assert roll.episodes[0].reward == 0.0 and roll.episodes[0].length == 2
    direct = run_step(SearchRoute(max_steps=2), ["Q"], [True], 2,
                      scripted({"Verifier": [["<verify>no</verify>"]]}))
    assert direct.actions == [""]
    allowed = run_step(SearchRoute(max_steps=2, last_step_search=True), ["Q"], [True], 2,
                       scripted({"Verifier": [["<verify>no</verify>"]],
                                 "Search": [[_search_reply("search", "q")]]}))
    assert allowed.actions == ["<search>q</search>"]


def test_unparsable_verdict_routes_to_answer(scripted):
    gen = scripted({"Verifier": [["maybe?"]], "Answer": [[_search_reply("answer", "x")]]})
    result = run_step(SearchRoute(), ["Q"], [True], 1, gen)
    assert [c.agent for c in result.calls] == ["Verifier", "Answer"]
    assert result.actions == ["<answer>x</answer>"]
    gen = scripted({"Verifier": [["maybe?"]], "Search": [[_search_reply("search", "x")]]})
    result = run_step(SearchRoute(unparsed_verdict="no"), ["Q"], [True], 1, gen)
    assert [c.agent for c in result.calls] == ["Verifier", "Search"]


def test_math_team_end_to_end_reward_and_success(scripted):
    # problem 0 of arithmetic(difficulty [1, 2], size 4, seed 0) is "What is 2 + 5?" (7)
    gen = scripted({"Solver": [["\\boxed{7}", "\\boxed{8}"], ["\\boxed{7}"]],
                    "Verifier": [[APPROVE, REJECT]]})
    roll = collect_team_rollouts(lambda: MathTeamEnv(difficulty=[1, 2], size=4), MathRefine(),
                                 gen, [0], 2, 1)
    assert [e.reward for e in roll.episodes] == [1.0, 1.0]
    assert [e.won for e in roll.episodes] == [True, True]
    assert "What is 2 + 5?" in roll.rows[0].prompt
    assert [(r.traj_id, r.agent, r.turn) for r in roll.rows] == [
        (0, "Solver", 0), (1, "Solver", 0), (0, "Verifier", 1), (1, "Verifier", 1),
        (1, "Solver", 2)]


def test_parsers_follow_the_released_validity_rules():
    assert boxed_parser("x \\boxed{3}") == ("x \\boxed{3}", True)
    assert boxed_parser("no box")[1] is False
    verify = verdict_parser("verify")
    assert verify("  ok <verify>approve</verify> ") == ("ok <verify>approve</verify>", True)
    assert verify("<verify>approve")[1] is False
    assert verify("<verify>好</verify>")[1] is False and has_cjk("好")
    search = tagged_think_parser("search")
    assert search("<think>a</think><search> q </search>") == ("<search>q</search>", True)
    assert search("<search>q</search>") == ("<search>q</search>", False)
    assert search("<think>a</think><think>b</think><search>q</search>")[1] is False
    assert search("</think><think><search>q</search>")[1] is False
    assert search("<think>a</think> no tags") == ("", False)
    assert read_verdict("<verify>x</verify> <verify> Reject </verify>", "verify",
                        ("approve", "reject")) == "reject"
    assert read_verdict("<verify>maybe</verify>", "verify", ("approve", "reject")) is None


def test_bad_orchestra_and_agent_configs_raise_naming_the_argument(scripted):
    with pytest.raises(ValueError, match="max_loops"):
        MathRefine(max_loops=0)
    with pytest.raises(ValueError, match="unparsed_verdict"):
        MathRefine(unparsed_verdict="yes")
    with pytest.raises(ValueError, match="max_steps"):
        SearchRoute(max_steps=0)
    solver = AgentSpec("Solver", "{observation}")
    with pytest.raises(ValueError, match="used twice"):
        MathRefine(solver=solver, verifier=AgentSpec("Solver", "{observation}"))
    with pytest.raises(ValueError, match="template.*unknown slot \\{obs\\}"):
        AgentSpec("A", "{obs}")
    with pytest.raises(ValueError, match="name"):
        AgentSpec("", "x")
    with pytest.raises(ValueError, match="lrr: unknown option"):
        AgentSpec("A", "x", overrides={"lrr": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        AgentSpec("A", "x", overrides={"temperature": -1.0})
    with pytest.raises(ValueError, match="generate: returned 0 responses"):
        run_step(MathRefine(), ["P"], [True], 1, lambda agent, prompts: [])
    with pytest.raises(ValueError, match="active"):
        run_step(MathRefine(), ["P"], [True, False], 1, scripted({}))


def test_templates_fill_slots_literally():
    agent = AgentSpec("A", "obs={observation} ctx={team_context} t={step} \\boxed{}")
    assert agent.prompt("o", "c", 3) == "obs=o ctx=c t=3 \\boxed{}"
