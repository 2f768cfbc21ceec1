"""Run under ``torchrun --nproc_per_node=2`` by test_multiagent_dp.py (not collected by pytest).

A Dr. MAS math team (Solver ↔ Verifier, float64 tiny models) on 5 tasks × 3 episodes shared
unevenly (rank 0: tasks [0, 3), rank 1: [3, 5)). Each rank rolls out its block with scripted
replies (valid / invalid, right / wrong answers, approve / reject; their token records come from
each group's own tokenizer), then runs the data-parallel advantages and per-group updates
(``comm``). Rank 0 replays the same iteration in one process on every rank's rows (rank order),
from copies of the initial weights and optimizers, and writes the differences. ``--drop``:
rank 1 keeps no Verifier row (its share of that group is empty; it must still take the group's
steps). Then the sharded evaluation (replies a function of the prompt) is compared with the
one-process one."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import re
import sys
import zlib

import torch

import grouprl.train.team_rollout as team_rollout_module
from grouprl.distributed import LOCAL, init_distributed, shard_bounds, shutdown
from grouprl.multiagent import TeamAdvantages
from grouprl.policy import build_tiny_policy
from grouprl.train.config import load_config
from grouprl.train.sampling import task_seeds
from grouprl.train.team_config import build_team
from grouprl.train.team_models import TEAM_SPECIAL_TOKENS, format_prompt, make_team_optimizers
from grouprl.train.team_rollout import TokenRecord, evaluate_team, records_for, team_rollout
from grouprl.train.team_update import (
    advantages_of,
    metric_weights,
    reduce_team_metrics,
    team_metrics,
    team_objectives,
    update_groups,
)

TASKS, N = 5, 3
KEYS = ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/updates")


class Scripted:
    """``generate(agent, prompts)`` with scripted replies (drawn from ``seed``'s stream, or with
    ``seed=None`` a function of the prompt alone) and their token records."""

    def __init__(self, team, policies, use_chat: bool, seed: int | None) -> None:
        self.team, self.policies, self.use_chat = team, policies, use_chat
        self.stream = random.Random(seed) if seed is not None else None
        self.records = []

    def rng(self, prompt: str) -> random.Random:
        return self.stream or random.Random(zlib.crc32(prompt.encode()))

    def __call__(self, agent, prompts):
        _, tok = self.policies[self.team.groups.group_of[agent.name]]
        texts = []
        for p in prompts:                   # Solver: right, wrong or unparsable
            rng = self.rng(p)
            if agent.name == "Solver":
                answer = gold(p) if rng.random() < 0.5 else rng.randint(0, 9)
                texts.append(f"\\boxed{{{answer}}}" if rng.random() < 0.8 else "no idea")
            else:
                texts.append(rng.choice(["<verify>approve</verify>", "<verify>reject</verify>",
                                         "hmm"]))
        for prompt, text in zip(prompts, texts):
            ids = tok.encode(format_prompt(tok, prompt, self.use_chat), add_special_tokens=False)
            reply = tok.encode(text + tok.eos_token, add_special_tokens=False)
            self.records.append(TokenRecord(ids, reply, [0.0] * len(reply), False))
        return texts

    def take(self):
        out, self.records = self.records, []
        return out


class EvalScripted(Scripted):
    """Stands in for the evaluation's TeamGenerator: replies depend on the prompt only, so the
    sharded evaluation must reproduce the one-process numbers exactly."""

    def __init__(self, cfg, team, policies, generators, *, temperature=None) -> None:
        super().__init__(team, policies, cfg.agent.use_chat_template, None)


def gold(prompt: str) -> int:
    a, op, b = re.search(r"What is (\d+) ([-+*]) (\d+)", prompt).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b) if op == "-" else int(a) * int(b)


def policies_of(team, cfg):
    corpus = ["Solve 3 + 4 = ? Put the final answer in \\boxed{7}. You are the Solver. Verifier "
              "<verify>approve</verify> <verify>reject</verify> hmm no idea 0123456789"] * 4
    return {g.name: build_tiny_policy(corpus, vocab_size=300, special_tokens=TEAM_SPECIAL_TOKENS,
                                      isolate_chars="0123456789", seed=k, hidden_size=16,
                                      num_layers=1, num_heads=2, num_kv_heads=1,
                                      intermediate_size=32, dtype=torch.float64)
            for k, g in enumerate(team.groups.groups)}


def iteration(cfg, team, policies, optimizer, rows, records, episodes, comm):
    res = advantages_of(team, rows, episodes, 3, comm)
    upd = update(cfg, team, policies, optimizer, res, rows, records, episodes, comm)
    metrics = reduce_team_metrics(team_metrics(team, rows, episodes, res, upd),
                                  metric_weights(team, rows, episodes, res), comm)
    return res, upd, metrics


def update(cfg, team, policies, optimizer, res, rows, records, episodes, comm):
    return update_groups(cfg, team, policies, optimizer, team_objectives(cfg, team), res, rows,
                         records, episodes, torch.Generator().manual_seed(11), comm)


CASES = {"native": [], "empty_share": [],
         "reference_padding": ["multiagent.compat=reference", "multiagent.pad_divisor=5",
                               "multiagent.share_models=true", "multiagent.update_num=3",
                               "multiagent.agents={Solver: {model: m}, Verifier: {model: m}}"]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    comm = init_distributed("cpu")
    results = {case: run_case(comm, case) for case in CASES}
    if comm.is_main:
        with open(args.out, "w") as f:
            json.dump(results, f)
    comm.barrier()
    return 0


def run_case(comm, case: str) -> dict:
    cfg = load_config("configs/drmas_math.yaml", [
        "multiagent.task_kwargs={difficulty: [1], size: 20}", "multiagent.update_num=2",
        "algorithm.ppo_epochs=2", "algorithm.micro_batch_size=4", "algorithm.entropy_coef=0.01",
        "optim.lr=3e-3", "eval.episodes=5", "multiagent.eval_k=2",
        "rollout.max_new_tokens=4", *CASES[case]])
    team = build_team(cfg)
    policies = policies_of(team, cfg)
    reference = copy.deepcopy(policies)
    initial = {g: copy.deepcopy(m.state_dict()) for g, (m, _) in policies.items()}

    lo, hi = shard_bounds(TASKS, comm.world_size, comm.rank)
    seeds = task_seeds(cfg.seed, 0, TASKS, cfg.eval.seed_offset)[lo:hi]
    roll, records = team_rollout(team, Scripted(team, policies, cfg.agent.use_chat_template,
                                                100 + comm.rank), seeds, N, first_group=lo)
    rows, episodes = roll.rows, roll.episodes
    if case == "empty_share" and comm.rank == 1:
        keep = [i for i, r in enumerate(rows) if r.agent != "Verifier"]
        rows, records = [rows[i] for i in keep], [records[i] for i in keep]
        turns: dict[int, int] = {}                 # invocations renumbered 0, 1, … per trajectory
        for k, r in enumerate(rows):
            rows[k] = dataclasses.replace(r, turn=turns.setdefault(r.traj_id, 0))
            turns[r.traj_id] += 1
    optimizer, _ = make_team_optimizers(cfg, team, policies)
    res, upd, metrics = iteration(cfg, team, policies, optimizer, rows, records, episodes, comm)
    shares = comm.gather((rows, records, episodes, res.rows, res.advantages,
                          records_for(res.rows, rows, records),
                          {g: m["actor/updates"] for g, m in upd.items()},
                          sum(r.agent == "Verifier" for r in res.rows), metrics))
    real, team_rollout_module.TeamGenerator = team_rollout_module.TeamGenerator, EvalScripted
    dp_eval = evaluate_team(cfg, team, policies, comm)

    result = {}
    if comm.is_main:
        all_rows = [r for s in shares for r in s[0]]
        all_episodes = [e for s in shares for e in s[2]]
        ref_res = advantages_of(team, all_rows, all_episodes, 3, LOCAL)     # statistics
        dp_rows = [r for s in shares for r in s[3]]             # every rank's rows, rank order
        dp_res = TeamAdvantages(dp_rows, torch.cat([s[4] for s in shares]))
        dp_recs = [r for s in shares for r in s[5]]
        ref_opt, _ = make_team_optimizers(cfg, team, reference)
        ref_upd = update(cfg, team, reference, ref_opt, dp_res, dp_rows, dp_recs, all_episodes,
                         LOCAL)
        ref_metrics = team_metrics(team, all_rows, all_episodes, ref_res, ref_upd)
        diff, moved = {}, {}
        for g, (model, _) in policies.items():
            ref = reference[g][0].state_dict()
            diff[g] = max(float((ref[k] - v).abs().max()) for k, v in model.state_dict().items())
            moved[g] = max(float((ref[k] - initial[g][k]).abs().max()) for k in ref)
        result = {
            "group_ids": sorted({r.group_id for r in shares[1][0]}),
            "traj_ids": sorted({e.traj_id for e in shares[1][2]}),
            "rows": [len(s[0]) for s in shares], "duplicates": sum(r.duplicate for r in dp_rows),
            "ref_duplicates": sum(r.duplicate for r in ref_res.rows),
            "same_rows": sorted(map(repr, dp_rows)) == sorted(map(repr, ref_res.rows)),
            "same_advantages": sorted(zip(map(repr, dp_rows), dp_res.advantages.tolist())) ==
            sorted(zip(map(repr, ref_res.rows), ref_res.advantages.tolist())),
            "same_order": dp_rows == ref_res.rows,
            "adv_nonzero": int((dp_res.advantages != 0).sum()),
            "updates": [s[6] for s in shares], "ref_updates":
                {g: m["actor/updates"] for g, m in ref_upd.items()},
            "verifier_rows": [s[7] for s in shares],
            "rank1_metrics_equal": shares[1][8] == metrics,
            "max_param_diff": diff, "moved": moved,
            "dp": {g: {k: m.get(k) for k in KEYS} for g, m in upd.items()},
            "one": {g: {k: m.get(k) for k in KEYS} for g, m in ref_upd.items()},
            "metrics": metrics, "ref_metrics": ref_metrics,
            "eval": dp_eval, "ref_eval": evaluate_team(cfg, team, policies, LOCAL)}
    team_rollout_module.TeamGenerator = real
    return result if comm.is_main else {}


if __name__ == "__main__":
    rc = main()
    shutdown()          # leave the process group before exit (else gloo may abort)
    sys.exit(rc)
