"""Built-in orchestras of Dr. MAS (arXiv 2602.08847; spec-seed-systems §1.4) and their agents.

**MathRefine** (Solver ↔ Verifier, one environment step)::

    approved := all False
    for loop in 0 .. max_loops-1:
        Solver on (active ∧ ¬approved); action := Solver text
        if loop = max_loops-1: break               # no verification after the last solve
        Verifier on (active ∧ ¬approved); approved ∨= verdict(Verifier) = approve
        if every active item is approved: break

An unparsable verdict (no ``<verify>approve|reject</verify>``) counts as ``unparsed_verdict``
("approve" in the released code: refinement ends).

**SearchRoute** (Verifier routes to Search or Answer, per environment step)::

    Verifier on active items: verdict yes/no (unparsable → unparsed_verdict, default "yes")
    Search on (verdict = no) when step < max_steps (or always with last_step_search)
    Answer on (verdict = yes)
    action := Search's <search>q</search> or Answer's <answer>a</answer>, "" otherwise

The Answer agent's prompt has no team-context slot (as released). Prompts are grouprl's own
wording of the released roles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grouprl.validation import check_bool, check_choice, check_int

from .agents import AgentSpec
from .orchestra import Team, check_team_agents
from .parsers import boxed_parser, read_verdict, tagged_think_parser, verdict_parser

__all__ = ["MathRefine", "SearchRoute", "math_agents", "search_agents", "MATH_VERDICTS",
           "SEARCH_VERDICTS"]

MATH_VERDICTS = ("approve", "reject")
SEARCH_VERDICTS = ("yes", "no")

_SOLVER = ("{observation}\n\nYou are the Solver of the team. Reason step by step; treat your "
           "teammates' outputs below as extra context.\n{team_context}\n\nPut the final answer "
           "in \\boxed{}.")
_MATH_VERIFIER = ("{observation}\n\nYou are the Verifier of the team. Check the most recent "
                  "Solver solution step by step.\n{team_context}\n\nEnd with exactly one verdict: "
                  "<verify>approve</verify> or <verify>reject</verify>.")
_SEARCH_VERIFIER = ("{observation}\n\nStep {step}. You are the Verifier. Is the information "
                    "above enough to answer the question? End with <verify>yes</verify> or "
                    "<verify>no</verify>.")
_SEARCHER = ("{observation}\n\nStep {step}. You are the Search agent.\n{team_context}\n\nThink "
             "inside <think></think>, then write one query inside <search></search>.")
_ANSWERER = ("{observation}\n\nStep {step}. You are the Answer agent. Think inside "
             "<think></think>, then give the answer inside <answer></answer>.")


def math_agents(solver_model: str = "solver", verifier_model: str = "verifier"
                ) -> tuple[AgentSpec, AgentSpec]:
    """The Solver and Verifier agents of :class:`MathRefine` (released roles, §1.4.1)."""
    return (AgentSpec("Solver", _SOLVER, boxed_parser, solver_model, ("\\boxed{", "}")),
            AgentSpec("Verifier", _MATH_VERIFIER, verdict_parser("verify"), verifier_model,
                      ("<verify>", "</verify>")))


def search_agents(verifier_model: str = "verifier", search_model: str = "search",
                  answer_model: str = "answer") -> tuple[AgentSpec, AgentSpec, AgentSpec]:
    """The Verifier, Search and Answer agents of :class:`SearchRoute` (§1.4.2)."""
    return (AgentSpec("Verifier", _SEARCH_VERIFIER, verdict_parser("verify"), verifier_model,
                      ("<verify>", "</verify>")),
            AgentSpec("Search", _SEARCHER, tagged_think_parser("search"), search_model,
                      ("<search>", "</search>")),
            AgentSpec("Answer", _ANSWERER, tagged_think_parser("answer"), answer_model,
                      ("<answer>", "</answer>")))


@dataclass
class MathRefine:
    """Iterative refinement: the Solver answers, the Verifier approves or rejects (docstring).

    Attributes:
        solver, verifier: the two agents (default :func:`math_agents`).
        max_loops: Solver turns at most (released script 2, config default 3).
        unparsed_verdict: what a verdict without a readable tag counts as ("approve", released).
    """

    solver: AgentSpec = field(default_factory=lambda: math_agents()[0])
    verifier: AgentSpec = field(default_factory=lambda: math_agents()[1])
    max_loops: int = 2
    unparsed_verdict: str = "approve"

    def __post_init__(self) -> None:
        check_int("max_loops", self.max_loops, 1)
        check_choice("unparsed_verdict", self.unparsed_verdict, MATH_VERDICTS)
        self.agents = check_team_agents((self.solver, self.verifier))

    def run(self, team: Team) -> list[str]:
        actions = [""] * len(team)
        approved = [False] * len(team)
        for loop in range(self.max_loops):
            pending = [a and not ok for a, ok in zip(team.active, approved)]
            for i, out in enumerate(team.call(self.solver, pending)):
                if out is not None:
                    actions[i] = out.text
            if loop == self.max_loops - 1:
                break
            for i, out in enumerate(team.call(self.verifier, pending)):
                if out is not None:
                    verdict = read_verdict(out.response, "verify", MATH_VERDICTS)
                    approved[i] = (verdict or self.unparsed_verdict) == "approve"
            if all(ok for a, ok in zip(team.active, approved) if a):
                break
        return actions


@dataclass
class SearchRoute:
    """Hierarchical routing: the Verifier sends each item to Search or Answer (docstring).

    Attributes:
        verifier, search, answer: the three agents (default :func:`search_agents`).
        max_steps: the environment's turn limit (released 4); at the last step a "no" verdict
            runs no Search agent and leaves the action empty, unless ``last_step_search``.
        unparsed_verdict: what an unreadable verdict counts as ("yes", released).
        last_step_search: let the Search agent run at the last step too (grouprl option).
    """

    verifier: AgentSpec = field(default_factory=lambda: search_agents()[0])
    search: AgentSpec = field(default_factory=lambda: search_agents()[1])
    answer: AgentSpec = field(default_factory=lambda: search_agents()[2])
    max_steps: int = 4
    unparsed_verdict: str = "yes"
    last_step_search: bool = False

    def __post_init__(self) -> None:
        check_int("max_steps", self.max_steps, 1)
        check_choice("unparsed_verdict", self.unparsed_verdict, SEARCH_VERDICTS)
        check_bool("last_step_search", self.last_step_search)
        self.agents = check_team_agents((self.verifier, self.search, self.answer))

    def run(self, team: Team) -> list[str]:
        actions = [""] * len(team)
        sufficient = [False] * len(team)
        for i, out in enumerate(team.call(self.verifier, team.active)):
            if out is not None:
                verdict = read_verdict(out.response, "verify", SEARCH_VERDICTS)
                sufficient[i] = (verdict or self.unparsed_verdict) == "yes"
        may_search = team.step < self.max_steps or self.last_step_search
        search_mask = [a and not s and may_search for a, s in zip(team.active, sufficient)]
        answer_mask = [a and s for a, s in zip(team.active, sufficient)]
        for agent, mask in ((self.search, search_mask), (self.answer, answer_mask)):
            for i, out in enumerate(team.call(agent, mask)):
                if out is not None:
                    actions[i] = out.text
        return actions
