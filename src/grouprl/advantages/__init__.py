"""Group-based advantage estimators: GRPO family, Dr. MAS agent-wise, GiGPO, HGPO, GraphGPO.

>>> from grouprl.advantages import RolloutBatch, compute_advantages
>>> batch = RolloutBatch(group_id=[0, 0], traj_id=[0, 1], step=[0, 0], reward=[1.0, 0.0])
>>> compute_advantages("grpo", batch).tolist()
[0.7071062922477722, -0.7071062922477722]
"""

from grouprl.batch import RolloutBatch, state_ids

from .diagnostics import grouping_stats
from .registry import (
                       available_estimators,
                       compute_advantages,
                       estimator_options,
                       estimator_spec,
                       register_estimator,
)
from .returns import broadcast_to_tokens, discounted_returns

__all__ = ["RolloutBatch", "available_estimators", "broadcast_to_tokens", "compute_advantages",
           "discounted_returns", "estimator_options", "estimator_spec", "grouping_stats",
           "register_estimator", "state_ids"]
