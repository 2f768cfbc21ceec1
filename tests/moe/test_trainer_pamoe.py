"""PA-MoE inside the RL recipe (docs/pa-moe.md "Trainer integration"): routed rollouts, the
learner's joint ratio and gradient isolation, reference mode through the learner, checkpoints,
exact resume, evaluation, and the config checks."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
from moe_testing import randomize_experts, tiny_llama
from safetensors.torch import load_file

from grouprl.agent.prompts import get_template
from grouprl.agent.rollout import collect_rollouts
from grouprl.batch import Rollout, RolloutBatch
from grouprl.cli import main
from grouprl.envs import EnvPool, SokobanEnv, register_env
from grouprl.envs.sokoban import SokobanLevel
from grouprl.losses.objective import make_objective
from grouprl.moe import (
    PAMoEOptions,
    attached_router,
    expert_log_prob,
    inject_multi_lora,
    multi_lora_layers,
    route,
)
from grouprl.policy import Generation, build_tiny_policy, response_logprobs
from grouprl.policy.load import LoraOptions, apply_lora
from grouprl.policy.merge import merge_generations
from grouprl.recipes import train
from grouprl.train import ConfigError, load_config, sampling
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.evaluate import make_generate_fn
from grouprl.train.learner import batched_logprobs, update_policy
from grouprl.train.metrics import read_metrics
from grouprl.train.pamoe import PhaseRouting, attach_pamoe
from grouprl.train.pamoe_pretrain import phase_labels
from grouprl.train.row_policy import PLAIN
from grouprl.train.sampling import Sampler
from grouprl.train.task_metrics import category_metrics

EASY = "#####\n#___#\n#OXP#\n#___#\n#####"
HARD = "######\n#____#\n#_OX_#\n#___P#\n#____#\n######"


class _Level(SokobanEnv):
    """Every seed plays one fixed level (``level`` kwarg: easy or hard)."""

    def __init__(self, level: str = "easy", **kwargs):
        super().__init__(**kwargs)
        self.text = EASY if level == "easy" else HARD

    def reset(self, seed=None):
        return self.reset_to_level(SokobanLevel.from_text(self.text))


register_env("test_pamoe_level", _Level, overwrite=True)

TASKS = ("env.kwargs={tasks: [{name: test_pamoe_level, category: easy, kwargs: {level: easy}}, "
         "{name: test_pamoe_level, category: hard, kwargs: {level: hard}}]}")
TINY = [
    "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
    "model.tiny.tokenizer_episodes=10", "logging.progress=false", "threads=1",
    "rollout.groups_per_batch=4", "rollout.group_size=3", "rollout.max_new_tokens=6",
    "eval.episodes=4", "env.max_steps=3", "env.name=multitask", TASKS,
    "model.pamoe.enabled=true", "model.pamoe.num_experts=3", "model.pamoe.rank=4",
    "model.pamoe.dropout=0.0", "model.pamoe.router_width=16", "model.pamoe.history_dim=8",
    "model.pamoe.history_proj=8", "bc.episodes=4", "bc.epochs=5", "optim.lr=3e-3",
    "algorithm.estimator=gigpo", "algorithm.num_mini_batches=2",
]


def _config(tmp_path, *extra):
    return load_config(None, [*TINY, f"run_dir={tmp_path / 'run'}", *extra])


def _rows_of(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")}
            for r in read_metrics(run_dir)]


# ------------------------------------------------------------------ layers and generation

def test_uniform_routing_is_hard_routing_for_any_batch_size():
    model = tiny_llama()
    inject_multi_lora(model, num_experts=3, rank=4, alpha=8.0)
    randomize_experts(model)
    ids = torch.randint(2, 64, (5, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with route(model, experts=torch.full((5,), 2)):
            hard = model(ids).logits
        with route(model, experts=2):
            uniform = model(ids).logits
            part = model(ids[:2]).logits                      # another batch size: allowed
        with route(model, experts=1):
            other = model(ids).logits
    assert torch.equal(hard, uniform) and torch.equal(part, uniform[:2])
    assert not torch.allclose(other, uniform)
    with pytest.raises(ValueError, match="experts: expected an index"):
        with route(model, experts=3):
            pass


def _gen(texts, width):
    n = len(texts)
    return Generation(prompt_ids=torch.arange(n * width).reshape(n, width),
                      prompt_mask=torch.ones(n, width, dtype=torch.long),
                      response_ids=torch.arange(n * 2).reshape(n, 2) + 100,
                      response_mask=torch.ones(n, 2, dtype=torch.long),
                      logprobs=-torch.arange(n * 2, dtype=torch.float32).reshape(n, 2),
                      texts=list(texts), truncated=torch.tensor([t == "b" for t in texts]),
                      prompt_truncated=torch.zeros(n, dtype=torch.bool))


def test_merge_generations_puts_rows_back_in_prompt_order():
    a, b = _gen(["a", "c"], 3), _gen(["b"], 1)           # rows 0, 2 and row 1
    out = merge_generations([a, b], [[0, 2], [1]], pad_id=-1)
    assert out.texts == ["a", "b", "c"]
    assert out.prompt_ids.tolist() == [[0, 1, 2], [-1, -1, 0], [3, 4, 5]]    # left padded
    assert out.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert out.response_ids[:, 0].tolist() == [100, 100, 102]
    assert out.truncated.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="exactly once"):
        merge_generations([a, b], [[0, 1], [1]], pad_id=0)


# ------------------------------------------------------------------ rollout and learner

@pytest.fixture(scope="module")
def routed():
    """A tiny policy with 3 random experts and a random router, and one routed rollout."""
    texts = [SokobanEnv().reset(seed=s)[0] for s in range(20)] + ["<action>left</action>"]
    torch.manual_seed(0)
    model, tok = build_tiny_policy(texts, vocab_size=300, hidden_size=32, num_layers=1,
                                   num_heads=2, num_kv_heads=1, intermediate_size=64)
    opts = PAMoEOptions(num_experts=3, rank=4, dropout=0.0, router_width=16, history_dim=8,
                        history_proj=8, temperature_init=5.0)
    router = attach_pamoe(model, opts)
    randomize_experts(model, scale=0.3)
    with torch.no_grad():
        for p in router.parameters():
            p.add_(0.3 * torch.randn(p.shape,
                                     generator=torch.Generator().manual_seed(p.numel())))
    routing = PhaseRouting(model, tok, opts, router)
    gen = torch.Generator().manual_seed(0)
    pool = EnvPool("test_pamoe_level", {"level": "hard"}, 6, max_steps=3)
    generate = make_generate_fn(model, tok, max_new_tokens=6, temperature=1.0, generator=gen)
    with torch.no_grad():
        rows = collect_rollouts(pool, generate, template=get_template("sokoban_compact"),
                                task_seeds=[0, 1], group_size=3, max_steps=3, tokenizer=tok,
                                pad_token_id=tok.pad_token_id or 0,
                                routing=routing.sampling(gen))
    pool.close()
    return model, tok, routing, rows


def test_routed_rollout_stores_experts_features_and_their_log_probs(routed):
    model, _, routing, rows = routed
    n = len(rows)
    assert rows.expert.shape == rows.expert_logp.shape == (n,) and n >= 6
    assert rows.router_obs.shape == rows.router_goal.shape == (n, 32)
    assert len(set(rows.expert.tolist())) > 1                        # several experts used
    with torch.no_grad():                                            # spec check 8
        q = routing.probs(rows)
    again = expert_log_prob(q, rows.expert, kind="q")
    assert torch.allclose(again, rows.expert_logp, atol=1e-6)
    # the token log-probs of the rollout = teacher-forced recomputation under the stored experts
    plain_model = copy.deepcopy(model)
    recomputed = batched_logprobs(model, rows, temperature=1.0, micro_batch_size=4,
                                  row_policy=routing)
    mask = rows.response_mask.bool()
    assert (recomputed - rows.logprobs)[mask].abs().max() < 1e-5
    shifted = rows.with_columns(expert=(rows.expert + 1) % 3)
    other = batched_logprobs(plain_model, shifted, temperature=1.0, micro_batch_size=4,
                             row_policy=PhaseRouting(plain_model, routed[1], routing.options,
                                                     attached_router(plain_model)))
    assert (other - rows.logprobs)[mask].abs().max() > 1e-3          # routing matters


@pytest.mark.parametrize("placement", ["broadcast", "first"])
def test_joint_log_probs_add_the_expert_log_prob(routed, placement):
    _, _, routing, rows = routed
    routing.options = PAMoEOptions(**{**vars(routing.options), "joint_placement": placement})
    idx = torch.tensor([0, 2, 3])
    fwd = routing.micro_batch(rows, idx, grad=False)
    mask = rows.response_mask[idx].bool()
    logp, old = rows.logprobs[idx], rows.logprobs[idx] - 0.5
    new_joint, old_joint = fwd.joint(logp, mask, old)
    where = mask if placement == "broadcast" else mask & (mask.cumsum(-1) == 1)
    expected_old = torch.where(where, old + rows.expert_logp[idx][:, None], old)
    assert torch.allclose(old_joint, expected_old)
    with torch.no_grad():
        lq = expert_log_prob(routing.probs(rows)[idx], rows.expert[idx])
    assert torch.allclose(new_joint, torch.where(where, logp + lq[:, None], logp), atol=1e-6)
    routing.options = PAMoEOptions(**{**vars(routing.options), "joint_placement": "broadcast"})


def _update(model, rows, row_policy, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    adv = torch.linspace(-1.0, 1.0, len(rows))
    return update_policy(model, opt, rows.with_columns(advantages=adv), make_objective("ppo"),
                         micro_batch_size=4, log_entropy=False, row_policy=row_policy)


def test_an_expert_learns_only_from_its_rows_and_the_router_from_the_joint_ratio(routed):
    model, tok, routing, rows = routed
    model = copy.deepcopy(model)
    r = PhaseRouting(model, tok, routing.options, attached_router(model))
    only_one = rows.with_columns(expert=torch.ones(len(rows), dtype=torch.long))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = _update(model, only_one, r)
    after = dict(model.named_parameters())
    for name, _ in multi_lora_layers(model):
        for kind in ("lora_A", "lora_B"):
            old, new = before[f"{name}.{kind}"], after[f"{name}.{kind}"]
            assert torch.equal(old[[0, 2]], new[[0, 2]])                # gradient isolation
            assert not torch.equal(old[1], new[1])
    assert any(not torch.equal(before[n], after[n]) for n in before if "pamoe_router" in n)
    assert metrics["router/switch_penalty"] > 0.0 and metrics["router/load_balance"] > 0.0
    assert "router/entropy" in metrics and "router/usage/expert_1" in metrics


def test_reference_mode_update_equals_one_peft_lora_bit_for_bit(routed):
    _, tok, _, rows = routed
    texts = ["<action>left</action>"]
    torch.manual_seed(1)
    base, _ = build_tiny_policy(texts * 3, vocab_size=300, hidden_size=32, num_layers=1,
                                num_heads=2, num_kv_heads=1, intermediate_size=64)
    base.resize_token_embeddings(max(int(rows.response_ids.max()), int(rows.prompt_ids.max())) + 1)
    mine = copy.deepcopy(base)
    opts = PAMoEOptions(mode="reference", rank=4, dropout=0.0)
    assert attach_pamoe(mine, opts) is None                          # router unused
    peft_model = apply_lora(base, LoraOptions(rank=4, alpha=opts.lora_alpha, dropout=0.0,
                                              target_modules=opts.targets))
    with torch.no_grad():
        for name, layer in multi_lora_layers(mine):
            theirs = peft_model.get_submodule(f"base_model.model.{name}")
            theirs.lora_B["default"].weight.normal_(0, 0.2)
            layer.lora_A[0].copy_(theirs.lora_A["default"].weight)
            layer.lora_B[0].copy_(theirs.lora_B["default"].weight)
    reference = PhaseRouting(mine, tok, opts, None)
    a = _update(peft_model, rows, PLAIN)
    b = _update(mine, rows, reference)
    assert a["actor/pg_loss"] == b["actor/pg_loss"] and a["actor/grad_norm"] == b["actor/grad_norm"]
    for name, layer in multi_lora_layers(mine):
        theirs = peft_model.get_submodule(f"base_model.model.{name}")
        assert torch.equal(layer.lora_A[0], theirs.lora_A["default"].weight)
        assert torch.equal(layer.lora_B[0], theirs.lora_B["default"].weight)


# ------------------------------------------------------------------ the recipe

def test_pamoe_run_resumes_exactly_and_saves_only_experts_and_router(tmp_path, monkeypatch):
    common = ["iterations=3", "eval.every=2", "save_every=0"]
    full = _config(tmp_path / "a", *common)
    train(full, echo=lambda s: None)
    rows = _rows_of(full.run_dir)
    last = rows[-1]
    for key in ("router/entropy", "router/temperature", "router/switch_rate",
                "router/usage/easy/expert_0", "router/switch_penalty", "router/load_balance",
                "eval/success_rate/easy", "eval/success_rate/hard"):
        assert key in last, key
    assert last["router/temperature"] == pytest.approx(0.95 ** 2)
    assert all(r["actor/sampler_logp_gap"] < 1e-5 for r in rows if "actor/sampler_logp_gap" in r)
    saved = load_file(str(latest_checkpoint(full.run_dir) / "model.safetensors"))
    assert saved and all(k.startswith(("experts.", "router.")) for k in saved)
    assert any(k.startswith("router.") for k in saved)

    cut = _config(tmp_path / "b", *common)
    real = Sampler.rollout

    def interrupt(self, it, *a, **kw):
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, it, *a, **kw)

    monkeypatch.setattr(sampling.Sampler, "rollout", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(cut, echo=lambda s: None)
    monkeypatch.setattr(sampling.Sampler, "rollout", real)
    train(cut, resume=True, echo=lambda s: None)
    assert _rows_of(cut.run_dir) == rows
    other = load_file(str(latest_checkpoint(cut.run_dir) / "model.safetensors"))
    assert all(torch.equal(saved[k], other[k]) for k in saved)


def test_grouprl_eval_routes_a_trained_pamoe_run(tmp_path, capsys):
    cfg = _config(tmp_path, "iterations=1", "eval.every=0")
    train(cfg, echo=lambda s: None)
    capsys.readouterr()
    assert main(["eval", str(cfg.run_dir)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = read_metrics(cfg.run_dir)[-1]
    assert out["eval/success_rate"] == logged["eval/success_rate"]
    assert out["eval/episode_length"] == logged["eval/episode_length"]


@pytest.mark.parametrize("extra, message", [
    (["model.lora.enabled=true"], "set model.lora.enabled=false"),
    (["rollout.generation_backend=vllm"], "rollout.generation_backend=hf"),
    (["mode=preference"], "mode: rl only"),
    (["env.kwargs={tasks: [{name: test_pamoe_level, colour: red}]}"],
     r"env.kwargs.tasks\[0\].colour: unknown key"),
])
def test_pamoe_config_errors_name_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(_config(tmp_path, *extra), echo=lambda s: None)


def test_a_single_task_env_gives_no_categories(routed):
    rows = routed[3]
    assert rows.category == [None] * len(rows) and category_metrics(rows, "train") == {}
    assert routed[2].begin(rows).keys() >= {"router/entropy", "router/usage/expert_0"}
    assert not any(k.startswith(("router/usage/None", "router/occupancy"))
                   for k in routed[2].begin(rows))


@pytest.mark.parametrize("mode, router, gates", [("reference", False, False),
                                                 ("token", False, True)])
def test_the_baseline_modes_train_in_the_recipe(tmp_path, mode, router, gates):
    cfg = _config(tmp_path, "iterations=1", "eval.every=0", f"model.pamoe.mode={mode}")
    train(cfg, echo=lambda s: None)
    last = read_metrics(cfg.run_dir)[-1]
    assert last["actor/updates"] == 2.0 and ("router/entropy" in last) == router
    saved = load_file(str(latest_checkpoint(cfg.run_dir) / "model.safetensors"))
    assert any(k.startswith("router.") for k in saved) == router
    assert any(k.endswith("token_gate.weight") for k in saved) == gates
    experts = {v.shape[0] for k, v in saved.items() if k.endswith("lora_A")}
    assert experts == ({1} if mode == "reference" else {3})


def test_phase_labels_follow_the_keyword_rules_per_trajectory():
    batch = RolloutBatch(group_id=torch.zeros(5, dtype=torch.long),
                         traj_id=torch.tensor([7, 7, 7, 3, 3]), step=torch.tensor([2, 0, 1, 0, 1]),
                         reward=torch.tensor([0.0, 0.0, 0.0, -1.0, 0.0]))
    rows = Rollout(batch=batch, prompt_ids=torch.zeros(5, 1, dtype=torch.long),
                   prompt_mask=torch.ones(5, 1, dtype=torch.long),
                   response_ids=torch.zeros(5, 1, dtype=torch.long),
                   response_mask=torch.ones(5, 1, dtype=torch.long),
                   responses=["<action>go to desk 1</action>", "<action>take mug 1</action>",
                              "<action>heat mug 1</action>", "look", "go to shelf 2"],
                   observations=["You heat the mug.", "You see a mug.", "You take the mug.",
                                 "Nothing happens.", "Nothing happens."])
    # traj 7 in step order: take (interact), heat (interact), go to after take+heat (navigate)
    assert phase_labels(rows).tolist() == [2, 1, 1, 0, 0]
    assert phase_labels(rows, "taken").tolist() == [2, 1, 1, 0, 0]


def test_router_pretraining_runs_before_rl_and_lowers_its_loss(tmp_path):
    cfg = _config(tmp_path, "iterations=1", "eval.every=0", "model.pamoe.num_experts=4",
                  "model.pamoe.pretrain_rollouts=2", "model.pamoe.pretrain_epochs=20",
                  "model.pamoe.pretrain_lr=0.01")
    train(cfg, echo=lambda s: None)
    first = next(r for r in read_metrics(cfg.run_dir) if "router/pretrain_rows" in r)
    assert first["iteration"] == 0 and first["router/pretrain_rows"] > 0
    assert first["router/pretrain_loss_last"] < first["router/pretrain_loss_first"]
    assert sum(first[f"router/pretrain_label/{p}"] for p in
               ("explore", "interact", "navigate", "recover")) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="num_experts >= 4"):
        train(_config(tmp_path / "x", "model.pamoe.pretrain_rollouts=1"), echo=lambda s: None)


def test_straight_through_trains_the_router_through_the_adapters(routed):
    model, tok, routing, rows = routed
    model = copy.deepcopy(model)
    opts = PAMoEOptions(**{**vars(routing.options), "router_grad": "straight_through",
                           "switch_coef": 0.0, "load_balance_coef": 0.0})
    r = PhaseRouting(model, tok, opts, attached_router(model))
    idx = torch.tensor([0, 1])
    fwd = r.micro_batch(rows, idx, grad=True)
    logp, mask = rows.logprobs[idx], rows.response_mask[idx].bool()
    same, old = fwd.joint(logp, mask, logp)
    assert same is logp and old is logp                      # no log q(e) in the ratio
    with torch.no_grad(), fwd.context():                     # value = hard routing (one-hot)
        dense, _ = response_logprobs(model, rows.prompt_ids[idx], rows.prompt_mask[idx],
                                     rows.response_ids[idx], rows.response_mask[idx])
    assert (dense - logp[:, :dense.shape[1]])[mask[:, :dense.shape[1]]].abs().max() < 1e-5
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "pamoe_router" in n}
    _update(model, rows, r)                                   # aux losses off: only the PG path
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


@pytest.mark.parametrize("estimator", ["grpo", "hgpo", "graphgpo"])
def test_pamoe_trains_with_other_estimators(tmp_path, estimator):
    cfg = _config(tmp_path, "iterations=1", "eval.every=0", f"algorithm.estimator={estimator}")
    train(cfg, echo=lambda s: None)
    last = read_metrics(cfg.run_dir)[-1]
    assert last["actor/updates"] == 2.0 and last["actor/sampler_logp_gap"] < 1e-5
    assert "router/entropy" in last
