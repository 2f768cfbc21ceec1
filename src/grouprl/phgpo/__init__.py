"""PhGPO: pheromone-guided policy optimisation for long-horizon tool planning.

Li et al., arXiv 2602.13691; mechanics from the released v12 script (spec
``spec-seed-systems.md`` §2, corrections §6). Algorithm modules (torch/stdlib only, plus grouprl's
GRPO estimator and PPO clip):

* ``transition``: task-agnostic pheromone τ_tool / τ_param, deposits, evaporation, golden and
  protected edges, warm-up and injection (:class:`TransitionPheromone`);
* ``context``: task-dependent memories per edge, retrieval by similarity (:class:`ContextMemory`);
* ``store``: the two fused (:class:`PheromoneStore`, :func:`fuse`), with ``state_dict``;
* ``sampling``: tempered top-k, q ∝ p·τ^β, ε-exploration, teacher forcing, ratio modes;
* ``rewards``: step rewards, trajectory bonus, returns, trajectory-level GRPO advantages;
* ``objective``: the per-step CE + PPO-clip − entropy loss;
* ``metrics``, ``schedules``, ``elite``: match rate, schedules and curriculum, elite buffer;
* ``synthetic``, ``state``: the built-in synthetic tool graph task and the state text.

The tool-head policy (an LM + linear head, optional LoRA) is in :mod:`grouprl.phgpo.tool_head`;
it is not imported here so that the algorithm modules load without transformers/peft.
"""

from .context import ContextConfig, ContextMemory, hashed_text_embedding
from .elite import EliteBuffer, EliteTrajectory
from .metrics import (
    full_match_ratio,
    is_success,
    match_ratio,
    model_match_ratio,
    next_tool_accuracy,
    pass_at_k,
)
from .objective import step_loss
from .rewards import (
    RewardConfig,
    discounted_return,
    step_rewards,
    trajectory_advantages,
    trajectory_bonus,
)
from .sampling import (
    RATIO_MODES,
    ToolSample,
    concat_samples,
    current_logprobs,
    policy_gradient_mask,
    sample_tools,
)
from .state import state_text
from .store import PheromoneStore, fuse
from .transition import PheromoneConfig, TransitionPheromone

__all__ = ["ContextConfig", "ContextMemory", "EliteBuffer", "EliteTrajectory", "PheromoneConfig",
           "PheromoneStore", "RATIO_MODES", "RewardConfig", "ToolSample", "TransitionPheromone",
           "concat_samples", "current_logprobs", "discounted_return", "full_match_ratio", "fuse",
           "hashed_text_embedding", "is_success", "match_ratio", "model_match_ratio",
           "next_tool_accuracy", "pass_at_k", "policy_gradient_mask", "sample_tools",
           "state_text", "step_loss", "step_rewards", "trajectory_advantages",
           "trajectory_bonus"]
