"""Speed race: grouprl vs TRL's ``GRPOTrainer`` on the same tiny model, prompts and loss (CPU).

    python benchmarks/vs_trl.py [--quick] [--steps N] [--warmup W] [--curve-steps N] [--write]

Both trainers start from one shared warm start (the tiny Qwen2 model of
``grouprl.policy.build_tiny_policy``, behaviour-cloned briefly on expert arithmetic solutions
``<think>3+4=7.</think><answer>7</answer><|endoftext|>``), draw prompts from the same
arithmetic task set, sample ``G`` completions of up to ``T`` new tokens for each of ``B`` prompts
per optimizer step at temperature 1 (no top-p / top-k), stop at EOS, score 1 when the answer
inside ``<answer>…</answer>`` is the gold one (TRL's reward function calls the verifier that
grouprl's reasoning env scores with), and take one AdamW step (lr ``--lr``, grad clip 1.0) on
the GRPO loss: group-normalised advantages, PPO-clip surrogate (ratio 1: one epoch, one
mini-batch), token-mean over all B·G completions, no KL, no entropy bonus.

Measured in one process, one side after the other, for each batch shape ``B×G×T``:

* seconds per optimizer step — TRL: generation + reward + advantages + forward/backward +
  optimizer step (``on_step_begin`` → ``on_step_end``); grouprl: rollout (generation + env
  verification) + advantages + update (``timing/iteration_s``, evaluation and checkpointing
  excluded);
* generated tokens per second: the step's generated completion tokens (EOS included) / the
  step's time;

each the median over the steps after ``--warmup``. A learning-curve run (``--curve-steps``)
compares the per-step mean reward (rate of correct answers in the step's B·G completions).

With ``--model PATH`` (``builtin:smollm2-135m-instruct``, a local Hugging Face directory or a
``.gguf`` file, resolved by ``grouprl.policy.resolve_model_path``) the race runs on that model
instead, with no warm start: both sides load the resolved directory, and the prompts are those
of grouprl's real-model reasoning recipe (:data:`REAL_MODEL_RECIPE`: its ``env`` — built-in
arithmetic, free-form answers, " Reply with just the number." —, its ``agent`` with the model's
chat template, ``rollout.stop``), chat-templated once by grouprl's prompt renderer and handed to
TRL as plain strings (TRL does not template them again). Same loss settings as above;
``--compute-dtype`` picks float32 or bfloat16 autocast on both sides (``model.compute_dtype``;
TRL ``bf16=True``). The table adds each side's mean reward and goes to its own section
(:func:`model_section`)::

    python benchmarks/vs_trl.py --model builtin:smollm2-135m-instruct --write

TRL's exact configuration and why it equals grouprl's loss: ``benchmarks/trl_side.py``.
grouprl's configuration: :data:`GROUPRL_RECIPE` and :func:`grouprl_overrides` below (one place
to adjust when the reasoning-mode keys change). Writes its section of docs/benchmarks.md only
with ``--write``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from grouprl.policy import resolve_model_path  # noqa: E402
from grouprl.policy.load import load_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402
from trl_side import COMPUTE_DTYPES, is_correct, run_trl, trl_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL_RECIPE = ROOT / "configs" / "reasoning_smollm2_grpo.yaml"

# --------------------------------------------------------------------------- the grouprl side
# The reasoning-mode recipe of grouprl (a YAML recipe, so env.kwargs replaces the default env's
# arguments instead of merging into them); the shape and the run directory come as overrides.
GROUPRL_RECIPE: dict[str, Any] = {
    "env": {"name": "reasoning", "kwargs": {"dataset": "builtin:arithmetic", "difficulty": [1]},
            "max_steps": 1},
    "agent": {"template": "reasoning", "action_tag": None, "allow_plain": True,
              "history_length": 0, "use_chat_template": False},
    "rollout": {"stop": [], "temperature": 1.0, "top_p": 1.0},
    "algorithm": {"estimator": "grpo", "loss": "ppo", "loss_agg": "token-mean", "kl_coef": 0.0,
                  "entropy_coef": 0.0, "ppo_epochs": 1, "num_mini_batches": 1},
    "bc": {"enabled": False},
    "eval": {"every": 0, "episodes": 1},
    "logging": {"progress": False},
    "optim": {"grad_clip": 1.0, "schedule": "constant", "weight_decay": 0.0},
    "save_every": 0,
    "keep_last": 1,
}


def grouprl_overrides(*, run_dir: Path, model_dir: Path, prompts_per_step: int,
                      num_generations: int, max_new_tokens: int, micro_batch: int, lr: float,
                      steps: int, threads: int, seed: int, difficulty: Sequence[int],
                      compute_dtype: str | None = None) -> list[str]:
    """Command-line overrides of the race recipe (``compute_dtype`` None: the recipe's)."""
    dtype = [] if compute_dtype is None else [f"model.compute_dtype={compute_dtype}"]
    return [f"run_dir={run_dir}", f"model.path={model_dir}",
            f"env.kwargs.difficulty={json.dumps(list(difficulty))}",
            f"rollout.groups_per_batch={prompts_per_step}", f"rollout.group_size={num_generations}",
            f"rollout.max_new_tokens={max_new_tokens}",
            f"algorithm.micro_batch_size={micro_batch}", f"optim.lr={lr}",
            f"iterations={steps}", f"threads={threads}", f"seed={seed}", *dtype]


def real_model_recipe(recipe_file: Path = REAL_MODEL_RECIPE) -> dict[str, Any]:
    """:data:`GROUPRL_RECIPE` with the ``env``, the ``agent`` (chat template on) and
    ``rollout.stop`` of the real-model reasoning recipe; the loss settings stay the race's."""
    real = yaml.safe_load(Path(recipe_file).read_text())
    recipe = copy.deepcopy(GROUPRL_RECIPE)
    recipe["env"] = copy.deepcopy(real["env"])
    recipe["agent"] = {**recipe["agent"], **real.get("agent", {}), "use_chat_template": True}
    recipe["rollout"]["stop"] = list(real.get("rollout", {}).get("stop", []))
    return recipe


def recipe_learning_rate(recipe_file: Path = REAL_MODEL_RECIPE) -> float:
    """``optim.lr`` of the real-model recipe (the race's default lr with ``--model``)."""
    return float(yaml.safe_load(Path(recipe_file).read_text())["optim"]["lr"])


def model_tokenizer(model_dir: Path) -> Any:
    """The tokenizer exactly as grouprl's ``load_policy`` loads it from ``model_dir`` (the TRL
    side uses the same object, so both sides tokenize identically)."""
    return load_tokenizer(Path(model_dir))


def model_section(spec: str) -> str:
    """docs/benchmarks.md section of a ``--model`` race: ``vs_trl_smollm2`` for the built-in
    SmolLM2, else ``vs_trl_`` + the model's name (never the tiny race's ``vs_trl``)."""
    name = spec.split(":", 1)[1] if spec.startswith("builtin:") else Path(spec).stem
    if name.startswith("smollm2-135m"):
        name = "smollm2"
    return "vs_trl_" + (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "model")


# --------------------------------------------------------------------------- tasks and prompts
# The prompt TRL gets when grouprl's reasoning env cannot render one (before it lands): the
# question, then the reply format. With the env available, both sides get the env's prompt.
STANDIN_PROMPT = ("{question}\nThink step by step inside <think> </think>, then give the final "
                  "answer inside <answer> </answer>.\n")
SPECIAL_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
VERBOSE_CHECKS = (0, 1)  # stand-in data: redundant "Check: …" sentences per expert solution
ISOLATE_CHARS = "0123456789"  # digits stay single tokens (as grouprl's reasoning env asks)
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Task:
    prompt: str      # the full prompt text the model sees
    answer: int
    solution: str    # expert reply (without EOS)


def _examples(difficulty: Sequence[int], size: int, seed: int, split: str = "train"
              ) -> tuple[list[tuple[str, int, str]], str]:
    """(question, answer, solution) triples: grouprl's arithmetic data, or a stand-in."""
    try:
        from grouprl.data.arithmetic import arithmetic_dataset
    except ImportError:
        import random

        rng = random.Random(f"{split}:{seed}")
        out = []
        for _ in range(size):
            a, b = rng.randrange(10), rng.randrange(10)
            if rng.random() < 0.5:
                out.append((f"What is {a} + {b}?", a + b,
                            f"<think>{a}+{b}={a + b}.</think><answer>{a + b}</answer>"))
            else:
                a, b = max(a, b), min(a, b)
                out.append((f"What is {a} - {b}?", a - b,
                            f"<think>{a}-{b}={a - b}.</think><answer>{a - b}</answer>"))
        return out, "stand-in (single-digit + and -)"
    data = arithmetic_dataset(split, difficulty=list(difficulty), size=size, seed=seed,
                              verbose_checks=VERBOSE_CHECKS)
    return ([(e.prompt, int(e.answer), e.solution) for e in data],
            f"grouprl.data.arithmetic, difficulty {list(difficulty)}, {split} split")


def _env_kwargs(difficulty: Sequence[int], recipe: dict[str, Any] = GROUPRL_RECIPE
                ) -> dict[str, Any]:
    return {**recipe["env"]["kwargs"], "difficulty": list(difficulty)}


def _env_tasks(size: int, difficulty: Sequence[int], recipe: dict[str, Any] = GROUPRL_RECIPE,
               tokenizer: Any = None) -> tuple[list[Task], int] | None:
    """Tasks rendered exactly as grouprl's reasoning rollouts render them (seeds 0..n-1, n =
    ``size`` or the env's data set size when smaller: each item once), or None while the
    reasoning env / template is not available; also the env's data set size. With a
    ``tokenizer`` and the recipe's ``agent.use_chat_template``, prompts are chat-templated."""
    try:
        from grouprl.agent.memory import HistoryMemory
        from grouprl.agent.prompts import template_from_config
        from grouprl.agent.rollout import render_prompt
        from grouprl.envs import available_envs, make_env
        from trl_side import parse_answer

        if recipe["env"]["name"] not in available_envs():
            return None
        template = template_from_config(recipe["agent"]["template"])
        env = make_env(recipe["env"]["name"], **_env_kwargs(difficulty, recipe))
    except Exception:  # noqa: BLE001 - any failure means "not available yet"
        return None
    tasks = []
    try:
        env_size = len(env) if hasattr(env, "__len__") else 0
        n = min(size, env_size) if env_size else size
        for seed in range(n):
            obs, info = env.reset(seed)
            prompt = render_prompt(template, HistoryMemory(1, 0), 0, task=info.get("task", ""),
                                   observation=obs, admissible=info.get("admissible_actions"),
                                   tokenizer=tokenizer,
                                   use_chat_template=bool(recipe["agent"]["use_chat_template"]))
            plan = None
            for name in ("expert_actions", "gold_actions"):
                if callable(getattr(env, name, None)):
                    plan = getattr(env, name)()
                    break
            solution = plan[0] if plan else info.get("solution")
            gold = info.get("answer", parse_answer(solution or ""))
            if solution is None or gold is None:
                return None
            tasks.append(Task(prompt, int(gold), solution))
    except Exception:  # noqa: BLE001
        return None
    finally:
        env.close()
    return tasks, env_size


@dataclass(frozen=True)
class TaskSet:
    tasks: list[Task]
    source: str
    env_size: int = 0   # size of grouprl's env data set when the tasks are its items in order


def load_tasks(size: int, difficulty: Sequence[int], seed: int = 0,
               recipe: dict[str, Any] = GROUPRL_RECIPE, tokenizer: Any = None) -> TaskSet:
    """The training tasks both sides draw from, and where their prompts come from (with a
    ``tokenizer``: the env's prompts, chat-templated, or an error; no stand-in)."""
    got = _env_tasks(size, difficulty, recipe, tokenizer)
    if got:
        chat = " with the model's chat template" if tokenizer is not None and \
            recipe["agent"]["use_chat_template"] else ""
        return TaskSet(got[0], f"grouprl's `{recipe['env']['name']}` env and "
                               f"`{recipe['agent']['template']}` template{chat}", got[1])
    if tokenizer is not None:
        raise RuntimeError("--model: grouprl's reasoning env could not render the prompts")
    examples, source = _examples(difficulty, size, seed)
    return TaskSet([Task(STANDIN_PROMPT.format(question=q), a, s) for q, a, s in examples],
                   f"{source}, stand-in prompt format")


def trl_prompt_order(taskset: TaskSet, prompts_per_step: int, steps: int, seed: int,
                     recipe: dict[str, Any] = GROUPRL_RECIPE) -> tuple[list[Task], bool]:
    """TRL's data set and whether TRL should shuffle it.

    When the tasks are exactly the items of grouprl's env (task ``i`` = what ``reset(i)``
    shows), TRL gets the tasks grouprl's trainer draws at each iteration (``task_seeds``; the
    env shows item ``seed % len``), in order, and reads them unshuffled: both sides then train
    on the same prompts at the same step, so the learning curves differ only by sampling.
    Otherwise all tasks, shuffled by TRL's sampler.
    """
    tasks = taskset.tasks
    if taskset.env_size and taskset.env_size == len(tasks):
        try:
            from grouprl.train import load_config, task_seeds

            offset = recipe.get("eval", {}).get("seed_offset",
                                                        load_config().eval.seed_offset)
            order = [tasks[s % len(tasks)] for it in range(steps)
                     for s in task_seeds(seed, it, prompts_per_step, offset)]
            return order, False
        except Exception:  # noqa: BLE001 - fall back to TRL's own sampling
            pass
    return tasks, True


def make_verifier(difficulty: Sequence[int], recipe: dict[str, Any] = GROUPRL_RECIPE
                  ) -> tuple[Any, str]:
    """``verify(texts, golds) -> [bool]`` for the TRL reward: the verifier grouprl's reasoning
    env scores with (same mode and backend), or the ``<answer>`` integer match without it."""
    kw = _env_kwargs(difficulty, recipe)
    try:
        from grouprl.rewards.verifier import Verifier

        v = Verifier(mode=kw.get("verifier", "answer_tag"), backend=kw.get("backend", "auto"),
                     timeout_s=kw.get("verifier_timeout", 5.0), workers=0,
                     require_think_close=kw.get("require_think_close", False))
    except Exception:  # noqa: BLE001
        return (lambda texts, golds: [is_correct(t, g) for t, g in zip(texts, golds)],
                "integer inside <answer>…</answer>")

    def verify(texts: Sequence[str], golds: Sequence[int]) -> list[bool]:
        return [r.correct is True for r in v.verify_batch(list(texts), [str(g) for g in golds])]

    return verify, f"grouprl Verifier(mode={v.mode!r}, backend={v.backend!r})"


# --------------------------------------------------------------------------- shared warm start
def _token_ids(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def build_warm_start(out_dir: Path, tasks: Sequence[Task], *, bc_updates: int, seed: int = 0,
                     eval_tasks: Sequence[Task] = (), max_new_tokens: int = 64,
                     verify: Any = None) -> dict[str, float]:
    """Tiny model + tokenizer trained on the tasks' text, behaviour-cloned for ``bc_updates``
    updates on the expert solutions (+ EOS), saved to ``out_dir``; returns its sampled accuracy
    (temperature 1) on ``eval_tasks``, measured on the saved copy.

    Both trainers load the model *from* ``out_dir``, so cloning uses the tokenizer as it loads
    back from disk (``grouprl.policy.load_policy``), not the in-memory one that
    ``build_tiny_policy`` returns: transformers 5 loads a saved Qwen2-type tokenizer as
    ``Qwen2Tokenizer``, which replaces the tiny tokenizer's pre-tokenizer, so the two can
    tokenize differently. The saved tokenizer is checked to load back identically through
    grouprl (``load_policy``) and through ``AutoTokenizer`` (what the TRL side uses, which
    tokenizes plain-text prompts with ``add_special_tokens=True``).
    """

    from grouprl.policy import build_tiny_policy, generate, load_policy
    from grouprl.train.bc import ExpertSample, clone_behaviour

    texts = [t.prompt for t in tasks] + [t.solution for t in tasks]
    build_tiny_policy(texts, special_tokens=SPECIAL_TOKENS, isolate_chars=ISOLATE_CHARS,
                      seed=seed, save_dir=out_dir)
    model, tok = load_policy(out_dir)
    samples = [ExpertSample(t.prompt, t.solution + EOS) for t in tasks]
    t0 = time.perf_counter()
    losses = clone_behaviour(model, tok, samples, epochs=10 ** 6, batch_size=32, lr=1e-3,
                             max_updates=bc_updates, seed=seed)
    info = {"bc_updates": float(len(losses)), "bc_loss_first": losses[0],
            "bc_loss_last": losses[-1], "bc_s": time.perf_counter() - t0}
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)

    clone_tok = tok
    model, tok = load_policy(out_dir)
    probe = [t.prompt + t.solution + EOS for t in tasks[:64]]
    ids = _token_ids(tok, probe)
    for name, other in (("the tokenizer used for cloning", _token_ids(clone_tok, probe)),
                        ("AutoTokenizer", _token_ids(AutoTokenizer.from_pretrained(out_dir),
                                                     probe))):
        if other != ids:
            raise RuntimeError(f"warm start: {name} tokenizes differently from "
                               "grouprl.policy.load_policy's tokenizer")
    prompts = [t.prompt for t in tasks[:64]]
    if AutoTokenizer.from_pretrained(out_dir)(prompts)["input_ids"] != _token_ids(tok, prompts):
        raise RuntimeError("warm start: TRL's prompt tokenization (special tokens added) differs "
                           "from grouprl's")
    eos_id = tok.convert_tokens_to_ids(EOS)
    if eos_id != tok.eos_token_id or any(i[-1] != eos_id for i in ids):
        raise RuntimeError(f"warm start: {EOS!r} is not tokenized as the EOS id")

    sol_tokens = [len(i) for i in _token_ids(tok, [t.solution + EOS for t in tasks])]
    info["solution_tokens_mean"] = statistics.mean(sol_tokens)
    info["solution_tokens_max"] = float(max(sol_tokens))
    info["prompt_tokens_mean"] = statistics.mean(
        len(i) for i in _token_ids(tok, [t.prompt for t in tasks]))
    if eval_tasks:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            res = generate(model, tok, [t.prompt for t in eval_tasks],
                           max_new_tokens=max_new_tokens, generator=g)
        verify = verify or (lambda xs, gs: [is_correct(x, g) for x, g in zip(xs, gs)])
        info["warm_start_accuracy"] = statistics.mean(
            float(ok) for ok in verify(res.texts, [t.answer for t in eval_tasks]))
        info["warm_start_tokens_mean"] = float(res.response_mask.sum(1).float().mean())
    return info


# --------------------------------------------------------------------------- the two sides
@dataclass(frozen=True)
class Shape:
    prompts_per_step: int   # B
    num_generations: int    # G
    max_new_tokens: int     # T

    @property
    def label(self) -> str:
        return f"B={self.prompts_per_step} G={self.num_generations} T={self.max_new_tokens}"

    @classmethod
    def parse(cls, text: str) -> Shape:
        try:
            b, g, t = (int(x) for x in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {text!r}: expected BxGxT, e.g. 4x8x32"
                                             ) from None
        return cls(b, g, t)


def _summary(step_s: list[float], tokens: list[float], warmup: int) -> dict[str, float]:
    timed = range(min(warmup, len(step_s) - 1), len(step_s))
    return {"median_s": statistics.median(step_s[i] for i in timed),
            "tok_s": statistics.median(tokens[i] / step_s[i] for i in timed),
            "tokens_per_step": statistics.median(tokens[i] for i in timed)}


def grouprl_config(recipe: dict[str, Any], recipe_file: Path, overrides: Sequence[str]) -> Any:
    """grouprl's ``TrainConfig``: ``recipe`` written to ``recipe_file``, then ``overrides``."""
    from grouprl.train import load_config

    recipe_file.write_text(yaml.safe_dump(recipe))
    return load_config(recipe_file, list(overrides))


def run_grouprl(model_dir: Path, shape: Shape, *, steps: int, warmup: int, lr: float,
                micro_batch: int, threads: int, seed: int, difficulty: Sequence[int],
                work_dir: Path, recipe: dict[str, Any] = GROUPRL_RECIPE,
                compute_dtype: str | None = None) -> dict[str, Any]:
    from grouprl.recipes import train
    from grouprl.train.metrics import read_metrics

    run_dir = Path(tempfile.mkdtemp(prefix="grouprl_", dir=work_dir))
    cfg = grouprl_config(recipe, run_dir.with_suffix(".yaml"), grouprl_overrides(
        run_dir=run_dir / "run", model_dir=model_dir, prompts_per_step=shape.prompts_per_step,
        num_generations=shape.num_generations, max_new_tokens=shape.max_new_tokens,
        micro_batch=micro_batch, lr=lr, steps=steps, threads=threads, seed=seed,
        difficulty=difficulty, compute_dtype=compute_dtype))
    train(cfg, echo=lambda s: None)
    its = [r for r in read_metrics(run_dir / "run") if "timing/iteration_s" in r]
    if len(its) != steps:
        raise RuntimeError(f"grouprl logged {len(its)} iterations, expected {steps}")
    step_s = [float(r["timing/iteration_s"]) for r in its]
    tokens = [float(r["train/response_tokens"]) for r in its]
    reward = [float(r["train/success_rate"]) for r in its]
    return {"step_s": step_s, "tokens": tokens, "reward": reward,
            "rollout_s": [float(r["timing/rollout_s"]) for r in its],
            "update_s": [float(r["timing/update_s"]) for r in its],
            **_summary(step_s, tokens, warmup)}


def race_one(side: str, model_dir: Path, tasks: TaskSet, shape: Shape, *, steps: int,
             warmup: int, lr: float, micro_batch: int | None, threads: int, seed: int,
             difficulty: Sequence[int], work_dir: Path, verify: Any = None,
             recipe: dict[str, Any] = GROUPRL_RECIPE, compute_dtype: str | None = None,
             tokenizer: Any = None) -> dict[str, Any]:
    """One side at one shape; failures are returned as ``{"error": ...}``, not raised.
    ``compute_dtype`` None: float32 on TRL, the recipe's on grouprl (the tiny race)."""
    micro = micro_batch or shape.prompts_per_step * shape.num_generations
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        if side == "trl":
            order, shuffle = trl_prompt_order(tasks, shape.prompts_per_step, steps, seed,
                                              recipe)
            out = run_trl(str(model_dir), [t.prompt for t in order], [t.answer for t in order],
                          shuffle=shuffle,
                          num_generations=shape.num_generations,
                          prompts_per_step=shape.prompts_per_step,
                          max_completion_length=shape.max_new_tokens, lr=lr, steps=steps,
                          warmup=warmup, micro_batch=micro, seed=seed, threads=threads,
                          verify=verify, compute_dtype=compute_dtype or "float32",
                          tokenizer=tokenizer)
            out.pop("log_history", None)
        else:
            out = run_grouprl(model_dir, shape, steps=steps, warmup=warmup, lr=lr,
                              micro_batch=micro, threads=threads, seed=seed,
                              difficulty=difficulty, work_dir=work_dir, recipe=recipe,
                              compute_dtype=compute_dtype)
    except Exception as err:  # noqa: BLE001 - reported in the table
        tb = traceback.format_exc(limit=6)
        print(f"[{side} {shape.label}] failed: {type(err).__name__}: {err}\n{tb}",
              file=sys.stderr, flush=True)
        return {"error": f"{type(err).__name__}: {err}"}
    out["wall_s"] = time.perf_counter() - t0
    if side == "trl":
        out["same_prompts_as_grouprl"] = not shuffle
    rollout = (out["rollout_s"] if side == "grouprl" else
               [g + r for g, r in zip(out.get("generate_s", []), out.get("reward_s", []))])
    if len(rollout) == len(out["step_s"]):  # means, so that the two parts add up
        timed = range(min(warmup, steps - 1), steps)
        out["rollout_mean_s"] = statistics.mean(rollout[i] for i in timed)
        out["rest_mean_s"] = statistics.mean(out["step_s"][i] - rollout[i] for i in timed)
    print(f"[{side:7s} {shape.label}] {out['median_s']:.3f} s/step, {out['tok_s']:,.0f} gen tok/s,"
          f" {out['tokens_per_step']:.0f} tok/step, reward "
          f"{statistics.mean(out['reward']):.2f} ({out['wall_s']:.0f}s in all)", flush=True)
    return out


# --------------------------------------------------------------------------- report
def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def race_table(shapes: Sequence[Shape], results: dict[tuple[str, Shape], dict]) -> list[str]:
    lines = ["| shape (B prompts × G completions, T max new tokens) | TRL s/step | grouprl "
             "s/step | speedup | TRL gen tok/s | grouprl gen tok/s | ratio | tokens/step "
             "(TRL / grouprl) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape in shapes:
        t, g = results.get(("trl", shape), {}), results.get(("grouprl", shape), {})
        ts, gs = t.get("median_s"), g.get("median_s")
        tt, gt = t.get("tok_s"), g.get("tok_s")
        lines.append(
            f"| {shape.label} | {_fmt(ts, '.3f')} | {_fmt(gs, '.3f')} | "
            f"{_fmt(ts / gs if ts and gs else None, '.2f')}{'×' if ts and gs else ''} | "
            f"{_fmt(tt, ',.0f')} | {_fmt(gt, ',.0f')} | "
            f"{_fmt(gt / tt if tt and gt else None, '.2f')}{'×' if tt and gt else ''} | "
            f"{_fmt(t.get('tokens_per_step'), '.0f')} / {_fmt(g.get('tokens_per_step'), '.0f')} |")
    errors = [f"- {side} at {shape.label}: `{r['error']}`" for (side, shape), r in results.items()
              if "error" in r]
    return lines + ([""] + ["Failed runs:"] + errors if errors else [])


def breakdown_table(shapes: Sequence[Shape], results: dict[tuple[str, Shape], dict]
                    ) -> list[str]:
    lines = ["| shape | side | mean s/step | rollout: generation + reward | the rest: "
             "advantages, loss, backward, optimizer |", "|---|---|---:|---:|---:|"]
    for shape in shapes:
        for side, name in (("trl", "TRL"), ("grouprl", "grouprl")):
            r = results.get((side, shape), {})
            if "rollout_mean_s" not in r:
                continue
            ro, rest = r["rollout_mean_s"], r["rest_mean_s"]
            lines.append(f"| {shape.label} | {name} | {ro + rest:.3f} | {ro:.3f} "
                         f"({ro / (ro + rest):.0%}) | {rest:.3f} ({rest / (ro + rest):.0%}) |")
    return lines


def curve_table(trl: dict, grp: dict, rows_per_step: int, window: int = 5) -> list[str]:
    """Mean reward and mean completion length per window of ``window`` steps, both sides."""
    def cell(values: list[float], start: int, stop: int, spec: str, scale: float = 1.0) -> str:
        part = values[start:stop]
        return _fmt(statistics.mean(part) / scale if part else None, spec)

    tr, gr = trl.get("reward", []), grp.get("reward", [])
    tt, gt = trl.get("tokens", []), grp.get("tokens", [])
    n = max(len(tr), len(gr))
    lines = ["| steps | TRL mean reward | grouprl mean reward | TRL tokens/completion | "
             "grouprl tokens/completion |", "|---|---:|---:|---:|---:|"]
    for start in range(0, n, window):
        stop = min(start + window, n)
        lines.append(f"| {start + 1}–{stop} | {cell(tr, start, stop, '.3f')} | "
                     f"{cell(gr, start, stop, '.3f')} | "
                     f"{cell(tt, start, stop, '.1f', rows_per_step)} | "
                     f"{cell(gt, start, stop, '.1f', rows_per_step)} |")
    for name, r in (("TRL", trl), ("grouprl", grp)):
        if "error" in r:
            lines.append(f"\n{name} curve run failed: `{r['error']}`")
    return lines


def model_race_table(shapes: Sequence[Shape], results: dict[tuple[str, Shape], dict]
                     ) -> list[str]:
    """The ``--model`` race: s/step, generated tokens/s, grouprl/TRL ratios, mean reward (over
    all steps of the run, warm-up included) and generated tokens per step of both sides."""
    lines = ["| shape (B prompts × G completions, T max new tokens) | TRL s/step | grouprl "
             "s/step | step speedup (TRL s / grouprl s) | TRL gen tok/s | grouprl gen tok/s | "
             "tok/s ratio (grouprl / TRL) | TRL mean reward | grouprl mean reward | "
             "tokens/step (TRL / grouprl) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape in shapes:
        t, g = results.get(("trl", shape), {}), results.get(("grouprl", shape), {})
        ts, gs, tt, gt = t.get("median_s"), g.get("median_s"), t.get("tok_s"), g.get("tok_s")
        tr = statistics.mean(t["reward"]) if t.get("reward") else None
        gr = statistics.mean(g["reward"]) if g.get("reward") else None
        lines.append(
            f"| {shape.label} | {_fmt(ts, '.2f')} | {_fmt(gs, '.2f')} | "
            f"{_fmt(ts / gs if ts and gs else None, '.2f')}{'×' if ts and gs else ''} | "
            f"{_fmt(tt, ',.1f')} | {_fmt(gt, ',.1f')} | "
            f"{_fmt(gt / tt if tt and gt else None, '.2f')}{'×' if tt and gt else ''} | "
            f"{_fmt(tr, '.3f')} | {_fmt(gr, '.3f')} | "
            f"{_fmt(t.get('tokens_per_step'), '.0f')} / {_fmt(g.get('tokens_per_step'), '.0f')} |")
    errors = [f"- {side} at {shape.label}: `{r['error']}`" for (side, shape), r in results.items()
              if "error" in r]
    return lines + ([""] + ["Failed runs:"] + errors if errors else [])


def run_model_race(args: argparse.Namespace, shapes: Sequence[Shape], steps: int, warmup: int,
                   sides: Sequence[str], work: Path) -> dict[str, Any]:
    """The ``--model`` race (module docstring): no warm start, the recipe's chat-templated
    prompts, ``args.compute_dtype`` on both sides; returns the results and the report text."""
    model_dir = resolve_model_path(args.model)
    recipe = real_model_recipe()
    tok = model_tokenizer(model_dir)
    difficulty = args.difficulty or recipe["env"]["kwargs"].get("difficulty", [1])
    lr = args.lr if args.lr is not None else recipe_learning_rate()
    dtype = args.compute_dtype or "float32"
    taskset = load_tasks(args.tasks, difficulty, args.seed, recipe=recipe, tokenizer=tok)
    verify, verifier = make_verifier(difficulty, recipe)
    prompt_tokens = statistics.mean(len(i) for i in _token_ids(tok, [t.prompt for t in
                                                                       taskset.tasks[:256]]))
    print(f"model: {args.model} -> {model_dir}; tasks: {len(taskset.tasks)} from "
          f"{taskset.source}; TRL reward: {verifier}; compute dtype {dtype}", flush=True)
    results: dict[tuple[str, Shape], dict] = {}
    for shape in shapes:
        for side in sides:
            results[(side, shape)] = race_one(
                side, model_dir, taskset, shape, steps=steps, warmup=warmup, lr=lr,
                micro_batch=args.micro_batch, threads=args.threads, seed=args.seed,
                difficulty=difficulty, work_dir=work, verify=verify, recipe=recipe,
                compute_dtype=dtype, tokenizer=tok)
    aligned = [r.get("same_prompts_as_grouprl") for (side, _), r in results.items()
               if side == "trl" and "error" not in r]
    prompt_note = ("the same prompts at every step" if aligned and all(aligned)
                   else "prompts drawn independently by each trainer")
    micro_note = ("one forward/backward over all B·G rows" if args.micro_batch is None
                  else f"micro-batches of {args.micro_batch} rows")
    env_kw = recipe["env"]["kwargs"]
    lines = [
        f"## Speed race vs TRL GRPOTrainer on `{args.model}` (`benchmarks/vs_trl.py --model`)",
        "",
        f"Both sides load the same model directory (no warm start, full fine-tuning, "
        f"parameters in float32, {dtype} compute{' (autocast)' if dtype != 'float32' else ''}), "
        f"same tasks ({len(taskset.tasks)} from {taskset.source}; {env_kw.get('dataset')}, "
        f"difficulty {list(difficulty)}, prompt suffix {env_kw.get('prompt_suffix', '')!r}; "
        f"prompts {prompt_tokens:.0f} tokens on average, chat-templated once and given to TRL "
        f"as plain strings; {prompt_note}), same reward ({verifier}), temperature 1, stop at "
        f"EOS, GRPO advantages, token-mean loss over the B·G completions (TRL "
        f"`loss_type=\"dapo\"`), no KL (`beta=0`), one epoch and one mini-batch, AdamW lr "
        f"{lr:g}, grad clip 1.0, {micro_note}. CPU, {args.threads} threads, "
        f"{time.strftime('%Y-%m-%d')}. Median of steps {min(warmup, steps - 1) + 1}–{steps} of "
        f"{steps}; mean reward over all {steps} steps.",
        "",
        *model_race_table(shapes, results),
        "",
        "Where a step's time goes (means over the timed steps):",
        "",
        *breakdown_table(shapes, results),
    ]
    return {"model_dir": str(model_dir), "source": taskset.source, "compute_dtype": dtype,
            "lr": lr, "results": results, "table": "\n".join(lines)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps")
    parser.add_argument("--shapes", nargs="+", type=Shape.parse, default=None,
                        help="batch shapes BxGxT (default 4x8x32 8x8x64; quick 2x4x32 4x4x48)")
    parser.add_argument("--steps", type=int, default=None, help="timed race steps per run "
                        "(default 8; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the "
                        "medians (default 2; quick 1)")
    parser.add_argument("--curve-steps", type=int, default=None, help="learning-curve steps "
                        "(default 40; quick 6; 0 = no curve)")
    parser.add_argument("--curve-shape", type=Shape.parse, default=None,
                        help="shape of the learning-curve run (default 8x8x64: room for the "
                        "longest expert solution; quick or --shapes: the first shape)")
    parser.add_argument("--sides", default="trl,grouprl", help="comma list: trl, grouprl")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate of both "
                        "sides (default 2e-4; 5e-4 and up collapse the tiny policy on both; "
                        "--model: the real-model recipe's optim.lr)")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="rows per forward/backward on both sides (default B·G)")
    parser.add_argument("--difficulty", type=int, nargs="+", default=None,
                        help="arithmetic difficulties (default 1; --model: the recipe's)")
    parser.add_argument("--model", default=None, help="race on this model instead of the tiny "
                        "warm start: builtin:smollm2-135m-instruct, a local HF directory or a "
                        ".gguf file (default shapes 4x8x24 8x8x24, 4 steps, warm-up 1)")
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=None,
                        help="autocast dtype of both sides (default float32)")
    parser.add_argument("--section", default=None, help="docs/benchmarks.md section name "
                        "(default vs_trl; --model: vs_trl_smollm2 or vs_trl_<model name>)")
    parser.add_argument("--bc-updates", type=int, default=None,
                        help="behaviour-cloning updates of the warm start (default 150; quick 40)")
    parser.add_argument("--tasks", type=int, default=2000, help="training tasks (capped by the "
                        "data set)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="keep the warm start and runs here "
                        "(a later run with the same tasks and --bc-updates reuses the warm start)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--output", default=None, help="markdown file (default docs/)")
    parser.add_argument("--json", default=None, help="also dump all per-step numbers here")
    args = parser.parse_args(argv)

    q = args.quick
    if args.model:
        shapes = args.shapes or ([Shape(2, 4, 16)] if q else [Shape(4, 8, 24), Shape(8, 8, 24)])
        steps = args.steps or (2 if q else 4)
        warmup = args.warmup if args.warmup is not None else 1
    else:
        shapes = args.shapes or ([Shape(2, 4, 32), Shape(4, 4, 48)] if q
                                 else [Shape(4, 8, 32), Shape(8, 8, 64)])
        steps = args.steps or (3 if q else 8)
        warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.difficulty = args.difficulty if args.difficulty or args.model else [1]
    args.lr = args.lr if args.lr is not None or args.model else 2e-4
    curve_steps = args.curve_steps if args.curve_steps is not None else (6 if q else 40)
    curve_shape = args.curve_shape or (shapes[0] if q or args.shapes else Shape(8, 8, 64))
    bc_updates = args.bc_updates or (40 if q else 150)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    for s in sides:
        if s not in ("trl", "grouprl"):
            parser.error(f"--sides: unknown side {s!r}")
    if "trl" in sides and not trl_available():
        print("trl is not installed (pip install trl): running the grouprl side only",
              file=sys.stderr)
        sides = [s for s in sides if s != "trl"]
    torch.set_num_threads(args.threads)
    if args.model:
        return _main_model(args, shapes, steps, warmup, sides)

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="vs_trl_")
        work = Path(tmp.name)
    try:
        taskset = load_tasks(args.tasks, args.difficulty, args.seed)
        tasks, source = taskset.tasks, taskset.source
        verify, verifier = make_verifier(args.difficulty)
        model_dir = work / "warm_start"
        stamp = {"tasks": [[t.prompt, t.answer, t.solution] for t in tasks],
                 "bc_updates": bc_updates, "seed": args.seed,
                 "max_new_tokens": max(s.max_new_tokens for s in shapes)}
        saved = model_dir / "vs_trl_warm_start.json"
        warm = None
        if saved.is_file():  # --work-dir of an earlier run: reuse its warm start
            old = json.loads(saved.read_text())
            warm = old["info"] if old.get("stamp") == stamp else None
        if warm is None:
            warm = build_warm_start(model_dir, tasks, bc_updates=bc_updates, seed=args.seed,
                                    eval_tasks=tasks[:128], verify=verify,
                                    max_new_tokens=stamp["max_new_tokens"])
            saved.write_text(json.dumps({"stamp": stamp, "info": warm}))
        print(f"tasks: {len(tasks)} from {source}; TRL reward: {verifier}; warm start: "
              f"{json.dumps(warm)}", flush=True)

        kw = dict(warmup=warmup, lr=args.lr, micro_batch=args.micro_batch,
                  threads=args.threads, seed=args.seed, difficulty=args.difficulty,
                  work_dir=work, verify=verify, compute_dtype=args.compute_dtype)
        results: dict[tuple[str, Shape], dict] = {}
        for shape in shapes:
            for side in sides:
                results[(side, shape)] = race_one(side, model_dir, taskset, shape,
                                                  steps=steps, **kw)
        curve: dict[str, dict] = {}
        if curve_steps:
            for side in sides:
                curve[side] = race_one(side, model_dir, taskset, curve_shape,
                                       steps=curve_steps, **kw)
    finally:
        if tmp is not None:
            tmp.cleanup()

    aligned = [r.get("same_prompts_as_grouprl") for (side, _), r in results.items()
               if side == "trl" and "error" not in r]
    prompt_note = ("the same prompts at every step: TRL reads, unshuffled, the tasks grouprl's "
                   "trainer draws" if aligned and all(aligned) else
                   "prompts drawn independently by each trainer")
    micro_note = ("one forward/backward over all B·G rows" if args.micro_batch is None
                  else f"micro-batches of {args.micro_batch} rows")
    lines = [
        "## Speed race vs TRL GRPOTrainer (`benchmarks/vs_trl.py`)",
        "",
        f"Same warm start (tiny Qwen2, hidden 128 × 4 layers, behaviour-cloned {bc_updates} "
        f"updates: {warm.get('warm_start_accuracy', float('nan')):.0%} correct at temperature "
        f"1 on 128 training prompts), same tasks ({len(tasks)} from {source}; prompts "
        f"{warm['prompt_tokens_mean']:.0f} tokens, expert solutions "
        f"{warm['solution_tokens_mean']:.0f} tokens on average; {prompt_note}), same reward "
        f"({verifier}), "
        f"temperature 1, stop at EOS, GRPO advantages, token-mean loss over the B·G completions, "
        f"no KL, AdamW lr {args.lr:g}, grad clip 1.0, {micro_note}. CPU, "
        f"{args.threads} threads, {args.compute_dtype or 'float32'}, "
        f"{time.strftime('%Y-%m-%d')}. Median of steps "
        f"{warmup + 1}–{steps} of {steps}.",
        "",
        *race_table(shapes, results),
        "",
        "A step is one optimizer step on B·G fresh completions. TRL's step time "
        "(`on_step_begin` → `on_step_end`) covers generation (`model.generate`), reward, "
        "advantages, forward/backward and the optimizer step; grouprl's (`timing/iteration_s`) "
        "covers the rollout (generation and env verification), advantages and the update; "
        "neither includes evaluation, logging or checkpoints. Generated tokens per second = "
        "the step's completion tokens (EOS included) / the step's time. TRL runs `GRPOTrainer` "
        "with `loss_type=\"dapo\"` (normalised by the active tokens of the whole generation "
        "batch = grouprl's `token-mean`), `beta=0`, `num_iterations=1`, "
        "`scale_rewards=\"group\"`, `gradient_checkpointing=False`, `use_vllm=False`.",
        "",
        "Where a step's time goes (means over the timed steps; TRL's rollout is the time inside "
        "`GRPOTrainer._generate` plus the reward function, grouprl's is `timing/rollout_s`):",
        "",
        *breakdown_table(shapes, results),
    ]
    if curve:
        lines += ["", f"Learning curve at {curve_shape.label}, lr {args.lr:g} (mean reward = "
                  f"rate of correct answers among the step's completions, and mean completion "
                  f"length, {curve_steps} steps, windows of 5):",
                  "", *curve_table(curve.get("trl", {}), curve.get("grouprl", {}),
                                   curve_shape.prompts_per_step * curve_shape.num_generations)]
    text = "\n".join(lines)
    print("\n" + text)
    if args.write:
        write_section(args.section or "vs_trl", text,
                      args.output or ROOT / "docs" / "benchmarks.md")
    out = {"source": source, "warm_start": warm,
           "race": {f"{side} {shape.label}": r for (side, shape), r in results.items()},
           "curve": curve, "table": text}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


def _main_model(args: argparse.Namespace, shapes: Sequence[Shape], steps: int, warmup: int,
                sides: Sequence[str]) -> dict[str, Any]:
    """``main`` with ``--model``: the race, its report section and JSON."""
    if args.curve_steps:
        print("--model: no learning-curve run (the race table has both sides' mean reward)",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        got = run_model_race(args, shapes, steps, warmup, sides, work)
    print("\n" + got["table"])
    if args.write:
        write_section(args.section or model_section(args.model), got["table"],
                      args.output or ROOT / "docs" / "benchmarks.md")
    out = {"model": args.model, "model_dir": got["model_dir"], "source": got["source"],
           "compute_dtype": got["compute_dtype"], "lr": got["lr"],
           "race": {f"{side} {shape.label}": r for (side, shape), r in got["results"].items()},
           "table": got["table"]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
