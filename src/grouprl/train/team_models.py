"""The models of a multi-agent run: one policy, optimizer and LR schedule per model group.

Policies (:func:`load_team_policies`), per model group ``g`` of model name ``m``
(``multiagent.models.<m>`` over ``model.*``, :func:`grouprl.train.team_config.model_settings`):

- ``path`` set: ``load_policy(path)`` (a local HF directory, ``builtin:NAME`` or ``.gguf``), a
  fresh copy per group (non-shared groups of one model start equal and never share weights);
- ``path`` null: a tiny model on a tokenizer trained on the team's own text (the agents' prompts
  on training tasks and the expected reply forms), seeded ``seed + k`` for the k-th model name,
  so two model names give two different models; saved once per group to
  ``run_dir/base_models/<g>/`` (atomic, checksummed; reloaded and verified on resume).

Optional warm start (``multiagent.warm_start_samples > 0``): each group is fine-tuned on scripted
expert replies of its agents (:func:`expert_samples`: the Solver boxes the gold answer; the math
Verifier approves a correct and rejects a wrong Solver line; the search Verifier says no at step 1,
Search queries the question, Answer gives the gold answer), with ``bc.epochs``, ``bc.batch_size``
and ``bc.lr`` — a random tiny model never writes a parsable reply otherwise.

Optimizers: AdamW per group with the group's ``lr`` and ``weight_decay`` (``optim.betas``,
``optim.eps``) and its ``LambdaLR`` (``optim.schedule``, ``optim.warmup_iterations``).
:class:`TeamOptimizer` / :class:`TeamScheduler` expose them as one object with ``state_dict`` /
``load_state_dict`` (``{group: state}``), and the policies go into one ``torch.nn.ModuleDict``,
so :func:`grouprl.train.checkpoint.save_checkpoint` stores every group's weights and optimizer in
one atomic, checksummed checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from grouprl.agent.prompts import apply_chat_template
from grouprl.multiagent import MathTeamEnv, SearchKBEnv
from grouprl.multiagent.orchestra import context_line
from grouprl.policy import build_tiny_policy, load_policy
from grouprl.policy.tiny import EOS_TOKEN, PAD_TOKEN
from grouprl.train.bc import ExpertSample, clone_behaviour
from grouprl.train.config import TrainConfig, config_to_dict
from grouprl.train.config_diff import as_json, flatten, select
from grouprl.train.sampling import task_seeds
from grouprl.train.saved_model import (
    NOT_RECORDED,
    load_verified_model_dir,
    save_model_dir_atomically,
)
from grouprl.train.setup import lr_lambda
from grouprl.train.team_config import Team, model_settings

__all__ = ["TEAM_SPECIAL_TOKENS", "TINY_VOCAB_FLOOR", "TeamOptimizer", "TeamScheduler",
           "format_prompt", "expert_samples", "load_team_policies", "make_team_optimizers",
           "BASE_MODELS_DIR"]

BASE_MODELS_DIR = "base_models"
TEAM_SPECIAL_TOKENS = ("<think>", "</think>", "<answer>", "</answer>", "<verify>", "</verify>",
                       "<search>", "</search>", "<information>", "</information>")
TINY_VOCAB_FLOOR = 256 + len((EOS_TOKEN, PAD_TOKEN)) + len(TEAM_SPECIAL_TOKENS)
"""The smallest ``tiny.vocab_size`` of a team model: bytes, reserved and team tokens."""
Policies = dict[str, tuple[torch.nn.Module, Any]]


def format_prompt(tokenizer: Any, text: str, use_chat_template: bool) -> str:
    """The text a group's model sees: the agent prompt in its chat template when it has one."""
    return apply_chat_template(tokenizer, text) if use_chat_template else text


def _solver_line(env: MathTeamEnv, seed: int, correct: bool) -> tuple[str, str]:
    gold = env.gold
    answer = gold if correct else (str(int(gold) + 1 + seed % 3) if gold.lstrip("-").isdigit()
                                   else gold + "0")
    return f"\\boxed{{{answer}}}", answer


def expert_samples(team: Team, seeds: list[int]) -> dict[str, list[ExpertSample]]:
    """Scripted expert (prompt, reply) pairs per agent on the training tasks ``seeds`` (module
    docstring); built-in agent names only (a user orchestra's other agents get none)."""
    out: dict[str, list[ExpertSample]] = {a.name: [] for a in team.agents}
    agents = {a.name: a for a in team.agents}
    env = team.make_env()
    try:
        for seed in seeds:
            obs, _ = env.reset(seed)
            if isinstance(env, MathTeamEnv):
                if "Solver" in agents:
                    out["Solver"].append(ExpertSample(agents["Solver"].prompt(obs, "", 1),
                                                      f"\\boxed{{{env.gold}}}"))
                if "Verifier" in agents:
                    reply, _ = _solver_line(env, seed, correct=seed % 2 == 0)
                    context = context_line("Solver", reply)
                    verdict = "approve" if seed % 2 == 0 else "reject"
                    out["Verifier"].append(ExpertSample(agents["Verifier"].prompt(obs, context, 1),
                                                        f"<verify>{verdict}</verify>"))
            elif isinstance(env, SearchKBEnv) and env.question is not None:
                q = env.question
                query = f"<search>{q.text}</search>"
                after, _, _, _ = env.step(query)       # step 2 sees the retrieved documents
                script = [("Verifier", obs, 1, "<verify>no</verify>"),
                          ("Search", obs, 1, f"<think>look it up</think>{query}"),
                          ("Verifier", after, 2, "<verify>yes</verify>"),
                          ("Answer", after, 2, f"<think>from the documents</think><answer>"
                                               f"{q.answers[0]}</answer>")]
                for name, seen, step, reply in script:
                    if name in agents:
                        out[name].append(ExpertSample(agents[name].prompt(seen, "", step),
                                                      reply))
    finally:
        env.close()
    return out


def _record(cfg: TrainConfig, group: str) -> dict[str, Any]:
    flat = flatten(as_json(config_to_dict(cfg)))
    return {"group": group, **select(flat, ("model", "multiagent", "bc"), NOT_RECORDED)}


def _tiny(cfg: TrainConfig, model: str, k: int, corpus: list[str]) -> tuple[torch.nn.Module, Any]:
    _, t = model_settings(cfg, model)
    isolate = t.isolate_chars if t.isolate_chars is not None else "0123456789"
    return build_tiny_policy(corpus, vocab_size=t.vocab_size,
                             special_tokens=TEAM_SPECIAL_TOKENS, isolate_chars=isolate,
                             seed=cfg.seed + k, hidden_size=t.hidden_size,
                             num_layers=t.num_layers, num_heads=t.num_heads,
                             num_kv_heads=t.num_kv_heads, intermediate_size=t.intermediate_size)


def _warm_start(cfg: TrainConfig, team: Team, group: str, model: torch.nn.Module, tok: Any,
                samples: dict[str, list[ExpertSample]], echo: Callable[[str], None]) -> None:
    use_chat = cfg.agent.use_chat_template
    eos = tok.eos_token or ""
    data = [ExpertSample(format_prompt(tok, s.prompt, use_chat), s.response + eos)
            for a in team.groups[group].agents for s in samples.get(a, [])]
    if not data:
        return
    b = cfg.bc
    losses = clone_behaviour(model, tok, data, epochs=b.epochs, batch_size=b.batch_size,
                             lr=b.lr, max_updates=b.max_updates, seed=cfg.seed,
                             grad_clip=cfg.optim.grad_clip or 1.0)
    echo(f"warm start of {group}: {len(data)} expert replies, {len(losses)} updates, "
         f"loss {losses[0]:.3f} → {losses[-1]:.3f}")


def load_team_policies(cfg: TrainConfig, team: Team, run_dir: Path,
                       echo: Callable[[str], None]) -> Policies:
    """``{group: (model, tokenizer)}`` (module docstring)."""
    ma = cfg.multiagent
    names = list(dict.fromkeys(g.model for g in team.groups.groups))
    seeds = task_seeds(cfg.seed, -1, max(ma.warm_start_samples, 64), cfg.eval.seed_offset)
    samples: dict[str, list[ExpertSample]] | None = None
    built: dict[str, tuple[torch.nn.Module, Any]] = {}
    out: Policies = {}
    for g in team.groups.groups:
        path, _ = model_settings(cfg, g.model)
        saved = run_dir / BASE_MODELS_DIR / g.name
        if path is None:
            loaded = load_verified_model_dir(saved, _record(cfg, g.name), dtype=cfg.model.dtype)
            if loaded is not None:
                out[g.name] = loaded
                continue
        if samples is None:
            samples = expert_samples(team, seeds)
        if g.model not in built:
            if path is not None:
                built[g.model] = load_policy(path, dtype=cfg.model.dtype,
                                             trust_remote_code=cfg.model.trust_remote_code,
                                             echo=echo)
            else:
                corpus = [s.prompt for v in samples.values() for s in v] + \
                         [s.response for v in samples.values() for s in v]
                echo(f"building the tiny model {g.model!r} (tokenizer on {len(corpus)} texts "
                     f"of the {team.task} team)")
                built[g.model] = _tiny(cfg, g.model, names.index(g.model), corpus)
        model, tok = copy.deepcopy(built[g.model])
        if ma.warm_start_samples:
            cut = {a: v[:ma.warm_start_samples] for a, v in samples.items()}
            _warm_start(cfg, team, g.name, model, tok, cut, echo)
        if path is None:
            save_model_dir_atomically(model, tok, saved, _record(cfg, g.name))
        out[g.name] = (model, tok)
    return out


class TeamOptimizer:
    """One optimizer per model group, saved and restored as ``{group: state_dict}``."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def __getitem__(self, group: str) -> torch.optim.Optimizer:
        return self.optimizers[group]

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.optimizers) - set(state))
        if missing:
            raise ValueError(f"optimizer: the checkpoint has no state for model group "
                             f"{missing[0]!r}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class TeamScheduler(TeamOptimizer):
    """One LR schedule per model group (``step`` advances all of them)."""

    def step(self) -> None:
        for sched in self.optimizers.values():
            sched.step()


def make_team_optimizers(cfg: TrainConfig, team: Team, policies: Policies
                         ) -> tuple[TeamOptimizer, TeamScheduler]:
    """AdamW + LambdaLR per model group with the group's ``lr`` and ``weight_decay``."""
    o = cfg.optim
    optimizers, schedulers = {}, {}
    for g in team.groups.groups:
        params = [p for p in policies[g.name][0].parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=g.settings["lr"], betas=tuple(o.betas), eps=o.eps,
                                weight_decay=g.settings["weight_decay"])
        optimizers[g.name] = opt
        schedulers[g.name] = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(cfg.iterations, o.warmup_iterations, o.schedule))
    return TeamOptimizer(optimizers), TeamScheduler(schedulers)
