"""Teams of LLM agents trained with group RL: Dr. MAS (Feng et al., arXiv 2602.08847).

Agents (:mod:`.agents`) are roles with a prompt template and an output parser; an orchestra
(:mod:`.orchestra`, built-ins in :mod:`.orchestras`) decides per environment step which agents
run on which items; the environment loop (:mod:`.rollout`) turns every agent call into one
training row (:mod:`.rows`); advantages are computed on the combined batch (:mod:`.advantages`:
agent-wise, vanilla trajectory or global step-level); each model group (:mod:`.groups`) is
updated on its own rows with its own optimizer. Tasks: :mod:`.tasks` (arithmetic, a synthetic
knowledge base with BM25 search); evaluation: :mod:`.evaluate`. See ``docs/multi-agent.md``.
"""

from .advantages import (
    BASELINES,
    TeamAdvantageOptions,
    TeamAdvantages,
    reference_divisor,
    team_advantages,
)
from .agents import OVERRIDE_KEYS, AgentSpec
from .bm25 import BM25
from .evaluate import episode_successes, pass_and_avg_at_k
from .groups import (
    ModelGroup,
    ModelGroups,
    build_model_groups,
    mini_batch_sizes,
    overrides_from_lists,
    split_mini_batches,
    update_model_groups,
)
from .knowledge import KnowledgeBase, Question
from .orchestra import AgentCall, Generate, ItemOutput, Orchestra, StepResult, Team, run_step
from .orchestras import MathRefine, SearchRoute, math_agents, search_agents
from .rollout import TeamRollout, collect_team_rollouts
from .rows import (
    MATH_INVALID_PENALTY,
    SEARCH_INVALID_PENALTY,
    AgentRow,
    Episode,
    invalid_rates,
    pad_to_divisor,
    row_rewards,
    to_batch,
)
from .tasks import MathTeamEnv, SearchKBEnv, exact_match, normalize_answer
from .tokens import check_round_trip, encode_rows, encode_text, tokenizer_fingerprint

__all__ = ["AgentCall", "AgentRow", "AgentSpec", "BASELINES", "BM25", "Episode", "Generate",
           "ItemOutput", "KnowledgeBase", "MATH_INVALID_PENALTY", "MathRefine", "MathTeamEnv",
           "ModelGroup", "ModelGroups", "OVERRIDE_KEYS", "Orchestra", "Question",
           "SEARCH_INVALID_PENALTY", "SearchKBEnv", "SearchRoute", "StepResult", "Team",
           "TeamAdvantageOptions", "TeamAdvantages", "TeamRollout", "build_model_groups",
           "check_round_trip", "collect_team_rollouts", "encode_rows", "encode_text",
           "episode_successes", "exact_match", "invalid_rates", "math_agents",
           "mini_batch_sizes", "normalize_answer", "overrides_from_lists", "pad_to_divisor",
           "pass_and_avg_at_k", "reference_divisor", "row_rewards", "run_step", "search_agents",
           "split_mini_batches", "team_advantages", "to_batch", "tokenizer_fingerprint",
           "update_model_groups"]
