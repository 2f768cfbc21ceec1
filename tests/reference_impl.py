"""Slow, obviously-correct reference of the advantage estimators.

Written only from ``docs/advantage-semantics.md`` (the contract): plain Python loops, dicts and
float64 Python floats; nothing is imported from ``grouprl``. The vectorised implementation in
``grouprl.advantages`` is tested against this module.

``rows`` is a list of dicts with the keys ``group_id``, ``traj_id``, ``step``, ``reward``,
``state``, ``next_state``, ``success`` (``None`` or ``bool``), ``invalid`` (``bool``) and
``agent_id``. A trajectory is identified by ``(group_id, traj_id)``. Rows may come in any order;
within a trajectory they are put in time order by ``step`` here.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque

__all__ = ["ESTIMATORS", "SUCCESS", "reference_advantages", "rows_to_columns",
           "slow_discounted_returns"]

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "gigpo", "hgpo", "graphgpo")


class _Success:
    """The SUCCESS sentinel node of the GraphGPO graph (never equal to a state id)."""

    def __repr__(self) -> str:
        return "SUCCESS"


SUCCESS = _Success()


# ----------------------------------------------------------------------------------------------
# Structure: groups and trajectories
# ----------------------------------------------------------------------------------------------


def _traj_key(row):
    return (row["group_id"], row["traj_id"])


def _trajectories(rows):
    """{(group, traj): [row indices sorted by step]} in first-appearance order."""
    trajs = {}
    for i, row in enumerate(rows):
        trajs.setdefault(_traj_key(row), []).append(i)
    for key in trajs:
        trajs[key].sort(key=lambda i: rows[i]["step"])
    return trajs


def _groups(rows):
    """{group: [trajectory keys of that group]} in first-appearance order."""
    groups = {}
    for key in _trajectories(rows):
        groups.setdefault(key[0], []).append(key)
    return groups


# ----------------------------------------------------------------------------------------------
# Derived per-row quantities
# ----------------------------------------------------------------------------------------------


def _episode_returns(rows):
    """{trajectory key: ret_tau = sum of the trajectory's rewards}."""
    return {key: math.fsum(float(rows[i]["reward"]) for i in idx)
            for key, idx in _trajectories(rows).items()}


def _scores(rows, c):
    """score_i = ret_tau(i) - c * invalid_i."""
    ret = _episode_returns(rows)
    return [ret[_traj_key(r)] - c * (1.0 if r["invalid"] else 0.0) for r in rows]


def slow_discounted_returns(rows, gamma, invalid_penalty=0.0):
    """G_i = sum_{k >= t} gamma^(k - t) r_k over the row's trajectory (time order) - c*invalid_i.

    With the default ``invalid_penalty=0.0`` this is the plain discounted return. One float per
    row, in the given row order. Computed term by term (no recursion) with ``math.fsum``.
    """
    out = [0.0] * len(rows)
    for idx in _trajectories(rows).values():
        rewards = [float(rows[i]["reward"]) for i in idx]
        for p, i in enumerate(idx):
            g = math.fsum(gamma ** (q - p) * rewards[q] for q in range(p, len(idx)))
            out[i] = g - invalid_penalty * (1.0 if rows[i]["invalid"] else 0.0)
    return out


def _success(rows):
    """{trajectory key: success_tau}: the success column when given, else ret_tau > 0."""
    ret = _episode_returns(rows)
    out = {}
    for key, idx in _trajectories(rows).items():
        given = [rows[i]["success"] for i in idx if rows[i].get("success") is not None]
        if given:
            assert all(bool(s) == bool(given[0]) for s in given), "success must be per trajectory"
            out[key] = bool(given[0])
        else:
            out[key] = ret[key] > 0
    return out


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def _mean(sample):
    return math.fsum(sample) / len(sample)


def _std(sample, mu, ddof):
    return math.sqrt(math.fsum((x - mu) ** 2 for x in sample) / (len(sample) - ddof))


def _normalize(value, sample, *, mode, ddof, singleton, compat, eps):
    """The doc's normalize(value, sample; mode, std kind, singleton rule).

    reference: |sample| == 1 -> singleton rule ("raw": mu=0, sigma=1; "zero": A=0); otherwise
    mu = mean, sigma = std(ddof); mean_norm: value - mu; mean_std_norm: (value - mu)/(sigma + eps).
    native: every sample value equal (singleton included) -> A = value - that value (no division).
    """
    assert mode in ("mean_norm", "mean_std_norm"), mode
    assert compat in ("native", "reference"), compat
    sample = [float(x) for x in sample]
    if compat == "native" and all(x == sample[0] for x in sample):
        return value - sample[0]
    if len(sample) == 1:
        if singleton == "zero":
            return 0.0
        assert singleton == "raw", singleton
        mu, sigma = 0.0, 1.0
    else:
        mu = _mean(sample)
        sigma = _std(sample, mu, ddof)
    if mode == "mean_norm":
        return value - mu
    return (value - mu) / (sigma + eps)


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


def _grpo(rows, *, c, eps, compat, mode="mean_std_norm", by_agent=False):
    score = _scores(rows, c)
    ret = _episode_returns(rows)
    trajs = _trajectories(rows)
    groups = _groups(rows)
    out = [0.0] * len(rows)
    if by_agent:
        # Dr. MAS agent-wise: key (g, agent_id); sample = every row's score with that key.
        members = defaultdict(list)
        for i, r in enumerate(rows):
            members[(r["group_id"], r["agent_id"])].append(i)
        for i, r in enumerate(rows):
            sample = [score[j] for j in members[(r["group_id"], r["agent_id"])]]
            out[i] = _normalize(score[i], sample, mode=mode, ddof=1, singleton="raw",
                                compat=compat, eps=eps)
        return out
    if compat == "reference":
        # Dr. MAS vanilla: v_tau = mean of the trajectory's row scores, each trajectory once.
        v = {key: _mean([score[i] for i in idx]) for key, idx in trajs.items()}
        for i, r in enumerate(rows):
            sample = [v[key] for key in groups[r["group_id"]]]
            out[i] = _normalize(v[_traj_key(r)], sample, mode=mode, ddof=1, singleton="raw",
                                compat=compat, eps=eps)
        return out
    # native: sample = {ret_tau}, value score_i.
    for i, r in enumerate(rows):
        sample = [ret[key] for key in groups[r["group_id"]]]
        out[i] = _normalize(score[i], sample, mode=mode, ddof=1, singleton="raw",
                            compat=compat, eps=eps)
    return out


def _rloo_sample(rows, score, compat):
    """{group: sample} with the rloo rule (reference: step-0 row scores; native: {ret_tau})."""
    trajs = _trajectories(rows)
    ret = _episode_returns(rows)
    out = {}
    for g, keys in _groups(rows).items():
        if compat == "reference":
            out[g] = [score[trajs[key][0]] for key in keys]   # first row in time order (step 0)
        else:
            out[g] = [ret[key] for key in keys]
    return out


def _rloo(rows, *, c, eps, compat):
    del eps
    score = _scores(rows, c)
    samples = _rloo_sample(rows, score, compat)
    out = [0.0] * len(rows)
    for i, r in enumerate(rows):
        sample = samples[r["group_id"]]
        n = len(sample)
        if n == 1:
            out[i] = score[i] if compat == "reference" else 0.0
            continue
        if compat == "native" and all(x == sample[0] for x in sample):
            mu = sample[0]
        else:
            mu = _mean(sample)
        out[i] = n / (n - 1) * (score[i] - mu)
    return out


def _reinforce_pp(rows, *, c, eps, compat, response_length=None):
    del eps
    score = _scores(rows, c)
    samples = _rloo_sample(rows, score, compat)
    b = [0.0] * len(rows)
    for i, r in enumerate(rows):
        sample = samples[r["group_id"]]
        if len(sample) == 1 and compat == "reference":
            b[i] = score[i]   # singleton mu = 0
            continue
        # native: mu snapped to the common value when the sample is all equal, so a singleton
        # group gives b = score_i - ret_tau = -c * invalid_i.
        if compat == "native" and all(x == sample[0] for x in sample):
            mu = sample[0]
        else:
            mu = _mean(sample)
        b[i] = score[i] - mu
    if compat == "native" and all(x == b[0] for x in b):
        return [0.0] * len(rows)
    w = [1.0] * len(rows) if response_length is None else [float(x) for x in response_length]
    big_w = math.fsum(w)
    m = math.fsum(wi * bi for wi, bi in zip(w, b)) / big_w
    if big_w <= 1:
        var = 0.0
    else:
        var = math.fsum(wi * (bi - m) ** 2 for wi, bi in zip(w, b)) / big_w * big_w / (big_w - 1)
    return [(bi - m) / math.sqrt(var + 1e-8) for bi in b]


def _episode_adv(rows, *, c, eps, compat, mode):
    """GiGPO A_E. reference: cross-step sample of every row's score, singleton raw;
    native: sample {ret_tau} (each trajectory once), value score_i."""
    score = _scores(rows, c)
    ret = _episode_returns(rows)
    groups = _groups(rows)
    members = defaultdict(list)
    for i, r in enumerate(rows):
        members[r["group_id"]].append(i)
    out = [0.0] * len(rows)
    for i, r in enumerate(rows):
        g = r["group_id"]
        if compat == "reference":
            sample = [score[j] for j in members[g]]
        else:
            sample = [ret[key] for key in groups[g]]
        out[i] = _normalize(score[i], sample, mode=mode, ddof=1, singleton="raw",
                            compat=compat, eps=eps)
    return out


def _state_group_adv(rows, values, *, eps, compat, mode):
    """Key (g, state); sample {values_j}; value values_i; unbiased; singleton "zero"."""
    members = defaultdict(list)
    for i, r in enumerate(rows):
        members[(r["group_id"], r["state"])].append(i)
    out = [0.0] * len(rows)
    for i, r in enumerate(rows):
        sample = [values[j] for j in members[(r["group_id"], r["state"])]]
        out[i] = _normalize(values[i], sample, mode=mode, ddof=1, singleton="zero",
                            compat=compat, eps=eps)
    return out


def _gigpo(rows, *, c, eps, compat, gamma=0.95, step_weight=1.0, mode="mean_norm"):
    a_e = _episode_adv(rows, c=c, eps=eps, compat=compat, mode=mode)
    g_ret = slow_discounted_returns(rows, gamma, c)
    a_s = _state_group_adv(rows, g_ret, eps=eps, compat=compat, mode=mode)
    return [e + step_weight * s for e, s in zip(a_e, a_s)]


def _hgpo(rows, *, c, eps, compat, gamma=0.95, history_length=2, alpha=1.0, base_group=False,
          mode="mean_std_norm", level_offset=1):
    g_ret = slow_discounted_returns(rows, gamma, c)
    trajs = _trajectories(rows)
    max_k = history_length + 1
    # Cluster membership: key (g, k, last k states of the row's own trajectory).
    keys_of_row = [[] for _ in rows]
    clusters = defaultdict(list)
    for tkey, idx in trajs.items():
        states = [rows[i]["state"] for i in idx]
        for p, i in enumerate(idx):
            for k in range(1, min(max_k, p + 1) + 1):
                ckey = (tkey[0], k, tuple(states[p - k + 1: p + 1]))
                clusters[ckey].append(i)
                keys_of_row[i].append((k, ckey))
    items = [[] for _ in rows]   # (weight, a)
    if base_group:
        a_e = _episode_adv(rows, c=c, eps=eps, compat=compat, mode=mode)
        for i in range(len(rows)):
            items[i].append((1.0, a_e[i]))
    for i in range(len(rows)):
        for k, ckey in keys_of_row[i]:
            members = clusters[ckey]
            if len(members) < 2:
                continue
            sample = [g_ret[j] for j in members]
            if compat == "native" and all(x == sample[0] for x in sample):
                a = g_ret[i] - sample[0]
            else:
                mu = _mean(sample)
                sigma = _std(sample, mu, 0)   # population std
                a = g_ret[i] - mu if mode == "mean_norm" else (g_ret[i] - mu) / (sigma + eps)
            items[i].append((float(k + level_offset) ** alpha, a))
    out = [0.0] * len(rows)
    for i in range(len(rows)):
        kept = [(w, a) for w, a in items[i] if a != 0.0]
        if not kept:
            continue
        out[i] = math.fsum(w * a for w, a in kept) / (math.fsum(w for w, _ in kept) + eps)
    return out


def _bfs_to_success(edges):
    """Fewest edges from each node to SUCCESS (BFS on the reversed graph); missing = unreachable."""
    reverse = defaultdict(list)
    for src, dst in edges:
        reverse[dst].append(src)
    dist = {SUCCESS: 0}
    queue = deque([SUCCESS])
    while queue:
        node = queue.popleft()
        for prev in reverse[node]:
            if prev not in dist:
                dist[prev] = dist[node] + 1
                queue.append(prev)
    return dist


def _graphgpo(rows, *, c, eps, compat, omega=0.1, step_weight=1.0, episode_weight=1.0,
              normalize_distance=False, mode="mean_std_norm"):
    trajs = _trajectories(rows)
    success = _success(rows)
    dst = [None] * len(rows)
    for tkey, idx in trajs.items():
        for i in idx:
            dst[i] = rows[i]["next_state"]
        if success[tkey]:
            dst[idx[-1]] = SUCCESS   # last step of a successful trajectory
    by_group = defaultdict(list)
    for i, r in enumerate(rows):
        by_group[r["group_id"]].append(i)
    d_state = [0] * len(rows)
    d_dst = [0] * len(rows)
    for members in by_group.values():
        edges = [(rows[i]["state"], dst[i]) for i in members]
        dist = _bfs_to_success(edges)
        far = max(dist.values())   # 0 when only SUCCESS itself is reachable (or no success)
        for i in members:
            d_state[i] = dist.get(rows[i]["state"], far + 1)
            d_dst[i] = dist.get(dst[i], far + 1)
    reward = []
    for i, r in enumerate(rows):
        exponent = d_dst[i] - d_state[i] + 1 if normalize_distance else d_dst[i]
        reward.append(10 * omega ** exponent - c * (1.0 if r["invalid"] else 0.0))
    a_step = _state_group_adv(rows, reward, eps=eps, compat=compat, mode=mode)
    if episode_weight == 0:
        return [step_weight * s for s in a_step]
    a_e = _episode_adv(rows, c=c, eps=eps, compat=compat, mode=mode)
    return [step_weight * s + episode_weight * e for s, e in zip(a_step, a_e)]


def reference_advantages(name, rows, *, compat="native", invalid_penalty=0.1, epsilon=1e-6,
                         **options):
    """One float64 advantage per row, in the given row order (see the module docstring)."""
    rows = [dict(r) for r in rows]
    for r in rows:
        r.setdefault("success", None)
        r.setdefault("invalid", False)
        r.setdefault("agent_id", None)
        r["invalid"] = bool(r["invalid"]) if r["invalid"] is not None else False
    common = {"c": float(invalid_penalty), "eps": float(epsilon), "compat": compat}
    if name == "grpo":
        return _grpo(rows, **common, **options)
    if name == "dr_grpo":
        return _grpo(rows, **common, mode="mean_norm", **options)
    if name == "rloo":
        return _rloo(rows, **common, **options)
    if name == "reinforce_pp":
        return _reinforce_pp(rows, **common, **options)
    if name == "gigpo":
        return _gigpo(rows, **common, **options)
    if name == "hgpo":
        return _hgpo(rows, **common, **options)
    if name == "graphgpo":
        return _graphgpo(rows, **common, **options)
    raise ValueError(f"unknown estimator {name!r}")


def rows_to_columns(rows):
    """Column dict for ``RolloutBatch(**columns)`` (plain lists, the given row order).

    ``success`` is ``None`` when no row gives it, else a bool per row (a trajectory without a
    given value gets ret_tau > 0, the documented default); ``agent_id`` is ``None`` when absent.
    """
    success = None
    if any(r.get("success") is not None for r in rows):
        default = _success([dict(r, success=r.get("success"), invalid=bool(r.get("invalid")))
                            for r in rows])
        success = [bool(default[_traj_key(r)]) for r in rows]
    agent = [r.get("agent_id") for r in rows]
    return {
        "group_id": [r["group_id"] for r in rows],
        "traj_id": [r["traj_id"] for r in rows],
        "step": [int(r["step"]) for r in rows],
        "reward": [float(r["reward"]) for r in rows],
        "state": [int(r["state"]) for r in rows],
        "next_state": [int(r["next_state"]) for r in rows],
        "success": success,
        "invalid": [bool(r.get("invalid", False)) for r in rows],
        "agent_id": None if all(a is None for a in agent) else agent,
    }
