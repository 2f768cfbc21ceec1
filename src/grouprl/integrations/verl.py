"""verl plugin: grouprl's outcome estimators and policy losses in verl's registries.

After :func:`register`, a verl (>= 0.9.1) run selects them by name::

    algorithm.adv_estimator=grouprl_rloo
    actor_rollout_ref.actor.policy_loss.loss_mode=grouprl_kpo

Registered (spec-scale-out §1a): ``grouprl_<name>`` through
``verl.trainer.ppo.core_algos.register_adv_est`` for each estimator of
:func:`~grouprl.integrations.verl_adapters.outcome_estimators` (grpo, dr_grpo, rloo,
reinforce_pp, canon), and through ``register_policy_loss`` for each of
:func:`grouprl.losses.available_policy_losses` (ppo, dual_clip, vanilla, two_sided, gspo,
gspo_token, luspo, cispo, sapo, kpo, kl_cov). How verl's arguments become grouprl calls, the loss
normaliser convention and the ``GROUPRL_VERL_OPTIONS`` variable:
:mod:`grouprl.integrations.verl_adapters`.

Loading. verl's ``__init__`` imports every module named in the comma-separated
``VERL_USE_EXTERNAL_MODULES`` (``verl.utils.import_utils.import_external_libs``), in the driver
and in every Ray worker that imports verl, so ::

    VERL_USE_EXTERNAL_MODULES=grouprl.integrations.verl

registers everything wherever verl runs: importing this module calls :func:`register` when verl
is installed (and does nothing without it, so the adapters stay importable). Registering again
is a no-op: each name maps to one adapter object, and a name already holding a grouprl adapter
(e.g. after a module reload) is left as it is.

The step-level estimators (GiGPO, HGPO, GraphGPO) cannot be carried: verl passes an estimator
only ``token_level_rewards``, ``response_mask``, ``config`` and ``index`` (= uid), with no
trajectory id, step index, step reward or anchor state. docs/distributed.md ("verl plugin") shows
how to call them from your own trainer.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from grouprl.losses import available_policy_losses

from .verl_adapters import PREFIX, outcome_estimators, verl_estimator, verl_policy_loss

__all__ = ["INSTALL_HINT", "register"]

INSTALL_HINT = "pip install 'grouprl[verl]'"
_CORE_ALGOS = "verl.trainer.ppo.core_algos"


def _core_algos() -> ModuleType:
    """verl's ``core_algos`` module; a one-line ``ImportError`` naming the extra without verl."""
    try:
        return importlib.import_module(_CORE_ALGOS)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (missing == _CORE_ALGOS or _CORE_ALGOS.startswith(missing + ".")):
            raise ImportError(f"verl is not installed: {INSTALL_HINT} (in a venv of its own: "
                              f"verl caps transformers below 5.11)") from None
        raise ImportError(f"verl is installed but failed to import: {err}") from err


def register() -> tuple[str, ...]:
    """Register grouprl's outcome estimators and policy losses in verl as ``grouprl_<name>``;
    return the registered names (estimators first). Idempotent.

    Raises:
        ImportError: verl is missing (one line naming ``pip install 'grouprl[verl]'``).
    """
    core = _core_algos()
    names = []
    for name in outcome_estimators():
        key, fn = PREFIX + name, verl_estimator(name)
        current = core.ADV_ESTIMATOR_REGISTRY.get(key)
        if not getattr(current, "grouprl_adapter", False):
            core.register_adv_est(key)(fn)                  # raises on a foreign name clash
        names.append(key)
    for name in available_policy_losses():
        key = PREFIX + name
        if not getattr(core.POLICY_LOSS_REGISTRY.get(key), "grouprl_adapter", False):
            core.register_policy_loss(key)(verl_policy_loss(name))
        names.append(key)
    return tuple(names)


if importlib.util.find_spec("verl") is not None:   # loaded as a verl plugin: register now
    register()
