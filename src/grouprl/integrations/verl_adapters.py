"""Adapters from verl's registry call conventions to grouprl's estimators and policy losses.

This module imports no verl (spec-scale-out §1a; verl 0.9.1 source cited per item), so the
adapters are tested without it; :mod:`grouprl.integrations.verl` registers them.

**Estimators.** ``verl.trainer.ppo.ray_trainer.compute_advantage`` calls a registered estimator
as ``fn(token_level_rewards=(B, T), response_mask=(B, T), config=AlgoConfig, index=uid)`` (plus
``reward_baselines`` when present) and stores the returned ``(advantages, returns)``, both
(B, T). One row is one response, i.e. a trajectory of one step, so the adapter runs grouprl on

    ``RolloutBatch(group_id=index, traj_id=row, step=0, reward=s_i)``,  ``s_i = Σ_t r_{i,t}``

(verl's own outcome score: the sum of the row's token-level rewards) and returns
``A_i · response_mask`` twice, as verl's outcome estimators do. Carried: the estimators that
declare no column beyond (group, trajectory, step, reward) — :func:`outcome_estimators`.
A per-row input an estimator declares is filled from the response mask where it can be
(``response_length = Σ_t mask``); of the run settings it declares (``run_defaults``), ``comm``
is None (verl's driver sees the whole batch) and any other must be given in
``GROUPRL_VERL_OPTIONS`` (CANON's ``l_max``: your ``data.max_response_length``).
``algorithm.norm_adv_by_std_in_grpo=False`` selects ``mode="mean_norm"`` for an estimator with a
``mode`` option, unless the options set it.

**Losses.** ``verl.workers.utils.losses.ppo_loss`` sets ``config.global_batch_info = {dp_size,
batch_num_tokens, global_batch_size, loss_scale_factor}`` on the ``ActorConfig`` and calls
``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights)``. The loss must follow ``core_algos.agg_loss`` (FSDP averages gradients
over the ``dp_size`` ranks, hence the factor): with ``ℓ`` the per-token loss, ``m`` the mask and
sums over this rank's micro-batch,

=========================  ===============================================
verl ``loss_agg_mode``     value
=========================  ===============================================
token-mean                 ``Σ m·ℓ / batch_num_tokens · dp_size``
token-sum                  ``Σ m·ℓ · dp_size``
seq-mean-token-sum         ``Σ_i Σ_t m·ℓ / global_batch_size · dp_size``
seq-mean-token-mean        ``Σ_i (Σ_t m·ℓ / L_i) / global_batch_size · dp_size``
seq-mean-token-sum-norm    seq-mean-token-sum ``/ loss_scale_factor`` (default T)
=========================  ===============================================

With ``dp_size = 1`` an unset count is this micro-batch's own (tokens; non-empty rows), as in
``agg_loss``. The adapter computes ``grouprl.losses.policy_loss`` with these global counts
(``Σ_local/global``) and multiplies by ``dp_size``. grouprl's ``seq-mean-token-mean`` divides by
``max(L_i, 1)`` where verl divides by ``L_i + 1e-8`` (a relative difference ≤ 1e-8 per row).

Option sources, later ones winning: the loss's grouprl defaults; the ``ActorConfig`` fields
``clip_ratio_low`` / ``clip_ratio_high`` (else ``clip_ratio``) as ``clip_low`` / ``clip_high``
for every loss that takes them, ``clip_ratio_c`` as ``dual_clip`` for the losses whose default
has a dual clip (``dual_clip``, ``vanilla``), ``tau_pos`` / ``tau_neg``, and
``policy_loss.kl_cov_ratio`` / ``policy_loss.ppo_kl_coef``; then ``GROUPRL_VERL_OPTIONS``. An
explicit ``cap`` there replaces the config's ``clip_high``. Two adapter keys may be given there
too: ``compat`` (grouprl's ``"native"`` default, ``"verl"`` or ``"trl"``) and ``agg`` (a verl
aggregation mode replacing ``actor.loss_agg_mode`` for this loss).

verl's precomputed ``rollout_is_weights`` ``w ≥ 0`` multiply the per-token loss. Every loss in
:data:`IS_FOLDABLE` is positively homogeneous in the advantage, ``L(r, w·Â) = w·L(r, Â)`` for
``w ≥ 0`` (the clip branch and SAPO's τ depend on the sign of ``Â`` only, and a zero advantage
gives a zero loss), so the adapter passes ``w ⊙ Â`` as the advantage. ``kl_cov`` is not (its
``k·|δ|`` term and its token ranking do not scale with ``Â``) and refuses the weights.

**Options.** ``GROUPRL_VERL_OPTIONS`` is a JSON object mapping a registered name to that name's
options, read on every call (so each Ray worker reads its own environment), e.g.
``{"grouprl_rloo": {"compat": "reference"}, "grouprl_kpo": {"Q": 1e-5},
"grouprl_canon": {"l_max": 1024}}``. Unknown names and options raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from grouprl.advantages import (
    RolloutBatch,
    available_estimators,
    compute_advantages,
    estimator_spec,
)
from grouprl.losses import available_policy_losses, policy_loss, policy_loss_options
from grouprl.validation import check_choice

__all__ = ["IS_FOLDABLE", "OPTIONS_ENV", "PREFIX", "VERL_AGG_MODES", "env_options",
           "outcome_advantages", "outcome_estimators", "registered_names", "verl_estimator",
           "verl_loss", "verl_policy_loss"]

OPTIONS_ENV = "GROUPRL_VERL_OPTIONS"
PREFIX = "grouprl_"
VERL_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                  "seq-mean-token-sum-norm")
IS_FOLDABLE = frozenset({"ppo", "dual_clip", "vanilla", "two_sided", "gspo", "gspo_token",
                         "luspo", "cispo", "sapo", "kpo"})
"""Losses with ``L(r, w·Â) = w·L(r, Â)`` for ``w ≥ 0``: verl's IS weights fold into ``Â``."""

_RUN_SETTINGS: dict[str, Any] = {"comm": None}
"""Run settings verl supplies: no data-parallel ``comm``, because verl computes advantages in its
driver over the whole batch (``ray_trainer.compute_advantage``), so batch statistics are global."""
_COUNT_KEYS = {"token-mean": "batch_num_tokens", "seq-mean-token-sum": "global_batch_size",
               "seq-mean-token-mean": "global_batch_size",
               "seq-mean-token-sum-norm": "global_batch_size"}


def outcome_estimators() -> tuple[str, ...]:
    """grouprl estimators verl's registry can carry: those that declare no batch column beyond
    (group, trajectory, step, reward). Step-level ones (GiGPO, HGPO, GraphGPO) need ``state``."""
    return tuple(n for n in available_estimators() if not estimator_spec(n).needs)


def registered_names() -> tuple[str, ...]:
    """Every name the plugin registers: ``grouprl_<estimator>`` then ``grouprl_<loss>``."""
    return tuple(PREFIX + n for n in (*outcome_estimators(), *available_policy_losses()))


@functools.lru_cache(maxsize=4)
def _parse_options(raw: str) -> Mapping[str, Mapping[str, Any]]:
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{OPTIONS_ENV}: not valid JSON ({err})") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{OPTIONS_ENV}: must be a JSON object mapping a registered name to an "
                         f"object of options, e.g. '{{\"grouprl_rloo\": {{\"compat\": "
                         f"\"reference\"}}}}'")
    names = registered_names()
    for name in table:
        check_choice(f"{OPTIONS_ENV} key", name, names)
    return table


def env_options(name: str) -> dict[str, Any]:
    """The options of registered ``name`` in ``GROUPRL_VERL_OPTIONS`` (a new dict; ``{}`` when
    the variable is unset or empty, or does not mention ``name``)."""
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    return dict(_parse_options(raw).get(name, {})) if raw else {}


def _config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` for a dataclass / DictConfig / namespace, ``config[key]`` for a mapping."""
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _check_pair(token_level: torch.Tensor, response_mask: torch.Tensor, what: str) -> None:
    if not isinstance(token_level, torch.Tensor) or token_level.dim() != 2:
        raise ValueError(f"{what}: expected a (B, T) tensor, got "
                         f"{getattr(token_level, 'shape', type(token_level).__name__)}")
    if not isinstance(response_mask, torch.Tensor) or response_mask.shape != token_level.shape:
        raise ValueError(f"response_mask: expected shape {tuple(token_level.shape)}, got "
                         f"{getattr(response_mask, 'shape', type(response_mask).__name__)}")


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


def _estimator_options(name: str, options: dict[str, Any], response_mask: torch.Tensor,
                       config: Any) -> dict[str, Any]:
    """Fill the options verl can supply (module docstring) into ``options`` (in place)."""
    spec = estimator_spec(name)
    registered = PREFIX + name
    fields = {f.name for f in dataclasses.fields(spec.options)}
    if "mode" in fields and "mode" not in options and \
            _config_value(config, "norm_adv_by_std_in_grpo", True) is False:
        options["mode"] = "mean_norm"
    for option, source in spec.row_inputs(options).items():
        if option in options:
            continue
        if source != "response_length":
            raise ValueError(f"{option}: {registered} needs the per-row input {source!r}, which "
                             f"verl's estimator registry does not pass (it passes "
                             f"token_level_rewards, response_mask and uid only)")
        options[option] = response_mask.detach().sum(-1).cpu().to(torch.float64)
    for option, setting in spec.run_defaults.items():
        if option in options:
            continue
        if setting in _RUN_SETTINGS:
            options[option] = _RUN_SETTINGS[setting]
        else:
            raise ValueError(f"{option}: {registered} takes it from the run setting {setting!r}, "
                             f"which verl's estimator registry does not pass; set it in "
                             f"{OPTIONS_ENV}, e.g. '{{\"{registered}\": {{\"{option}\": ...}}}}'")
    return options


def outcome_advantages(name: str, token_level_rewards: torch.Tensor,
                       response_mask: torch.Tensor, index: Any, config: Any = None,
                       options: Mapping[str, Any] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """grouprl estimator ``name`` on verl's inputs: ``(A ⊙ mask, A ⊙ mask)``, (B, T) each.

    Args:
        name: a grouprl estimator from :func:`outcome_estimators` (without the prefix).
        token_level_rewards: (B, T) rewards; the outcome is ``s_i = Σ_t r_{i,t}``.
        response_mask: (B, T) 0/1 or bool.
        index: the (B,) group of each response (verl's ``uid``: strings or ints).
        config: verl's ``AlgoConfig`` (``norm_adv_by_std_in_grpo``), or None.
        options: the estimator's options; None = ``GROUPRL_VERL_OPTIONS``.
    """
    registered = PREFIX + name
    _check_pair(token_level_rewards, response_mask, "token_level_rewards")
    n = token_level_rewards.shape[0]
    if index is None or len(index) != n:
        raise ValueError(f"index: {registered} needs verl's uid column, one group id per "
                         f"response ({n}); got {None if index is None else len(index)}")
    opts = _estimator_options(name, env_options(registered) if options is None
                              else dict(options), response_mask, config)
    scores = token_level_rewards.detach().sum(-1)                       # s_i, as verl sums
    batch = RolloutBatch(group_id=np.asarray(index), traj_id=torch.arange(n),
                         step=torch.zeros(n, dtype=torch.int64),
                         reward=scores.cpu().to(torch.float64))
    adv = compute_advantages(name, batch, **opts)                        # float32 [B]
    dtype = token_level_rewards.dtype
    out = adv.to(device=token_level_rewards.device, dtype=dtype)[:, None] * \
        response_mask.to(dtype)                                          # A_i · m_{i,t}
    return out, out


@functools.cache
def verl_estimator(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The function registered as ``grouprl_<name>`` (one object per name, so registering again
    is a no-op): verl's keyword call → :func:`outcome_advantages`."""
    spec = estimator_spec(name)
    if spec.needs:
        raise ValueError(f"{name}: needs the {', '.join(spec.needs)} column(s), which verl's "
                         f"estimator registry does not pass; call grouprl.advantages from your "
                         f"own trainer (docs/distributed.md, 'verl plugin')")

    def estimator(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                  index: Any = None, config: Any = None, **unused: Any
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        return outcome_advantages(name, token_level_rewards, response_mask, index, config)

    estimator.__name__ = estimator.__qualname__ = PREFIX + name
    estimator.__doc__ = f"grouprl's {name!r} advantage estimator ({spec.summary}) for verl."
    estimator.grouprl_adapter = True  # type: ignore[attr-defined]
    return estimator


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _config_loss_options(name: str, config: Any) -> dict[str, Any]:
    """The options of loss ``name`` that verl's ``ActorConfig`` holds (module docstring)."""
    defaults = policy_loss_options(name)
    ratio = _config_value(config, "clip_ratio")
    low, high = _config_value(config, "clip_ratio_low"), _config_value(config, "clip_ratio_high")
    found = {"clip_low": ratio if low is None else low,
             "clip_high": ratio if high is None else high,
             "tau_pos": _config_value(config, "tau_pos"),
             "tau_neg": _config_value(config, "tau_neg")}
    if defaults.get("dual_clip") is not None:
        found["dual_clip"] = _config_value(config, "clip_ratio_c")
    section = _config_value(config, "policy_loss")
    for key in ("kl_cov_ratio", "ppo_kl_coef"):
        found[key] = _config_value(section, key)
    return {k: v for k, v in found.items() if k in defaults and v is not None}


def _verl_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """grouprl's loss metrics under verl's names (``actor/pg_clipfrac``, ``actor/ppo_kl``,
    ``actor/pg_clipfrac_lower``) and the rest as ``actor/grouprl/<name>``; counts dropped."""
    renamed = {"clipfrac": "actor/pg_clipfrac", "approx_kl_k1": "actor/ppo_kl",
               "clipfrac_dual": "actor/pg_clipfrac_lower"}
    return {renamed.get(k, f"actor/grouprl/{k}"): v for k, v in metrics.items()
            if k not in ("n_tokens", "n_seqs")}


def verl_loss(name: str, old_log_prob: torch.Tensor, log_prob: torch.Tensor,
              advantages: torch.Tensor, response_mask: torch.Tensor,
              loss_agg_mode: str = "token-mean", config: Any = None,
              rollout_is_weights: torch.Tensor | None = None,
              options: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """grouprl policy loss ``name`` under verl's call and ``agg_loss`` convention (module
    docstring): ``(loss, metrics)``.

    Args:
        name: a loss from :func:`grouprl.losses.available_policy_losses` (without the prefix).
        old_log_prob, log_prob, advantages, response_mask: verl's (B, T) tensors.
        loss_agg_mode: verl's ``actor.loss_agg_mode``.
        config: verl's ``ActorConfig`` (clip ratios, τ, ``global_batch_info``), or None.
        rollout_is_weights: verl's (B, T) rollout-correction weights, or None.
        options: the loss's options and adapter keys; None = ``GROUPRL_VERL_OPTIONS``.
    """
    registered = PREFIX + name
    _check_pair(log_prob, response_mask, "log_prob")
    given = env_options(registered) if options is None else dict(options)
    compat = given.pop("compat", "native")
    mode = check_choice(f"{registered} agg", given.pop("agg", loss_agg_mode), VERL_AGG_MODES)
    opts = _config_loss_options(name, config)
    if "cap" in given:
        opts.pop("clip_high", None)
    opts.update(given)
    info = _config_value(config, "global_batch_info") or {}
    dp = info.get("dp_size") or 1
    counts = {k: info.get(k) for k in ("batch_num_tokens", "global_batch_size")}
    need = _COUNT_KEYS.get(mode)
    if dp > 1 and need is not None and counts[need] is None:
        raise ValueError(f"global_batch_info: {need} is required when dp_size > 1 "
                         f"(loss_agg_mode {mode!r}), as in verl's agg_loss")
    if rollout_is_weights is not None:
        if name not in IS_FOLDABLE:
            raise ValueError(f"rollout_is_weights: {registered} cannot take verl's rollout "
                             f"correction weights (its loss is not linear in the advantage); "
                             f"disable algorithm.rollout_correction or use another loss")
        if bool((rollout_is_weights < 0).any()):
            raise ValueError("rollout_is_weights: must be >= 0")
        advantages = advantages * rollout_is_weights.to(advantages.dtype)   # w ⊙ Â
    agg = {"token-sum": "token-mean", "seq-mean-token-sum-norm": "seq-mean-token-sum"}.get(
        mode, mode)
    global_tokens = 1 if mode == "token-sum" else counts["batch_num_tokens"]   # Σ / 1 = Σ
    loss, metrics = policy_loss(name, log_prob, old_log_prob, advantages, response_mask, agg,
                                global_tokens=global_tokens,
                                global_seqs=counts["global_batch_size"], compat=compat, **opts)
    loss = loss * dp                                                     # FSDP averages over dp
    if mode == "seq-mean-token-sum-norm":
        scale = info.get("loss_scale_factor")
        loss = loss / (response_mask.shape[-1] if scale is None else scale)
    return loss, _verl_metrics(metrics)


@functools.cache
def verl_policy_loss(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    """The function registered as ``grouprl_<name>`` (one object per name): verl's keyword call
    → :func:`verl_loss`."""
    check_choice("name", name, available_policy_losses())

    def loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
             response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
             rollout_is_weights: torch.Tensor | None = None, **unused: Any
             ) -> tuple[torch.Tensor, dict[str, float]]:
        return verl_loss(name, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
                         config, rollout_is_weights)

    loss.__name__ = loss.__qualname__ = PREFIX + name
    loss.__doc__ = f"grouprl's {name!r} policy loss for verl (verl's agg_loss convention)."
    loss.grouprl_adapter = True  # type: ignore[attr-defined]
    return loss
