"""grouprl.policy.backends: the HF backend is the HF loop token for token (n per prompt, greedy
and seeded sampling); declared log-prob kinds; LoRA-merged named weights; the vLLM backend's
request building and output conversion against a stand-in ``vllm`` module; a missing vLLM is one
line naming the extra; the RL recipe recomputes ``old_logp`` and passes an engine's log-probs
only as ``rollout_logp``; the config refuses vllm on CPU."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.machinery
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import grouprl.losses.objective as objective_module
import grouprl.recipes.rl as rl_recipe
import grouprl.train.evaluate as evaluate_module
from grouprl.cli import main as cli_main
from grouprl.policy import apply_lora, build_tiny_policy, generate
from grouprl.policy.backends import (
    LEARNER_LOGPROB_KIND,
    LOGPROB_KINDS,
    BackendUnavailable,
    GenerationBackend,
    HFBackend,
    VLLMColocated,
    engine_logprobs,
    make_backend,
    named_weights,
)
from grouprl.policy.load import LoraOptions
from grouprl.recipes import train
from grouprl.train import ConfigError, load_config
from grouprl.train.checks import check_rl_config
from grouprl.train.evaluate import make_generate_fn
from grouprl.train.metrics import read_metrics
from testing_utils import sokoban_corpus

STOP = ("</action>",)


@pytest.fixture(scope="module")
def policy():
    model, tok = build_tiny_policy(sokoban_corpus(120, seed=0, rows=5, cols=6), vocab_size=400,
                                   seed=0)
    model.eval()
    return model, tok


def _prompts(tok) -> list[list[int]]:
    base = tok("You are playing Sokoban.\n#_OX√P\n##PS_#\nMove: ")["input_ids"]
    return [base[-4:], base, base[-9:]]


def _same_generation(a, b) -> None:
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs",
                 "truncated", "prompt_truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.texts == b.texts


# ------------------------------------------------------------------------------ HF backend

@pytest.mark.parametrize("temperature, top_p, top_k", [(0.0, 1.0, 0), (0.9, 0.9, 20)])
def test_hf_backend_is_the_hf_loop_token_for_token_with_n_per_prompt(policy, temperature, top_p,
                                                                       top_k):
    model, tok = policy
    prompts = _prompts(tok)
    backend = HFBackend(model, tok, generator=torch.Generator().manual_seed(3))
    got = backend.generate(prompts, n=3, max_new_tokens=12, temperature=temperature,
                           top_p=top_p, top_k=top_k, stop_strings=STOP)
    greedy = temperature == 0
    want = generate(model, tok, [p for p in prompts for _ in range(3)], max_new_tokens=12,
                    temperature=1.0 if greedy else temperature, top_p=top_p, top_k=top_k,
                    do_sample=not greedy, stop_strings=STOP,
                    generator=torch.Generator().manual_seed(3))
    _same_generation(got, want)
    assert len(got) == 9 and got.prompt_ids[0].tolist() == got.prompt_ids[2].tolist()
    if not greedy:   # the three samples of a prompt differ (rows are not copies)
        rows = {tuple(r) for r in got.response_ids[:3].tolist()}
        assert len(rows) > 1
    # seed= gives a fresh generator of that seed, whatever the backend's generator did before
    seeded = backend.generate(prompts, n=3, max_new_tokens=12, temperature=temperature,
                              top_p=top_p, top_k=top_k, stop_strings=STOP, seed=3)
    _same_generation(seeded, want)


def test_make_generate_fn_through_the_backend_is_bit_identical_to_generate(policy):
    model, tok = policy
    texts = ["You are playing Sokoban.\n#_OX\nMove: ", "Move: ", "#_OX√P\nMove: "]
    fn = make_generate_fn(model, tok, max_new_tokens=10, temperature=0.8, top_p=0.95, stop=STOP,
                          generator=torch.Generator().manual_seed(5), batch_size=2)
    want = generate(model, tok, texts, max_new_tokens=10, temperature=0.8, top_p=0.95,
                    stop_strings=STOP, generator=torch.Generator().manual_seed(5), batch_size=2)
    _same_generation(fn(texts), want)
    greedy = make_generate_fn(model, tok, max_new_tokens=10, temperature=0, stop=STOP)(texts)
    _same_generation(greedy, generate(model, tok, texts, max_new_tokens=10, do_sample=False,
                                      stop_strings=STOP))


def test_log_prob_kinds_are_declared_and_hf_is_the_learners(policy):
    model, tok = policy
    backend = HFBackend(model, tok)
    assert isinstance(backend, GenerationBackend)
    assert backend.logprob_kind == LEARNER_LOGPROB_KIND == "pre_truncation"
    assert set(LOGPROB_KINDS) == {"pre_truncation", "processed", "raw", "none"}
    assert backend.shares_weights and not engine_logprobs(backend)
    assert engine_logprobs(SimpleNamespace(logprob_kind="processed"))
    assert not engine_logprobs(SimpleNamespace(logprob_kind="none"))


def test_unshard_hook_is_entered_once_per_generate_call(policy):
    model, tok = policy
    entered = []

    @contextlib.contextmanager
    def unshard():
        entered.append(1)
        yield

    backend = HFBackend(model, tok, unshard=unshard, batch_size=2)
    backend.generate(_prompts(tok), n=2, max_new_tokens=4)      # 3 decoding chunks, one unshard
    assert entered == [1]


def test_hf_backend_update_weights_noop_when_shared_and_copies_into_a_separate_model(policy):
    model, tok = policy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared = HFBackend(model, tok)
    shared.update_weights([("model.norm.weight", torch.zeros_like(model.model.norm.weight))], 4)
    assert shared.version == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    trained = copy.deepcopy(model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    copy_model = copy.deepcopy(model)
    separate = HFBackend(copy_model, tok, shares_weights=False)
    separate.update_weights(named_weights(trained), version=1)
    for (name, p), q in zip(copy_model.named_parameters(), trained.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        separate.update_weights([("nope", torch.zeros(1))], version=2)


def test_named_weights_merges_lora_out_of_place(policy):
    model, _ = policy
    peft_model = apply_lora(copy.deepcopy(model), LoraOptions(rank=4, alpha=8.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    base_before = {n: p.clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    got = dict(named_weights(peft_model))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    want = dict(merged.named_parameters())
    assert list(got) == [n for n, _ in model.named_parameters()]   # the HF names, in order
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)
    changed = [n for n in got if not torch.equal(got[n], dict(model.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)            # the adapted weights moved
    for n, p in peft_model.named_parameters():                       # nothing merged in place
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n


# ----------------------------------------------------------------------- a missing vLLM

def _hide(monkeypatch, names: tuple[str, ...]) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_vllm_is_one_line_naming_the_extra(policy, tmp_path, monkeypatch):
    model, tok = policy
    _hide(monkeypatch, ("vllm",))
    with pytest.raises(BackendUnavailable) as err:
        make_backend("vllm", model, tok, work_dir=tmp_path / "engine")
    message = str(err.value)
    assert "\n" not in message and "vLLM is not installed" in message
    assert "pip install 'grouprl[vllm]'" in message and "CUDA" in message
    assert isinstance(err.value, ImportError) and isinstance(err.value, ValueError)
    assert not (tmp_path / "engine").exists()                         # refused before any work


def test_vllm_without_cuda_is_one_line(policy, tmp_path, monkeypatch):
    model, tok = policy
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match=r"needs a CUDA GPU .*grouprl\[vllm\]"):
        make_backend("vllm", model, tok, work_dir=tmp_path / "engine")


def test_unknown_backend_name_is_refused(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="rollout.generation_backend: got 'sglang'; accepted"):
        make_backend("sglang", model, tok)


# ------------------------------------------------------------ the vLLM backend, stand-in vllm

class _Logprob:
    def __init__(self, value: float) -> None:
        self.logprob, self.rank = value, 1


class _SamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


class _EngineModel:
    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> set[str]:
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
        return set(self.loaded)


class _LLM:
    """Records its arguments and calls; ``generate`` answers every prompt with ``n`` scripted
    completions (listed in reverse ``index`` order, as a scheduler may return them)."""

    script: list[tuple[list[int], str]] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.calls, self.model = kwargs, [], _EngineModel()
        runner = SimpleNamespace(model=self.model)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=runner))))

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append(("generate", prompts, sampling_params))
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            comps = []
            for j in range(sp.kwargs["n"]):
                ids, reason = self.script[j % len(self.script)]
                lps = [{t: _Logprob(-0.1 * (k + 1)), t + 1: _Logprob(-9.0)}
                       for k, t in enumerate(ids)]
                comps.append(SimpleNamespace(index=j, token_ids=tuple(ids), logprobs=lps,
                                             finish_reason=reason, text="(vLLM's own text)"))
            outs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"],
                                        outputs=comps[::-1]))
        return outs

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags) -> None:
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))


@dataclasses.dataclass
class _EngineArgs:
    model: str = ""
    logprobs_mode: str = "raw_logprobs"


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package (LLM, SamplingParams, inputs.TokensPrompt,
    engine.arg_utils.EngineArgs) on a 'CUDA' machine, rank 0 of 1."""
    modules = {}
    for name in ("vllm", "vllm.inputs", "vllm.engine", "vllm.engine.arg_utils"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        modules[name] = module
        monkeypatch.setitem(sys.modules, name, module)
    modules["vllm"].LLM, modules["vllm"].SamplingParams = _LLM, _SamplingParams
    modules["vllm.inputs"].TokensPrompt = dict
    modules["vllm.engine.arg_utils"].EngineArgs = _EngineArgs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29555")):
        monkeypatch.setenv(key, value)
    return modules


def test_vllm_colocated_builds_requests_and_converts_outputs(policy, tmp_path, fake_vllm):
    model, tok = policy
    eos, pad = tok.eos_token_id, tok.pad_token_id
    act = tok("<action>left</action> and more")["input_ids"]
    _LLM.script = [(act[:3] + [eos], "stop"),     # EOS: kept in the mask
                   (act, "stop"),                 # a stop string: text cut after it
                   (act[:2], "length")]           # max_tokens: truncated
    backend = make_backend("vllm", model, tok, generator=torch.Generator().manual_seed(0),
                           seed=7, work_dir=tmp_path / "engine",
                           vllm_options={"gpu_memory_utilization": 0.4, "dtype": "bfloat16"})
    llm = backend.llm
    assert isinstance(backend, VLLMColocated) and isinstance(backend, GenerationBackend)
    assert backend.logprob_kind == "processed" and not backend.shares_weights
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["load_format"] == "dummy" and llm.kwargs["seed"] == 7
    assert llm.kwargs["gpu_memory_utilization"] == 0.4 and llm.kwargs["dtype"] == "bfloat16"
    assert llm.kwargs["enable_sleep_mode"] is True
    assert (tmp_path / "engine" / "config.json").exists()
    assert (tmp_path / "engine" / "tokenizer.json").exists()
    # version 0 = the policy's weights, under the HF names
    want = dict(model.named_parameters())
    assert set(llm.model.loaded) == set(want)
    assert all(torch.equal(llm.model.loaded[k], v) for k, v in want.items())
    assert llm.calls[-1] == ("reset_prefix_cache",)

    prompts = _prompts(tok)
    gen = backend.generate(prompts, n=3, max_new_tokens=len(act), temperature=0.9, top_p=0.8,
                           stop_strings=STOP)
    _, sent, params = llm.calls[-1]
    assert [p["prompt_token_ids"] for p in sent] == prompts
    seeds = [sp.kwargs.pop("seed") for sp in params]
    assert len(set(seeds)) == 3 and seeds[1] == seeds[0] + 1 and seeds[2] == seeds[0] + 2
    assert params[0].kwargs == {"n": 3, "temperature": 0.9, "top_p": 0.8, "top_k": 0,
                                "max_tokens": len(act), "stop": ["</action>"],
                                "stop_token_ids": [eos], "include_stop_str_in_output": True,
                                "logprobs": 0}
    rows = [ids for _ in prompts for ids, _ in _LLM.script]
    assert len(gen) == 9
    for r, ids in enumerate(rows):
        assert gen.response_ids[r, :len(ids)].tolist() == ids
        assert gen.response_ids[r, len(ids):].eq(pad).all()
        assert gen.response_mask[r].tolist() == [1] * len(ids) + [0] * (len(act) - len(ids))
        want_lp = torch.tensor([-0.1 * (k + 1) for k in range(len(ids))])
        torch.testing.assert_close(gen.logprobs[r, :len(ids)], want_lp)
        assert gen.logprobs[r, len(ids):].eq(0).all()
    assert gen.truncated.tolist() == [False, False, True] * 3
    assert gen.prompt_truncated.tolist() == [False] * 9
    text = tok.decode(act, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert gen.texts[1] == text[:text.index("</action>") + len("</action>")]
    assert gen.texts[0] == tok.decode(act[:3], skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)
    for i, p in enumerate(prompts):          # left-padded prompts, repeated n times
        for r in range(3 * i, 3 * i + 3):
            assert gen.prompt_ids[r, gen.prompt_ids.shape[1] - len(p):].tolist() == p
            assert int(gen.prompt_mask[r].sum()) == len(p)


def test_vllm_colocated_sleep_wake_and_weight_reload(policy, tmp_path, fake_vllm):
    model, tok = policy
    _LLM.script = [([tok.eos_token_id], "stop")]
    backend = make_backend("vllm", model, tok, work_dir=tmp_path / "engine")
    llm = backend.llm
    backend.sleep()                                          # level 2: weights discarded
    assert llm.calls[-1] == ("sleep", 2)
    with pytest.raises(RuntimeError, match="call update_weights first"):
        backend.generate([[1, 2]], max_new_tokens=2)
    backend.update_weights(named_weights(model), version=5)
    assert llm.calls[-2:] == [("wake_up", ("weights",)), ("reset_prefix_cache",)]
    backend.generate([[1, 2]], max_new_tokens=2)
    assert ("wake_up", ("kv_cache",)) in llm.calls and backend.version == 5
    backend.sleep(level=1)                                   # level 1: weights kept (offloaded)
    backend.generate([[1, 2]], max_new_tokens=2, temperature=0, seed=11)
    assert llm.calls[-2] == ("wake_up", ("weights", "kv_cache"))
    assert llm.calls[-1][2][0].kwargs["seed"] == 11 and llm.calls[-1][2][0].kwargs[
        "temperature"] == 0.0


def test_vllm_colocated_loads_lora_merged_weights(policy, tmp_path, fake_vllm):
    model, tok = policy
    peft_model = apply_lora(copy.deepcopy(model), LoraOptions(rank=2))
    backend = make_backend("vllm", peft_model, tok, work_dir=tmp_path / "engine")
    assert set(backend.llm.model.loaded) == {n for n, _ in model.named_parameters()}


# ------------------------------------------------------------------ the recipe's convention

SHIFT = 0.25
RUN = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
       "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
       "model.tiny.tokenizer_episodes=10", "logging.progress=false", "threads=1",
       "bc.enabled=false", "iterations=2", "eval.every=0", "eval.episodes=2",
       "rollout.groups_per_batch=2", "rollout.group_size=3", "rollout.max_new_tokens=6",
       "env.max_steps=2", "algorithm.num_mini_batches=1", "algorithm.ppo_epochs=1",
       "algorithm.kl_coef=0.0", "algorithm.loss_options={rollout_is: token}"]


class _ShiftedEngine:
    """A 'processed'-convention engine: the HF loop's samples with log-probs shifted by SHIFT."""

    logprob_kind = "processed"
    shares_weights = False

    def __init__(self, inner: HFBackend) -> None:
        self.inner, self.versions, self.sleeps = inner, [], 0

    def generate(self, prompt_ids, **kwargs):
        gen = self.inner.generate(prompt_ids, **kwargs)
        gen.logprobs = (gen.logprobs + SHIFT) * gen.response_mask
        return gen

    def update_weights(self, named_tensors, version: int) -> None:
        self.versions.append((version, len(list(named_tensors))))

    def sleep(self) -> None:
        self.sleeps += 1


def _record_losses(monkeypatch) -> tuple[list, list]:
    losses, recomputed = [], []
    real_loss, real_logprobs = objective_module.policy_loss, rl_recipe.batched_logprobs

    def policy_loss(name, logp, old_logp, advantages, mask, *args, **kwargs):
        losses.append((old_logp.detach().clone(), kwargs.get("rollout_logp"), mask.bool()))
        return real_loss(name, logp, old_logp, advantages, mask, *args, **kwargs)

    def batched_logprobs(*args, **kwargs):
        out = real_logprobs(*args, **kwargs)
        recomputed.append(out)
        return out

    monkeypatch.setattr(objective_module, "policy_loss", policy_loss)
    monkeypatch.setattr(rl_recipe, "batched_logprobs", batched_logprobs)
    return losses, recomputed


def test_engine_logprobs_make_the_recipe_recompute_old_logp(tmp_path, monkeypatch):
    engines = []

    def fake_make_backend(name, model, tok, **kw):
        engines.append(_ShiftedEngine(HFBackend(model, tok, generator=kw["generator"])))
        return engines[-1]

    monkeypatch.setattr(evaluate_module, "make_backend", fake_make_backend)
    losses, recomputed = _record_losses(monkeypatch)
    cfg = load_config(None, [*RUN, f"run_dir={tmp_path / 'run'}"])
    train(cfg, echo=lambda s: None)
    assert len(recomputed) == 2                       # old_logp recomputed once per iteration
    assert len(losses) == 2                           # one micro-batch of all rows per update
    for (old, rollout_logp, mask), full in zip(losses, recomputed):
        assert torch.equal(old, full[:, :old.shape[1]])   # ℓ^old is the learner's recompute
        assert rollout_logp is not None               # the engine's log-probs reach the loss
        gap = (rollout_logp - old)[mask]
        # ... as rollout_logp only: ℓ^old is the learner's recompute, SHIFT below the engine's
        torch.testing.assert_close(gap, torch.full_like(gap, SHIFT), rtol=0, atol=1e-4)
    engine = engines[0]
    n_params = len(list(named_weights(engine.inner.model)))
    assert engine.versions == [(0, n_params), (1, n_params), (2, n_params)]   # start + updates
    assert engine.sleeps == 2
    rows = [r for r in read_metrics(tmp_path / "run") if "actor/mismatch_kl_k3" in r]
    assert len(rows) == 2 and all(r["actor/rollout_is_weight_mean"] > 0 for r in rows)


def test_the_hf_backend_keeps_the_on_policy_step_without_recompute(tmp_path, monkeypatch):
    losses, recomputed = _record_losses(monkeypatch)
    cfg = load_config(None, [*RUN, f"run_dir={tmp_path / 'run'}"])
    train(cfg, echo=lambda s: None)
    assert recomputed == [] and losses
    assert all(rollout_logp is None for _, rollout_logp, _ in losses)


# ------------------------------------------------------------------------------ config

def test_config_refuses_vllm_on_cpu_naming_the_key_and_fix(capsys):
    cfg = load_config(None, ["rollout.generation_backend=vllm", "model.device=cpu"])
    with pytest.raises(ConfigError, match=r"rollout.generation_backend: vllm runs on CUDA GPUs "
                       r"only, but model.device='cpu' .*set model.device=cuda .* or "
                       r"rollout.generation_backend=hf"):
        check_rl_config(cfg)
    assert cli_main(["config", "rollout.generation_backend=vllm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: rollout.generation_backend: vllm runs on CUDA")
    assert err.count("\n") == 1
    with pytest.raises(ConfigError, match="unknown config key|accepted|Input should be"):
        load_config(None, ["rollout.generation_backend=sglang"])


def test_config_vllm_section_defaults_and_bounds():
    v = load_config(None, []).rollout.vllm
    assert (v.gpu_memory_utilization, v.enable_sleep_mode, v.max_model_len, v.dtype) == \
        (0.3, True, None, "auto")
    with pytest.raises(ConfigError, match="rollout.vllm.gpu_memory_utilization"):
        load_config(None, ["rollout.vllm.gpu_memory_utilization=1.5"])
