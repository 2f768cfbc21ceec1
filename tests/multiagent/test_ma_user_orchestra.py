"""The user-orchestra example of docs/multi-agent.md runs as written (plan, then solve)."""

from __future__ import annotations

import re
from pathlib import Path

from grouprl.multiagent import MathTeamEnv, Orchestra, collect_team_rollouts

DOC = Path(__file__).resolve().parents[2] / "docs" / "multi-agent.md"


def test_documented_user_orchestra_runs(scripted):
    code = re.search(r"### Writing your own orchestra.*?```python\n(.*?)```", DOC.read_text(),
                     re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    orchestra = namespace["PlanThenSolve"]()
    assert isinstance(orchestra, Orchestra)
    gen = scripted({"Planner": [["add the numbers", "guess"]],
                    "Solver": lambda prompts: ["\\boxed{7}" if "add" in p else "\\boxed{1}"
                                               for p in prompts]})
    roll = collect_team_rollouts(lambda: MathTeamEnv(difficulty=[1, 2], size=4), orchestra, gen,
                                 [0], 2, 1)
    assert [(r.agent, r.turn) for r in roll.rows] == [("Planner", 0), ("Planner", 0),
                                                      ("Solver", 1), ("Solver", 1)]
    assert 'The output of "Planner": add the numbers' in roll.rows[2].prompt
    assert [e.reward for e in roll.episodes] == [1.0, 0.0]
