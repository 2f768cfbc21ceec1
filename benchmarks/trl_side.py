"""The TRL half of ``benchmarks/vs_trl.py``: run ``trl.GRPOTrainer`` on CPU and time its steps.

TRL is an optional benchmark dependency (``pip install trl``); importing this module does not
import it, :func:`run_trl` does.

Configuration, chosen so that one TRL optimizer step is exactly one grouprl iteration:

* ``num_generations=G``; ``generation_batch_size = B·G`` completions are generated once per
  optimizer step (``steps_per_generation == gradient_accumulation_steps``), split into
  ``per_device_train_batch_size = micro`` rows per forward/backward, ``B·G / micro``
  accumulation steps;
* ``loss_type="dapo"``: in TRL 1.16 ``_compute_loss`` divides each micro-batch's summed
  per-token loss by ``num_items_in_batch × GA / steps_per_generation``, where
  ``num_items_in_batch`` is the number of completion tokens of the whole generation batch (all
  B·G completions, see ``_generate_and_score_completions``); with ``steps_per_generation == GA``
  the accumulated gradient is that of ``Σ_tokens loss / N_tokens`` over all B·G completions —
  grouprl's ``loss_agg=token-mean``. (``"bnpo"`` divides by the micro-batch's own token count and
  then by GA, a mean of micro-batch means, equal only when GA = 1; ``"grpo"`` is a sequence mean;
  ``"dr_grpo"`` divides by a constant.) ``GRPOTrainer.loss_is_scaled_for_ga = True``, so the
  ``Trainer`` does not divide by GA a second time;
* ``beta=0.0`` (no KL, no reference model), ``num_iterations=1`` (on-policy: the ratio is 1,
  clipping inactive, as in grouprl with one mini-batch and one epoch), ``scale_rewards="group"``
  ((r − mean_group) / (std_group + 1e-4), unbiased std, as grouprl's ``grpo`` estimator),
  ``entropy_coef=0``;
* sampling: ``temperature=1.0``, ``top_p=1.0``, ``top_k=0`` (no top-k), transformers
  ``model.generate`` (``use_vllm=False``), up to ``max_completion_length`` new tokens, stopping at
  EOS;
* optimizer: TrainingArguments' AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0), constant
  learning rate (``lr_scheduler_type="constant"``, no warm-up), ``max_grad_norm=1.0``;
* CPU (``use_cpu=True``), parameters and optimizer in float32; ``compute_dtype="float32"``:
  ``bf16=False``; ``compute_dtype="bfloat16"``: ``bf16=True``, which in transformers 5.24 /
  accelerate 1.15 is allowed with ``use_cpu`` (the bf16 device check is skipped on CPU) and makes
  the ``Accelerator`` wrap ``model.forward`` in ``torch.autocast("cpu", torch.bfloat16)`` (logits
  cast back to float32); TRL generates through the unwrapped model with that wrapper kept
  (``keep_fp32_wrapper=True``), so generation, log-probs and the update all run under bf16
  autocast — grouprl's ``model.compute_dtype=bfloat16`` (autocast of rollouts, log-probs and
  updates, parameters in ``model.dtype``);
* ``gradient_checkpointing=False`` (GRPOConfig turns it on by default; grouprl does not
  checkpoint activations), no saving, no reporting, ``dataloader_num_workers=0``.

Prompts are plain strings that already carry any chat template (TRL does not template them
again); TRL tokenizes a string prompt with the tokenizer's special tokens added, grouprl without:
:func:`check_prompt_tokens` refuses a tokenizer for which the two differ (e.g. one that adds BOS).

The time of a step is measured by a ``TrainerCallback`` from ``on_step_begin`` to
``on_step_end``: generation, reward, advantages, forward/backward of every micro-batch, gradient
clipping and the optimizer step (not the dataloader fetch of the prompt strings, not logging).
Generated tokens are counted in the reward function from TRL's ``completion_ids`` (EOS
included, as grouprl's ``response_mask``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

__all__ = ["ANSWER_RE", "COMPUTE_DTYPES", "parse_answer", "is_correct", "trl_available",
           "run_trl", "trl_config", "check_prompt_tokens"]

ANSWER_RE = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")
COMPUTE_DTYPES = ("float32", "bfloat16")  # autocast dtype of the forward passes (both sides)


def parse_answer(text: str) -> int | None:
    """The integer inside the first ``<answer>…</answer>`` of ``text`` (None when absent)."""
    m = ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def is_correct(text: str, gold: int | str) -> bool:
    got = parse_answer(text)
    return got is not None and got == int(gold)


def check_prompt_tokens(tokenizer: Any, prompts: Sequence[str]) -> None:
    """Raise unless TRL's tokenization of the string prompts (``tokenizer(text=prompts)``,
    special tokens added) equals grouprl's (``add_special_tokens=False``)."""
    trl_ids = tokenizer(text=list(prompts))["input_ids"]
    grouprl_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    for i, (a, b) in enumerate(zip(trl_ids, grouprl_ids)):
        if list(a) != list(b):
            raise ValueError(f"prompt {i}: TRL tokenizes it to {len(a)} tokens with special "
                             f"tokens added, grouprl to {len(b)} without; the two sides would "
                             "not see the same prompt tokens")


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def trl_config(output_dir: str, *, num_generations: int, prompts_per_step: int,
               max_completion_length: int, lr: float, steps: int, micro_batch: int | None = None,
               seed: int = 0, temperature: float = 1.0, grad_clip: float = 1.0,
               shuffle: bool = True, compute_dtype: str = "float32") -> Any:
    """The ``trl.GRPOConfig`` described in the module docstring."""
    from trl import GRPOConfig

    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype: expected one of {COMPUTE_DTYPES}, got {compute_dtype!r}")

    rows = prompts_per_step * num_generations
    micro = rows if micro_batch is None else min(micro_batch, rows)
    if rows % micro:
        raise ValueError(f"micro_batch {micro} must divide B·G = {rows}")
    accum = rows // micro
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    # GRPOConfig turns activation (gradient) checkpointing on by default; transformers >= 5.x
    # calls it activation_checkpointing (gradient_checkpointing is its deprecated alias)
    no_ckpt = ({"activation_checkpointing": False} if "activation_checkpointing" in names
               else {"gradient_checkpointing": False})
    config = GRPOConfig(
        output_dir=output_dir,
        # one optimizer step = B prompts × G completions generated in that step
        num_generations=num_generations,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,
        num_iterations=1,
        max_steps=steps,
        shuffle_dataset=shuffle,
        # loss: GRPO advantages, token-mean over all B·G completions, no KL
        loss_type="dapo",
        beta=0.0,
        scale_rewards="group",
        entropy_coef=0.0,
        mask_truncated_completions=False,
        # sampling
        max_completion_length=max_completion_length,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        # optimizer
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=grad_clip,
        # machine and bookkeeping
        use_cpu=True,
        bf16=compute_dtype == "bfloat16",
        fp16=False,
        dataloader_num_workers=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        log_completions=False,
        disable_tqdm=True,
        seed=seed,
        **no_ckpt,
    )
    if getattr(config, "gradient_checkpointing", False):
        raise RuntimeError("GRPOConfig: activation checkpointing is still on")
    return config


def run_trl(model_dir: str, prompts: Sequence[str], answers: Sequence[int], *,
            num_generations: int, prompts_per_step: int, max_completion_length: int,
            lr: float, steps: int, warmup: int = 1, micro_batch: int | None = None,
            seed: int = 0, threads: int = 2, temperature: float = 1.0,
            grad_clip: float = 1.0, shuffle: bool = True,
            verify: Callable[[list[str], list[int]], list[bool]] | None = None,
            compute_dtype: str = "float32", tokenizer: Any = None) -> dict[str, Any]:
    """Train the model saved in ``model_dir`` with ``trl.GRPOTrainer`` for ``steps`` steps.

    Returns per-step lists ``step_s`` (seconds), ``tokens`` (generated completion tokens),
    ``reward`` (mean correctness of the step's B·G completions), ``generate_s`` (time inside
    ``GRPOTrainer._generate``: tokenization, ``model.generate``, decoding), ``reward_s`` (time
    in the reward function), TRL's own ``log_history``, and
    the medians over the steps after ``warmup``: ``median_s`` and ``tok_s`` (generated tokens /
    step time, median of the per-step ratios).

    ``shuffle=False`` reads the prompts in the given order, ``prompts_per_step`` per step (pass
    ``steps × prompts_per_step`` prompts to fix the prompts of every step).

    ``verify(completions, golds) -> [correct]`` scores a batch (default: :func:`is_correct`,
    the integer in the first ``<answer>…</answer>``); the reward is 1.0 when correct, else 0.0.
    ``compute_dtype``: the autocast dtype (module docstring). ``tokenizer``: TRL's processing
    class (default ``AutoTokenizer.from_pretrained(model_dir)``); the prompts must tokenize the
    same with and without special tokens (:func:`check_prompt_tokens`).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    torch.set_num_threads(threads)
    if len(prompts) != len(answers) or not prompts:
        raise ValueError("prompts and answers: same non-zero length expected")

    pending: dict[str, float] = {"tokens": 0.0, "reward": 0.0, "n": 0.0, "gen_s": 0.0,
                                 "reward_s": 0.0}
    step_s: list[float] = []
    gen_s: list[float] = []
    reward_s: list[float] = []
    tokens: list[float] = []
    rewards: list[float] = []

    def correctness(prompts, completions, completion_ids, answer, **_):
        t0 = time.perf_counter()
        if verify is None:
            ok = [is_correct(c, a) for c, a in zip(completions, answer)]
        else:
            ok = verify(list(completions), list(answer))
        scores = [1.0 if c else 0.0 for c in ok]
        pending["tokens"] += float(sum(len(ids) for ids in completion_ids))
        pending["reward"] += float(sum(scores))
        pending["n"] += float(len(scores))
        pending["reward_s"] += time.perf_counter() - t0
        return scores

    class StepTimer(TrainerCallback):
        t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s.append(time.perf_counter() - self.t0)
            tokens.append(pending["tokens"])
            rewards.append(pending["reward"] / max(pending["n"], 1.0))
            gen_s.append(pending["gen_s"])
            reward_s.append(pending["reward_s"])
            pending.update(tokens=0.0, reward=0.0, n=0.0, gen_s=0.0, reward_s=0.0)

    dataset = Dataset.from_dict({"prompt": list(prompts), "answer": [int(a) for a in answers]})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_dir)
    check_prompt_tokens(tok, prompts)
    with tempfile.TemporaryDirectory() as out:
        args = trl_config(out, num_generations=num_generations, prompts_per_step=prompts_per_step,
                          max_completion_length=max_completion_length, lr=lr, steps=steps,
                          micro_batch=micro_batch, seed=seed, temperature=temperature,
                          grad_clip=grad_clip, shuffle=shuffle, compute_dtype=compute_dtype)
        trainer = GRPOTrainer(model=model, reward_funcs=[correctness], args=args,
                              train_dataset=dataset, processing_class=tok,
                              callbacks=[StepTimer()])
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
        generate = getattr(trainer, "_generate", None)
        if callable(generate):  # time TRL's generation (prompt tokenization → decoded texts)
            def timed_generate(*a, **k):
                t0 = time.perf_counter()
                try:
                    return generate(*a, **k)
                finally:
                    pending["gen_s"] += time.perf_counter() - t0

            trainer._generate = timed_generate
        trainer.train()
        history = list(trainer.state.log_history)
    if len(step_s) != steps:
        raise RuntimeError(f"TRL ran {len(step_s)} optimizer steps, expected {steps}")
    timed = list(range(min(warmup, steps - 1), steps))
    return {
        "step_s": step_s, "tokens": tokens, "reward": rewards, "log_history": history,
        "generate_s": gen_s, "reward_s": reward_s,
        "median_s": statistics.median(step_s[i] for i in timed),
        "tok_s": statistics.median(tokens[i] / step_s[i] for i in timed),
        "tokens_per_step": statistics.median(tokens[i] for i in timed),
    }
